# The Conv2Former ImageNet-1k schedule (paper): 300 epochs, AdamW, lr 1e-3 x batch / 1024,
# weight decay 0.05 (none on biases, norms, layer scales: every 1-D parameter), 5 warm-up epochs
# then cosine, no gradient clipping, no EMA. Both schedulers step per iteration.
optim_wrapper = dict(
    optimizer=dict(type='AdamW', lr=1e-3, weight_decay=0.05, eps=1e-8, betas=(0.9, 0.999)),
    paramwise_cfg=dict(norm_decay_mult=0.0, bias_decay_mult=0.0, flat_decay_mult=0.0),
)

param_scheduler = [
    dict(
        type='LinearLR',
        start_factor=1e-3,  # 1e-6 at lr 1e-3
        by_epoch=True,
        begin=0,
        end=5,
        convert_to_iter_based=True),
    dict(
        type='CosineAnnealingLR',
        eta_min=1e-6,
        by_epoch=True,
        begin=5,
        convert_to_iter_based=True),
]

train_cfg = dict(by_epoch=True, max_epochs=300, val_interval=1)
val_cfg = dict()
test_cfg = dict()

# lr 1e-3 belongs to a total batch of 1024; `--auto-scale-lr` rescales it for other batch sizes.
auto_scale_lr = dict(base_batch_size=1024)

# The Conv2Former ImageNet-22k pre-training schedule (paper): 90 epochs, AdamW, lr 4e-3 at a total
# batch of 4096, weight decay 0.05 (none on 1-D parameters), 5 warm-up epochs then cosine.
# No validation during pre-training.
optim_wrapper = dict(
    optimizer=dict(type='AdamW', lr=4e-3, weight_decay=0.05, eps=1e-8, betas=(0.9, 0.999)),
    paramwise_cfg=dict(norm_decay_mult=0.0, bias_decay_mult=0.0, flat_decay_mult=0.0),
)

param_scheduler = [
    dict(
        type='LinearLR',
        start_factor=1e-3,
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

train_cfg = dict(by_epoch=True, max_epochs=90)
val_cfg = None
test_cfg = None

auto_scale_lr = dict(base_batch_size=4096)

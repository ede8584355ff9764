# The Conv2Former ImageNet-22k -> 1k fine-tuning schedule (paper): 30 epochs, AdamW, lr 5e-5 at a
# total batch of 512, weight decay 1e-8, cosine. The paper states no warm-up and no layer-wise
# decay for this stage (ConvNeXt's fine-tuning recipe, which it follows, has no warm-up either).
optim_wrapper = dict(
    optimizer=dict(type='AdamW', lr=5e-5, weight_decay=1e-8, eps=1e-8, betas=(0.9, 0.999)),
    paramwise_cfg=dict(norm_decay_mult=0.0, bias_decay_mult=0.0, flat_decay_mult=0.0),
)

param_scheduler = [
    dict(
        type='CosineAnnealingLR',
        eta_min=1e-6,
        by_epoch=True,
        begin=0,
        convert_to_iter_based=True),
]

train_cfg = dict(by_epoch=True, max_epochs=30, val_interval=1)
val_cfg = dict()
test_cfg = dict()

auto_scale_lr = dict(base_batch_size=512)

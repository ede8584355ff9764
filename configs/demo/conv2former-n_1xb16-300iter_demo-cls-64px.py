# Conv2Former-N (dims 64/128/256/512, depths 2/2/8/2, kernel 7: the paper's N) classifier trained
# from scratch on mmc2f's synthetic shapes (3 classes, 64x64), on CPU: 1 process x batch 16,
# 300 iterations, fp32, plain AdamW. mmpretrain ImageClassifier: mmc2f.Conv2Former ->
# mmc2f.Conv2FormerNeck (the authors' conv1x1 -> 1280, GELU, LN, GAP) -> LinearClsHead.
#   python tools/misc/make_demo_data.py --out data/demo --task cls
#   python tools/train.py configs/demo/conv2former-n_1xb16-300iter_demo-cls-64px.py
#   python tools/test.py configs/demo/conv2former-n_1xb16-300iter_demo-cls-64px.py \
#       work_dirs/conv2former-n_1xb16-300iter_demo-cls-64px/iter_300.pth
# Measured numbers: docs/demo_det_cls.md.
_base_ = [
    '../_base_/models/conv2former_in1k_cls.py',
    '../_base_/datasets/demo_cls.py',
    'mmpretrain::_base_/default_runtime.py',
]
custom_imports = dict(imports=['mmc2f.models'], allow_failed_imports=False)

num_classes = 3
model = dict(
    backbone=dict(arch='nano', drop_path_rate=0.0),
    neck=dict(in_channels=512),
    # plain cross-entropy and no Mixup/CutMix: a 300-iteration run on 180 images
    head=dict(num_classes=num_classes, loss=dict(_delete_=True, type='CrossEntropyLoss',
                                                 loss_weight=1.0)),
    train_cfg=dict(_delete_=True))

# CPU: fp32, plain OptimWrapper. The paper's AdamW (betas, weight decay 0.05, none on 1-D
# parameters) at a learning rate for a batch of 16 trained for a few hundred steps.
optim_wrapper = dict(
    type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.05),
    paramwise_cfg=dict(norm_decay_mult=0.0, bias_decay_mult=0.0, flat_decay_mult=0.0),
    clip_grad=dict(max_norm=5.0, norm_type=2))
max_iters = 300
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-3, by_epoch=False, begin=0, end=30),
    dict(type='CosineAnnealingLR', T_max=max_iters - 30, eta_min=1e-6, by_epoch=False,
         begin=30, end=max_iters)
]
train_cfg = dict(type='IterBasedTrainLoop', max_iters=max_iters, val_interval=max_iters)
val_cfg = dict()
test_cfg = dict()
default_hooks = dict(
    logger=dict(type='LoggerHook', interval=25),
    checkpoint=dict(type='CheckpointHook', by_epoch=False, interval=max_iters, max_keep_ckpts=1))
log_processor = dict(by_epoch=False)
randomness = dict(seed=0)

# Mask R-CNN + FPN with a small Conv2Former backbone, trained from scratch on mmc2f's synthetic
# COCO-format instance set (3 classes, 128x128 images), on CPU: 1 process x batch 2,
# 300 iterations, fp32, plain OptimWrapper with AdamW and layer-wise lr decay.
#   python tools/misc/make_demo_data.py --out data/demo --task det --num-train 400 --num-val 50
#   CONFIG=configs/demo/mask-rcnn_conv2former-pico_fpn_1xb2-300iter_demo-coco-128x128.py
#   python tools/train.py $CONFIG
#   python tools/test.py $CONFIG \
#       work_dirs/mask-rcnn_conv2former-pico_fpn_1xb2-300iter_demo-coco-128x128/iter_300.pth
# Evaluation: mmdet's CocoMetric (pycocotools), bbox and segm AP. Measured: docs/demo_det_cls.md.
#
# "pico" is not a paper variant: dims 32/64/128/256, depths 1/1/3/1, kernel 7 (Conv2Former-N is
# 64/128/256/512, 2/2/8/2, kernel 7), 1.6M backbone parameters, chosen so that a few minutes on
# one CPU core are enough. Everything else is mmdet's Mask R-CNN (RPNHead, Shared2FCBBoxHead,
# FCNMaskHead with 4 convs) with narrower layers (FPN 128 channels, fc 512) and smaller
# proposal / RoI budgets.
_base_ = [
    'mmdet::_base_/models/mask-rcnn_r50_fpn.py',
    'mmdet::_base_/default_runtime.py',
    '../_base_/datasets/demo_coco.py',
]
custom_imports = dict(imports=['mmc2f.models', 'mmc2f.engine'], allow_failed_imports=False)

num_classes = 3
dims = [32, 64, 128, 256]
fpn_channels = 128
model = dict(
    backbone=dict(
        _delete_=True,  # drop every ResNet keyword of the base
        type='mmc2f.Conv2Former',
        arch=dict(dims=dims, depths=[1, 1, 3, 1], kernel_size=7),
        out_indices=(0, 1, 2, 3),
        out_norms=True,  # a LayerNorm on each FPN input, as in the COCO configs
        drop_path_rate=0.0,
        layer_scale_init_value=1e-6,
        init_cfg=None),  # from scratch: the authors' trunc-normal init
    neck=dict(in_channels=dims, out_channels=fpn_channels),
    rpn_head=dict(in_channels=fpn_channels, feat_channels=fpn_channels),
    roi_head=dict(
        bbox_roi_extractor=dict(out_channels=fpn_channels),
        bbox_head=dict(in_channels=fpn_channels, fc_out_channels=512, num_classes=num_classes),
        mask_roi_extractor=dict(out_channels=fpn_channels),
        mask_head=dict(in_channels=fpn_channels, conv_out_channels=fpn_channels,
                       num_classes=num_classes)),
    # COCO's budgets (2000 / 1000 proposals, 512 RoIs per image) are far above what a 128x128
    # image with 1-4 objects needs
    train_cfg=dict(
        rpn=dict(sampler=dict(num=128)),
        rpn_proposal=dict(nms_pre=300, max_per_img=100),
        rcnn=dict(sampler=dict(num=64))),
    test_cfg=dict(
        rpn=dict(nms_pre=300, max_per_img=100),
        rcnn=dict(max_per_img=50)))

train_dataloader = dict(batch_size=2)

# CPU: fp32, plain OptimWrapper (AmpOptimWrapper needs a GPU). Layer-wise decay with the
# ConvNeXt rule (mmc2f's constructor; mmdet's refuses non-ConvNeXt backbones): depths[2] = 3
# needs num_layers >= 4; heads and neck get the full lr, the stem 0.9 ** 5 of it.
optim_wrapper = dict(
    type='OptimWrapper',
    constructor='mmc2f.LayerDecayOptimWrapperConstructor',
    optimizer=dict(type='AdamW', lr=1e-3, betas=(0.9, 0.999), weight_decay=0.05),
    paramwise_cfg=dict(decay_rate=0.9, decay_type='layer_wise', num_layers=4),
    clip_grad=dict(max_norm=10.0, norm_type=2))
max_iters = 300
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-3, by_epoch=False, begin=0, end=30),
    dict(type='CosineAnnealingLR', T_max=max_iters - 30, eta_min=1e-5, by_epoch=False,
         begin=30, end=max_iters)
]
train_cfg = dict(type='IterBasedTrainLoop', max_iters=max_iters, val_interval=max_iters)
val_cfg = dict(type='ValLoop')
test_cfg = dict(type='TestLoop')
default_hooks = dict(
    logger=dict(type='LoggerHook', interval=25, log_metric_by_epoch=False),
    checkpoint=dict(type='CheckpointHook', by_epoch=False, interval=max_iters, max_keep_ckpts=1))
log_processor = dict(by_epoch=False)
env_cfg = dict(cudnn_benchmark=False)
randomness = dict(seed=0)

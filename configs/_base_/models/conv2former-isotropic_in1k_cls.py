# mmpretrain ImageClassifier with an isotropic Conv2Former (IS / IB): one patch embedding to stride
# 16, 18 blocks at one width, then the same classifier as the hierarchical models
# (mmc2f.Conv2FormerNeck: conv1x1 -> 1280, GELU, LN, GAP; LinearClsHead 1280 -> classes).
# This base describes IS (width 320) with the 1-conv patch embedding; configs set arch, patch_embed,
# drop_path_rate and the neck's in_channels (IS 320, IB 640).
model = dict(
    type='ImageClassifier',
    backbone=dict(
        type='mmc2f.Conv2FormerIsotropic',
        arch='is',
        patch_embed='1conv',
        drop_path_rate=0.1,
        layer_scale_init_value=1e-6),
    neck=dict(type='mmc2f.Conv2FormerNeck', in_channels=320, out_channels=1280),
    head=dict(
        type='LinearClsHead',
        num_classes=1000,
        in_channels=1280,
        loss=dict(type='LabelSmoothLoss', label_smooth_val=0.1, mode='original'),
        init_cfg=None),
    init_cfg=dict(type='TruncNormal', layer=['Conv2d', 'Linear'], std=.02, bias=0.),
    train_cfg=dict(augments=[
        dict(type='Mixup', alpha=0.8),
        dict(type='CutMix', alpha=1.0),
    ]),
)

# mmpretrain ImageClassifier with the authors' Conv2Former classifier:
#   mmc2f.Conv2Former (last stage only) -> mmc2f.Conv2FormerNeck (conv1x1 -> 1280, GELU, LN, GAP)
#   -> LinearClsHead(1280 -> classes).
# This base describes Conv2Former-T on ImageNet-1k with the paper's regularisation: label smoothing
# 0.1, Mixup 0.8 / CutMix 1.0 (one of the two per batch), layer scale 1e-6. Sizes set arch,
# drop_path_rate and the neck's in_channels (the last stage's width: N 512, T/S 576, B 768, L 1024).
# The converter (tools/model_converters/conv2former_to_mmc2f.py) writes exactly this layout.
model = dict(
    type='ImageClassifier',
    backbone=dict(
        type='mmc2f.Conv2Former',
        arch='tiny',
        out_indices=(3, ),
        drop_path_rate=0.1,
        layer_scale_init_value=1e-6),
    neck=dict(type='mmc2f.Conv2FormerNeck', in_channels=576, out_channels=1280),
    head=dict(
        type='LinearClsHead',
        num_classes=1000,
        in_channels=1280,
        loss=dict(type='LabelSmoothLoss', label_smooth_val=0.1, mode='original'),
        init_cfg=None),
    # the authors' init: trunc-normal std 0.02 for every conv / linear weight, zero bias
    init_cfg=dict(type='TruncNormal', layer=['Conv2d', 'Linear'], std=.02, bias=0.),
    train_cfg=dict(augments=[
        dict(type='Mixup', alpha=0.8),
        dict(type='CutMix', alpha=1.0),
    ]),
)

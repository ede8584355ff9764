# mmpretrain ImageClassifier with SegNeXt's MSCAN encoder (mmc2f.MSCAN): the last stage's output
# (after its LayerNorm) -> global average pooling -> LinearClsHead: a VAN-style classifier (norm,
# mean over positions, one Linear) to pre-train the encoder on ImageNet-1k. This base describes
# MSCAN-T; configs set arch, drop_path_rate and the head's in_channels (T 256, S/B/L 512).
# BatchNorm (not mmseg's SyncBN default): 128 images per GPU give stable statistics.
model = dict(
    type='ImageClassifier',
    backbone=dict(
        type='mmc2f.MSCAN',
        arch='tiny',
        drop_path_rate=0.1,
        norm_cfg=dict(type='BN', requires_grad=True)),
    neck=dict(type='GlobalAveragePooling'),
    head=dict(
        type='LinearClsHead',
        num_classes=1000,
        in_channels=256,
        loss=dict(type='LabelSmoothLoss', label_smooth_val=0.1, mode='original'),
        init_cfg=None),
    init_cfg=dict(type='TruncNormal', layer=['Linear'], std=.02, bias=0.),
    train_cfg=dict(augments=[
        dict(type='Mixup', alpha=0.8),
        dict(type='CutMix', alpha=1.0),
    ]),
)

# mmc2f's synthetic classification set (ImageNet-style class folders), written by
#   python tools/misc/make_demo_data.py --out data/demo --task cls
# Layout: data/demo/cls/{train,val}/<class>/NNNNN.png, meta/{train,val}.txt ("<class>/<file>
# <label>"), classes.txt (one name per line, label order). 64x64 PNGs, one shape per image; the
# label is the shape's class (circle, square, triangle). Read with mmpretrain's CustomDataset and
# evaluated with mmpretrain's Accuracy.
dataset_type = 'CustomDataset'
data_root = 'data/demo/cls'
metainfo = dict(classes=('circle', 'square', 'triangle'))
data_preprocessor = dict(
    num_classes=3,
    # RGB mean / std of ImageNet, as the upstream configs
    mean=[123.675, 116.28, 103.53],
    std=[58.395, 57.12, 57.375],
    to_rgb=True)

train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='RandomResizedCrop', scale=64, crop_ratio_range=(0.6, 1.0), backend='pillow',
         interpolation='bicubic'),
    dict(type='RandomFlip', prob=0.5, direction='horizontal'),
    dict(type='RandomFlip', prob=0.5, direction='vertical'),
    dict(type='PackInputs'),
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='ResizeEdge', scale=64, edge='short', backend='pillow', interpolation='bicubic'),
    dict(type='CenterCrop', crop_size=64),
    dict(type='PackInputs'),
]
train_dataloader = dict(
    batch_size=16,
    num_workers=1,
    persistent_workers=True,
    sampler=dict(type='InfiniteSampler', shuffle=True),
    dataset=dict(
        type=dataset_type,
        data_root=data_root,
        metainfo=metainfo,
        ann_file='meta/train.txt',
        data_prefix='train',
        pipeline=train_pipeline))
val_dataloader = dict(
    batch_size=32,
    num_workers=1,
    persistent_workers=True,
    sampler=dict(type='DefaultSampler', shuffle=False),
    dataset=dict(
        type=dataset_type,
        data_root=data_root,
        metainfo=metainfo,
        ann_file='meta/val.txt',
        data_prefix='val',
        pipeline=test_pipeline))
test_dataloader = val_dataloader
# top-1 only: with 3 classes top-5 would always be 100%
val_evaluator = dict(type='Accuracy', topk=(1, ))
test_evaluator = val_evaluator

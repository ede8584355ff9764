# mmc2f's synthetic instance set in COCO format, written by
#   python tools/misc/make_demo_data.py --out data/demo --task det
# Layout: data/demo/det/{train,val}/NNNNN.jpg, annotations/instances_{train,val}.json (boxes and
# polygon masks; category ids 1..3 = circle, square, triangle). Read with mmdet's own CocoDataset;
# `metainfo.classes` must list the category names in the files (mmdet keeps only those).
# Evaluated with mmdet's CocoMetric (pycocotools): bbox and segm AP.
dataset_type = 'CocoDataset'
data_root = 'data/demo/det/'
metainfo = dict(
    classes=('circle', 'square', 'triangle'),
    palette=[(230, 25, 75), (60, 180, 75), (0, 130, 200)])
backend_args = None
img_scale = (128, 128)

train_pipeline = [
    dict(type='LoadImageFromFile', backend_args=backend_args),
    dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
    # light scale jitter + crop back to the image size (a small version of the "ms-crop" recipes)
    dict(type='RandomResize', scale=img_scale, ratio_range=(0.8, 1.25), keep_ratio=True),
    dict(type='RandomCrop', crop_type='absolute', crop_size=img_scale, recompute_bbox=True,
         allow_negative_crop=False),
    dict(type='FilterAnnotations', min_gt_bbox_wh=(2, 2)),
    dict(type='RandomFlip', prob=[0.25, 0.25], direction=['horizontal', 'vertical']),
    dict(type='PackDetInputs')
]
test_pipeline = [
    dict(type='LoadImageFromFile', backend_args=backend_args),
    # a no-op at the generator's 128x128, but it records the scale_factor the heads need
    dict(type='Resize', scale=img_scale, keep_ratio=True),
    dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
    dict(
        type='PackDetInputs',
        meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape', 'scale_factor'))
]
train_dataloader = dict(
    batch_size=2,
    num_workers=1,
    persistent_workers=True,
    sampler=dict(type='InfiniteSampler', shuffle=True),
    batch_sampler=dict(type='AspectRatioBatchSampler'),
    dataset=dict(
        type=dataset_type,
        data_root=data_root,
        metainfo=metainfo,
        ann_file='annotations/instances_train.json',
        data_prefix=dict(img='train/'),
        filter_cfg=dict(filter_empty_gt=True, min_size=8),
        pipeline=train_pipeline,
        backend_args=backend_args))
val_dataloader = dict(
    batch_size=1,
    num_workers=1,
    persistent_workers=True,
    drop_last=False,
    sampler=dict(type='DefaultSampler', shuffle=False),
    dataset=dict(
        type=dataset_type,
        data_root=data_root,
        metainfo=metainfo,
        ann_file='annotations/instances_val.json',
        data_prefix=dict(img='val/'),
        test_mode=True,
        pipeline=test_pipeline,
        backend_args=backend_args))
test_dataloader = val_dataloader
val_evaluator = dict(
    type='CocoMetric',
    ann_file=data_root + 'annotations/instances_val.json',
    metric=['bbox', 'segm'],
    format_only=False,
    backend_args=backend_args)
test_evaluator = val_evaluator

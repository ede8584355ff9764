# Stage 2 of 2 for Pascal VOC 2012: fine-tune the stage-1 model
# (segnext_mscan-t_1xb16-adamw-80k_voc12aug-512x512.py, trained on train + aug) for another 80k
# iterations on VOC 2012 trainval (2913 finely annotated images), then predict the test set for
# the evaluation server. Train stage 1 first (tools/train.py writes
# work_dirs/<config name>/iter_80000.pth).
_base_ = './segnext_mscan-t_1xb16-adamw-80k_voc12aug-512x512.py'

load_from = 'work_dirs/segnext_mscan-t_1xb16-adamw-80k_voc12aug-512x512/iter_80000.pth'  # noqa
# the whole model comes from `load_from`: no ImageNet initialisation needed
model = dict(backbone=dict(init_cfg=None))

dataset_type = 'PascalVOCDataset'
data_root = 'data/VOCdevkit/VOC2012'
train_dataloader = dict(
    dataset=dict(
        _delete_=True,
        type=dataset_type,
        data_root=data_root,
        data_prefix=dict(
            img_path='JPEGImages', seg_map_path='SegmentationClass'),
        ann_file='ImageSets/Segmentation/trainval.txt',
        pipeline={{_base_.train_pipeline}}))
# val stays on VOC 2012 val (now part of the training data: a sanity check, not a result)

# test: the VOC 2012 test images (VOC2012test.tar unpacked into the same VOC2012 folder) have no
# labels; predictions are written as PNGs for the evaluation server.
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=(2048, 512), keep_ratio=True),
    dict(type='PackSegInputs')
]
test_dataloader = dict(
    batch_size=1,
    num_workers=4,
    persistent_workers=True,
    sampler=dict(type='DefaultSampler', shuffle=False),
    dataset=dict(
        type=dataset_type,
        data_root=data_root,
        data_prefix=dict(
            img_path='JPEGImages', seg_map_path='SegmentationClass'),
        ann_file='ImageSets/Segmentation/test.txt',
        pipeline=test_pipeline))
test_evaluator = dict(
    type='IoUMetric',
    iou_metrics=['mIoU'],
    format_only=True,
    output_dir='work_dirs/format_results/segnext_mscan-t_voc12test')

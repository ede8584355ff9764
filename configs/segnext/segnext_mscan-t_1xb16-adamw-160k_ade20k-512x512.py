_base_ = [
    '../_base_/models/segnext_mscan.py',
    'mmseg::_base_/datasets/ade20k.py',
    'mmseg::_base_/default_runtime.py',
    '../_base_/schedules/segnext_adamw_160k.py',
]
crop_size = (512, 512)
data_preprocessor = dict(size=crop_size)
model = dict(
    data_preprocessor=data_preprocessor,
    decode_head=dict(num_classes=150),
    test_cfg=dict(mode='whole'))  # short side 512 (the dataset's test pipeline)

# 1 GPU x 16 images
train_dataloader = dict(batch_size=16)

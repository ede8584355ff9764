_base_ = [
    '../_base_/models/segnext_mscan.py',
    'mmseg::_base_/datasets/isaid.py',
    'mmseg::_base_/default_runtime.py',
    '../_base_/schedules/segnext_adamw_160k.py',
]
crop_size = (896, 896)
data_preprocessor = dict(size=crop_size)
model = dict(
    data_preprocessor=data_preprocessor,
    # 15 object classes + background
    decode_head=dict(num_classes=16),
    test_cfg=dict(mode='whole'))

# 1 GPU x 16 images
train_dataloader = dict(batch_size=16)

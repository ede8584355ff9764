_base_ = [
    '../_base_/models/segnext_mscan.py',
    'mmseg::_base_/datasets/pascal_context_59.py',
    'mmseg::_base_/default_runtime.py',
    '../_base_/schedules/segnext_adamw_80k.py',
]
crop_size = (480, 480)
data_preprocessor = dict(size=crop_size)
model = dict(
    data_preprocessor=data_preprocessor,
    # 59 classes: the dataset drops the background (reduce_zero_label=True)
    decode_head=dict(num_classes=59),
    # sliding window as mmseg's Pascal Context 59 configs
    test_cfg=dict(mode='slide', crop_size=crop_size, stride=(320, 320)))

# 1 GPU x 16 images
train_dataloader = dict(batch_size=16)

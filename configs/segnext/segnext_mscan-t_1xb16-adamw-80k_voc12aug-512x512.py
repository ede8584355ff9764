# Stage 1 of 2 for Pascal VOC 2012: 80k iterations on train + SBD aug (10582 images), evaluated
# on val. Stage 2 (segnext_mscan-t_1xb16-adamw-80k_voc12trainval-512x512.py) fine-tunes it
# on trainval.
_base_ = [
    '../_base_/models/segnext_mscan.py',
    'mmseg::_base_/datasets/pascal_voc12_aug.py',
    'mmseg::_base_/default_runtime.py',
    '../_base_/schedules/segnext_adamw_80k.py',
]
crop_size = (512, 512)
data_preprocessor = dict(size=crop_size)
model = dict(
    data_preprocessor=data_preprocessor,
    decode_head=dict(num_classes=21),
    test_cfg=dict(mode='whole'))

# 1 GPU x 16 images
train_dataloader = dict(batch_size=16)

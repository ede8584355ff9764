# MSCAN-L (SegNeXt's encoder) classification pre-training on ImageNet-1k. Paper: 83.9 top-1
# (backbone 44.6M params).
# Recipe (mmc2f's choice, the mmpretrain/ConvNeXt-style one used for Conv2Former here; the SegNeXt
# paper gives no classification recipe): 300 epochs, AdamW lr 1e-3 at a total batch of 1024 = 8 GPUs
# x 128, weight decay 0.05 (none on 1-D parameters), 5 warm-up epochs + cosine, RandAugment m9 mstd
# 0.5, Mixup 0.8, CutMix 1.0, random erasing 0.25, label smoothing 0.1, stochastic depth 0.3 (the
# SegNeXt value for this size), BatchNorm, no EMA.
_base_ = [
    '../_base_/models/mscan_in1k_cls.py',
    'mmpretrain::_base_/datasets/imagenet_bs64_swin_224.py',
    '../_base_/schedules/conv2former_in1k_adamw_300e.py',
    'mmpretrain::_base_/default_runtime.py',
]

custom_imports = dict(imports=['mmc2f.models'], allow_failed_imports=False)

model = dict(
    backbone=dict(arch='large', drop_path_rate=0.3),
    head=dict(in_channels=512))

# 8 GPUs x 128 images = 1024
train_dataloader = dict(batch_size=128)

# Conv2Former-B: ImageNet-22k pre-trained, fine-tuned on ImageNet-1k at 224: the paper's recipe
# (30 epochs, AdamW lr 5e-5 at a total batch of 512 = 8 GPUs x 64, weight decay 1e-8, cosine, no
# Mixup / CutMix; RandAugment m9 mstd 0.5, random erasing 0.25 and label smoothing 0.1 kept),
# stochastic depth 0.2. Paper: 86.2 top-1.
_base_ = [
    '../_base_/models/conv2former_in1k_cls.py',
    'mmpretrain::_base_/datasets/imagenet_bs64_swin_224.py',
    '../_base_/schedules/conv2former_in1k-ft_adamw_30e.py',
    'mmpretrain::_base_/default_runtime.py',
]

custom_imports = dict(imports=['mmc2f.models'], allow_failed_imports=False)

# The 22k checkpoint of conv2former-b_32xb128_in21k.py (mmpretrain layout): backbone and neck
# (conv1x1 -> 1280, LN) are loaded, the 21841-way classifier is replaced by a new 1000-way one.
pretrained = 'checkpoints/conv2former-b_in21k_mmc2f.pth'
model = dict(
    backbone=dict(
        arch='base',
        drop_path_rate=0.2,
        init_cfg=dict(type='Pretrained', checkpoint=pretrained, prefix='backbone.')),
    neck=dict(
        in_channels=768,
        init_cfg=dict(type='Pretrained', checkpoint=pretrained, prefix='neck.')),
    train_cfg=None)  # no Mixup / CutMix

# 8 GPUs x 64 images = 512
train_dataloader = dict(batch_size=64)

# Conv2Former-B: ImageNet-22k pre-trained, fine-tuned on ImageNet-1k at 224: the paper's recipe
# (30 epochs, AdamW lr 5e-5 at a total batch of 512 = 8 GPUs x 64, weight decay 1e-8, cosine, no
# Mixup / CutMix; RandAugment m9 mstd 0.5, random erasing 0.25 and label smoothing 0.1 kept),
# stochastic depth 0.2. Paper: 86.2 top-1.
_base_ = './conv2former-s_in21k-pre_8xb64_in1k.py'

# The 22k checkpoint of conv2former-b_32xb128_in21k.py (mmpretrain layout).
pretrained = 'checkpoints/conv2former-b_in21k_mmc2f.pth'
model = dict(
    backbone=dict(
        arch='base',
        drop_path_rate=0.2,
        init_cfg=dict(type='Pretrained', checkpoint=pretrained, prefix='backbone.')),
    neck=dict(
        in_channels=768,
        init_cfg=dict(type='Pretrained', checkpoint=pretrained, prefix='neck.')))

# Isotropic Conv2Former-IS (1conv patch embedding) on ImageNet-1k from scratch: the hierarchical
# models' 1k recipe (300 epochs, AdamW lr 1e-3 at a total batch of 1024 = 8 GPUs x 128, weight decay
# 0.05, 5 warm-up epochs + cosine, RandAugment m9 mstd 0.5, Mixup 0.8, CutMix 1.0, random erasing
# 0.25, label smoothing 0.1, layer scale 1e-6). Paper: 81.2 top-1 (23M params, 4.3G FLOPs).
# Not published, chosen here: the width (see mmc2f.Conv2FormerIsotropic), the kernel size (11) and
# stochastic depth 0.1.
_base_ = [
    '../_base_/models/conv2former-isotropic_in1k_cls.py',
    'mmpretrain::_base_/datasets/imagenet_bs64_swin_224.py',
    '../_base_/schedules/conv2former_in1k_adamw_300e.py',
    'mmpretrain::_base_/default_runtime.py',
]

custom_imports = dict(imports=['mmc2f.models'], allow_failed_imports=False)

model = dict(
    backbone=dict(arch='is', patch_embed='1conv', drop_path_rate=0.1),
    neck=dict(in_channels=320))

# 8 GPUs x 128 images = 1024
train_dataloader = dict(batch_size=128)

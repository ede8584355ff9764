# Conv2Former-B on ImageNet-1k from scratch: the paper's recipe (300 epochs, AdamW lr 1e-3 at a
# total batch of 1024 = 8 GPUs x 128, weight decay 0.05, 5 warm-up epochs + cosine, RandAugment m9
# mstd 0.5, Mixup 0.8, CutMix 1.0, random erasing 0.25, label smoothing 0.1, layer scale 1e-6,
# no EMA), stochastic depth 0.7 (the thesis table). Paper: 84.4 top-1 (90.0M params, 15.9G FLOPs
# at 224).
_base_ = [
    '../_base_/models/conv2former_in1k_cls.py',
    'mmpretrain::_base_/datasets/imagenet_bs64_swin_224.py',
    '../_base_/schedules/conv2former_in1k_adamw_300e.py',
    'mmpretrain::_base_/default_runtime.py',
]

custom_imports = dict(imports=['mmc2f.models'], allow_failed_imports=False)

model = dict(
    backbone=dict(arch='base', drop_path_rate=0.7),
    neck=dict(in_channels=768))

# 8 GPUs x 128 images = 1024
train_dataloader = dict(batch_size=128)

# Conv2Former-S pre-training on ImageNet-22k (21841 classes): the paper's recipe (90 epochs, AdamW
# lr 4e-3 at a total batch of 4096 = 32 GPUs x 128, weight decay 0.05, 5 warm-up epochs + cosine,
# the ImageNet-1k augmentation: RandAugment m9 mstd 0.5, Mixup 0.8, CutMix 1.0, random erasing 0.25,
# label smoothing 0.1), stochastic depth 0.0. No validation set; fine-tune the result with
# conv2former-s_in21k-pre_8xb64_in1k*.py.
_base_ = [
    '../_base_/models/conv2former_in1k_cls.py',
    'mmpretrain::_base_/datasets/imagenet_bs64_swin_224.py',
    '../_base_/schedules/conv2former_in21k_adamw_90e.py',
    'mmpretrain::_base_/default_runtime.py',
]

custom_imports = dict(imports=['mmc2f.models'], allow_failed_imports=False)

num_classes = 21841
model = dict(
    backbone=dict(arch='small', drop_path_rate=0.0),
    neck=dict(in_channels=576),
    head=dict(num_classes=num_classes))

data_preprocessor = dict(num_classes=num_classes)
# 32 GPUs x 128 images = 4096; the ImageNet-1k augmentation on mmpretrain's ImageNet21k dataset
train_dataloader = dict(
    batch_size=128,
    dataset=dict(type='ImageNet21k', data_root='data/imagenet21k', split='train'))
val_dataloader = None
val_evaluator = None
test_dataloader = None
test_evaluator = None

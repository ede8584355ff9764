# Conv2Former-B pre-training on ImageNet-22k (21841 classes): the paper's recipe (90 epochs, AdamW
# lr 4e-3 at a total batch of 4096 = 32 GPUs x 128, weight decay 0.05, 5 warm-up epochs + cosine,
# the ImageNet-1k augmentation: RandAugment m9 mstd 0.5, Mixup 0.8, CutMix 1.0, random erasing 0.25,
# label smoothing 0.1), stochastic depth 0.1. No validation set; fine-tune the result with
# conv2former-b_in21k-pre_8xb64_in1k*.py.
_base_ = './conv2former-s_32xb128_in21k.py'

model = dict(backbone=dict(arch='base', drop_path_rate=0.1), neck=dict(in_channels=768))

# Conv2Former-L: ImageNet-22k pre-trained, fine-tuned on ImageNet-1k at 384x384: the paper's
# recipe (30 epochs, AdamW lr 5e-5 at a total batch of 512 = 8 GPUs x 64, weight decay 1e-8,
# cosine, no Mixup / CutMix), stochastic depth 0.3. Test: the whole image resized to 384x384
# (crop ratio 1.0, as ConvNeXt at 384). Paper: 87.7 top-1.
_base_ = './conv2former-l_in21k-pre_8xb64_in1k.py'

model = dict(backbone=dict(drop_path_rate=0.3))

# the data preprocessor's RGB mean / std, in BGR order (the pipeline works on BGR images)
bgr_mean = [103.53, 116.28, 123.675]
bgr_std = [57.375, 57.12, 58.395]
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='RandomResizedCrop', scale=384, backend='pillow', interpolation='bicubic'),
    dict(type='RandomFlip', prob=0.5, direction='horizontal'),
    dict(
        type='RandAugment',
        policies='timm_increasing',
        num_policies=2,
        total_level=10,
        magnitude_level=9,
        magnitude_std=0.5,
        hparams=dict(pad_val=[round(x) for x in bgr_mean], interpolation='bicubic')),
    dict(
        type='RandomErasing',
        erase_prob=0.25,
        mode='rand',
        min_area_ratio=0.02,
        max_area_ratio=1 / 3,
        fill_color=bgr_mean,
        fill_std=bgr_std),
    dict(type='PackInputs'),
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=384, backend='pillow', interpolation='bicubic'),
    dict(type='PackInputs'),
]
train_dataloader = dict(dataset=dict(pipeline=train_pipeline))
val_dataloader = dict(dataset=dict(pipeline=test_pipeline))
test_dataloader = dict(dataset=dict(pipeline=test_pipeline))

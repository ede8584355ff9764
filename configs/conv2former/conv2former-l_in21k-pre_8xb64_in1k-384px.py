# Conv2Former-L: ImageNet-22k pre-trained, fine-tuned on ImageNet-1k at 384x384: the paper's
# recipe (30 epochs, AdamW lr 5e-5 at a total batch of 512 = 8 GPUs x 64, weight decay 1e-8,
# cosine, no Mixup / CutMix), stochastic depth 0.3. Test: the whole image resized to 384x384
# (crop ratio 1.0, as ConvNeXt at 384). Paper: 87.7 top-1.
_base_ = './conv2former-b_in21k-pre_8xb64_in1k-384px.py'

# Conv2Former-L instead of B (the 384 pipeline is B-384's).
pretrained = 'checkpoints/conv2former-l_in21k_mmc2f.pth'
model = dict(
    backbone=dict(
        arch='large',
        drop_path_rate=0.3,
        init_cfg=dict(type='Pretrained', checkpoint=pretrained, prefix='backbone.')),
    neck=dict(
        in_channels=1024,
        init_cfg=dict(type='Pretrained', checkpoint=pretrained, prefix='neck.')))

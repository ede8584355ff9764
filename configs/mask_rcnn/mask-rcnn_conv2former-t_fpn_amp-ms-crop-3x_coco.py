# Mask R-CNN + FPN with a Conv2Former-T backbone, COCO, 3x schedule (36 epochs), multi-scale + crop
# augmentation, AdamW, AMP, layer-wise lr decay. Paper: box AP 48.0, mask AP 43.0.
#
# Everything except the backbone, the FPN input widths and the lr-decay constructor is inherited
# from mmdet 3.3's ConvNeXt-T recipe: 8 GPUs x 2 images, AdamW lr 1e-4, betas (0.9, 0.999),
# weight decay 0.05, layer-wise decay 0.95, 1000-iteration linear warm-up, steps at epochs 27 / 33.
_base_ = 'mmdet::convnext/mask-rcnn_convnext-t-p4-w7_fpn_amp-ms-crop-3x_coco.py'

# mmc2f types are found through the 'mmc2f.' prefix; importing them here makes it explicit.
custom_imports = dict(imports=['mmc2f.models', 'mmc2f.engine'], allow_failed_imports=False)

# ImageNet-1k Conv2Former-T, converted from the authors' release (not downloadable here):
#   python tools/model_converters/conv2former_to_mmc2f.py conv2former_t.pth \
#       checkpoints/conv2former-t_in1k_mmc2f.pth
checkpoint_file = 'checkpoints/conv2former-t_in1k_mmc2f.pth'

model = dict(
    backbone=dict(
        _delete_=True,  # drop every ConvNeXt keyword of the base
        type='mmc2f.Conv2Former',
        arch='tiny',  # dims 72/144/288/576, depths 3/3/12/3, kernel 11
        out_indices=(0, 1, 2, 3),
        out_norms=True,  # a LayerNorm on each FPN input, as ConvNeXt's detection backbone
        drop_path_rate=0.2,
        layer_scale_init_value=1e-6,
        init_cfg=dict(type='Pretrained', checkpoint=checkpoint_file, prefix='backbone.')),
    neck=dict(in_channels=[72, 144, 288, 576]))

# mmdet's constructor only accepts class names containing "ConvNeXt"; mmc2f's reads the layout.
# Conv2Former-T's 12 third-stage blocks need num_layers >= 7 (ConvNeXt-T: 6).
optim_wrapper = dict(
    constructor='mmc2f.LayerDecayOptimWrapperConstructor',
    paramwise_cfg=dict(_delete_=True, decay_rate=0.95, decay_type='layer_wise', num_layers=7))

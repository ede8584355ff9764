# UperNet with a Conv2Former backbone (mmc2f.Conv2Former), following mmseg's UperNet-ConvNeXt base.
# This base describes Conv2Former-T; the ADE20K configs set the arch, drop path, widths and weights.
#
# ImageNet weights are not downloaded automatically: convert the authors' release with
#   python tools/model_converters/conv2former_to_mmc2f.py <conv2former_t.pth> \
#       checkpoints/conv2former-t_in1k_mmc2f.pth
# The converted checkpoint is a whole classifier (keys `backbone.*`, `neck.*`, `head.*`), hence
# prefix='backbone.' below.
# mmc2f types resolve through the 'mmc2f.' prefix alone; importing them here makes it explicit.
custom_imports = dict(imports=['mmc2f.models', 'mmc2f.engine'], allow_failed_imports=False)
norm_cfg = dict(type='SyncBN', requires_grad=True)
data_preprocessor = dict(
    type='SegDataPreProcessor',
    mean=[123.675, 116.28, 103.53],
    std=[58.395, 57.12, 57.375],
    bgr_to_rgb=True,
    pad_val=0,
    seg_pad_val=255,
    size=(512, 512))
model = dict(
    type='EncoderDecoder',
    data_preprocessor=data_preprocessor,
    pretrained=None,
    backbone=dict(
        type='mmc2f.Conv2Former',
        arch='tiny',  # dims 72,144,288,576; depths 3,3,12,3
        out_indices=(0, 1, 2, 3),
        # a LayerNorm on each UperNet input, as ConvNeXt's dense-prediction backbone (new layers,
        # not in the classification checkpoints)
        out_norms=True,
        drop_path_rate=0.2,
        layer_scale_init_value=1e-6,
        init_cfg=dict(
            type='Pretrained',
            checkpoint='checkpoints/conv2former-t_in1k_mmc2f.pth',
            prefix='backbone.')),
    decode_head=dict(
        type='UPerHead',
        in_channels=[72, 144, 288, 576],
        in_index=[0, 1, 2, 3],
        pool_scales=(1, 2, 3, 6),
        channels=512,
        dropout_ratio=0.1,
        num_classes=150,
        norm_cfg=norm_cfg,
        align_corners=False,
        loss_decode=dict(
            type='CrossEntropyLoss', use_sigmoid=False, loss_weight=1.0)),
    auxiliary_head=dict(
        type='FCNHead',
        in_channels=288,  # stage 3 (stride 16)
        in_index=2,
        channels=256,
        num_convs=1,
        concat_input=False,
        dropout_ratio=0.1,
        num_classes=150,
        norm_cfg=norm_cfg,
        align_corners=False,
        loss_decode=dict(
            type='CrossEntropyLoss', use_sigmoid=False, loss_weight=0.4)),
    train_cfg=dict(),
    test_cfg=dict(mode='whole'))

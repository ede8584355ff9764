# SegNeXt: MSCAN encoder + light Hamburger decoder (mmc2f implementations).
# This base describes SegNeXt-T; the per-dataset configs set num_classes and the crop size,
# the S/B/L configs change the backbone arch, the decoder width and the NMF rank.
#
# ImageNet-1k MSCAN weights are not downloaded automatically: convert the authors' release with
#   python tools/model_converters/mscan_to_mmc2f.py <mscan_t.pth> checkpoints/mscan_t_mmc2f.pth
# (keys as mmseg's MSCAN, no prefix). Override `model.backbone.init_cfg` to point elsewhere.
# mmc2f types resolve through the 'mmc2f.' prefix alone; importing them here makes it explicit.
custom_imports = dict(imports=['mmc2f.models'], allow_failed_imports=False)
norm_cfg = dict(type='BN', requires_grad=True)  # 1 GPU x 16: mmseg found SyncBN hurt
ham_norm_cfg = dict(type='GN', num_groups=32, requires_grad=True)
data_preprocessor = dict(
    type='SegDataPreProcessor',
    mean=[123.675, 116.28, 103.53],
    std=[58.395, 57.12, 57.375],
    bgr_to_rgb=True,
    pad_val=0,
    seg_pad_val=255,
    size=(512, 512),
    test_cfg=dict(size_divisor=32))
model = dict(
    type='EncoderDecoder',
    data_preprocessor=data_preprocessor,
    pretrained=None,
    backbone=dict(
        type='mmc2f.MSCAN',
        arch='tiny',  # dims 32,64,160,256; depths 3,3,5,2
        drop_rate=0.0,
        drop_path_rate=0.1,
        norm_cfg=norm_cfg,
        init_cfg=dict(
            type='Pretrained', checkpoint='checkpoints/mscan_t_mmc2f.pth')),
    decode_head=dict(
        type='mmc2f.LightHamHead',
        in_channels=[64, 160, 256],  # stages 2-4 (strides 8/16/32)
        in_index=[1, 2, 3],
        channels=256,
        ham_channels=256,
        ham_kwargs=dict(
            MD_S=1,
            MD_R=16,
            train_steps=6,
            eval_steps=7,
            inv_t=100,  # overridden by the NMF (temperature 1), kept for mmseg parity
            rand_init=True,
            # mmc2f: eval-time NMF bases drawn from a fixed seed, so predictions (and mIoU) are
            # reproducible from run to run; training keeps random bases. None = mmseg's behaviour.
            eval_seed=0),
        dropout_ratio=0.1,
        num_classes=150,
        norm_cfg=ham_norm_cfg,
        align_corners=False,
        loss_decode=dict(
            type='CrossEntropyLoss', use_sigmoid=False, loss_weight=1.0)),
    train_cfg=dict(),
    test_cfg=dict(mode='whole'))

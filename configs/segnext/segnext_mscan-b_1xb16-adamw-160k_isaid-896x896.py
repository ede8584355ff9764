# SegNeXt-B: dims 64,128,320,512; depths 3,3,12,3; decoder 512 channels, NMF rank 64
# (the authors' B; mmseg's B config inherits rank 16 from its T config).
_base_ = './segnext_mscan-t_1xb16-adamw-160k_isaid-896x896.py'

model = dict(
    backbone=dict(
        arch='base',
        init_cfg=dict(
            type='Pretrained',
            checkpoint='checkpoints/mscan_b_mmc2f.pth')),
    decode_head=dict(
        in_channels=[128, 320, 512],
        channels=512,
        ham_channels=512,
        ham_kwargs=dict(MD_R=64)))

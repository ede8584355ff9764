# SegNeXt-S: dims 64,128,320,512; depths 2,2,4,2; decoder 256 channels, NMF rank 16.
_base_ = './segnext_mscan-t_1xb16-adamw-80k_pascal-context-59-480x480.py'

model = dict(
    backbone=dict(
        arch='small',
        init_cfg=dict(
            type='Pretrained',
            checkpoint='checkpoints/mscan_s_mmc2f.pth')),
    decode_head=dict(
        in_channels=[128, 320, 512]))

# SegNeXt-L: dims 64,128,320,512; depths 3,5,27,3; drop path 0.3; decoder 1024 channels, NMF rank 64
# (the authors' L; mmseg's L config inherits rank 16 from its T config).
_base_ = './segnext_mscan-t_1xb16-adamw-160k_isaid-896x896.py'

model = dict(
    backbone=dict(
        arch='large',
        drop_path_rate=0.3,
        init_cfg=dict(
            type='Pretrained',
            checkpoint='checkpoints/mscan_l_mmc2f.pth')),
    decode_head=dict(
        in_channels=[128, 320, 512],
        channels=1024,
        ham_channels=1024,
        ham_kwargs=dict(MD_R=64)))

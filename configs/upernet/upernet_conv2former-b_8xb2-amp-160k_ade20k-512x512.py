# UperNet + Conv2Former-B on ADE20K (paper: 51.0 mIoU, ss); IN-1k weights, drop path 0.5.
_base_ = './upernet_conv2former-t_8xb2-amp-160k_ade20k-512x512.py'
model = dict(
    backbone=dict(
        arch='base',  # dims 96,192,384,768; depths 4,4,34,4
        drop_path_rate=0.5,
        init_cfg=dict(
            type='Pretrained',
            checkpoint='checkpoints/conv2former-b_in1k_mmc2f.pth',
            prefix='backbone.')),
    decode_head=dict(in_channels=[96, 192, 384, 768]),
    auxiliary_head=dict(in_channels=384))

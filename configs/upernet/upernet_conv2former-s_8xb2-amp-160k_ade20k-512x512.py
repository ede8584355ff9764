# UperNet + Conv2Former-S on ADE20K (paper: 50.3 mIoU, ss); IN-1k weights, drop path 0.3.
_base_ = './upernet_conv2former-t_8xb2-amp-160k_ade20k-512x512.py'
model = dict(
    backbone=dict(
        arch='small',  # dims 72,144,288,576; depths 4,4,32,4
        drop_path_rate=0.3,
        init_cfg=dict(
            type='Pretrained',
            checkpoint='checkpoints/conv2former-s_in1k_mmc2f.pth',
            prefix='backbone.')))

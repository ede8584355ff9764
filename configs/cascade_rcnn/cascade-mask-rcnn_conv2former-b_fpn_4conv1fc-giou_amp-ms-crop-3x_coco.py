# Cascade Mask R-CNN + FPN, Conv2Former-B, COCO 3x. Paper: box AP 52.8, mask AP 45.6.
# Same recipe as the T config; B: widths 96/192/384/768, depths 4/4/34/4.
_base_ = './cascade-mask-rcnn_conv2former-t_fpn_4conv1fc-giou_amp-ms-crop-3x_coco.py'

checkpoint_file = 'checkpoints/conv2former-b_in1k_mmc2f.pth'

model = dict(
    backbone=dict(
        arch='base',
        drop_path_rate=0.8,
        init_cfg=dict(type='Pretrained', checkpoint=checkpoint_file, prefix='backbone.')),
    neck=dict(in_channels=[96, 192, 384, 768]))

# 34 third-stage blocks -> ids 3..14, the last stage 15: num_layers >= 15.
optim_wrapper = dict(paramwise_cfg=dict(num_layers=15))

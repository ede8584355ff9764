# Cascade Mask R-CNN + FPN, Conv2Former-S, COCO 3x. Paper: box AP 52.8, mask AP 45.7.
# Same recipe as the T config; S has T's widths (72/144/288/576) and depths 4/4/32/4.
_base_ = './cascade-mask-rcnn_conv2former-t_fpn_4conv1fc-giou_amp-ms-crop-3x_coco.py'

checkpoint_file = 'checkpoints/conv2former-s_in1k_mmc2f.pth'

model = dict(
    backbone=dict(
        arch='small',
        drop_path_rate=0.5,
        init_cfg=dict(type='Pretrained', checkpoint=checkpoint_file, prefix='backbone.')))

# 32 third-stage blocks -> ids 3..13, the last stage 14: num_layers >= 14.
optim_wrapper = dict(paramwise_cfg=dict(num_layers=14))

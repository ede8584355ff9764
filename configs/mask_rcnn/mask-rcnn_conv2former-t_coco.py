_base_ = ['./mask-rcnn_conv2former-t_fpn_amp-ms-crop-3x_coco.py']

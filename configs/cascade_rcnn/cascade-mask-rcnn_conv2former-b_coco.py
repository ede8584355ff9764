_base_ = ['./cascade-mask-rcnn_conv2former-b_fpn_4conv1fc-giou_amp-ms-crop-3x_coco.py']

# UperNet + Conv2Former-L on ADE20K at 640x640 (paper: 54.3 mIoU, ss): IN-22k pre-trained weights,
# drop path 0.4, sliding-window test 640/426. Same recipe as the T/S/B configs except, as mmseg's
# UperNet-ConvNeXt-L (640) config, num_layers=12 for the stage-wise lr decay.
# Its own root config (not a delta of the T config) because the dataset base differs (640 crops).
_base_ = [
    '../_base_/models/upernet_conv2former.py',
    'mmseg::_base_/datasets/ade20k_640x640.py',
    'mmseg::_base_/default_runtime.py',
    'mmseg::_base_/schedules/schedule_160k.py',
]
crop_size = (640, 640)
data_preprocessor = dict(size=crop_size)
model = dict(
    data_preprocessor=data_preprocessor,
    backbone=dict(
        arch='large',  # dims 128,256,512,1024; depths 4,4,48,4
        drop_path_rate=0.4,
        # IN-22k pre-training: the authors released L only as 22k -> 1k (224px); converted with
        # tools/model_converters/conv2former_to_mmc2f.py to this path. A checkpoint of
        # configs/conv2former/conv2former-l_32xb128_in21k.py (pure 22k) works the same way.
        init_cfg=dict(
            type='Pretrained',
            checkpoint='checkpoints/conv2former-l_in21k-pre_in1k_mmc2f.pth',
            prefix='backbone.')),
    decode_head=dict(in_channels=[128, 256, 512, 1024], num_classes=150),
    auxiliary_head=dict(in_channels=512, num_classes=150),
    test_cfg=dict(mode='slide', crop_size=crop_size, stride=(426, 426)))

optim_wrapper = dict(
    _delete_=True,
    type='AmpOptimWrapper',
    optimizer=dict(
        type='AdamW', lr=0.0001, betas=(0.9, 0.999), weight_decay=0.05),
    paramwise_cfg=dict(decay_rate=0.9, decay_type='stage_wise', num_layers=12),
    constructor='mmc2f.LayerDecayOptimWrapperConstructor',
    loss_scale='dynamic')

param_scheduler = [
    dict(
        type='LinearLR', start_factor=1e-6, by_epoch=False, begin=0, end=1500),
    dict(
        type='PolyLR',
        power=1.0,
        begin=1500,
        end=160000,
        eta_min=0.0,
        by_epoch=False)
]

# 8 GPUs x 2 images
train_dataloader = dict(batch_size=2)
val_dataloader = dict(batch_size=1)
test_dataloader = val_dataloader

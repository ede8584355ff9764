# SegNeXt-T (MSCAN-T encoder + light Hamburger decoder) trained from scratch on mmc2f's synthetic
# shapes set, on CPU: 1 process x batch 8, 400 iterations, 128x128 images, fp32, plain AdamW.
#   python tools/misc/make_demo_data.py --out data/demo --task seg
#   python tools/train.py configs/demo/segnext_mscan-t_1xb8-adamw-400iter_demo-seg-128x128.py
# or all in one: bash tools/run_demo.sh  (docs/demo.md)
_base_ = ['mmseg::_base_/default_runtime.py', '../_base_/datasets/demo_seg.py']

crop_size = (128, 128)
num_classes = 4
data_preprocessor = dict(
    type='SegDataPreProcessor',
    mean=[123.675, 116.28, 103.53],
    std=[58.395, 57.12, 57.375],
    bgr_to_rgb=True,
    pad_val=0,
    seg_pad_val=255,
    size=crop_size,
    test_cfg=dict(size_divisor=32))
model = dict(
    type='EncoderDecoder',
    data_preprocessor=data_preprocessor,
    pretrained=None,
    # MSCAN-T (dims 32/64/160/256, depths 3/3/5/2), from scratch: no init_cfg, no drop path.
    backbone=dict(
        type='mmc2f.MSCAN',
        arch='tiny',
        drop_rate=0.0,
        drop_path_rate=0.0,
        act_cfg=dict(type='GELU'),
        norm_cfg=dict(type='BN', requires_grad=True),
        init_cfg=None),
    decode_head=dict(
        type='mmc2f.LightHamHead',
        in_channels=[64, 160, 256],
        in_index=[1, 2, 3],
        channels=256,
        ham_channels=256,
        dropout_ratio=0.1,
        num_classes=num_classes,
        norm_cfg=dict(type='GN', num_groups=32, requires_grad=True),
        align_corners=False,
        loss_decode=dict(type='CrossEntropyLoss', use_sigmoid=False, loss_weight=1.0),
        # eval_seed: the NMF's random bases are drawn from a fixed seed at test time, so that
        # tools/test.py gives the same mIoU on every run.
        ham_kwargs=dict(
            MD_S=1, MD_R=16, train_steps=6, eval_steps=7, inv_t=100, rand_init=True,
            eval_seed=0)),
    train_cfg=dict(),
    test_cfg=dict(mode='whole'))

# CPU: fp32, plain OptimWrapper (AmpOptimWrapper needs a GPU).
optim_wrapper = dict(
    type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=0.002, betas=(0.9, 0.999), weight_decay=0.01),
    paramwise_cfg=dict(custom_keys={
        'pos_block': dict(decay_mult=0.),
        'norm': dict(decay_mult=0.)
    }))
max_iters = 400
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-3, by_epoch=False, begin=0, end=40),
    dict(type='PolyLR', power=1.0, eta_min=0.0, by_epoch=False, begin=40, end=max_iters)
]
train_cfg = dict(type='IterBasedTrainLoop', max_iters=max_iters, val_interval=max_iters)
val_cfg = dict(type='ValLoop')
test_cfg = dict(type='TestLoop')
default_hooks = dict(
    timer=dict(type='IterTimerHook'),
    logger=dict(type='LoggerHook', interval=50, log_metric_by_epoch=False),
    param_scheduler=dict(type='ParamSchedulerHook'),
    checkpoint=dict(type='CheckpointHook', by_epoch=False, interval=max_iters, max_keep_ckpts=1),
    sampler_seed=dict(type='DistSamplerSeedHook'),
    # interval=1: with tools/test.py --show-dir every test image is drawn.
    visualization=dict(type='SegVisualizationHook', interval=1))
# Prediction overlays (tools/test.py --show-dir): class colours blended 50% over the image.
visualizer = dict(type='SegLocalVisualizer', alpha=0.5)
env_cfg = dict(cudnn_benchmark=False)
randomness = dict(seed=0)

# A tiny SegNeXt on the synthetic demo set (32x32 crops, one block per stage): the shared base of the
# end-to-end tool tests. Tests inherit it, point the dataloaders at their data and state deltas only.
_base_ = ['../../configs/demo/segnext_mscan-t_1xb8-adamw-400iter_demo-seg-128x128.py']
crop_size = (32, 32)
model = dict(
    data_preprocessor=dict(size=crop_size),
    backbone=dict(embed_dims=[8, 16, 32, 32], depths=[1, 1, 1, 1], mlp_ratios=[2, 2, 2, 2]),
    decode_head=dict(in_channels=[16, 32, 32], channels=16, ham_channels=16,
                     norm_cfg=dict(type='GN', num_groups=8, requires_grad=True),
                     ham_kwargs=dict(MD_R=4, train_steps=2, eval_steps=2)))
train_dataloader = dict(batch_size=2, num_workers=0, persistent_workers=False)
val_dataloader = dict(num_workers=0, persistent_workers=False)
test_dataloader = val_dataloader
param_scheduler = [dict(type='ConstantLR', factor=1.0, by_epoch=False, begin=0, end=100)]
default_hooks = dict(logger=dict(interval=1))

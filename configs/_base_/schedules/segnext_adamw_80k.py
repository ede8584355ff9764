# SegNeXt optimisation recipe, 80k iterations: AdamW lr 6e-5, betas (0.9, 0.999), weight decay
# 0.01; no decay for norm layers and `pos_block`, decode head lr x10 (the `head` key), fp32;
# linear warm-up over 1500 iterations, then poly decay with power 1.0 (the authors' configs).
_base_ = 'mmseg::_base_/schedules/schedule_80k.py'

optim_wrapper = dict(
    _delete_=True,
    type='OptimWrapper',
    optimizer=dict(
        type='AdamW', lr=0.00006, betas=(0.9, 0.999), weight_decay=0.01),
    paramwise_cfg=dict(
        custom_keys={
            'pos_block': dict(decay_mult=0.),
            'norm': dict(decay_mult=0.),
            'head': dict(lr_mult=10.)
        }))

param_scheduler = [
    dict(
        type='LinearLR', start_factor=1e-6, by_epoch=False, begin=0, end=1500),
    dict(
        type='PolyLR',
        power=1.0,
        begin=1500,
        end=80000,
        eta_min=0.0,
        by_epoch=False)
]

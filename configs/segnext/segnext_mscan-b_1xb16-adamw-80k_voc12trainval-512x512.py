# SegNeXt-B: dims 64,128,320,512; depths 3,3,12,3; decoder 512 channels, NMF rank 64
# (the authors' B; mmseg's B config inherits rank 16 from its T config).
_base_ = './segnext_mscan-t_1xb16-adamw-80k_voc12trainval-512x512.py'

load_from = 'work_dirs/segnext_mscan-b_1xb16-adamw-80k_voc12aug-512x512/iter_80000.pth'  # noqa
model = dict(
    backbone=dict(
        arch='base'),
    decode_head=dict(
        in_channels=[128, 320, 512],
        channels=512,
        ham_channels=512,
        ham_kwargs=dict(MD_R=64)))
test_evaluator = dict(
    output_dir='work_dirs/format_results/segnext_mscan-b_voc12test')

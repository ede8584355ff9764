# SegNeXt-S: dims 64,128,320,512; depths 2,2,4,2; decoder 256 channels, NMF rank 16.
_base_ = './segnext_mscan-t_1xb16-adamw-80k_voc12trainval-512x512.py'

load_from = 'work_dirs/segnext_mscan-s_1xb16-adamw-80k_voc12aug-512x512/iter_80000.pth'  # noqa
model = dict(
    backbone=dict(
        arch='small'),
    decode_head=dict(
        in_channels=[128, 320, 512]))
test_evaluator = dict(
    output_dir='work_dirs/format_results/segnext_mscan-s_voc12test')

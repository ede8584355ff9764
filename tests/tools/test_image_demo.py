"""demo/image_demo.py: segmentation, detection and classification on one image, on CPU.

Tiny models (a small SegNeXt, a Mask R-CNN with a small Conv2Former backbone, a small
Conv2Former classifier) get random weights and are saved as ``{'state_dict', 'meta'}``
checkpoints; the demo runs as a subprocess on a generated image.
"""
import importlib.util
import os
import os.path as osp
import re
import subprocess
import sys

import cv2
import numpy as np
import pytest
import torch

REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
DEMO = osp.join(REPO, 'demo', 'image_demo.py')
CONFIGS = osp.join(REPO, 'configs')

TINY = {
    'seg': """
_base_ = [{base!r}]
model = dict(
    backbone=dict(embed_dims=[8, 16, 32, 32], depths=[1, 1, 1, 1], mlp_ratios=[2, 2, 2, 2]),
    decode_head=dict(in_channels=[16, 32, 32], channels=16, ham_channels=16,
                     norm_cfg=dict(type='GN', num_groups=8, requires_grad=True),
                     ham_kwargs=dict(MD_R=4, train_steps=2, eval_steps=2)))
""",
    'det': """
_base_ = [{base!r}]
c = 32
model = dict(
    backbone=dict(_delete_=True, type='mmc2f.Conv2Former', out_indices=(0, 1, 2, 3),
                  out_norms=True, arch=dict(dims=[16, 32, 48, 64], depths=[1, 1, 1, 1])),
    neck=dict(in_channels=[16, 32, 48, 64], out_channels=c),
    rpn_head=dict(in_channels=c, feat_channels=c),
    roi_head=dict(
        bbox_roi_extractor=dict(out_channels=c),
        bbox_head=dict(in_channels=c, fc_out_channels=64, num_classes=3),
        mask_roi_extractor=dict(out_channels=c),
        mask_head=dict(in_channels=c, conv_out_channels=c, num_classes=3)))
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=(128, 128), keep_ratio=True),
    dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
    dict(type='PackDetInputs',
         meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape', 'scale_factor'))]
test_dataloader = dict(dataset=dict(pipeline=test_pipeline))
""",
    'cls': """
_base_ = [{base!r}]
model = dict(
    backbone=dict(_delete_=True, type='mmc2f.Conv2Former', out_indices=(3, ),
                  arch=dict(dims=[16, 32, 48, 64], depths=[1, 1, 1, 1])),
    neck=dict(in_channels=64, out_channels=96),
    head=dict(num_classes=6, in_channels=96))
test_dataloader = dict(dataset=dict(pipeline=[
    dict(type='LoadImageFromFile'),
    dict(type='ResizeEdge', scale=72, edge='short'),
    dict(type='CenterCrop', crop_size=64),
    dict(type='PackInputs')]))
""",
}
BASES = {
    'seg': osp.join(CONFIGS, 'demo', 'segnext_mscan-t_1xb8-adamw-400iter_demo-seg-128x128.py'),
    'det': osp.join(CONFIGS, 'mask_rcnn', 'mask-rcnn_conv2former-t_fpn_amp-ms-crop-3x_coco.py'),
    'cls': osp.join(CONFIGS, 'conv2former', 'conv2former-t_8xb128_in1k.py'),
}
META = {
    'seg': dict(classes=('background', 'circle', 'square', 'triangle'),
                palette=[[120, 120, 120], [230, 25, 75], [60, 180, 75], [0, 130, 200]]),
    'det': dict(classes=('circle', 'square', 'triangle'),
                palette=[(230, 25, 75), (60, 180, 75), (0, 130, 200)]),
    'cls': dict(classes=('cat', 'dog', 'fox', 'owl', 'yak', 'emu')),
}
IMG_HW = (80, 112)


def _load_demo():
    spec = importlib.util.spec_from_file_location('mmc2f_image_demo', DEMO)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope='module')
def setup(tmp_path_factory):
    from mmc2f.apis import init_model
    tmp = tmp_path_factory.mktemp('demo')
    rng = np.random.RandomState(0)
    img = (rng.rand(*IMG_HW, 3) * 60 + 100).astype(np.uint8)
    cv2.circle(img, (30, 35), 18, (40, 40, 220), -1)
    cv2.rectangle(img, (62, 15), (100, 55), (40, 200, 40), -1)
    cv2.imwrite(str(tmp / 'img.png'), img)
    out = dict(tmp=tmp, img=str(tmp / 'img.png'))
    for task, text in TINY.items():
        cfg = tmp / f'tiny_{task}.py'
        cfg.write_text(text.format(base=BASES[task]))
        model = init_model(str(cfg), None, device='cpu')
        state = model.state_dict()
        if task == 'cls':  # spread-out scores, so that the top-k order is well defined
            state['head.fc.weight'] = state['head.fc.weight'] * 20
        ckpt = tmp / f'tiny_{task}.pth'
        torch.save({'state_dict': state, 'meta': {'dataset_meta': META[task]}}, str(ckpt))
        out[task] = (str(cfg), str(ckpt))
    return out


def _run(args, cwd):
    env = dict(os.environ, OMP_NUM_THREADS='1')
    return subprocess.run([sys.executable, DEMO] + args, cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300)


def _check_png(path, img_path):
    assert osp.isfile(path), path
    drawn = cv2.imread(path)
    src = cv2.imread(img_path)
    assert drawn.shape == src.shape  # the image's size
    changed = np.any(drawn != src, axis=2).mean()
    return drawn, changed


def test_segmentation_overlay(setup):
    cfg, ckpt = setup['seg']
    out = osp.join(str(setup['tmp']), 'seg_out.png')
    proc = _run([setup['img'], cfg, ckpt, '--out-file', out, '--device', 'cpu', '--opacity',
                 '0.5'], cwd=str(setup['tmp']))
    assert proc.returncode == 0, proc.stderr[-3000:]
    drawn, changed = _check_png(out, setup['img'])
    assert changed > 0.9  # the overlay covers the image
    assert 'segmentation: 80 x 112 label map' in proc.stdout
    # class names from the checkpoint's meta, and the palette colours blended in
    names = re.findall(r'^  (\w+): [\d.]+% of pixels', proc.stdout, flags=re.M)
    assert names and set(names) <= set(META['seg']['classes'])


def test_segmentation_deploy_same_label_map(setup):
    """--deploy (MSCAN's fused kernels) prints the same per-class pixel shares."""
    cfg, ckpt = setup['seg']
    shares = []
    for extra in ([], ['--deploy']):
        out = osp.join(str(setup['tmp']), f'seg_out{len(extra)}.png')
        proc = _run([setup['img'], cfg, ckpt, '--out-file', out, '--device', 'cpu'] + extra,
                    cwd=str(setup['tmp']))
        assert proc.returncode == 0, proc.stderr[-3000:]
        shares.append(re.findall(r'^  (\w+): ([\d.]+)% of pixels', proc.stdout, flags=re.M))
    assert shares[0] and shares[0] == shares[1]


def test_detection_boxes_and_masks(setup):
    cfg, ckpt = setup['det']
    out = osp.join(str(setup['tmp']), 'det_out.png')
    # random weights: threshold 0 so that there is something to draw
    proc = _run([setup['img'], cfg, ckpt, '--out-file', out, '--device', 'cpu',
                 '--score-thr', '0'], cwd=str(setup['tmp']))
    assert proc.returncode == 0, proc.stderr[-3000:]
    m = re.search(r'detection: (\d+) of (\d+) detections with score >= 0.0 \(boxes and masks',
                  proc.stdout)
    assert m and int(m.group(1)) > 0, proc.stdout
    names = re.findall(r'^  (\w+): [\d.]+  box', proc.stdout, flags=re.M)
    assert names and set(names) <= set(META['det']['classes'])
    _, changed = _check_png(out, setup['img'])
    assert changed > 0.01


def test_classification_topk(setup):
    cfg, ckpt = setup['cls']
    out = osp.join(str(setup['tmp']), 'cls_out.png')
    proc = _run([setup['img'], cfg, ckpt, '--out-file', out, '--device', 'cpu', '--topk', '3'],
                cwd=str(setup['tmp']))
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = re.findall(r'^  (\d)\. (\w+): ([\d.]+)$', proc.stdout, flags=re.M)
    assert [int(r[0]) for r in rows] == [1, 2, 3], proc.stdout
    assert {r[1] for r in rows} <= set(META['cls']['classes']) and len({r[1] for r in rows}) == 3
    scores = [float(r[2]) for r in rows]
    assert scores == sorted(scores, reverse=True) and sum(scores) <= 1.0001
    _, changed = _check_png(out, setup['img'])
    assert 0.005 < changed < 0.9  # text written in a corner, the rest untouched

    # the printed top-1 is the model's own prediction (mmpretrain's predict on the same input)
    from mmc2f.apis import init_model
    from mmpretrain.apis import ImageClassificationInferencer
    model = init_model(cfg, ckpt, device='cpu')
    inferencer = ImageClassificationInferencer(model, pretrained=False)
    data = next(iter(inferencer.preprocess([setup['img']])))
    pred = inferencer.forward(data)[0]
    top1 = int(pred.pred_score.argmax())
    assert rows[0][1] == META['cls']['classes'][top1]
    assert abs(float(pred.pred_score[top1]) - scores[0]) < 1e-3


def test_wrong_checkpoint_keys_are_named(setup, tmp_path, capsys):
    demo = _load_demo()
    cfg, ckpt = setup['cls']
    state = torch.load(ckpt, map_location='cpu', weights_only=True)['state_dict']
    dropped = 'neck.proj.weight'
    state.pop(dropped)
    state['head.extra.weight'] = torch.zeros(1)
    bad = tmp_path / 'bad.pth'
    torch.save({'state_dict': state}, str(bad))
    rc = demo.main([setup['img'], cfg, str(bad), '--out-file', str(tmp_path / 'o.png')])
    err = capsys.readouterr().err
    assert rc == 2
    assert f'missing keys: {dropped}' in err and 'unexpected keys: head.extra.weight' in err
    assert not (tmp_path / 'o.png').exists()

    # a checkpoint of another model (a segmentor's weights for the classifier)
    rc = demo.main([setup['img'], cfg, setup['seg'][1], '--out-file', str(tmp_path / 'o.png')])
    err = capsys.readouterr().err
    assert rc == 2 and 'missing keys: backbone.' in err and 'unexpected keys: backbone.' in err


def test_unsafe_checkpoint_and_missing_image_are_refused(setup, tmp_path, capsys):
    demo = _load_demo()
    cfg, ckpt = setup['cls']
    state = torch.load(ckpt, map_location='cpu', weights_only=True)['state_dict']
    evil = tmp_path / 'evil.pth'
    torch.save({'state_dict': state, 'meta': {'obj': _Payload()}}, str(evil))
    rc = demo.main([setup['img'], cfg, str(evil), '--out-file', str(tmp_path / 'o.png')])
    assert rc == 2 and 'refused to load checkpoint' in capsys.readouterr().err
    rc = demo.main([str(tmp_path / 'nope.png'), cfg, ckpt])
    assert rc == 2 and 'nope.png" does not exist' in capsys.readouterr().err


class _Payload:
    """An arbitrary pickled object: not on mmc2f's allow-list."""

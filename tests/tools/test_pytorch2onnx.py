"""tools/deployment/pytorch2onnx.py: SegNeXt and Conv2Former to ONNX, checked with onnxruntime.

A tiny SegNeXt (MSCAN with small dims + LightHamHead, no eval_seed in its config) and a tiny
Conv2Former classifier get random weights, are exported on CPU (static and dynamic) and run with
onnxruntime at the export shape and at another batch / spatial size. The reference is computed
independently of the exporter's wrappers: mmseg's ``encode_decode`` (logits resized to the image)
and mmpretrain's ``predict`` (``pred_score``).
"""
import importlib.util
import os.path as osp
import subprocess
import sys

import numpy as np
import pytest
import torch

onnx = pytest.importorskip('onnx')
ort = pytest.importorskip('onnxruntime')

REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
TOOL = osp.join(REPO, 'tools', 'deployment', 'pytorch2onnx.py')
SEG_BASE = osp.join(REPO, 'configs', 'demo',
                    'segnext_mscan-t_1xb8-adamw-400iter_demo-seg-128x128.py')
CLS_BASE = osp.join(REPO, 'configs', 'conv2former', 'conv2former-t_8xb128_in1k.py')
TOL = 1e-4

# No eval_seed: the exporter must force one (and say so).
TINY_SEG = """
_base_ = [{base!r}]
model = dict(
    backbone=dict(embed_dims=[8, 16, 32, 32], depths=[1, 1, 1, 1], mlp_ratios=[2, 2, 2, 2]),
    decode_head=dict(in_channels=[16, 32, 32], channels=16, ham_channels=16, num_classes=4,
                     norm_cfg=dict(type='GN', num_groups=8, requires_grad=True),
                     ham_kwargs=dict(MD_R=4, train_steps=2, eval_steps=3, eval_seed=None)))
"""
TINY_CLS = """
_base_ = [{base!r}]
model = dict(
    backbone=dict(_delete_=True, type='mmc2f.Conv2Former', out_indices=(3, ),
                  arch=dict(dims=[16, 32, 48, 64], depths=[1, 1, 1, 1], kernel_size=7)),
    neck=dict(in_channels=64, out_channels=96),
    head=dict(num_classes=7, in_channels=96))
"""


def _load_tool():
    spec = importlib.util.spec_from_file_location('mmc2f_pytorch2onnx', TOOL)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope='module')
def tool():
    return _load_tool()


def _randomise(model, seed):
    """Non-trivial weights and BN statistics, so that the outputs are far from constant."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if not t.is_floating_point():
                continue
            noise = torch.randn(t.shape, generator=gen)
            if name.endswith('running_var'):
                t.copy_(0.5 + noise.abs())
            elif name.endswith('running_mean'):
                t.copy_(0.1 * noise)
            elif 'layer_scale' in name:
                t.copy_(0.5 + 0.2 * noise.abs())
            elif t.dim() > 1:  # conv / linear weights, unit gain
                t.copy_(noise / t[0].numel() ** 0.5)
            elif name.endswith('weight'):  # norm scales
                t.copy_(1.0 + 0.1 * noise)
            else:  # biases
                t.copy_(0.1 * noise)


@pytest.fixture(scope='module')
def files(tmp_path_factory):
    from mmc2f.apis import init_model
    tmp = tmp_path_factory.mktemp('onnx')
    out = {}
    for name, text, base, seed in (('seg', TINY_SEG, SEG_BASE, 1), ('cls', TINY_CLS, CLS_BASE, 2)):
        cfg = tmp / f'tiny_{name}.py'
        cfg.write_text(text.format(base=base))
        model = init_model(str(cfg), None, device='cpu', nmf_eval_seed=None)
        _randomise(model, seed)
        ckpt = tmp / f'tiny_{name}.pth'
        torch.save({'state_dict': model.state_dict(), 'meta': {}}, str(ckpt))
        out[name] = (str(cfg), str(ckpt))
    out['tmp'] = tmp
    return out


def _reference_seg(model, x):
    metas = [dict(img_shape=tuple(x.shape[2:]), ori_shape=tuple(x.shape[2:]))] * x.shape[0]
    with torch.no_grad():
        return model.encode_decode(x, metas).numpy()


def _reference_cls(model, x):
    with torch.no_grad():
        samples = model(x, mode='predict')
    return torch.stack([s.pred_score for s in samples]).numpy()


def _run_ort(path, x):
    sess = ort.InferenceSession(path, providers=['CPUExecutionProvider'])
    return sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]


def _op_types(path):
    return {n.op_type for n in onnx.load(path).graph.node}


@pytest.mark.parametrize('deploy', [False, True])
def test_segnext_dynamic_export_matches_pytorch(tool, files, capsys, deploy):
    from mmc2f.apis import init_model
    cfg, ckpt = files['seg']
    out = str(files['tmp'] / f'seg_dyn_{deploy}.onnx')
    rc = tool.main([cfg, ckpt, '--output-file', out, '--shape', '64', '64', '--batch', '2',
                    '--dynamic-export', '--verify'] + (['--deploy'] if deploy else []))
    text = capsys.readouterr().out
    assert rc == 0, text
    # --deploy: MSCAN's folded BatchNorms / layer scales, exported with standard ONNX ops
    assert ('switch_to_deploy() on backbone' in text) == deploy
    assert 'exported with eval_seed=0' in text  # the config has none: forced and reported
    assert 'verify: OK' in text
    assert 'RandomUniform' not in _op_types(out) and 'RandomUniformLike' not in _op_types(out)
    graph = onnx.load(out).graph
    dims = [d.dim_param or d.dim_value for d in graph.input[0].type.tensor_type.shape.dim]
    assert dims == ['batch', 3, 'height', 'width']
    out_dims = [d.dim_param or d.dim_value for d in graph.output[0].type.tensor_type.shape.dim]
    assert out_dims[1] == 4 and all(isinstance(d, str) for d in (out_dims[0], *out_dims[2:]))

    # Independent reference: mmseg's encode_decode with the same NMF seed (0).
    model = init_model(cfg, ckpt, device='cpu', nmf_eval_seed=0)
    gen = torch.Generator().manual_seed(123)
    diffs = []
    for shape in ((2, 3, 64, 64), (3, 3, 96, 80), (1, 3, 40, 72)):
        x = torch.randn(*shape, generator=gen)
        ref = _reference_seg(model, x)
        got = _run_ort(out, x)
        assert got.shape == ref.shape == (shape[0], 4, shape[2], shape[3])
        assert np.abs(ref).max() > 1e-2  # a meaningful comparison, not zeros vs zeros
        diffs.append(float(np.abs(got - ref).max()))
    print('segnext max abs diffs', diffs)
    assert max(diffs) <= TOL, diffs
    # the exported NMF is deterministic: a second run gives the same numbers
    x = torch.randn(2, 3, 64, 64, generator=gen)
    np.testing.assert_array_equal(_run_ort(out, x), _run_ort(out, x))


def test_segnext_static_raw_logits(tool, files, capsys):
    from mmc2f.apis import init_model
    cfg, ckpt = files['seg']
    out = str(files['tmp'] / 'seg_raw.onnx')
    rc = tool.main([cfg, ckpt, '--output-file', out, '--shape', '64', '96', '--seg-output', 'raw'])
    assert rc == 0, capsys.readouterr()
    dims = [d.dim_value for d in onnx.load(out).graph.input[0].type.tensor_type.shape.dim]
    assert dims == [1, 3, 64, 96]
    model = init_model(cfg, ckpt, device='cpu', nmf_eval_seed=0)
    x = torch.randn(1, 3, 64, 96, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        ref = model(x, mode='tensor').numpy()  # the decode head's stride-8 logits
    got = _run_ort(out, x)
    assert got.shape == ref.shape == (1, 4, 8, 12)
    assert float(np.abs(got - ref).max()) <= TOL
    # static: another size is refused by onnxruntime
    with pytest.raises(Exception):
        _run_ort(out, torch.randn(1, 3, 96, 96))


@pytest.mark.parametrize('deploy,output', [(False, 'scores'), (True, 'scores'),
                                           (True, 'logits')])
def test_conv2former_classifier_export(tool, files, capsys, deploy, output):
    from mmc2f.apis import init_model
    cfg, ckpt = files['cls']
    out = str(files['tmp'] / f'cls_{deploy}_{output}.onnx')
    args = [cfg, ckpt, '--output-file', out, '--shape', '64', '--dynamic-export',
            '--cls-output', output]
    rc = tool.main(args + (['--deploy'] if deploy else []))
    text = capsys.readouterr().out
    assert rc == 0, text
    assert ('switch_to_deploy() on backbone' in text) == deploy
    model = init_model(cfg, ckpt, device='cpu')  # not deployed: the reference is the plain model
    gen = torch.Generator().manual_seed(7)
    diffs = []
    for shape in ((1, 3, 64, 64), (3, 3, 96, 128)):
        x = torch.randn(*shape, generator=gen)
        if output == 'scores':
            ref = _reference_cls(model, x)
        else:
            with torch.no_grad():
                ref = model(x, mode='tensor').numpy()  # mmpretrain's cls_score
        got = _run_ort(out, x)
        assert got.shape == ref.shape == (shape[0], 7)
        if output == 'scores':
            np.testing.assert_allclose(got.sum(1), 1.0, atol=1e-5)  # probabilities
        assert ref.max() - ref.min() > 0.05  # spread-out outputs: the comparison can fail
        diffs.append(float(np.abs(got - ref).max()))
    print(f'conv2former deploy={deploy} {output} max abs diffs', diffs)
    assert max(diffs) <= TOL, diffs


def test_verify_detects_a_mismatch(tool, files):
    """--verify's comparison is real: a changed weight after export is caught."""
    cfg, ckpt = files['cls']
    out = str(files['tmp'] / 'cls_verify.onnx')
    wrapped, task, _ = tool.build_export_module(cfg, ckpt)
    tool.export(wrapped, task, out, (64, 64))
    assert max(r[1] for r in tool.verify(wrapped, out, [(1, 3, 64, 64)])) <= TOL
    with torch.no_grad():
        wrapped.classifier.head.fc.bias[0] += 1.0
    assert max(r[1] for r in tool.verify(wrapped, out, [(1, 3, 64, 64)])) > TOL


def test_cli_subprocess_and_errors(tool, files, tmp_path, capsys):
    """The real command line: verified export; a wrong checkpoint fails clearly (status 2)."""
    cfg, ckpt = files['cls']
    out = tmp_path / 'cls.onnx'
    proc = subprocess.run([sys.executable, TOOL, cfg, ckpt, '--output-file', str(out),
                           '--shape', '48', '--verify'], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert 'max abs diff onnxruntime vs PyTorch' in proc.stdout and out.is_file()

    # a checkpoint of another model: the error names the keys, nothing is written
    rc = tool.main([cfg, files['seg'][1], '--output-file', str(tmp_path / 'x.onnx')])
    err = capsys.readouterr().err
    assert rc == 2
    assert 'missing keys: backbone.' in err and 'unexpected keys:' in err
    assert not (tmp_path / 'x.onnx').exists()


def test_detector_is_refused(tool, tmp_path, capsys):
    cfg = tmp_path / 'det.py'
    base = osp.join(REPO, 'configs', 'mask_rcnn',
                    'mask-rcnn_conv2former-t_fpn_amp-ms-crop-3x_coco.py')
    cfg.write_text(f'_base_ = [{base!r}]\n')
    assert tool.main([str(cfg), '--output-file', str(tmp_path / 'd.onnx')]) == 2
    assert 'mmdet detectors are not supported' in capsys.readouterr().err


def test_adaptive_pooling_keeps_spatial_axes_static(tool, tmp_path):
    """A PPM-like adaptive pooling (UperNet) is baked to the traced size by the exporter: only the
    batch may be dynamic, and the verification shapes follow the axes actually exported."""
    import torch.nn as nn

    class PPMish(nn.Module):
        logits = False

        def __init__(self):
            super().__init__()
            self.pool = nn.AdaptiveAvgPool2d(3)
            self.conv = nn.Conv2d(3, 4, 1)

        def forward(self, x):
            return self.conv(self.pool(x)).flatten(1)

    model = PPMish().eval()
    assert tool.adaptive_pools(model) == ['pool (output 3)']
    out = str(tmp_path / 'ppm.onnx')
    info = tool.export(model, 'cls', out, (12, 12), dynamic=True)
    assert info['dynamic_axes'] == {'input': {0: 'batch'}, 'scores': {0: 'batch'}}
    assert info['notes'] and 'only the batch axis is dynamic' in info['notes'][0]
    shapes = tool.verification_shapes((12, 12), 1, info['dynamic_axes'])
    assert shapes == [(1, 3, 12, 12), (2, 3, 12, 12)]
    assert max(r[1] for r in tool.verify(model, out, shapes)) <= TOL
    # a global pool (output 1) is fine with dynamic sizes
    assert tool.adaptive_pools(nn.Sequential(nn.AdaptiveAvgPool2d((1, 1)))) == []


SHIPPED = (
    [(f'configs/segnext/segnext_mscan-{s}_1xb16-adamw-160k_ade20k-512x512.py', [], 64)
     for s in 'tsbl'] +
    [(f'configs/conv2former/conv2former-{s}_8xb128_in1k.py', extra, 32)
     for s in 'ntsbl'
     for extra in ([], ['--backbone', '--cfg-options', 'model.backbone.out_indices=[0,1,2,3]'])])


@pytest.mark.slow
@pytest.mark.parametrize('deploy', [[], ['--deploy']], ids=['plain', 'deploy'])
@pytest.mark.parametrize('config,extra,size', SHIPPED,
                         ids=[osp.basename(c)[:-3] + ('-backbone' if e else '') for c, e, _ in SHIPPED])
def test_every_shipped_size_exports_with_parity(tool, tmp_path, capsys, config, extra, size,
                                                deploy):
    """All SegNeXt sizes and Conv2Former N/T/S/B/L classifiers and backbones (random weights):
    the export runs in onnxruntime and equals PyTorch (max abs diff <= 1e-4 + 1e-5 x max |out|)."""
    out = tmp_path / 'model.onnx'
    code = tool.main([osp.join(REPO, config), '--output-file', str(out), '--shape', str(size),
                      '--verify', *deploy, *extra])
    printed = capsys.readouterr().out
    assert code == 0, printed
    assert 'verify: OK' in printed
    if extra:  # the backbone's four stages
        assert 'feat0, feat1, feat2, feat3' in printed

"""tools/analysis_tools/gpu_check.{sh,py}: the GPU check's building blocks on CPU (its CUDA runs
need the GPU machine, docs/gpu_check.md), its driver, and the wheel folder's README."""
import csv
import hashlib
import importlib.util
import json
import os
import os.path as osp
import re
import subprocess
import sys
import types

import pytest
import torch

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
TOOLS = osp.join(ROOT, 'tools', 'analysis_tools')
WHEELS = osp.join(TOOLS, 'gpu_wheels')


@pytest.fixture(scope='module')
def gc():
    spec = importlib.util.spec_from_file_location('mmc2f_tool_gpu_check',
                                                  osp.join(TOOLS, 'gpu_check.py'))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_shell_script_parses():
    proc = subprocess.run(['bash', '-n', osp.join(TOOLS, 'gpu_check.sh')], capture_output=True,
                          text=True)
    assert proc.returncode == 0, proc.stderr


def test_wheel_readme_lists_exactly_the_files_with_their_sha256():
    files = sorted(f for f in os.listdir(WHEELS) if f != 'README.md')
    assert files and all(f.endswith('.whl') for f in files), files
    with open(osp.join(WHEELS, 'README.md')) as f:
        rows = re.findall(r'^\| (\S+\.whl) \| (\S+) \| ([0-9a-f]{64}) \|$', f.read(), re.M)
    assert sorted(r[0] for r in rows) == files
    for name, version, sha in rows:
        assert name.split('-')[1] == version, name
        with open(osp.join(WHEELS, name), 'rb') as f:
            assert hashlib.sha256(f.read()).hexdigest() == sha, name
    total = sum(osp.getsize(osp.join(WHEELS, f)) for f in files)
    assert total < 32 * 2**20, f'{total / 2**20:.1f} MiB: the working tree travels in 64 MiB'


def test_wheels_are_not_ignored_by_git():
    files = [osp.join('tools', 'analysis_tools', 'gpu_wheels', f) for f in os.listdir(WHEELS)]
    proc = subprocess.run(['git', 'check-ignore', '--no-index'] + files, cwd=ROOT,
                          capture_output=True, text=True)
    assert proc.returncode == 1 and not proc.stdout.strip(), proc.stdout  # 1: none ignored


def test_rel_err_and_compare_detect_a_mismatch(gc):
    ref = {'a': torch.tensor([1.0, -4.0, 2.0]), 'b': torch.tensor([0.5, 0.25])}
    assert gc.compare({k: v.clone() for k, v in ref.items()}, ref) == (0.0, 'a')
    off = dict(ref, b=torch.tensor([0.5, 0.26]))
    err, key = gc.compare(off, ref)
    assert key == 'b' and err == pytest.approx(0.01 / 0.5)
    assert gc.rel_err(torch.tensor([1.0, float('nan')]), torch.tensor([1.0, 2.0])) == float('inf')
    assert gc.rel_err(torch.zeros(2), torch.zeros(3)) == float('inf')
    assert gc.compare({'a': ref['a']}, ref)[0] == float('inf')  # a missing tensor
    assert gc.compare(dict(ref, b=None), ref) == (float('inf'), 'b')  # a missing gradient
    # floor: a near-zero gradient is judged against a share of the model's largest gradient
    tiny = {'big': torch.tensor([10.0]), 'zero': torch.tensor([1e-9])}
    noisy = {'big': torch.tensor([10.0]), 'zero': torch.tensor([3e-9])}
    assert gc.compare(noisy, tiny)[0] == pytest.approx(2.0)
    assert gc.compare(noisy, tiny, floor=1e-3)[0] == pytest.approx(2e-9 / 1e-2)


def test_projection_loss_is_device_independent_and_weights_every_output(gc):
    outs = [torch.ones(2, 3), torch.ones(4)]
    loss = gc.projection_loss(outs)
    assert loss.item() == pytest.approx(gc.projection_loss([o.clone() for o in outs]).item())
    assert loss.item() != gc.projection_loss([outs[0], 2 * outs[1]]).item()


def test_graph_break_count(gc):
    def clean(x):
        return torch.relu(x) * 2

    def broken(x):
        y = torch.relu(x)
        torch._dynamo.graph_break()
        return y * 2

    x = torch.randn(4)
    assert gc.count_graph_breaks(clean, x)[:2] == (0, 1)
    breaks, graphs, reasons = gc.count_graph_breaks(broken, x)
    assert breaks >= 1 and graphs >= 2 and reasons


def test_matmul_dtype_recorder_sees_the_nmf_in_fp32_and_a_plain_bmm_in_bf16(gc):
    from mmc2f.models.decode_heads.nmf import NMF2D
    x = torch.rand(1, 8, 4, 4)
    nmf = NMF2D(md_r=2, train_steps=1, eval_steps=1)
    rec = gc.MatmulDtypes().wrap(nmf)
    with torch.autocast('cpu', dtype=torch.bfloat16):
        out = nmf(x.bfloat16())
    products = [d for op, d in rec.records if op != '<output>']
    assert products and set(products) == {torch.float32}
    assert ('<output>', torch.bfloat16) in rec.records and out.dtype == torch.bfloat16

    class PlainBmm(torch.nn.Module):  # what an NMF without the fp32 guard would do
        def forward(self, a):
            return torch.bmm(a, a.transpose(1, 2))

    plain = PlainBmm()
    rec = gc.MatmulDtypes().wrap(plain)
    with torch.autocast('cpu', dtype=torch.bfloat16):
        plain(torch.rand(1, 3, 3))
    assert ('bmm', torch.bfloat16) in rec.records


def test_shims_import_and_refuse_to_compute(gc, tmp_path):
    written = gc.write_shims(site=str(tmp_path), force=True)
    assert osp.join(str(tmp_path), 'cv2', '__init__.py') in written
    code = ('import cv2, scipy.ndimage, scipy.optimize\n'
            'from cv2 import IMREAD_COLOR, INTER_LINEAR\n'
            'assert cv2.GPU_CHECK_SHIM and IMREAD_COLOR != INTER_LINEAR\n'
            'assert isinstance(IMREAD_COLOR, int)\n'
            'cv2.setNumThreads(0)\n'
            'for fn in (cv2.imread, scipy.ndimage.gaussian_filter):\n'
            '    try:\n'
            '        fn(1)\n'
            '    except RuntimeError as e:\n'
            '        assert "not installed" in str(e), e\n'
            '    else:\n'
            '        raise SystemExit("a stand-in computed something")\n'
            'print("ok")\n')
    env = dict(os.environ, PYTHONPATH=str(tmp_path))
    proc = subprocess.run([sys.executable, '-c', code], env=env, capture_output=True, text=True,
                          cwd=str(tmp_path))
    assert proc.returncode == 0 and proc.stdout.strip() == 'ok', proc.stderr
    # mmcv/_ext.py stand-in: mmcv's ext_loader asserts hasattr(ext, name) for every op
    ext = types.ModuleType('mmcv._ext')
    exec(gc.MMCV_EXT_SHIM, ext.__dict__)
    assert hasattr(ext, 'nms') and hasattr(ext, 'sigmoid_focal_loss_forward')
    with pytest.raises(RuntimeError, match='not installed'):
        ext.nms()
    assert not hasattr(ext, '__wrapped__')


def test_synthetic_seg_data_and_derived_config(gc, tmp_path):
    from mmengine.config import Config
    from PIL import Image
    root = tmp_path / 'seg'
    gc.write_seg_data(str(root), 3, 1, size=32)
    labels = sorted((root / 'annotations' / 'training').iterdir())
    images = sorted((root / 'images' / 'training').iterdir())
    assert [p.stem for p in labels] == [p.stem for p in images] == ['00000', '00001', '00002']
    import numpy as np
    values = set(np.unique(np.array(Image.open(labels[0]))))
    assert values <= {0, 1, 2, 3} and len(values) > 1
    cfg = Config.fromfile(gc.derived_config(str(tmp_path / 'cfg.py'), gc.SEG_DEMO, str(root),
                                            'seg', 7, True, 0))
    assert cfg.train_cfg.max_iters == 7 and cfg.train_cfg.val_interval == 7
    assert cfg.train_dataloader.dataset.data_root == str(root)
    assert cfg.train_dataloader.dataset.pipeline[0].imdecode_backend == 'pillow'
    assert cfg.optim_wrapper.type == 'AmpOptimWrapper' and cfg.optim_wrapper.dtype == 'bfloat16'
    assert cfg.optim_wrapper.optimizer.type == 'AdamW'  # the demo's optimizer is kept
    assert cfg.model.backbone.type == 'mmc2f.MSCAN'
    cls = tmp_path / 'cls'
    gc.write_cls_data(str(cls), 2, 1, size=32)
    with open(cls / 'meta' / 'train.txt') as f:
        lines = f.read().split('\n')
    assert lines[:2] == ['circle/00000.png 0', 'circle/00001.png 0'] and len(lines) == 7


def test_bench_table_from_benchmark_csv(gc, tmp_path):
    path = tmp_path / 'b.csv'
    fields = ['time', 'device', 'model', 'baseline', 'mode', 'dtype', 'batch', 'height', 'width',
              'channels_last', 'compile', 'fuse', 'with_cp', 'one_step_grad', 'img_per_s',
              'ratio_median', 'ratio_min', 'ratio_max', 'memory_mib', 'memory_kind', 'saved_mib']
    rows = [dict(zip(fields, ['t', 'GPU', 'conv2former-t', 'convnext-t', 'train', 'bf16', 8, 224,
                              224, True, True, False, False, False, 123.4, 0.9, 0.8, 1.0, 99.5,
                              'peak allocated', 50.25])),
            dict(zip(fields, ['t', 'GPU', 'convnext-t', 'convnext-t', 'train', 'bf16', 8, 224,
                              224, True, True, False, False, False, 137.0, '', '', '', 80.0,
                              'peak allocated', 40.0]))]
    with open(path, 'w', newline='') as f:
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        w.writerows(rows)
    text = gc.write_bench_table(str(path), str(tmp_path / 'b.md'))
    assert '| conv2former-t | convnext-t | train | True | 123.4 | 0.900x [0.800..1.000] | 99.5 |' \
        in text
    assert '| convnext-t |  | train | True | 137.0 |  | 80.0 | 40.0 |' in text


def test_driver_runs_a_section_in_a_child_and_writes_the_summary(tmp_path):
    out = tmp_path / 'out'
    proc = subprocess.run([sys.executable, osp.join(TOOLS, 'gpu_check.py'), '--device', 'cpu',
                           '--quick', '--sections', 'c', '--budget', '250', '--out', str(out)],
                          capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    with open(out / 'gpu_check_summary.json') as f:
        summary = json.load(f)
    names = [i['name'] for i in summary['items'] if i['status'] == 'PASS']
    assert summary['counts'] == dict(PASS=6, FAIL=0, SKIP=0), summary
    assert 'SegNeXt(mmc2f) with_cp outputs and gradients equal' in names
    assert (out / 'gpu_check_summary.txt').read_text().startswith('gpu_check: device cpu (quick)')


def test_driver_reports_unknown_sections_and_failures(gc, tmp_path):
    assert gc.main(['--sections', 'a,z', '--out', str(tmp_path)]) == 2
    args = gc.parse_args(['--out', str(tmp_path), '--device', 'cpu'])
    items = [dict(section='a', status='PASS', name='x', detail=''),
             dict(section='b', status='FAIL', name='y', detail='why')]
    assert gc.summarize(items, args, 1.0) == 1
    assert 'FAIL [b] y: why' in (tmp_path / 'gpu_check_summary.txt').read_text()
    with open(tmp_path / 'gpu_check_summary.json') as f:
        assert json.load(f)['counts'] == dict(PASS=1, FAIL=1, SKIP=0)
    assert gc.summarize(items[:1], args, 1.0) == 0


def test_deploy_folds_the_outermost_modules(gc):
    from mmc2f.models.backbones.mscan import MSCAN
    torch.manual_seed(0)
    model = MSCAN(arch=dict(embed_dims=[16, 32, 48, 64], depths=[2, 1, 1, 1]),
                  norm_cfg=dict(type='BN')).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        ref = model(x)
        assert gc.deploy(model) == 1 and model.block1[1].deployed  # MSCAN, which folds its blocks
        for got, want in zip(model(x), ref):
            assert ((got - want).abs().max() / want.abs().max()).item() < 1e-5

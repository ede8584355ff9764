"""tools/train.py and tools/test.py, end to end through the real command lines.

The slow tests train a tiny SegNeXt (MSCAN with small dims + LightHamHead) for a few iterations on a
tiny synthetic set, resume it, test it (mIoU, --show-dir, --out) and load its checkpoint with
torch's weights_only=True. The others check the tools' early errors and option handling.
"""
import glob
import json
import os
import os.path as osp
import re
import subprocess
import sys
import warnings

import pytest
import torch
from mmengine.config import Config

from mmc2f.apis import cli as tools
from mmc2f.errors import ConfigError

REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
DEMO_CONFIG = osp.join(REPO, 'configs', 'demo',
                       'segnext_mscan-t_1xb8-adamw-400iter_demo-seg-128x128.py')
TRAIN = osp.join(REPO, 'tools', 'train.py')
TEST = osp.join(REPO, 'tools', 'test.py')

TINY_BASE = osp.join(REPO, 'tests', 'tools', 'tiny_segnext.py')
TINY = """
_base_ = [{base!r}]
data_root = {data_root!r}
train_dataloader = dict(dataset=dict(data_root=data_root))
val_dataloader = dict(dataset=dict(data_root=data_root))
test_dataloader = val_dataloader
train_cfg = dict(max_iters=4, val_interval=4)
default_hooks = dict(checkpoint=dict(interval=2, max_keep_ckpts=3))
"""


def _run(args, cwd, timeout=300):
    env = dict(os.environ, OMP_NUM_THREADS='1')
    return subprocess.run([sys.executable] + args, cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)


def _write_config(tmp_path, data_root, name='tiny_seg.py', extra=''):
    path = tmp_path / name
    path.write_text(TINY.format(base=TINY_BASE, data_root=str(data_root)) + extra)
    return str(path)


@pytest.fixture(scope='module')
def trained(tmp_path_factory):
    """Data, a tiny config and a 4-iteration training run through tools/train.py."""
    from mmc2f.datasets.synthetic import make_seg_dataset
    tmp = tmp_path_factory.mktemp('tools')
    data_root = tmp / 'data' / 'demo' / 'seg'
    make_seg_dataset(str(data_root), num_train=4, num_val=2, size=32, seed=0)
    config = _write_config(tmp, data_root)
    work_dir = tmp / 'work'
    proc = _run([TRAIN, config, '--work-dir', str(work_dir), '--amp'], cwd=str(tmp))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return dict(tmp=tmp, config=config, work_dir=work_dir, data_root=data_root, proc=proc)


@pytest.mark.slow
def test_train_writes_loadable_checkpoints(trained):
    work_dir = trained['work_dir']
    out = trained['proc'].stdout + trained['proc'].stderr
    # --amp on a machine without CUDA: a warning, then fp32 with the plain OptimWrapper.
    if not torch.cuda.is_available():
        assert 'mixed-precision training (AmpOptimWrapper) needs a GPU' in out
    assert re.search(r'Iter\(val\).*mIoU: [\d.]+', out), out[-2000:]
    ckpt = work_dir / 'iter_4.pth'
    assert ckpt.is_file() and (work_dir / 'iter_2.pth').is_file()
    # torch >= 2.6 loads with weights_only=True; mmc2f's allow-list makes runner checkpoints load.
    import mmc2f.registry  # noqa: F401  (process setup: the allow-list for torch.load too)
    state = torch.load(str(ckpt), map_location='cpu', weights_only=True)
    assert state['meta']['iter'] == 4 and 'message_hub' in state and 'optimizer' in state
    from mmengine.runner import CheckpointLoader
    assert CheckpointLoader.load_checkpoint(str(ckpt), map_location='cpu')['meta']['iter'] == 4


@pytest.mark.slow
def test_resume_auto_and_from_path(trained):
    work_dir = trained['work_dir']
    resumed = trained['tmp'] / 'resumed'
    # --resume PATH into another work_dir, then --resume (auto: latest in that work_dir).
    proc = _run([TRAIN, trained['config'], '--work-dir', str(resumed), '--resume',
                 str(work_dir / 'iter_2.pth'), '--cfg-options', 'train_cfg.max_iters=6',
                 'train_cfg.val_interval=100'], cwd=str(trained['tmp']))
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    assert 'resumed' in out.lower() and re.search(r'Iter\(train\) \[3/6\]', out), out[-3000:]
    assert (resumed / 'iter_6.pth').is_file()
    proc = _run([TRAIN, trained['config'], '--work-dir', str(resumed), '--resume',
                 '--cfg-options', 'train_cfg.max_iters=7', 'train_cfg.val_interval=100'],
                cwd=str(trained['tmp']))
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    assert re.search(r'Iter\(train\) \[7/7\]', out) and not re.search(r'\[1/7\]', out), out[-3000:]


@pytest.mark.slow
def test_test_tool_miou_show_dir_out(trained):
    tmp = trained['tmp']
    show_dir = tmp / 'show'
    pred_dir = tmp / 'pred'
    proc = _run([TEST, trained['config'], str(trained['work_dir'] / 'iter_4.pth'), '--work-dir',
                 str(tmp / 'test_work'), '--show-dir', str(show_dir), '--out', str(pred_dir)],
                cwd=str(tmp))
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    m = re.search(r'Iter\(test\).*mIoU: ([\d.]+)', out)
    assert m and 0.0 <= float(m.group(1)) <= 100.0, out[-2000:]
    # The metrics are also written as json by the runner.
    assert glob.glob(str(tmp / 'test_work' / '*' / '*.json'))
    # --show-dir: one drawn image (ground truth beside the coloured prediction) per test image.
    drawn = glob.glob(str(show_dir / 'vis_data' / 'vis_image' / '*.png'))
    assert len(drawn) == 2, out[-2000:]
    import cv2
    assert cv2.imread(drawn[0]).shape == (32, 64, 3)
    # --out (mmseg): the predicted label maps.
    preds = sorted(os.listdir(pred_dir))
    assert preds == ['demo_00000.png', 'demo_00001.png']
    label = cv2.imread(str(pred_dir / preds[0]), cv2.IMREAD_UNCHANGED)
    assert label.shape == (32, 32) and label.max() < 4


@pytest.mark.slow
def test_test_tool_deploy_same_predictions(trained):
    """--deploy (SwitchToDeployHook: fused kernels, the network on ONNX Runtime by default on CPU)
    and --deploy --deploy-backend pytorch (fused kernels only) predict as without."""
    import cv2
    tmp, ckpt = trained['tmp'], str(trained['work_dir'] / 'iter_4.pth')
    labels, mious = {}, {}
    logged = {'': None, 'auto': 'SwitchToDeployHook (auto): backbone, ONNX Runtime (',
              'pytorch': 'SwitchToDeployHook (pytorch): backbone\n'}
    for backend, line in logged.items():
        pred_dir = tmp / f'pred_deploy{backend}'
        flags = ['--deploy', '--deploy-backend', backend] if backend else []
        args = [TEST, trained['config'], ckpt, '--work-dir', str(tmp / f'work_deploy{backend}'),
                '--out', str(pred_dir)] + flags
        proc = _run(args, cwd=str(tmp))
        out = proc.stdout + proc.stderr
        assert proc.returncode == 0, out[-3000:]
        assert ('SwitchToDeployHook' in out) == bool(backend)
        assert line is None or line in out, out[-3000:]
        mious[backend] = float(re.search(r'Iter\(test\).*mIoU: ([\d.]+)', out).group(1))
        labels[backend] = [cv2.imread(str(p), cv2.IMREAD_UNCHANGED)
                           for p in sorted(pred_dir.iterdir())]
    for backend in ('auto', 'pytorch'):
        same = sum((a == b).sum() for a, b in zip(labels[''], labels[backend]))
        total = sum(a.size for a in labels[''])
        assert total == 2 * 32 * 32 and same / total > 0.99, (backend, same, total)
        assert abs(mious[''] - mious[backend]) < 1.0, mious


@pytest.mark.slow
def test_test_tool_tta(trained):
    proc = _run([TEST, trained['config'], str(trained['work_dir'] / 'iter_4.pth'), '--work-dir',
                 str(trained['tmp'] / 'tta_work'), '--tta'], cwd=str(trained['tmp']))
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    assert re.search(r'Iter\(test\).*mIoU: [\d.]+', out), out[-2000:]


# ------------------------------------------------------------------------------------------
# early errors (no training)
# ------------------------------------------------------------------------------------------
def test_missing_data_folder_fails_early(tmp_path):
    missing = tmp_path / 'data' / 'demo' / 'seg'
    config = _write_config(tmp_path, missing)
    proc = _run([TRAIN, config, '--work-dir', str(tmp_path / 'w')], cwd=str(tmp_path))
    assert proc.returncode == 2
    assert f'data folder "{missing}" does not exist' in proc.stderr
    assert 'train_dataloader.dataset.data_root' in proc.stderr
    assert 'make_demo_data.py' in proc.stderr
    assert 'Traceback' not in proc.stderr
    assert not (tmp_path / 'w').exists()


def test_unknown_and_missing_scope_fail_clearly(tmp_path):
    bad = tmp_path / 'bad_scope.py'
    bad.write_text("default_scope = 'mmfoo'\nmodel = dict(type='Foo')\n")
    proc = _run([TRAIN, str(bad)], cwd=str(tmp_path))
    assert proc.returncode == 2
    assert "default_scope='mmfoo'" in proc.stderr and 'mmseg, mmdet, mmpretrain' in proc.stderr
    none = tmp_path / 'no_scope.py'
    none.write_text("model = dict(type='Foo')\n")
    ckpt = tmp_path / 'x.pth'
    torch.save({'state_dict': {}}, str(ckpt))
    proc = _run([TEST, str(none), str(ckpt)], cwd=str(tmp_path))
    assert proc.returncode == 2 and 'sets no default_scope' in proc.stderr
    assert 'Traceback' not in proc.stderr


def test_check_data_roots_names_keys(tmp_path):
    root = tmp_path / 'root'
    (root / 'images' / 'training').mkdir(parents=True)
    cfg = Config(dict(train_dataloader=dict(dataset=dict(
        type='RepeatDataset', times=2, dataset=dict(
            data_root=str(root), data_prefix=dict(img_path='images/training',
                                                  seg_map_path='annotations/training'))))))
    with pytest.raises(ConfigError, match=r'train_dataloader\.dataset\.dataset\.data_prefix'
                       r'\.seg_map_path'):
        tools.check_data_roots(cfg, ['train_dataloader'])
    (root / 'annotations' / 'training').mkdir(parents=True)
    tools.check_data_roots(cfg, ['train_dataloader'])
    cfg.train_dataloader.dataset.dataset.data_root = 's3://bucket/x'  # remote: not checked
    tools.check_data_roots(cfg, ['train_dataloader', 'val_dataloader'])


def test_amp_without_cuda_falls_back():
    cfg = Config(dict(optim_wrapper=dict(type='OptimWrapper', optimizer=dict(type='SGD', lr=0.1))))
    with pytest.warns(UserWarning, match='CUDA is not available'):
        tools.setup_amp(cfg, True, cuda=False)
    assert cfg.optim_wrapper.type == 'OptimWrapper'
    cfg = Config(dict(optim_wrapper=dict(type='AmpOptimWrapper', loss_scale='dynamic',
                                         optimizer=dict(type='SGD', lr=0.1))))
    with pytest.warns(UserWarning):
        tools.setup_amp(cfg, False, cuda=False)
    assert cfg.optim_wrapper.type == 'OptimWrapper' and 'loss_scale' not in cfg.optim_wrapper
    cfg = Config(dict(optim_wrapper=dict(type='OptimWrapper', optimizer=dict(type='SGD', lr=0.1))))
    with warnings.catch_warnings():
        warnings.simplefilter('error')
        tools.setup_amp(cfg, True, cuda=True)
    assert cfg.optim_wrapper.type == 'AmpOptimWrapper' and cfg.optim_wrapper.loss_scale == 'dynamic'


def test_dist_backend_and_resume_options(tmp_path_factory):
    cfg = Config(dict(env_cfg=dict(dist_cfg=dict(backend='nccl'))))
    tools.setup_dist_backend(cfg, 'pytorch', cuda=False)
    assert cfg.env_cfg.dist_cfg.backend == 'gloo'
    cfg = Config(dict(env_cfg=dict(dist_cfg=dict(backend='nccl'))))
    tools.setup_dist_backend(cfg, 'pytorch', cuda=True)
    assert cfg.env_cfg.dist_cfg.backend == 'nccl'
    tools.setup_dist_backend(cfg, 'none', cuda=False)
    assert cfg.env_cfg.dist_cfg.backend == 'nccl'
    work = tmp_path_factory.mktemp('resume')
    cfg = Config(dict(load_from='x.pth', work_dir=str(work)))
    tools.setup_resume(cfg, 'auto')  # nothing to resume: from scratch
    assert cfg.resume is False and cfg.load_from is None
    for it in (2, 4):
        torch.save({'w': torch.randn(32)}, work / f'iter_{it}.pth')
    data = (work / 'iter_4.pth').read_bytes()
    (work / 'iter_4.pth').write_bytes(data[:len(data) // 2])  # killed mid-write, non-atomically
    (work / 'last_checkpoint').write_text(str(work / 'iter_4.pth'))
    tools.setup_resume(cfg, 'auto')  # the newest intact one
    assert cfg.resume is True and cfg.load_from == str(work / 'iter_2.pth')
    tools.setup_resume(cfg, 'a/iter_2.pth')
    assert cfg.resume is True and cfg.load_from == 'a/iter_2.pth'
    cfg = Config(dict())
    with pytest.raises(ConfigError, match='auto_scale_lr'):
        tools.setup_auto_scale_lr(cfg, True)
    cfg = Config(dict(auto_scale_lr=dict(enable=False, base_batch_size=16)))
    tools.setup_auto_scale_lr(cfg, True)
    assert cfg.auto_scale_lr.enable is True


def test_demo_config_is_cpu_ready():
    cfg = Config.fromfile(DEMO_CONFIG)
    assert cfg.default_scope == 'mmseg'
    assert cfg.model.backbone.type == 'mmc2f.MSCAN'
    assert cfg.model.decode_head.type == 'mmc2f.LightHamHead'
    assert cfg.model.backbone.norm_cfg.type == 'BN'
    assert cfg.optim_wrapper.type == 'OptimWrapper'
    assert cfg.train_dataloader.dataset.data_root == 'data/demo/seg'
    assert json.dumps(cfg.train_dataloader.dataset.metainfo.classes)

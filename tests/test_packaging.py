"""The wheel: requirements that respect a user's (CUDA) environment, and what a user needs.

One wheel is built per test session from a copy of the repository (``pip wheel --no-deps
--no-build-isolation``; nothing is downloaded) and installed with ``pip install --no-deps --target``
into a fresh folder. Commands then run from a temporary working directory with that folder on
``PYTHONPATH`` and this environment's interpreter (so torch and the mm* packages resolve), never
from the clone: ``mmc2f.__file__`` must lie in the folder.
"""
import configparser
import email
import json
import os
import os.path as osp
import shutil
import subprocess
import sys
import zipfile

import pytest

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
#: What the wheel is built from (the rest of the clone is irrelevant to it).
SOURCES = ('mmc2f', 'configs', 'tools', 'demo', 'requirements', 'setup.py', 'README.md',
           'MANIFEST.in', 'model-index.yml')

#: versions the ranges must accept: CUDA local builds, the verified set, the GPU machine's image
ACCEPT = {
    'torch': ['2.13.0+cu128', '2.13.0', '2.11.0+cu130', '2.4.0'],
    'torchvision': ['0.28.0+cu128', '0.28.0', '0.26.0'],
    'mmcv': ['2.1.0', '2.0.1'],
    'mmengine': ['0.10.7'],
    'mmdet': ['3.3.0'],
    'mmsegmentation': ['1.2.2'],
    'mmpretrain': ['1.2.0'],
}
#: ... and must refuse (mmdet 3.3 / mmseg 1.2.2 refuse mmcv >= 2.2)
REFUSE = {'mmcv': ['2.2.0'], 'mmengine': ['1.0.0'], 'torch': ['2.3.1']}


@pytest.fixture(scope='module')
def wheel(tmp_path_factory):
    src = tmp_path_factory.mktemp('src')
    for name in SOURCES:
        path = osp.join(REPO, name)
        if osp.isdir(path):
            shutil.copytree(path, src / name, symlinks=False,
                            ignore=shutil.ignore_patterns('__pycache__', '*.pyc', '.mim',
                                                          '*.egg-info'))
        elif osp.isfile(path):
            shutil.copy(path, src / name)
    out = tmp_path_factory.mktemp('dist')
    proc = subprocess.run(
        [sys.executable, '-m', 'pip', 'wheel', '--no-deps', '--no-build-isolation',
         '--disable-pip-version-check', '-q', '-w', str(out), str(src)],
        capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    wheels = list(out.glob('mmc2f-*.whl'))
    assert len(wheels) == 1, wheels
    return wheels[0]


@pytest.fixture(scope='module')
def installed(wheel, tmp_path_factory):
    """(target folder, env, cwd): the wheel installed alone into a fresh folder."""
    target = tmp_path_factory.mktemp('site')
    proc = subprocess.run(
        [sys.executable, '-m', 'pip', 'install', '--no-deps', '--disable-pip-version-check',
         '-q', '--target', str(target), str(wheel)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    env = dict(os.environ, PYTHONPATH=str(target), PYTHONDONTWRITEBYTECODE='1',
               OMP_NUM_THREADS='1', MMC2F_MALLOC_TUNING='0')
    cwd = tmp_path_factory.mktemp('user')
    return target, env, cwd


def _run(args, env, cwd, timeout=600):
    proc = subprocess.run(args, env=env, cwd=str(cwd), capture_output=True, text=True,
                          timeout=timeout)
    assert proc.returncode == 0, f'{args}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}'
    return proc.stdout


# ------------------------------------------------------------------------------- metadata
def _metadata(wheel):
    with zipfile.ZipFile(wheel) as z:
        name = next(n for n in z.namelist() if n.endswith('.dist-info/METADATA'))
        return email.message_from_string(z.read(name).decode())


def test_requires_dist_accepts_cuda_builds(wheel):
    from packaging.requirements import Requirement
    from packaging.version import Version

    reqs = {}
    for line in _metadata(wheel).get_all('Requires-Dist'):
        req = Requirement(line)
        if req.marker is None:  # extras (tests) carry a marker
            reqs[req.name.lower()] = req
    assert set(ACCEPT) <= set(reqs), sorted(reqs)
    for name, versions in ACCEPT.items():
        spec = reqs[name].specifier
        assert all(s.operator not in ('==', '===') for s in spec), f'{name} is pinned: {spec}'
        for v in versions:
            assert spec.contains(Version(v), prereleases=True), f'{name}{spec} refuses {v}'
    for name, versions in REFUSE.items():
        for v in versions:
            assert not reqs[name].specifier.contains(Version(v)), f'{name} accepts {v}'


def test_constraints_pin_the_verified_set():
    """The exact set lives in requirements/constraints.txt (not in the wheel's metadata)."""
    from packaging.requirements import Requirement
    from packaging.version import Version

    pins = {}
    with open(osp.join(REPO, 'requirements', 'constraints.txt')) as f:
        for line in f:
            line = line.split('#', 1)[0].strip()
            if line:
                req = Requirement(line)
                pins[req.name.lower()] = req.specifier
    assert str(pins['torch']) == '===2.13.0'  # never the local +cpu build (platform.md)
    assert not pins['torch'].contains('2.13.0+cpu')
    for name in ('torchvision', 'mmcv', 'mmengine', 'mmdet', 'mmsegmentation', 'mmpretrain',
                 'opencv-python', 'psutil'):
        assert [s.operator for s in pins[name]] == ['=='], f'{name} is not pinned'
    assert Version(next(iter(pins['opencv-python'])).version).major < 5
    # every pin satisfies the ranges the wheel declares
    with open(osp.join(REPO, 'requirements', 'runtime.txt')) as f:
        for line in f:
            line = line.split('#', 1)[0].strip()
            if line:
                req = Requirement(line)
                pin = pins.get(req.name.lower())
                if pin is not None and len(pin) == 1:
                    version = next(iter(pin)).version
                    if not version[0].isdigit():  # a range such as setuptools<82
                        continue
                    assert req.specifier.contains(version), f'{req} refuses pinned {version}'


def test_wheel_contents(wheel):
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        entry_points = z.read(next(n for n in names if n.endswith('entry_points.txt'))).decode()
    mim = 'mmc2f/.mim/'
    required = [
        'model-index.yml', 'configs/segnext/metafile.yml', 'configs/conv2former/metafile.yml',
        'configs/segnext/segnext_mscan-b_1xb16-adamw-160k_ade20k-512x512.py',
        'configs/segnext/segnext_b_ade20k.py', 'configs/_base_/models/segnext_mscan.py',
        'configs/_base_/schedules/segnext_adamw_160k.py', 'configs/_base_/datasets/demo_seg.py',
        'configs/upernet/upernet_conv2former-t_ade20k.py',
        'configs/demo/segnext_mscan-t_1xb8-adamw-400iter_demo-seg-128x128.py',
        'tools/train.py', 'tools/test.py', 'tools/dist_train.sh',
        'tools/analysis_tools/benchmark.py', 'tools/analysis_tools/get_flops.py',
        'tools/analysis_tools/analyze_logs.py', 'tools/model_converters/conv2former_to_mmc2f.py',
        'tools/model_converters/mscan_to_mmc2f.py', 'tools/deployment/pytorch2onnx.py',
        'tools/misc/make_demo_data.py', 'demo/image_demo.py']
    missing = [r for r in required if mim + r not in names]
    assert not missing, f'not in the wheel: {missing}'
    assert not [n for n in names if '__pycache__' in n or n.endswith('.pyc')]
    assert mim + 'tools/setup_env.sh' not in names  # clone maintenance only
    assert 'mmc2f/cli.py' in names and 'mmc2f/apis/recipes.py' in names
    assert 'mmc2f/ops/csrc/nhwc_kernels.cpp' in names  # mmc2f.ops.native builds it at first use
    # every config of the clone travels, with its _base_ files
    shipped = {n[len(mim + 'configs/'):] for n in names if n.startswith(mim + 'configs/')}
    for root, _, files in os.walk(osp.join(REPO, 'configs')):
        for f in files:
            if f.endswith(('.py', '.yml')) and '__pycache__' not in root:
                rel = osp.relpath(osp.join(root, f), osp.join(REPO, 'configs'))
                assert rel.replace(os.sep, '/') in shipped, rel
    ep = configparser.ConfigParser()
    ep.read_string(entry_points)
    assert ep['console_scripts']['mmc2f'].strip() == 'mmc2f.cli:main'


# ------------------------------------------------------------------------- from the wheel
def test_installed_wheel_resolves_shipped_configs(installed):
    target, env, cwd = installed
    out = _run([sys.executable, '-c', (
        'import json, mmc2f, mmc2f.shipped as c; '
        'print(json.dumps(dict(file=mmc2f.__file__, root=c.mim_root(), '
        "short=c.get_config_path('segnext_b_ade20k'), "
        "long=c.get_config_path('segnext/segnext_mscan-b_1xb16-adamw-160k_ade20k-512x512'), "
        'n=len(c.list_configs()))))')], env, cwd)
    info = json.loads(out.strip().splitlines()[-1])
    assert info['file'].startswith(str(target)), info
    assert info['root'] == osp.join(str(target), 'mmc2f', '.mim')
    assert info['short'] == osp.join(info['root'], 'configs', 'segnext', 'segnext_b_ade20k.py')
    assert info['long'].startswith(info['root'])
    assert info['n'] >= 100

    # the console script pip wrote, and list-configs --path
    script = osp.join(str(target), 'bin', 'mmc2f')
    assert osp.isfile(script)
    out = _run([sys.executable, script, 'list-configs', '--path', 'segnext_b_ade20k'], env, cwd)
    assert out.strip() == info['short']
    out = _run([sys.executable, script, 'list-configs', 'segnext_*_ade20k'], env, cwd)
    assert out.split() == [f'segnext/segnext_{s}_ade20k' for s in 'blst']


def test_user_config_inherits_shipped_config(installed):
    """`mmc2f new-config` writes a config outside any clone that inherits a shipped one; MMEngine
    loads it (mmseg:: bases from the installed mmseg, ../_base_ files from the wheel)."""
    target, env, cwd = installed
    script = osp.join(str(target), 'bin', 'mmc2f')
    _run([sys.executable, script, 'new-config', 'segnext_b_ade20k', 'my_segnext.py'], env, cwd)
    with open(cwd / 'my_segnext.py', 'a') as f:
        f.write('train_dataloader = dict(batch_size=4)\n')
    out = _run([sys.executable, '-c', (
        'from mmengine.config import Config; '
        "c = Config.fromfile('my_segnext.py'); "
        "print(c.model.backbone.type, c.model.backbone.arch, c.train_dataloader.batch_size, "
        'c.train_dataloader.dataset.type, c.model.decode_head.channels)')], env, cwd)
    assert out.split()[-5:] == ['mmc2f.MSCAN', 'base', '4', 'ADE20KDataset', '512']


@pytest.mark.slow
def test_train_and_test_from_the_wheel(installed):
    """`mmc2f make-demo-data`, then `mmc2f train` / `mmc2f test` on a derived demo config: the
    shipped tools run from the installed wheel (2 iterations, 4 test images)."""
    target, env, cwd = installed
    script = osp.join(str(target), 'bin', 'mmc2f')
    _run([sys.executable, script, 'make-demo-data', '--out', 'data/demo', '--task', 'seg'],
         env, cwd)
    _run([sys.executable, script, 'new-config',
          'demo/segnext_mscan-t_1xb8-adamw-400iter_demo-seg-128x128', 'tiny.py'], env, cwd)
    with open(cwd / 'tiny.py', 'a') as f:
        f.write("train_cfg = dict(max_iters=2, val_interval=1000)\n"
                "param_scheduler = [dict(type='ConstantLR', factor=1.0, by_epoch=False)]\n"
                "train_dataloader = dict(batch_size=2, num_workers=0, persistent_workers=False)\n"
                "test_dataloader = dict(num_workers=0, persistent_workers=False, "
                "dataset=dict(indices=4))\n"
                "val_dataloader = test_dataloader\n"
                "default_hooks = dict(checkpoint=dict(interval=2))\n")
    _run([sys.executable, script, 'train', 'tiny.py', '--work-dir', 'wd'], env, cwd)
    ckpt = cwd / 'wd' / 'iter_2.pth'
    assert ckpt.is_file()
    out = _run([sys.executable, script, 'test', 'tiny.py', str(ckpt), '--work-dir', 'wd/test'],
               env, cwd)
    assert 'mIoU' in out

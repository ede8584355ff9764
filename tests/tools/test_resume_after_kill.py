"""Training killed with SIGKILL and resumed with ``tools/train.py --resume`` ends where an
uninterrupted run ends, bit for bit; a kill while a checkpoint is being written leaves the
previous checkpoint in charge (issue 7, item 2).

All runs go through ``tools/train.py`` in subprocesses: a tiny SegNeXt (MSCAN with small dims +
LightHamHead) on 32 px synthetic data, 12 iterations of ``IterBasedTrainLoop``, a checkpoint every
4 iterations with optimizer and param-scheduler state, ``randomness=dict(seed=0,
deterministic=True)``, ``OMP_NUM_THREADS=1``, ``num_workers=0`` and no validation.

Why the comparison can be exact (``torch.equal``, not a tolerance):

* MMEngine does not save the RNG states in a checkpoint. On resume it seeds again (same seed),
  rebuilds the model, loads the weights and, for ``IterBasedTrainLoop``, *advances the dataloader*
  by the iterations already done (``Advance dataloader 4 steps``). The sampler
  (``InfiniteSampler``, its own seeded generator) and the pipeline's random flips (the global
  numpy/python RNGs, consumed only by the data in the main process since ``num_workers=0``) thus
  replay the same batches in the same order.
* The torch RNG is *not* replayed, so the model must not draw random numbers while training: the
  test config sets ``dropout_ratio=0`` and the Hamburger's ``rand_init=False`` (fixed NMF bases, a
  buffer drawn at build time and then saved in the checkpoint). With the demo config's random NMF
  bases (``rand_init=True``) a resumed run is a valid but different continuation, and exact
  equality cannot hold; that is a limitation of MMEngine's resume, not of mmc2f.
* One thread and ``deterministic=True`` make the CPU kernels give the same bits on each run.

How the kills are made deterministic (no race with a fast or slow machine):

* (b) a test hook (``StallHook``) writes a marker file after iteration 6 (``iter_4.pth`` is on
  disk) and then sleeps; the test waits for the marker and sends ``SIGKILL`` to the process.
* (c) a test hook (``KillWhileSavingHook``) wraps ``os.fsync``: when the file being synced is the
  temporary file of ``iter_8.pth``, it cuts that file to half its size (the bytes a crash would
  not have written yet) and sends ``SIGKILL`` to its own process, i.e. the process dies in the
  middle of saving ``iter_8.pth``.
"""
import os
import os.path as osp
import signal
import subprocess
import sys
import time

import pytest
import torch

from mmc2f.checkpoint import (find_resumable_checkpoint, is_intact_checkpoint,
                                    load_checkpoint_file)

REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
TRAIN = osp.join(REPO, 'tools', 'train.py')
MAX_ITERS = 12

TINY_BASE = osp.join(REPO, 'tests', 'tools', 'tiny_segnext.py')
TINY = """
_base_ = [{base!r}]
data_root = {data_root!r}
model = dict(decode_head=dict(dropout_ratio=0.0, ham_kwargs=dict(rand_init=False)))
train_dataloader = dict(dataset=dict(data_root=data_root))
val_dataloader = None
val_cfg = None
val_evaluator = None
train_cfg = dict(type='IterBasedTrainLoop', max_iters={max_iters}, val_interval=1000)
param_scheduler = [
    dict(type='LinearLR', start_factor=0.1, by_epoch=False, begin=0, end=6),
    dict(type='PolyLR', power=1.0, eta_min=0.0, by_epoch=False, begin=6, end={max_iters})]
default_hooks = dict(
    logger=dict(interval=1),
    checkpoint=dict(interval=4, max_keep_ckpts=-1, save_optimizer=True,
                    save_param_scheduler=True))
randomness = dict(seed=0, deterministic=True)
"""

# Test-only hooks, imported by the runner through ``custom_imports`` (PYTHONPATH = tmp folder).
HOOKS = '''
import os
import os.path as osp
import signal
import time

from mmengine.hooks import Hook
from mmengine.registry import HOOKS


@HOOKS.register_module()
class StallHook(Hook):
    """After iteration ``after`` (and after the checkpoint hook): write ``marker``, then sleep."""
    priority = 'LOWEST'

    def __init__(self, after, marker):
        self.after = after
        self.marker = marker

    def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None):
        if runner.iter + 1 == self.after:
            with open(self.marker, 'w') as f:
                f.write(str(os.getpid()))
            time.sleep(600)


@HOOKS.register_module()
class KillWhileSavingHook(Hook):
    """SIGKILL this process while it fsyncs the temporary file of checkpoint ``name``."""

    def __init__(self, name):
        self.name = name

    def before_train(self, runner):
        real_fsync = os.fsync
        work_dir, name = runner.work_dir, self.name

        def fsync(fd):
            ino = os.fstat(fd).st_ino
            for entry in os.listdir(work_dir):
                path = osp.join(work_dir, entry)
                if (entry.startswith('.' + name + '.') and entry.endswith('.tmp')
                        and os.stat(path).st_ino == ino):
                    os.ftruncate(fd, os.fstat(fd).st_size // 2)
                    os.kill(os.getpid(), signal.SIGKILL)
            return real_fsync(fd)

        os.fsync = fsync
'''


def _env(tmp):
    return dict(os.environ, OMP_NUM_THREADS='1', MKL_NUM_THREADS='1',
                PYTHONPATH=os.pathsep.join([str(tmp), REPO]))


def _train(tmp, config, work_dir, *extra):
    proc = subprocess.run([sys.executable, TRAIN, config, '--work-dir', str(work_dir), *extra],
                          cwd=str(tmp), env=_env(tmp), capture_output=True, text=True, timeout=300)
    return proc, proc.stdout + proc.stderr


def _assert_same(a, b, where='checkpoint'):
    """Recursive exact equality of checkpoint parts (tensors with ``torch.equal``)."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor), where
        assert a.dtype == b.dtype and a.shape == b.shape, where
        assert torch.equal(a, b), f'{where}: max |diff| {(a.double() - b.double()).abs().max()}'
    elif isinstance(a, dict):
        assert isinstance(b, dict) and set(a) == set(b), f'{where}: keys {set(a) ^ set(b)}'
        for k in a:
            _assert_same(a[k], b[k], f'{where}.{k}')
    elif isinstance(a, (list, tuple)):
        assert isinstance(b, (list, tuple)) and len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_same(x, y, f'{where}[{i}]')
    else:
        assert a == b, f'{where}: {a!r} != {b!r}'


@pytest.fixture(scope='module')
def setup(tmp_path_factory):
    """Data, the configs and the uninterrupted reference run."""
    from mmc2f.datasets.synthetic import make_seg_dataset
    tmp = tmp_path_factory.mktemp('resume_kill')
    data_root = tmp / 'data' / 'demo' / 'seg'
    make_seg_dataset(str(data_root), num_train=6, num_val=1, size=32, seed=0)
    (tmp / 'kill_hooks.py').write_text(HOOKS)
    config = tmp / 'tiny.py'
    config.write_text(TINY.format(base=TINY_BASE, data_root=str(data_root),
                                  max_iters=MAX_ITERS))
    ref = tmp / 'ref'
    proc, out = _train(tmp, str(config), ref)
    assert proc.returncode == 0, out[-4000:]
    return dict(tmp=tmp, config=str(config), ref=ref)


def _hook_config(setup, name, hook):
    path = setup['tmp'] / name
    path.write_text(f"_base_ = [{setup['config']!r}]\n"
                    "custom_imports = dict(imports=['kill_hooks'], allow_failed_imports=False)\n"
                    f"custom_hooks = [{hook}]\n")
    return str(path)


def _resume_and_compare(setup, work_dir):
    """``--resume`` (auto) in ``work_dir`` from iteration 4; the end must equal the reference."""
    proc, out = _train(setup['tmp'], setup['config'], work_dir, '--resume')
    assert proc.returncode == 0, out[-4000:]
    assert 'Advance dataloader 4 steps' in out, out[-4000:]
    assert f'Iter(train) [ 5/{MAX_ITERS}]' in out and f'[ 4/{MAX_ITERS}]' not in out, out[-4000:]
    ref = load_checkpoint_file(str(setup['ref'] / f'iter_{MAX_ITERS}.pth'))
    got = load_checkpoint_file(str(work_dir / f'iter_{MAX_ITERS}.pth'))
    assert ref['meta']['iter'] == got['meta']['iter'] == MAX_ITERS
    # The weights changed during training (else equality would prove nothing)...
    first = load_checkpoint_file(str(setup['ref'] / 'iter_4.pth'))
    assert any(not torch.equal(first['state_dict'][k], v)
               for k, v in ref['state_dict'].items() if v.is_floating_point())
    # ... and the resumed run ends with exactly the reference's weights, optimizer and schedulers.
    _assert_same(ref['state_dict'], got['state_dict'], 'state_dict')
    _assert_same(ref['optimizer'], got['optimizer'], 'optimizer')
    _assert_same(ref['param_schedulers'], got['param_schedulers'], 'param_schedulers')
    assert got['optimizer']['state'], 'the optimizer state was not saved'


@pytest.mark.slow
def test_reference_run(setup):
    ref = setup['ref']
    for it in (4, 8, 12):
        ckpt = load_checkpoint_file(str(ref / f'iter_{it}.pth'))
        assert ckpt['meta']['iter'] == it
        assert {'state_dict', 'optimizer', 'param_schedulers'} <= set(ckpt)
    assert find_resumable_checkpoint(str(ref)) == str(ref / f'iter_{MAX_ITERS}.pth')


@pytest.mark.slow
def test_sigkill_after_checkpoint_then_resume(setup):
    """(b) SIGKILL after iteration 6 (last checkpoint: iter_4), then ``--resume`` to the end."""
    tmp = setup['tmp']
    work_dir = tmp / 'killed'
    marker = tmp / 'stalled'
    config = _hook_config(setup, 'stall.py',
                          f"dict(type='StallHook', after=6, marker={str(marker)!r})")
    proc = subprocess.Popen([sys.executable, TRAIN, config, '--work-dir', str(work_dir)],
                            cwd=str(tmp), env=_env(tmp), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)
    try:
        deadline = time.time() + 240
        while not marker.exists() and proc.poll() is None and time.time() < deadline:
            time.sleep(0.2)
        assert marker.exists(), proc.communicate(timeout=60)[0].decode()[-4000:] \
            if proc.poll() is not None else 'the run never reached iteration 6'
        assert int(marker.read_text()) == proc.pid
        os.kill(proc.pid, signal.SIGKILL)
        out = proc.communicate(timeout=60)[0].decode()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL, out[-4000:]
    assert 'Iter(train) [ 6/12]' in out and 'Iter(train) [ 7/12]' not in out, out[-4000:]
    assert (work_dir / 'iter_4.pth').is_file() and not (work_dir / 'iter_8.pth').exists()
    assert find_resumable_checkpoint(str(work_dir)) == str(work_dir / 'iter_4.pth')
    _resume_and_compare(setup, work_dir)


@pytest.mark.slow
def test_sigkill_while_saving_keeps_previous_checkpoint(setup):
    """(c) SIGKILL in the middle of writing iter_8.pth: no iter_8.pth appears, last_checkpoint
    still names iter_4.pth, which is intact and loads; ``--resume`` continues from it."""
    tmp = setup['tmp']
    work_dir = tmp / 'killed_saving'
    config = _hook_config(setup, 'kill_saving.py', "dict(type='KillWhileSavingHook', "
                          "name='iter_8.pth')")
    proc, out = _train(tmp, config, work_dir)
    assert proc.returncode == -signal.SIGKILL, out[-4000:]
    assert 'Iter(train) [ 8/12]' in out and 'Iter(train) [ 9/12]' not in out, out[-4000:]
    # The process died with a half-written temporary file of iter_8.pth on disk ...
    leftovers = [n for n in os.listdir(work_dir) if n.startswith('.iter_8.pth.')]
    assert len(leftovers) == 1, os.listdir(work_dir)
    assert not is_intact_checkpoint(str(work_dir / leftovers[0]))
    # ... but never under the checkpoint's name; the previous checkpoint is still the one to use.
    assert not (work_dir / 'iter_8.pth').exists()
    with open(work_dir / 'last_checkpoint') as f:
        assert osp.basename(f.read().strip()) == 'iter_4.pth'
    found = find_resumable_checkpoint(str(work_dir))
    assert found == str(work_dir / 'iter_4.pth')
    assert load_checkpoint_file(found)['meta']['iter'] == 4
    _resume_and_compare(setup, work_dir)

"""Run guards end to end, through ``tools/train.py`` in real subprocesses (issue 12, items 3-6).

A tiny SegNeXt with every random part on (drop path in MSCAN, dropout in the head, the NMF's random
bases each training forward), 8 iterations, a checkpoint every 4, ``num_workers=0``:

* SIGKILL after iteration 6, then ``--resume``: the final weights and optimizer state equal an
  uninterrupted run's (``torch.equal``); while the killed run is alive a second run in its work dir
  refuses at once naming it, and once it is dead its lock does not block;
* SIGTERM during iteration 3: a checkpoint of iteration 3, exit status 75, a log line with the
  resume command; resuming from it also ends bit-identical;
* a learning rate that explodes after iteration 2: exit status 1, ``error: ...`` naming the
  iteration and what to try, and ``max_keep_ckpts=1`` keeps the newest finite checkpoint;
* ``--resume`` in an empty work dir: a warning and training from scratch; in a work dir whose only
  checkpoint is damaged: an error naming it.
"""
import os
import os.path as osp
import signal
import subprocess
import sys
import time

import pytest
import torch

from mmc2f.checkpoint import is_intact_checkpoint, load_checkpoint_file

REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
TRAIN = osp.join(REPO, 'tools', 'train.py')
MAX_ITERS = 8

TINY_BASE = osp.join(REPO, 'tests', 'tools', 'tiny_segnext.py')
TINY = """
_base_ = [{base!r}]
data_root = {data_root!r}
model = dict(backbone=dict(drop_path_rate=0.2),
             decode_head=dict(dropout_ratio=0.2, ham_kwargs=dict(rand_init=True)))
train_dataloader = dict(dataset=dict(data_root=data_root))
val_dataloader = None
val_cfg = None
val_evaluator = None
train_cfg = dict(type='IterBasedTrainLoop', max_iters={max_iters}, val_interval=1000)
param_scheduler = [dict(type='LinearLR', start_factor=0.1, by_epoch=False, begin=0, end=8)]
default_hooks = dict(
    logger=dict(interval=1),
    checkpoint=dict(interval=4, max_keep_ckpts=-1, save_optimizer=True,
                    save_param_scheduler=True))
randomness = dict(seed=0, deterministic=True)
"""

HOOKS = '''
import os
import signal
import time

from mmengine.hooks import Hook
from mmengine.registry import HOOKS


@HOOKS.register_module()
class StallAfterHook(Hook):
    """After iteration ``after``: write ``marker`` (the pid), then sleep."""
    priority = 'LOWEST'

    def __init__(self, after, marker):
        self.after, self.marker = after, marker

    def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None):
        if runner.iter + 1 == self.after:
            with open(self.marker, 'w') as f:
                f.write(str(os.getpid()))
            time.sleep(600)


@HOOKS.register_module()
class SigtermDuringHook(Hook):
    """SIGTERM to this process at the start of iteration ``at`` (the iteration then runs on)."""

    def __init__(self, at):
        self.at = at

    def before_train_iter(self, runner, batch_idx, data_batch=None):
        if runner.iter + 1 == self.at:
            os.kill(os.getpid(), signal.SIGTERM)
'''

def _cmd(tmp, config, work_dir, *extra):
    return [sys.executable, TRAIN, config, '--work-dir', str(work_dir), *extra]


def _env(tmp):
    return dict(os.environ, OMP_NUM_THREADS='1', MKL_NUM_THREADS='1',
                PYTHONPATH=os.pathsep.join([str(tmp), REPO]))


def _train(tmp, config, work_dir, *extra):
    proc = subprocess.run(_cmd(tmp, config, work_dir, *extra), cwd=str(tmp), env=_env(tmp),
                          capture_output=True, text=True, timeout=300)
    return proc, proc.stdout + proc.stderr


def _config(setup, name, body):
    path = setup['tmp'] / name
    path.write_text(f"_base_ = [{setup['config']!r}]\n" + body)
    return str(path)


def _hook_config(setup, name, hook):
    return _config(setup, name, "custom_imports = dict(imports=['guard_test_hooks'], "
                   f"allow_failed_imports=False)\ncustom_hooks = [{hook}]\n")


def _assert_same(a, b, where):
    if isinstance(a, torch.Tensor):
        assert torch.equal(a, b), f'{where}: max |diff| {(a.double() - b.double()).abs().max()}'
    elif isinstance(a, dict):
        assert set(a) == set(b), f'{where}: keys {set(a) ^ set(b)}'
        for k in a:
            _assert_same(a[k], b[k], f'{where}.{k}')
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_same(x, y, f'{where}[{i}]')
    else:
        assert a == b, f'{where}: {a!r} != {b!r}'


@pytest.fixture(scope='module')
def setup(tmp_path_factory):
    """Data, configs and the uninterrupted reference run (started with ``--resume`` in an empty
    work dir: auto-resume on a fresh requeue must just train from scratch)."""
    from mmc2f.datasets.synthetic import make_seg_dataset
    tmp = tmp_path_factory.mktemp('guards')
    data_root = tmp / 'data'
    make_seg_dataset(str(data_root), num_train=6, num_val=1, size=32, seed=0)
    (tmp / 'guard_test_hooks.py').write_text(HOOKS)
    config = tmp / 'tiny.py'
    config.write_text(TINY.format(base=TINY_BASE, data_root=str(data_root),
                                  max_iters=MAX_ITERS))
    ref = tmp / 'ref'
    proc, out = _train(tmp, str(config), ref, '--resume')
    assert proc.returncode == 0, out[-4000:]
    return dict(tmp=tmp, config=str(config), ref=ref, ref_out=out)


def _assert_ends_like_reference(setup, work_dir):
    ref = load_checkpoint_file(str(setup['ref'] / f'iter_{MAX_ITERS}.pth'))
    got = load_checkpoint_file(str(work_dir / f'iter_{MAX_ITERS}.pth'))
    first = load_checkpoint_file(str(setup['ref'] / 'iter_4.pth'))
    assert any(not torch.equal(first['state_dict'][k], v)
               for k, v in ref['state_dict'].items() if v.is_floating_point())
    _assert_same(ref['state_dict'], got['state_dict'], 'state_dict')
    _assert_same(ref['optimizer'], got['optimizer'], 'optimizer')
    _assert_same(ref['resume_state'], got['resume_state'], 'resume_state')


@pytest.mark.slow
def test_reference_run_records_rng_and_position(setup):
    out = setup['ref_out']
    assert 'WARNING - --resume: no checkpoint in' in out and 'training starts from scratch' in out
    ckpt = load_checkpoint_file(str(setup['ref'] / 'iter_4.pth'))
    state = ckpt['resume_state']
    assert state['batches'] == ckpt['meta']['iter'] == 4
    assert {'python', 'numpy', 'torch'} <= set(state['rng'])
    if torch.cuda.is_available():  # the run trains on the GPU
        assert set(state['rng']['cuda']) == set(range(torch.cuda.device_count()))


@pytest.mark.slow
def test_sigkill_resume_is_bit_identical_and_lock(setup):
    """SIGKILL after iteration 6 (last checkpoint: iter_4); a second run meanwhile refuses; then
    ``--resume`` ends with exactly the reference's weights."""
    tmp = setup['tmp']
    work_dir = tmp / 'killed'
    marker = tmp / 'stalled'
    config = _hook_config(setup, 'stall.py',
                          f"dict(type='StallAfterHook', after=6, marker={str(marker)!r})")
    proc = subprocess.Popen(_cmd(tmp, config, work_dir), cwd=str(tmp), env=_env(tmp),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.time() + 240
        while not marker.exists() and proc.poll() is None and time.time() < deadline:
            time.sleep(0.2)
        assert marker.exists(), 'the run never reached iteration 6'
        # A second run in the same work dir: refused at once, naming the live one.
        start = time.time()
        second, out2 = _train(tmp, setup['config'], work_dir, '--resume')
        assert second.returncode == 2, out2[-3000:]
        assert 'is in use by another training run' in out2, out2[-3000:]
        assert f'pid {proc.pid} on host' in out2 and 'stall.py' in out2, out2[-3000:]
        assert 'Iter(train)' not in out2 and time.time() - start < 60
        os.kill(proc.pid, signal.SIGKILL)
        proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert (work_dir / 'iter_4.pth').is_file() and not (work_dir / 'iter_8.pth').exists()
    # The dead run's lock does not block; the resumed run restores the RNG states.
    resumed, out = _train(tmp, setup['config'], work_dir, '--resume')
    assert resumed.returncode == 0, out[-4000:]
    assert 'Advance dataloader 4 steps' in out and 'RNG states restored' in out, out[-4000:]
    _assert_ends_like_reference(setup, work_dir)


@pytest.mark.slow
def test_sigterm_saves_and_exits_then_resumes_exactly(setup):
    tmp = setup['tmp']
    work_dir = tmp / 'preempted'
    config = _hook_config(setup, 'term.py', "dict(type='SigtermDuringHook', at=3)")
    proc, out = _train(tmp, config, work_dir)
    assert proc.returncode == 75, out[-4000:]
    assert 'Iter(train) [3/8]' in out and 'Iter(train) [4/8]' not in out, out[-4000:]
    assert 'SIGTERM received: stopped after iteration 3' in out, out[-4000:]
    assert f'--work-dir {work_dir} --resume' in out, out[-4000:]
    ckpt = load_checkpoint_file(str(work_dir / 'iter_3.pth'))
    assert ckpt['meta']['iter'] == 3 and 'optimizer' in ckpt and 'param_schedulers' in ckpt
    with open(work_dir / 'last_checkpoint') as f:
        assert osp.basename(f.read().strip()) == 'iter_3.pth'
    resumed, out = _train(tmp, setup['config'], work_dir, '--resume')
    assert resumed.returncode == 0, out[-4000:]
    assert 'Advance dataloader 3 steps' in out, out[-4000:]
    _assert_ends_like_reference(setup, work_dir)


@pytest.mark.slow
def test_non_finite_loss_stops_and_keeps_the_finite_checkpoint(setup):
    """The lr jumps by 1e9 after iteration 2; a checkpoint every iteration, max_keep_ckpts=1."""
    tmp = setup['tmp']
    work_dir = tmp / 'nan'
    config = _config(setup, 'nan.py', (
        "param_scheduler = [dict(type='MultiStepLR', milestones=[2], gamma=1e9, "
        "by_epoch=False)]\n"
        "default_hooks = dict(checkpoint=dict(interval=1, max_keep_ckpts=1))\n"))
    proc, out = _train(tmp, config, work_dir)
    assert proc.returncode == 1, out[-4000:]
    err = [ln for ln in proc.stderr.splitlines() if ': error: ' in ln]
    assert err and 'training stopped: non-finite' in err[-1], proc.stderr[-3000:]
    stopped_at = int(err[-1].split(' at iteration ')[1].split()[0])
    assert stopped_at >= 3 and 'clip_grad' in err[-1] and 'learning rate' in err[-1]
    assert 'Traceback' not in proc.stderr
    ckpts = sorted(n for n in os.listdir(work_dir) if n.endswith('.pth'))
    assert ckpts == [f'iter_{stopped_at - 1}.pth'], ckpts
    assert f'iter_{stopped_at - 1}.pth, is kept' in err[-1]
    kept = load_checkpoint_file(str(work_dir / ckpts[0]))
    assert all(torch.isfinite(v).all() for v in kept['state_dict'].values()
               if v.is_floating_point())
    with open(work_dir / 'last_checkpoint') as f:
        assert osp.basename(f.read().strip()) == ckpts[0]


@pytest.mark.slow
def test_resume_with_only_damaged_checkpoints_fails(setup):
    tmp = setup['tmp']
    work_dir = tmp / 'damaged'
    work_dir.mkdir()
    data = (setup['ref'] / 'iter_4.pth').read_bytes()
    (work_dir / 'iter_4.pth').write_bytes(data[:len(data) // 2])
    assert not is_intact_checkpoint(str(work_dir / 'iter_4.pth'))
    proc, out = _train(tmp, setup['config'], work_dir, '--resume')
    assert proc.returncode == 2, out[-3000:]
    assert 'every checkpoint in' in proc.stderr and str(work_dir / 'iter_4.pth') in proc.stderr
    assert 'Iter(train)' not in out


@pytest.mark.slow
@pytest.mark.skipif(not torch.cuda.is_available(), reason='AMP needs CUDA')
def test_amp_skipped_steps_do_not_stop(setup):
    """A huge initial loss scale: the first steps overflow in fp16 and are skipped; not an error."""
    tmp = setup['tmp']
    work_dir = tmp / 'amp'
    config = _config(setup, 'amp.py', "optim_wrapper = dict(type='AmpOptimWrapper', "
                     "loss_scale=dict(init_scale=2.0**60, growth_interval=1000))\n")
    proc, out = _train(tmp, config, work_dir, '--amp')
    assert proc.returncode == 0, out[-4000:]
    assert (work_dir / f'iter_{MAX_ITERS}.pth').is_file()

"""mmc2f.engine.guards: the hooks on a stub runner, the RNG round trip, the wiring function.
End to end (real training processes): tests/tools/test_resume_exact.py."""
import logging
import random
import signal
import sys
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from mmengine.config import Config
from torch import nn

from mmc2f.checkpoint import load_checkpoint_file
from mmc2f.engine import guards
from mmc2f.engine.guards import (NonFiniteGuardHook, PreemptionHook, RngStateHook, TrainingError,
                                 capture_rng_state, restore_rng_state, setup_run_guards)


class _Hub:
    def __init__(self, info=None):
        self.info = info or {}

    def get_info(self, key):
        return self.info.get(key)


def _runner(model=None, it=2, last=None, resume=False):
    return SimpleNamespace(model=model or nn.Linear(3, 2), iter=it, epoch=0, _resume=resume,
                           logger=logging.getLogger('test_guards'),
                           message_hub=_Hub({'last_ckpt': last}), work_dir='.')


def _draws():
    return (random.random(), np.random.rand(3).tolist(), torch.rand(3).tolist())


def test_rng_round_trip_through_a_weights_only_checkpoint(tmp_path):
    state = capture_rng_state()
    first = _draws()
    torch.save({'resume_state': {'rng': state}}, str(tmp_path / 'c.pth'))
    loaded = load_checkpoint_file(str(tmp_path / 'c.pth'))['resume_state']['rng']
    assert restore_rng_state(loaded) is None
    assert _draws() == first


def test_non_finite_loss_stops_with_iteration_and_hints():
    hook = NonFiniteGuardHook()
    runner = _runner(it=6, last='w/iter_4.pth')
    hook.after_train_iter(runner, 6, outputs={'loss': torch.tensor(1.0), 'acc': torch.tensor(1.)})
    with pytest.raises(TrainingError) as err:
        hook.after_train_iter(runner, 6, outputs={'loss': torch.tensor(float('nan')),
                                                  'decode.loss_ce': torch.tensor(float('nan'))})
    msg = str(err.value)
    assert 'non-finite loss at iteration 7' in msg and 'w/iter_4.pth, is kept' in msg
    for hint in ('learning rate', 'clip_grad', '--amp', 'check the data'):
        assert hint in msg


def test_non_finite_weights_stop_but_inf_grads_alone_do_not():
    model = nn.Linear(3, 2)
    runner = _runner(model)
    hook = NonFiniteGuardHook()
    # AMP's skipped step: the gradients are inf, the weights are unchanged and finite.
    model.weight.grad = torch.full_like(model.weight, float('inf'))
    hook.after_train_iter(runner, 2, outputs={'loss': torch.tensor(0.5)})
    # A step taken with a non-finite gradient leaves non-finite weights.
    with torch.no_grad():
        model.bias[0] = float('nan')
    with pytest.raises(TrainingError, match=r'non-finite weights .*iteration 3.*bias'):
        hook.after_train_iter(runner, 2, outputs={'loss': torch.tensor(0.5)})


def test_non_finite_checkpoint_is_refused():
    hook = NonFiniteGuardHook()
    good = {'state_dict': {'w': torch.ones(2), 'n': torch.tensor(3)}}
    hook.before_save_checkpoint(_runner(), good)
    bad = {'state_dict': {'w': torch.ones(2)}, 'ema_state_dict': {'e': torch.tensor([np.inf])}}
    with pytest.raises(TrainingError, match='refusing to write a checkpoint.*ema_state_dict'):
        hook.before_save_checkpoint(_runner(), bad)


def test_rng_hook_saves_state_and_validation_leaves_training_rng_alone():
    hook = RngStateHook()
    runner = _runner(it=3)
    hook.before_train_iter(runner, 3)
    hook.before_val(runner)
    ckpt = {'meta': {}}
    torch.rand(5)  # validation draws
    hook.before_save_checkpoint(runner, ckpt)  # e.g. save_best during validation
    hook.after_val(runner)
    assert ckpt['resume_state']['batches'] == 4
    after_val = _draws()
    restore_rng_state(ckpt['resume_state']['rng'])
    assert _draws() == after_val  # the checkpoint holds the training stream's state


class _Loop:
    def __init__(self, done):
        self.iter, self.epoch = done, 0
        self.dataloader_iterator = iter(range(100))


def test_rng_hook_restores_after_the_resume_skip_only_on_resume():
    state = capture_rng_state()
    expected = _draws()
    hook = RngStateHook()
    runner = _runner(resume=False)
    hook.after_load_checkpoint(runner, {'resume_state': {'rng': state, 'batches': 2}})
    assert hook._pending is None  # load_from: fresh RNG states
    runner = _runner(resume=True)
    runner.train_loop = _Loop(2)
    hook.after_load_checkpoint(runner, {'resume_state': {'rng': state, 'batches': 2}})
    hook.before_train_epoch(runner)
    it = runner.train_loop.dataloader_iterator
    assert [next(it), next(it)] == [0, 1]  # the skip: nothing restored yet
    _draws()  # what the skipped batches' pipeline would draw
    assert next(it) == 2  # the first new batch: restored just before it
    assert _draws() == expected


def test_sigterm_handler_sets_the_flag(monkeypatch):
    previous = signal.getsignal(signal.SIGTERM)
    monkeypatch.setitem(guards._sigterm, 'installed', False)
    monkeypatch.setitem(guards._sigterm, 'received', 0)
    try:
        assert guards.install_sigterm_handler()
        signal.raise_signal(signal.SIGTERM)
        assert guards._sigterm['received'] == 1
    finally:
        signal.signal(signal.SIGTERM, previous)
    hook = PreemptionHook()
    hook.before_save_checkpoint(_runner(), {'meta': {'iter': 7}})
    assert hook._saved_iter == 7


def test_setup_run_guards(tmp_path, monkeypatch):
    previous = signal.getsignal(signal.SIGTERM)
    monkeypatch.setitem(guards._sigterm, 'installed', False)
    monkeypatch.setattr(sys, 'excepthook', sys.excepthook)
    try:
        cfg = Config(dict(work_dir=str(tmp_path / 'w'), launcher='none',
                          custom_hooks=[dict(type='mmc2f.RngStateHook'), dict(type='X')]))
        assert setup_run_guards(cfg, 'auto') is None  # nothing to resume: from scratch
        types = [h['type'] for h in cfg.custom_hooks]
        assert types == ['mmc2f.RngStateHook', 'X', 'mmc2f.WorkDirLockHook',
                         'mmc2f.NonFiniteGuardHook', 'mmc2f.PreemptionHook']
        assert not (tmp_path / 'w').exists()  # a fresh work dir: locked by WorkDirLockHook
        (tmp_path / 'w').mkdir()
        assert setup_run_guards(cfg, 'a.pth') == 'a.pth'
        assert (tmp_path / 'w' / 'mmc2f-train.lock').is_file()
        assert [h['type'] for h in cfg.custom_hooks] == types
    finally:
        signal.signal(signal.SIGTERM, previous)
        from mmc2f.engine.workdir import _held
        for lock in list(_held.values()):
            lock.release()

"""The one safe checkpoint loader: weights_only=True plus an explicit allow-list."""
import argparse
import os
import os.path as osp
import re

import pytest
import torch
import torch.nn as nn

import mmc2f.registry  # noqa: F401  (process setup: MMEngine loads through mmc2f, as in the tools)
from mmc2f.checkpoint import UnsafeCheckpointError, load_checkpoint_file, save_checkpoint_atomic


def _runner_checkpoint(work_dir):
    """Train a toy model for 4 iterations with MMEngine's Runner; return its last checkpoint."""
    from mmengine.model import BaseModel
    from mmengine.runner import Runner
    from torch.utils.data import Dataset

    class Toy(BaseModel):

        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(2, 1)

        def forward(self, x, y, mode='tensor'):
            out = self.fc(torch.stack(x))
            if mode == 'loss':
                return dict(loss=((out - torch.stack(y))**2).mean())
            return out

    class Data(Dataset):

        def __len__(self):
            return 8

        def __getitem__(self, i):
            g = torch.Generator().manual_seed(i)
            return dict(x=torch.randn(2, generator=g), y=torch.randn(1, generator=g))

    runner = Runner(
        model=Toy(), work_dir=str(work_dir),
        train_dataloader=dict(dataset=Data(), sampler=dict(type='DefaultSampler', shuffle=True),
                              batch_size=4),
        optim_wrapper=dict(optimizer=dict(type='AdamW', lr=0.1)),
        param_scheduler=dict(type='MultiStepLR', milestones=[2], by_epoch=False),
        train_cfg=dict(by_epoch=False, max_iters=4),
        default_hooks=dict(checkpoint=dict(type='CheckpointHook', interval=4, by_epoch=False)),
        default_scope='mmengine')
    runner.train()
    return osp.join(str(work_dir), 'iter_4.pth')


def test_runner_checkpoint_loads_with_weights_only(tmp_path):
    path = _runner_checkpoint(tmp_path)
    # torch's default loader (weights_only=True since 2.6) refuses the runner's HistoryBuffer objects
    # unless the allow-list is installed; with mmc2f it loads, through both entry points.
    ckpt = load_checkpoint_file(path)
    assert set(ckpt) >= {'meta', 'state_dict', 'optimizer', 'message_hub', 'param_schedulers'}
    assert ckpt['meta']['iter'] == 4
    loss_buffer = ckpt['message_hub']['log_scalars']['train/loss']
    assert len(loss_buffer.data[0]) == 4
    from mmengine.runner import CheckpointLoader
    again = CheckpointLoader.load_checkpoint(path, map_location='cpu')
    for k, v in ckpt['state_dict'].items():
        assert torch.equal(v, again['state_dict'][k])


def test_authors_checkpoint_with_namespace_loads(tmp_path):
    path = tmp_path / 'authors.pth'
    torch.save({'state_dict': {'w': torch.ones(2)}, 'args': argparse.Namespace(lr=1e-3, model='t'),
                'epoch': 299}, path)
    ckpt = load_checkpoint_file(path)
    assert ckpt['args'].model == 't' and ckpt['epoch'] == 299


class _WritesFile:
    """Unpickling this would create a file: the test checks it never runs."""

    def __init__(self, target):
        self.target = target

    def __reduce__(self):
        return (open, (self.target, 'w'))


class _ReachesPrivateAttr:

    def __reduce__(self):
        from mmengine.logging.history_buffer import HistoryBuffer
        return (getattr, (HistoryBuffer, '__init__'))


def test_arbitrary_pickled_object_is_refused(tmp_path):
    target = tmp_path / 'pwned'
    path = tmp_path / 'evil.pth'
    torch.save({'state_dict': {}, 'payload': _WritesFile(str(target))}, path)
    with pytest.raises(UnsafeCheckpointError, match=r'not on mmc2f.s allow-list.*builtins\.open|'
                       r'not on mmc2f.s allow-list.*unsupported global'):
        load_checkpoint_file(path)
    assert not target.exists()
    # MMEngine's own loader (used by resume / load_from / Pretrained) is routed through mmc2f's.
    from mmengine.runner import CheckpointLoader
    with pytest.raises(UnsafeCheckpointError):
        CheckpointLoader.load_checkpoint(str(path))
    assert not target.exists()


def test_getattr_is_restricted_to_history_buffer_statistics(tmp_path):
    path = tmp_path / 'evil2.pth'
    torch.save({'payload': _ReachesPrivateAttr()}, path)
    with pytest.raises(UnsafeCheckpointError, match=r"getattr\('HistoryBuffer', '__init__'\)"):
        load_checkpoint_file(path)


def test_missing_file_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match='nope.pth'):
        load_checkpoint_file(tmp_path / 'nope.pth')


def test_no_unsafe_unpickling_anywhere():
    root = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
    offenders = []
    for folder in ('mmc2f', 'tools', 'demo'):
        for dirpath, _, files in os.walk(osp.join(root, folder)):
            for name in files:
                if name.endswith('.py'):
                    text = open(osp.join(dirpath, name)).read()
                    if re.search(r'weights_only\s*=\s*False|TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD', text):
                        offenders.append(osp.join(dirpath, name))
    assert offenders == []


def test_atomic_save_never_leaves_half_written_file(tmp_path):
    path = tmp_path / 'ckpt.pth'
    save_checkpoint_atomic({'v': torch.arange(3)}, path)

    def dies_halfway(obj, f):
        f.write(b'PK\x03\x04 partial')
        raise KeyboardInterrupt('killed while saving')

    with pytest.raises(KeyboardInterrupt):
        save_checkpoint_atomic({'v': torch.arange(5)}, path, save_fn=dies_halfway)
    assert torch.equal(load_checkpoint_file(path)['v'], torch.arange(3))
    assert os.listdir(tmp_path) == ['ckpt.pth']


def test_runner_writes_checkpoints_atomically(tmp_path, monkeypatch):
    """With mmc2f's backend, a kill while the runner writes a checkpoint leaves the old one intact."""
    from mmengine.fileio import get_file_backend

    from mmc2f.checkpoint import AtomicLocalBackend
    backend = get_file_backend(str(tmp_path / 'iter_1.pth'))
    assert isinstance(backend, AtomicLocalBackend)
    good = tmp_path / 'iter_1.pth'
    backend.put(b'complete', str(good))

    class Killed(BaseException):
        pass

    real_fsync = os.fsync

    def killed(fd):
        raise Killed()

    monkeypatch.setattr(os, 'fsync', killed)
    with pytest.raises(Killed):
        backend.put(b'half', str(good))
    monkeypatch.setattr(os, 'fsync', real_fsync)
    assert good.read_bytes() == b'complete'
    assert sorted(os.listdir(tmp_path)) == ['iter_1.pth']


def test_find_resumable_checkpoint_skips_damaged_files(tmp_path):
    from mmc2f.checkpoint import find_resumable_checkpoint, is_intact_checkpoint
    assert find_resumable_checkpoint(str(tmp_path)) is None
    for it in (2, 4):
        torch.save({'it': it, 'w': torch.randn(64)}, tmp_path / f'iter_{it}.pth')
    (tmp_path / 'last_checkpoint').write_text(str(tmp_path / 'iter_4.pth'))
    assert find_resumable_checkpoint(str(tmp_path)) == str(tmp_path / 'iter_4.pth')
    # A checkpoint cut short (e.g. written by a tool without atomic saving, then killed) ...
    data = (tmp_path / 'iter_4.pth').read_bytes()
    (tmp_path / 'iter_6.pth').write_bytes(data[:len(data) // 2])
    assert not is_intact_checkpoint(str(tmp_path / 'iter_6.pth'))
    (tmp_path / 'last_checkpoint').write_text(str(tmp_path / 'iter_6.pth'))
    assert find_resumable_checkpoint(str(tmp_path)) == str(tmp_path / 'iter_4.pth')
    # ... and a truncated record both fall back to the newest intact file.
    (tmp_path / 'last_checkpoint').write_text('')
    assert find_resumable_checkpoint(str(tmp_path)) == str(tmp_path / 'iter_4.pth')

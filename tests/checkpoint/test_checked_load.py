"""Checked whole-model loading (runner, inference API), damaged files, umask, stale temp files."""
import logging
import os
import os.path as osp
import stat

import pytest
import torch
import torch.nn as nn

import mmc2f.registry  # noqa: F401  (setup_process: safe loaders, atomic backend)
from mmc2f.checkpoint import (AtomicLocalBackend, load_checkpoint_file, load_into_model,
                              remove_stale_temp_files, save_checkpoint_atomic)
from mmc2f.errors import CheckpointError, CheckpointFormatError, UnsafeCheckpointError


# ------------------------------------------------------------------ damaged / unsafe files
def test_empty_and_truncated_files_are_named(tmp_path):
    empty = tmp_path / 'empty.pth'
    empty.write_bytes(b'')
    with pytest.raises(CheckpointError, match=r'"[^"]*empty\.pth" is empty \(0 bytes\)'):
        load_checkpoint_file(empty)
    good = tmp_path / 'good.pth'
    torch.save({'state_dict': {'w': torch.randn(256)}}, good)
    data = good.read_bytes()
    for name, cut in (('half.pth', len(data) // 2), ('end.pth', len(data) - 10)):
        (tmp_path / name).write_bytes(data[:cut])
        with pytest.raises(CheckpointError,
                           match=name + '" is truncated or not a torch checkpoint'):
            load_checkpoint_file(tmp_path / name)
    (tmp_path / 'text.pth').write_text('not a checkpoint\n')
    with pytest.raises(CheckpointError, match='text.pth" is truncated or not a torch checkpoint'):
        load_checkpoint_file(tmp_path / 'text.pth')
    # through MMEngine's loader (load_from / resume / Pretrained) as well
    from mmengine.runner import CheckpointLoader
    with pytest.raises(CheckpointError, match='empty'):
        CheckpointLoader.load_checkpoint(str(empty))


class _Call:
    def __reduce__(self):
        return (os.system, ('true', ))


def test_unsafe_message_names_global_and_file(tmp_path):
    path = tmp_path / 'evil.pth'
    torch.save({'x': _Call()}, path)
    with pytest.raises(UnsafeCheckpointError) as err:
        load_checkpoint_file(path)
    assert 'posix.system' in str(err.value) and str(path) in str(err.value)


# ------------------------------------------------------------------ strict / partial loads
class _Seg(nn.Module):
    """Key layout of a segmentor: backbone.*, decode_head.conv_seg.*"""

    def __init__(self, num_classes=150):
        super().__init__()
        self.backbone = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.Conv2d(8, 8, 3))
        self.decode_head = nn.Module()
        self.decode_head.conv_seg = nn.Conv2d(8, num_classes, 1)


def test_strict_load_names_counts_examples_and_cause():
    model = _Seg()
    good = {k: v.clone() for k, v in _Seg().state_dict().items()}
    load_into_model(model, good, strict=True)
    # a classifier checkpoint for a segmentor
    cls = {k: v for k, v in good.items() if k.startswith('backbone.')}
    cls['head.fc.weight'] = torch.zeros(10, 8)
    with pytest.raises(CheckpointFormatError) as err:
        load_into_model(model, cls, strict=True, source='checkpoint "x.pth"')
    msg = str(err.value)
    assert 'checkpoint "x.pth" does not match _Seg' in msg
    assert '2 missing keys (e.g. decode_head.conv_seg.weight' in msg
    assert '1 unexpected keys (e.g. head.fc.weight)' in msg
    assert 'likely cause: a classifier checkpoint for a segmentor' in msg
    # only backbone weights (no prefix)
    bare = {k[len('backbone.'):]: v for k, v in good.items() if k.startswith('backbone.')}
    with pytest.raises(CheckpointFormatError, match='holds only backbone weights'):
        load_into_model(model, bare, strict=True)
    # another number of classes
    ten = dict(good, **{k: v for k, v in _Seg(10).state_dict().items() if 'conv_seg' in k})
    with pytest.raises(CheckpointFormatError, match='head shapes differ: num_classes 10 vs 150'):
        load_into_model(model, ten, strict=True)


def test_partial_load_logs_a_table_and_fails_when_most_is_unmatched(caplog):
    from mmengine.logging import MMLogger
    logger = MMLogger.get_instance('mmc2f_test_partial')
    model = _Seg()
    ten = {k: v for k, v in _Seg(10).state_dict().items()}
    ten['extra.weight'] = torch.zeros(1)
    with caplog.at_level(logging.WARNING):
        report = load_into_model(model, ten, strict=False, source='load_from "ft.pth"',
                                 logger=logger)
    assert torch.equal(model.backbone[0].weight, ten['backbone.0.weight'])
    assert len(report.shape) == 2 and report.unexpected == ['extra.weight']
    # nothing useful in the checkpoint: refused even for fine-tuning
    with pytest.raises(CheckpointFormatError, match=r'only 0% of its parameter tensors'):
        load_into_model(model, {'head.fc.weight': torch.zeros(3)}, strict=False)


def _runner(tmp_path, model, **kwargs):
    from mmc2f.engine.runner import CPUCapableRunner
    return CPUCapableRunner(model=model, work_dir=str(tmp_path / 'work'), **kwargs)


def test_runner_load_checkpoint_modes(tmp_path):
    from mmengine.model import BaseModel

    class Net(BaseModel):
        def __init__(self, n=4):
            super().__init__()
            self.backbone = nn.Linear(4, 8)
            self.decode_head = nn.Linear(8, n)

        def forward(self, *a, **k):
            return {}

    runner = _runner(tmp_path, Net())
    other = tmp_path / 'other.pth'
    torch.save({'state_dict': Net(10).state_dict()}, other)
    # load_from for fine-tuning: partial (head shapes differ), logged
    runner.load_checkpoint(str(other))
    # testing: strict
    with runner._phase('test'), pytest.raises(CheckpointFormatError,
                                              match='num_classes 10 vs 4'):
        runner.load_checkpoint(str(other))
    runner.strict_load = True
    with pytest.raises(CheckpointFormatError):
        runner.load_checkpoint(str(other))
    # resume from a checkpoint without runner meta
    runner.strict_load = None
    bare = tmp_path / 'bare.pth'
    torch.save(Net().state_dict(), bare)
    with pytest.raises(CheckpointError, match=r'cannot resume from .*bare\.pth.*no runner state '
                       r'.*set load_from'):
        runner.resume(str(bare))


# ------------------------------------------------------------------ umask and temp files
@pytest.mark.parametrize('mask', [0o022, 0o077, 0o002])
def test_written_files_follow_the_umask(tmp_path, mask):
    old = os.umask(mask)
    try:
        save_checkpoint_atomic({'w': torch.zeros(1)}, tmp_path / 'a.pth')
        AtomicLocalBackend().put(b'x', str(tmp_path / 'b.pth'))
    finally:
        os.umask(old)
    for name in ('a.pth', 'b.pth'):
        assert stat.S_IMODE(os.stat(tmp_path / name).st_mode) == 0o666 & ~mask


def test_remove_stale_temp_files(tmp_path, caplog):
    save_checkpoint_atomic({'w': torch.zeros(1)}, tmp_path / 'iter_2.pth')
    dead = tmp_path / '.iter_4.pth.999999999-ab12cd_x.tmp'  # no such pid
    old_style = tmp_path / '.iter_6.pth.k3j_2x9a.tmp'
    live = tmp_path / f'.iter_8.pth.{os.getppid()}-zz9.tmp'  # a live writer: kept
    for p in (dead, old_style, live):
        p.write_bytes(b'PK partial')
    (tmp_path / 'notes.tmp').write_text('kept')
    removed = remove_stale_temp_files(str(tmp_path))
    assert sorted(removed) == sorted([str(dead), str(old_style)])
    assert sorted(os.listdir(tmp_path)) == sorted(['iter_2.pth', live.name, 'notes.tmp'])
    assert remove_stale_temp_files(str(tmp_path / 'nope')) == []


def test_disk_full_is_reported(tmp_path, monkeypatch):
    import errno
    save_checkpoint_atomic({'w': torch.ones(1)}, tmp_path / 'c.pth')

    def full(obj, f):
        f.write(b'PK\x03\x04')
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    with pytest.raises(CheckpointError, match=r'cannot write ".*c\.pth": no space left on device'):
        save_checkpoint_atomic({'w': torch.zeros(1)}, tmp_path / 'c.pth', save_fn=full)
    assert torch.equal(load_checkpoint_file(tmp_path / 'c.pth')['w'], torch.ones(1))
    assert os.listdir(tmp_path) == ['c.pth'] and osp.isfile(tmp_path / 'c.pth')

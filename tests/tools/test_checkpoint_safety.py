"""Checkpoint safety through the real tools: tools/test.py CHECKPOINT, tools/train.py --resume and
load_from refuse pickled code (also from a URL), never score or resume from the wrong weights,
and the converters refuse to overwrite their input or write into a directory.

Each training run is 2 iterations of a tiny SegNeXt on a tiny synthetic set. Refusals are
one ``error:`` line and exit status 2.
"""
import errno
import os
import os.path as osp
import re
import subprocess
import sys

import pytest
import torch
from _reference.checkpoints import RunsCommand, serve_folder

from mmc2f.checkpoint import check_output_path, load_checkpoint_file
from mmc2f.errors import CheckpointError

REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
TRAIN = osp.join(REPO, 'tools', 'train.py')
TEST = osp.join(REPO, 'tools', 'test.py')
CONVERTERS = [osp.join(REPO, 'tools', 'model_converters', n)
              for n in ('conv2former_to_mmc2f.py', 'mscan_to_mmc2f.py')]

TINY_BASE = osp.join(REPO, 'tests', 'tools', 'tiny_segnext.py')
TINY = """
_base_ = [{base!r}]
data_root = {data_root!r}
train_dataloader = dict(dataset=dict(data_root=data_root))
val_dataloader = dict(dataset=dict(data_root=data_root))
test_dataloader = val_dataloader
train_cfg = dict(max_iters=2, val_interval=100)
default_hooks = dict(checkpoint=dict(interval=2))
"""


def _refused(proc) -> bool:
    """Exit 2 with a one-line ``error: ...`` (the tools' user-error path, no traceback)."""
    return proc.returncode == 2 and 'error: ' in proc.stderr and 'Traceback' not in proc.stderr


def _run(args, cwd, env_extra=None, timeout=300):
    env = dict(os.environ, OMP_NUM_THREADS='1', **(env_extra or {}))
    proc = subprocess.run([sys.executable] + args, cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)
    return proc, proc.stdout + proc.stderr


@pytest.fixture(scope='module')
def setup(tmp_path_factory):
    """Tiny data and config, a 2-iteration run, an HTTP server with an evil checkpoint."""
    from mmc2f.datasets.synthetic import make_seg_dataset
    tmp = tmp_path_factory.mktemp('safety')
    data_root = tmp / 'data'
    make_seg_dataset(str(data_root), num_train=2, num_val=1, size=32, seed=0)
    config = tmp / 'tiny_seg.py'
    config.write_text(TINY.format(base=TINY_BASE, data_root=str(data_root)))
    work_dir = tmp / 'work'
    proc, out = _run([TRAIN, str(config), '--work-dir', str(work_dir)], cwd=str(tmp))
    assert proc.returncode == 0, out[-3000:]
    served = tmp / 'served'
    served.mkdir()
    marker = tmp / 'MARKER'
    torch.save({'state_dict': {}, 'x': RunsCommand(f'touch {marker}')}, served / 'evil.pth')
    with serve_folder(served) as base_url:
        yield dict(tmp=tmp, config=str(config), ckpt=work_dir / 'iter_2.pth', marker=marker,
                   url=f'{base_url}/evil.pth', env={'TORCH_HOME': str(tmp / 'torch_home')})
    assert not marker.exists(), 'code from a checkpoint ran'


def _wrong_head(setup, name='ten_classes.pth', keep_meta=True):
    """The trained checkpoint with a 10-class decode head."""
    ckpt = load_checkpoint_file(str(setup['ckpt']))
    sd = ckpt['state_dict']
    for k in ('decode_head.conv_seg.weight', 'decode_head.conv_seg.bias'):
        sd[k] = torch.zeros((10, ) + tuple(sd[k].shape[1:]))
    path = setup['tmp'] / name
    torch.save(ckpt if keep_meta else sd, path)
    return str(path)


@pytest.mark.slow
def test_test_tool_refuses_url_with_code_and_wrong_weights(setup):
    tmp = str(setup['tmp'])
    proc, out = _run([TEST, setup['config'], setup['url'], '--work-dir', tmp + '/t1'], cwd=tmp,
                     env_extra=setup['env'])
    assert _refused(proc) and not setup['marker'].exists(), out[-3000:]
    assert 'posix.system' in out and setup['url'] in out, out[-3000:]
    proc, out = _run([TEST, setup['config'], _wrong_head(setup), '--work-dir', tmp + '/t2'],
                     cwd=tmp)
    assert _refused(proc), out[-3000:]
    assert 'does not match' in out and 'head shapes differ: num_classes 10 vs 4' in out, \
        out[-3000:]
    assert not re.search(r'Iter\(test\).*mIoU', out)  # no score from wrong weights


@pytest.mark.slow
def test_resume_needs_runner_meta_and_matching_weights(setup):
    tmp = str(setup['tmp'])
    bare = setup['tmp'] / 'bare.pth'
    torch.save(load_checkpoint_file(str(setup['ckpt']))['state_dict'], bare)
    args = ['--cfg-options', 'train_cfg.max_iters=3']
    proc, out = _run([TRAIN, setup['config'], '--work-dir', tmp + '/r1', '--resume', str(bare)]
                     + args, cwd=tmp)
    assert _refused(proc), out[-3000:]
    assert 'no runner state' in out and 'load_from' in out, out[-3000:]
    proc, out = _run([TRAIN, setup['config'], '--work-dir', tmp + '/r2', '--resume',
                      _wrong_head(setup)] + args, cwd=tmp)
    assert _refused(proc), out[-3000:]
    assert '--resume checkpoint' in out and 'num_classes 10 vs 4' in out, out[-3000:]
    assert 'resumed epoch' not in out


@pytest.mark.slow
def test_load_from_partial_table_and_refusals(setup):
    tmp = str(setup['tmp'])
    # fine-tuning from a checkpoint with another head: loads, with a table of what did not match
    proc, out = _run([TRAIN, setup['config'], '--work-dir', tmp + '/f1', '--cfg-options',
                      f'load_from={_wrong_head(setup, keep_meta=False)}'], cwd=tmp)
    assert proc.returncode == 0, out[-3000:]
    assert 'partial load' in out and 'shape differs' in out, out[-3000:]
    # code in a load_from URL: refused before anything runs
    proc, out = _run([TRAIN, setup['config'], '--work-dir', tmp + '/f2', '--cfg-options',
                      f'load_from={setup["url"]}'], cwd=tmp, env_extra=setup['env'])
    assert _refused(proc) and 'posix.system' in out and setup['url'] in out, out[-3000:]
    assert not setup['marker'].exists()


# ------------------------------------------------------------------ converters
def test_output_path_checks(tmp_path, monkeypatch):
    src = tmp_path / 'authors.pth'
    src.write_bytes(b'x')
    os.symlink(src, tmp_path / 'link.pth')
    (tmp_path / 'sub').mkdir()
    monkeypatch.chdir(tmp_path / 'sub')
    for dst in (str(src), str(tmp_path / 'link.pth'), '../authors.pth',
                '../sub/../authors.pth'):
        with pytest.raises(CheckpointError, match='is the input file'):
            check_output_path(str(src), dst)
    for dst in (str(tmp_path / 'sub'), '.', 'new_dir/'):
        with pytest.raises(CheckpointError, match='is a directory'):
            check_output_path(str(src), dst)
    check_output_path(str(src), 'converted.pth')
    check_output_path('https://host/authors.pth', 'authors.pth')


@pytest.mark.parametrize('tool', CONVERTERS)
def test_converters_refuse_in_place_and_directory_outputs(tmp_path, tool):
    src = tmp_path / 'authors.pth'
    torch.save({'state_dict': {'w': torch.zeros(1)}, 'args': 'keep'}, src)
    before = src.read_bytes()
    os.symlink(src, tmp_path / 'link.pth')
    (tmp_path / 'sub').mkdir()
    for dst, why in (('link.pth', 'is the input file'), ('sub', 'is a directory')):
        proc, out = _run([tool, str(src), dst], cwd=str(tmp_path))
        assert proc.returncode == 2 and why in proc.stderr, out[-2000:]
        assert proc.stderr.count('\n') == 1 and 'error: ' in proc.stderr  # one line
    assert src.read_bytes() == before


def test_converter_reports_full_disk(tmp_path, monkeypatch):
    from _reference.checkpoints import MSCAN_CLI, load_module, mscan_authors_state, random_mscan
    cli = load_module('mscan_to_mmc2f', MSCAN_CLI)
    src, dst = tmp_path / 'a.pth', tmp_path / 'b.pth'
    torch.save({'state_dict': mscan_authors_state(random_mscan(arch='tiny',
                                                               depths=[1, 1, 1, 1]))}, src)
    real_save = torch.save

    def full_disk(obj, f, *args, **kwargs):
        if hasattr(f, 'write'):
            f.write(b'PK\x03\x04')
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, 'save', full_disk)
    with pytest.raises(CheckpointError, match=r'cannot write ".*b\.pth": no space left on device'):
        cli.main([str(src), str(dst)])
    assert sorted(os.listdir(tmp_path)) == ['a.pth']  # no output, no temp file

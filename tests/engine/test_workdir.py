"""mmc2f.engine.workdir: the work-dir lock (real processes) and ``--resume`` discovery."""
import json
import os
import signal
import subprocess
import sys
import textwrap

import pytest
import torch

from mmc2f.engine.workdir import (LOCK_NAME, WorkDirInUseError, find_resume_checkpoint,
                                  global_rank, lock_work_dir, resolve_resume)
from mmc2f.errors import CheckpointError, UserError

# Locks work_dir, optionally forks a child that keeps the fd (like a dataloader worker), prints
# READY and sleeps.
HOLDER = textwrap.dedent('''
    import os, sys, time
    from mmc2f.engine.workdir import lock_work_dir
    lock_work_dir(sys.argv[1])
    if sys.argv[2] == 'fork' and os.fork() == 0:
        time.sleep(60)
        os._exit(0)
    print('READY', flush=True)
    time.sleep(60)
''')
TRY = textwrap.dedent('''
    import sys
    from mmc2f.engine.workdir import lock_work_dir, WorkDirInUseError
    try:
        lock_work_dir(sys.argv[1])
    except WorkDirInUseError as err:
        print('REFUSED', err)
    else:
        print('LOCKED')
''')


def _python(code, *args, **kw):
    return subprocess.Popen([sys.executable, '-c', code, *args], stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True, **kw)


def _try_lock(work_dir):
    p = _python(TRY, str(work_dir))
    return p.communicate(timeout=120)[0]


def _start_holder(work_dir, fork=False):
    p = _python(HOLDER, str(work_dir), 'fork' if fork else 'nofork', start_new_session=True)
    assert p.stdout.readline().strip() == 'READY'
    return p


def test_lock_refuses_a_second_process_and_names_the_first(tmp_path):
    holder = _start_holder(tmp_path)
    try:
        out = _try_lock(tmp_path)
        assert out.startswith('REFUSED'), out
        assert f'pid {holder.pid} on host' in out and '-c' in out and 'started' in out
        assert '--work-dir' in out
    finally:
        holder.kill()
        holder.wait()
    # Dead holder: the lock is free again.
    assert _try_lock(tmp_path).startswith('LOCKED')


def test_lock_of_a_killed_process_is_free_even_while_its_forked_child_lives(tmp_path):
    holder = _start_holder(tmp_path, fork=True)
    try:
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait()
        assert _try_lock(tmp_path).startswith('LOCKED')
    finally:
        os.killpg(holder.pid, signal.SIGKILL)  # the child (same session)


def test_lock_in_process_is_idempotent_and_writes_the_owner(tmp_path):
    lock = lock_work_dir(str(tmp_path / 'new'))
    try:
        assert lock_work_dir(str(tmp_path / 'new')) is lock
        with open(tmp_path / 'new' / LOCK_NAME) as f:
            owner = json.load(f)
        assert owner['pid'] == os.getpid() and owner['host'] and owner['command']
        assert _try_lock(tmp_path / 'new').startswith('REFUSED')
    finally:
        lock.release()
    assert _try_lock(tmp_path / 'new').startswith('LOCKED')
    assert issubclass(WorkDirInUseError, UserError)


def test_global_rank(monkeypatch):
    monkeypatch.setenv('RANK', '3')
    monkeypatch.setenv('SLURM_PROCID', '5')
    assert global_rank('none') == 0
    assert global_rank('pytorch') == 3
    assert global_rank('slurm') == 5


def _ckpt(path, intact=True):
    torch.save({'meta': {'iter': 1}, 'state_dict': {'w': torch.ones(64)}}, str(path))
    if not intact:
        data = path.read_bytes()
        path.write_bytes(data[:len(data) // 2])
    return str(path)


def test_find_resume_checkpoint_names_skipped_damaged(tmp_path):
    a = _ckpt(tmp_path / 'iter_2.pth')
    b = _ckpt(tmp_path / 'iter_4.pth', intact=False)
    c = _ckpt(tmp_path / 'iter_6.pth', intact=False)
    (tmp_path / 'last_checkpoint').write_text(c)
    found = find_resume_checkpoint(str(tmp_path))
    assert found.checkpoint == a and found.skipped == [c, b] and found.damaged == [c, b]
    logged = []
    assert resolve_resume(str(tmp_path), 'auto', log=lambda m, level=30: logged.append(m)) == a
    assert any(c in m and 'skipping damaged' in m for m in logged)
    assert any(b in m and 'skipping damaged' in m for m in logged)


def test_find_resume_checkpoint_follows_last_checkpoint(tmp_path):
    a = _ckpt(tmp_path / 'iter_2.pth')
    _ckpt(tmp_path / 'iter_4.pth', intact=False)
    (tmp_path / 'last_checkpoint').write_text(a)
    found = find_resume_checkpoint(str(tmp_path))
    assert found.checkpoint == a and found.skipped == []  # the damaged newer one is not skipped


def test_resolve_resume_all_damaged_is_an_error(tmp_path):
    bad = _ckpt(tmp_path / 'iter_4.pth', intact=False)
    with pytest.raises(CheckpointError, match='every checkpoint') as err:
        resolve_resume(str(tmp_path), 'auto', log=lambda m, level=30: None)
    assert bad in str(err.value)


@pytest.mark.parametrize('exists', [True, False])
def test_resolve_resume_nothing_is_a_warning(tmp_path, exists):
    work_dir = tmp_path / 'w'
    if exists:
        work_dir.mkdir()
    logged = []
    assert resolve_resume(str(work_dir), 'auto', log=lambda m, level=30: logged.append((m, level))
                          ) is None
    assert len(logged) == 1 and logged[0][1] == 30 and 'from scratch' in logged[0][0]
    assert ('does not exist' in logged[0][0]) == (not exists)


def test_resolve_resume_passes_other_values_through(tmp_path):
    assert resolve_resume(str(tmp_path), None) is None
    assert resolve_resume(str(tmp_path), 'x/iter_2.pth') == 'x/iter_2.pth'


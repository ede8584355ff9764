"""One training run per work dir, and ``--resume`` discovery that is never silent.

* :func:`lock_work_dir`: an exclusive ``flock`` on ``<work_dir>/mmc2f-train.lock`` that lives
  exactly as long as the process. A second run in the same work dir refuses at once, naming the
  process that holds the lock (pid, host, start time, command). The OS drops the lock when its
  process dies, so a killed run never blocks the next one; forked children (dataloader workers)
  close their copy of the descriptor, so they cannot keep a dead run's lock. Only the process of
  global rank 0 takes it.
* :func:`find_resume_checkpoint`: the checkpoint ``--resume`` continues from, with every damaged
  checkpoint it skips; :func:`resolve_resume` applies the rules of ``tools/train.py --resume``.
"""
import datetime
import json
import os
import os.path as osp
import socket
import sys
from typing import Dict, List, Optional

from mmc2f.checkpoint.io import ResumeChoice, find_resume_checkpoint
from mmc2f.errors import CheckpointError, UserError

__all__ = ['LOCK_NAME', 'WorkDirInUseError', 'WorkDirLock', 'lock_work_dir', 'global_rank',
           'ResumeChoice', 'find_resume_checkpoint', 'resolve_resume']

LOCK_NAME = 'mmc2f-train.lock'
_held: Dict[str, 'WorkDirLock'] = {}  # realpath of the lock file -> the lock this process holds


class WorkDirInUseError(UserError):
    """Another live process trains in this work dir."""


def global_rank(launcher: str = 'none') -> int:
    """This process's rank before the process group exists (from the launcher's environment)."""
    env = {'pytorch': 'RANK', 'slurm': 'SLURM_PROCID', 'mpi': 'OMPI_COMM_WORLD_RANK'}.get(launcher)
    return int(os.environ.get(env, '0')) if env else 0


class WorkDirLock:
    """A held work-dir lock; released by :meth:`release` or when the process ends."""

    def __init__(self, path: str, fd: int, owner: dict):
        self.path, self.fd, self.owner = path, fd, owner

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)  # drops the flock
            self.fd = None
            _held.pop(osp.realpath(self.path), None)


def _describe(owner: dict) -> str:
    if not owner:
        return 'a process that has not yet written its details'
    return (f"pid {owner.get('pid')} on host {owner.get('host')}, started "
            f"{owner.get('started')}, command: {owner.get('command')}")


def lock_work_dir(work_dir: str, create: bool = True) -> Optional[WorkDirLock]:
    """Lock ``work_dir`` for this process; idempotent within a process.

    Returns ``None`` when ``work_dir`` does not exist and ``create`` is false (nobody can be
    using it), or (with a warning) on a file system without locks.

    Raises:
        WorkDirInUseError: a live process holds the lock; the message names it.
    """
    import fcntl
    if not create and not osp.isdir(work_dir):
        return None
    os.makedirs(work_dir, exist_ok=True)
    path = osp.join(work_dir, LOCK_NAME)
    if osp.realpath(path) in _held:
        return _held[osp.realpath(path)]
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        owner = _read_owner(fd)
        os.close(fd)
        raise WorkDirInUseError(
            f'work dir {work_dir} is in use by another training run ({_describe(owner)}); two '
            f'runs in one work dir would mix their checkpoints and logs. Wait for it to end, stop '
            f'it, or choose another --work-dir. (Lock file: {path}; a lock left by a process that '
            'has died does not block.)') from None
    except OSError as err:  # e.g. ENOLCK / EOPNOTSUPP on some network file systems
        os.close(fd)
        from mmengine.logging import print_log
        print_log(f'could not lock work dir {work_dir} ({err}); nothing stops a second run from '
                  'using it at the same time', logger='current', level=30)
        return None
    owner = dict(pid=os.getpid(), host=socket.gethostname(),
                 started=datetime.datetime.now().isoformat(timespec='seconds'),
                 command=' '.join([osp.basename(sys.executable)] + sys.argv))
    data = (json.dumps(owner) + '\n').encode()
    os.ftruncate(fd, 0)
    os.pwrite(fd, data, 0)
    os.fsync(fd)
    lock = WorkDirLock(path, fd, owner)
    _held[osp.realpath(path)] = lock
    if not _held_fork_hook:
        os.register_at_fork(after_in_child=_close_in_child)
        _held_fork_hook.append(True)
    return lock


_held_fork_hook: List[bool] = []


def _close_in_child() -> None:
    """A forked child drops its copies of the lock descriptors (the parent keeps the lock)."""
    for lock in list(_held.values()):
        if lock.fd is not None:
            try:
                os.close(lock.fd)
            except OSError:
                pass
            lock.fd = None
    _held.clear()


def _read_owner(fd: int) -> dict:
    try:
        return json.loads(os.pread(fd, 65536, 0).decode() or '{}')
    except (OSError, ValueError):
        return {}


def resolve_resume(work_dir: str, resume: Optional[str], log=None) -> Optional[str]:
    """``--resume`` as ``tools/train.py`` means it: the checkpoint to resume from, or ``None``.

    ``resume`` is the option's value: ``None`` (no ``--resume``), ``'auto'`` (the flag alone) or a
    path (returned unchanged). For ``'auto'``: every damaged checkpoint skipped is named (warning);
    damaged checkpoints but no intact one is an error; no checkpoint at all is a warning that
    training starts from scratch (so auto-resume on a fresh slurm requeue just starts).

    Raises:
        CheckpointError: ``work_dir`` holds checkpoints, all of them damaged.
    """
    if resume != 'auto':
        return resume
    if log is None:
        from mmengine.logging import print_log

        def log(msg, level=30):
            print_log(msg, logger='current', level=level)

    found = find_resume_checkpoint(work_dir)
    if found.checkpoint is None and found.damaged:
        raise CheckpointError(
            f'--resume: every checkpoint in {work_dir} is damaged (truncated or corrupt): '
            f'{", ".join(found.damaged)}. Resume from an intact copy with --resume PATH, or move '
            'them away to train from scratch.')
    for path in found.skipped:
        log(f'--resume: skipping damaged checkpoint {path} (truncated or corrupt)')
    if found.checkpoint is None:
        where = work_dir if osp.isdir(work_dir) else f'{work_dir} (the folder does not exist yet)'
        log(f'--resume: no checkpoint in {where}: training starts from scratch (iteration 0)')
    else:
        log(f'--resume: resuming from {found.checkpoint}', 20)
    return found.checkpoint

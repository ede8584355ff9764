"""Reading and writing checkpoint files.

Reading: ``torch.load(weights_only=True)`` plus an explicit allow-list, entered as torch's
``safe_globals`` context for the one call (nothing process-wide). The allow-list holds exactly the
non-tensor types of the two kinds of checkpoint mmc2f reads:

* checkpoints written by MMEngine's runner (``meta.message_hub`` holds ``HistoryBuffer`` objects
  whose state is numpy arrays and numpy scalars);
* the Conv2Former authors' training-script checkpoints (``args`` is an ``argparse.Namespace``).

Writing: a temporary file beside the target, fsynced and renamed over it, so a kill never leaves a
half-written checkpoint. Resume discovery finds the newest intact checkpoint of a work dir.
"""
import argparse
import contextlib
import errno
import io
import os
import os.path as osp
import pickle
import re
import shutil
import struct
import tempfile
import time
import zipfile
from typing import Callable, List, NamedTuple, Optional

import torch
from mmengine.fileio import LocalBackend

from mmc2f.errors import CheckpointError, UnsafeCheckpointError

__all__ = [
    'safe_globals', 'load_checkpoint_file', 'save_checkpoint_atomic', 'AtomicLocalBackend',
    'is_intact_checkpoint', 'ResumeChoice', 'find_resume_checkpoint', 'find_resumable_checkpoint',
    'remove_stale_temp_files',
    'file_mode_from_umask', 'check_output_path'
]


def safe_globals() -> List[object]:
    """The allow-list: every non-tensor type that runner-written and authors' checkpoints contain."""
    import numpy as np
    allowed: List[object] = [argparse.Namespace, np.ndarray, np.dtype]
    # numpy scalars and array reconstruction (numpy 1.x: numpy.core, numpy 2.x: numpy._core).
    try:
        from numpy._core.multiarray import _reconstruct, scalar
    except ImportError:  # numpy < 2
        from numpy.core.multiarray import _reconstruct, scalar  # type: ignore
    allowed += [_reconstruct, scalar]
    # numpy >= 1.25 pickles dtypes as instances of per-type classes (Float64DType, ...).
    dtypes = getattr(np, 'dtypes', None)
    if dtypes is not None:
        for name in dir(dtypes):
            obj = getattr(dtypes, name)
            if isinstance(obj, type) and name.endswith('DType'):
                allowed.append(obj)
    from mmengine.logging.history_buffer import HistoryBuffer
    allowed.append(HistoryBuffer)
    # HistoryBuffer pickles its statistics methods as ``getattr(HistoryBuffer, 'min')``. Plain
    # ``getattr`` would reach any attribute of any allowed object, so the global name is mapped to a
    # getattr that resolves only those methods.
    allowed.append((_history_buffer_getattr, 'builtins.getattr'))
    return allowed


def _allow_list():
    """torch's ``safe_globals`` context for the allow-list entries not installed already (its
    exit removes the entries it was given, so it must not be given ones the process setup added
    for good)."""
    installed = torch.serialization.get_safe_globals()
    return torch.serialization.safe_globals([g for g in safe_globals() if g not in installed])


def _history_buffer_getattr(obj, name):
    """``getattr`` restricted to the statistics methods of MMEngine's ``HistoryBuffer`` class."""
    from mmengine.logging.history_buffer import HistoryBuffer
    if obj is HistoryBuffer and isinstance(name, str) and not name.startswith('_') and callable(
            HistoryBuffer.__dict__.get(name)):
        return getattr(HistoryBuffer, name)
    raise pickle.UnpicklingError(
        f'getattr({getattr(obj, "__name__", type(obj).__name__)!r}, {name!r}) is not allowed: only '
        "HistoryBuffer's statistics methods may be looked up while loading a checkpoint")


def load_checkpoint_file(path, map_location='cpu', source: Optional[str] = None):
    """Load a checkpoint with ``weights_only=True`` and mmc2f's allow-list.

    Args:
        path (str | os.PathLike | file-like): the checkpoint.
        map_location: as for :func:`torch.load` (default ``'cpu'``).
        source: how to name the checkpoint in messages (e.g. its URL and cache file); default
            ``path``.

    Raises:
        FileNotFoundError: the file does not exist.
        CheckpointError: the file is empty, truncated or not a torch checkpoint.
        UnsafeCheckpointError: the file holds a pickled object outside the allow-list (the
            message names the refused global and the file).
    """
    if isinstance(path, (str, os.PathLike)):
        path = os.fspath(path)
        if not osp.isfile(path):
            raise FileNotFoundError(f'checkpoint file "{path}" does not exist')
    name = source or (path if isinstance(path, str) else getattr(path, 'name', 'checkpoint'))
    broken = _broken_reason(path, check_zip=False)
    if broken:
        raise CheckpointError(f'checkpoint "{name}" {broken}')
    try:
        with _allow_list():
            return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        raise UnsafeCheckpointError(
            f'refused to load checkpoint "{name}": it contains a pickled object that is not on '
            f"mmc2f's allow-list ({_refusal_reason(err, path)}). mmc2f loads checkpoints with "
            'weights_only=True so that opening a file cannot run code. If the file comes from a '
            'source you trust, re-save only its tensors (for example with the converters in '
            'tools/model_converters/) and load that.') from err
    except (RuntimeError, EOFError, OSError, KeyError, ValueError, zipfile.BadZipFile,
            struct.error, UnicodeDecodeError) as err:
        if isinstance(err, (FileNotFoundError, PermissionError)):
            raise
        broken = _broken_reason(path, check_zip=True)
        if broken is None:
            raise
        raise CheckpointError(f'checkpoint "{name}" {broken} ({type(err).__name__}: '
                              f'{_first_line(err)})') from err


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return (text.splitlines()[0] if text else repr(err))[:200]


def _read_head_and_size(path):
    """The first bytes and the size of a path or a seekable file object (``None`` if unknown)."""
    if isinstance(path, str):
        with open(path, 'rb') as f:
            return f.read(8), os.path.getsize(path)
    try:
        pos = path.tell()
        head = path.read(8)
        path.seek(0, os.SEEK_END)
        size = path.tell() - pos
        path.seek(pos)
        return head, size
    except (AttributeError, OSError, ValueError):
        return None, None


def _broken_reason(path, check_zip: bool) -> Optional[str]:
    """Why ``path`` cannot be a torch checkpoint (``None``: it may be one). Cheap unless
    ``check_zip`` (then every zip member's CRC is read)."""
    head, size = _read_head_and_size(path)
    if size is None:
        return None
    if size == 0:
        return 'is empty (0 bytes): the save or download that wrote it did not complete'
    if not head.startswith((b'PK\x03\x04', b'\x80')):  # neither zip nor legacy (pickle) format
        return f'is truncated or not a torch checkpoint (starts with {head!r})'
    if not check_zip:
        return None
    if head.startswith(b'PK\x03\x04'):
        try:
            if isinstance(path, str):
                archive = zipfile.ZipFile(path)
            else:
                pos = path.tell()
                archive = zipfile.ZipFile(path)
            with archive:
                bad = archive.testzip()
            if not isinstance(path, str):
                path.seek(pos)
        except (zipfile.BadZipFile, OSError, EOFError, ValueError):
            return (f'is truncated or not a torch checkpoint ({size} bytes, a zip archive '
                    'without its end: the save or download was probably interrupted; save or '
                    'download it again)')
        if bad is not None:
            return f'is damaged (zip member "{bad}" fails its CRC check); save or download it again'
        return None
    return 'is truncated or not a torch checkpoint (a damaged legacy-format file?)'


def _refusal_reason(err: BaseException, path=None) -> str:
    """What was refused, in one line: ``refused global os.system`` when torch names it."""
    text = str(err)
    m = re.search(r'GLOBAL (\S+?)\.? (?:was not an allowed global|whose module)', text)
    if m:
        name = m.group(1)
        return f'refused unsupported global {name if "." in name else "builtins." + name}'
    m = re.search(r'getattr\([^\n]*is not allowed', text)
    if m:
        return m.group(0)
    m = re.search(r'Trying to call reduce for unrecognized function ([^\n]+)', text)
    if m:
        return f'refused call of {m.group(1).strip()}'
    names = _unsafe_globals(path)
    if names:
        return 'refused unsupported global ' + ', '.join(names[:5])
    lines = [ln.strip() for ln in text.splitlines()
             if ln.strip() and not ln.startswith(('Weights only load failed', 'Check the doc',
                                                  'Please file an issue'))]
    return (lines[0] if lines else text.strip().splitlines()[0])[:200]


def _unsafe_globals(path) -> List[str]:
    """Globals outside the allow-list that ``path`` names (read without unpickling)."""
    if not isinstance(path, str):
        return []
    try:
        with _allow_list():
            return list(torch.serialization.get_unsafe_globals_in_checkpoint(path))
    except Exception:  # noqa: BLE001  (a format torch cannot scan: no names to add)
        return []


def file_mode_from_umask() -> int:
    """``0o666 & ~umask``: the mode ``open(path, 'w')`` would give a new file."""
    try:  # Linux >= 4.7: read without changing it (os.umask is process-wide, not thread-safe)
        with open('/proc/self/status') as f:
            for line in f:
                if line.startswith('Umask:'):
                    return 0o666 & ~int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return 0o666 & ~mask


def _temp_prefix(path: str) -> str:
    """Temp files are ``.<name>.<pid>-<random>.tmp`` beside the target."""
    return f'.{osp.basename(path)}.{os.getpid()}-'


_TEMP_NAME = re.compile(r'^\.(?P<name>.+)\.(?:(?P<pid>\d+)-)?[A-Za-z0-9_]+\.tmp$')


@contextlib.contextmanager
def _atomic_open(path: str):
    """Open a temporary file beside ``path``; on success fsync it and rename it over ``path``.

    ``os.replace`` is atomic on POSIX and Windows, so ``path`` is either the old file or the whole
    new one, never a half-written one, whenever the process is killed. The file gets the mode a
    plain ``open`` would give (``0o666 & ~umask``), not ``mkstemp``'s 0600.
    """
    folder = osp.dirname(osp.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=_temp_prefix(path), suffix='.tmp', dir=folder)
    try:
        with os.fdopen(fd, 'wb') as f:
            yield f
            f.flush()
            if hasattr(os, 'fchmod'):
                os.fchmod(f.fileno(), file_mode_from_umask())
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as err:
        if osp.exists(tmp):
            os.remove(tmp)
        if isinstance(err, OSError) and err.errno in _DISK_FULL:
            raise CheckpointError(f'cannot write "{path}": {_disk_full(err, folder)}; '
                                  'the previous file (if any) is unchanged') from err
        raise


_DISK_FULL = {errno.ENOSPC, getattr(errno, 'EDQUOT', errno.ENOSPC)}


def _disk_full(err: OSError, folder: str) -> str:
    what = 'disk quota exceeded' if err.errno != errno.ENOSPC else 'no space left on device'
    try:
        free = shutil.disk_usage(folder).free
        return f'{what} ({free / 2**20:.0f} MiB free in {folder})'
    except OSError:
        return what


def check_output_path(src, dst) -> None:
    """Refuse an output path that names a directory or the input file itself (also through a
    symlink or another spelling), before anything is read or written."""
    dst = os.fspath(dst)
    if osp.isdir(dst) or dst.endswith(('/', os.sep)):
        raise CheckpointError(f'output "{dst}" is a directory; give a file name, e.g. '
                              f'{osp.join(dst, "converted.pth")}')
    if isinstance(src, (str, os.PathLike)) and '://' not in os.fspath(src):
        src = os.fspath(src)
        same = osp.realpath(src) == osp.realpath(dst)
        if not same and osp.exists(src) and osp.exists(dst):
            same = osp.samefile(src, dst)
        if same:
            raise CheckpointError(f'output "{dst}" is the input file "{src}": converting in place '
                                  'would replace the original; write to another path')


def _pid_alive(pid: int) -> bool:
    """Whether another live process on this machine has ``pid`` (ours: a previous run's file,
    e.g. a requeued container that got the same pid)."""
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True  # exists, owned by someone else
    return True


def remove_stale_temp_files(folder: str, logger='current') -> List[str]:
    """Remove the ``.<name>.*.tmp`` files that an interrupted atomic save left in ``folder``.

    Tools call this at start (after taking the work dir). A temp file whose writer process is
    still alive on this machine and that changed within the last hour is kept (a save in
    progress). Each removal is logged; returns the removed paths.
    """
    from mmengine.logging import print_log
    removed: List[str] = []
    if not folder or not osp.isdir(folder):
        return removed
    for name in sorted(os.listdir(folder)):
        m = _TEMP_NAME.match(name)
        path = osp.join(folder, name)
        if m is None or not osp.isfile(path):
            continue
        if m.group('pid') and _pid_alive(int(m.group('pid'))) and \
                time.time() - osp.getmtime(path) < 3600:
            continue
        try:
            size = osp.getsize(path)
            os.remove(path)
        except FileNotFoundError:
            continue
        removed.append(path)
        print_log(f'removed {path} ({size} bytes), a temporary file left by an interrupted save '
                  f'of {m.group("name")}', logger=logger)
    return removed


def save_checkpoint_atomic(obj, path: str,
                           save_fn: Optional[Callable[[object, io.BufferedWriter], None]] = None):
    """``torch.save(obj, path)`` (or ``save_fn(obj, file)``) such that a kill never leaves a
    half-written file at ``path``."""
    with _atomic_open(os.fspath(path)) as f:
        (torch.save if save_fn is None else save_fn)(obj, f)


class AtomicLocalBackend(LocalBackend):
    """MMEngine's local file backend with atomic writes (the runner writes every checkpoint
    through ``get_file_backend(path).put(bytes, path)``)."""

    def put(self, obj: bytes, filepath) -> None:
        with _atomic_open(os.fspath(filepath)) as f:
            f.write(obj)

    def put_text(self, obj: str, filepath, encoding: str = 'utf-8') -> None:
        self.put(obj.encode(encoding), filepath)


def is_intact_checkpoint(path: str) -> bool:
    """Whether ``path`` is a complete torch checkpoint (a zip archive whose members pass their CRCs)."""
    if not osp.isfile(path):
        return False
    try:
        with zipfile.ZipFile(path) as archive:
            return archive.testzip() is None
    except (zipfile.BadZipFile, OSError, EOFError):
        return False


_CKPT_NAME = re.compile(r'^(iter|epoch)_(\d+)\.pth$')


class ResumeChoice(NamedTuple):
    """Outcome of :func:`find_resume_checkpoint`."""
    checkpoint: Optional[str]  # the newest intact checkpoint, or None
    skipped: List[str]  # damaged checkpoints passed over (newest first)
    damaged: List[str]  # every damaged checkpoint found


def find_resume_checkpoint(work_dir: str) -> ResumeChoice:
    """The checkpoint that ``--resume`` continues from, and the damaged ones it skips.

    The file named in ``work_dir/last_checkpoint`` if intact, else the newest intact
    ``iter_*.pth`` / ``epoch_*.pth``. ``skipped`` lists the damaged files passed over to get there (the one the
    record names, then the newer numbered ones); ``damaged`` every damaged one seen.
    """
    named = None
    record = osp.join(work_dir, 'last_checkpoint')
    if osp.isfile(record):
        with open(record) as f:
            named = f.read().strip() or None
        if named and not osp.isabs(named) and not osp.exists(named):
            named = osp.join(work_dir, named)
    numbered = []
    if osp.isdir(work_dir):
        for name in os.listdir(work_dir):
            m = _CKPT_NAME.match(name)
            if m:
                numbered.append((int(m.group(2)), osp.join(work_dir, name)))
    candidates = ([named] if named else []) + [p for _, p in sorted(numbered, reverse=True)]
    seen, skipped, damaged, chosen = set(), [], [], None
    for path in candidates:
        key = osp.realpath(path)
        if key in seen:
            continue
        seen.add(key)
        if is_intact_checkpoint(path):
            chosen = chosen or path
        else:
            damaged.append(path)
            if chosen is None:
                skipped.append(path)
    return ResumeChoice(chosen, skipped, damaged)


def find_resumable_checkpoint(work_dir: str) -> Optional[str]:
    """The checkpoint ``--resume`` should continue from, or ``None`` (see
    :func:`find_resume_checkpoint`)."""
    return find_resume_checkpoint(work_dir).checkpoint

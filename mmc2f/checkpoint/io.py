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
import io
import os
import os.path as osp
import pickle
import re
import tempfile
import zipfile
from typing import Callable, List, Optional

import torch
from mmengine.fileio import LocalBackend

from mmc2f.errors import UnsafeCheckpointError

__all__ = [
    'safe_globals', 'load_checkpoint_file', 'save_checkpoint_atomic', 'AtomicLocalBackend',
    'is_intact_checkpoint', 'find_resumable_checkpoint'
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


def _history_buffer_getattr(obj, name):
    """``getattr`` restricted to the statistics methods of MMEngine's ``HistoryBuffer`` class."""
    from mmengine.logging.history_buffer import HistoryBuffer
    if obj is HistoryBuffer and isinstance(name, str) and not name.startswith('_') and callable(
            HistoryBuffer.__dict__.get(name)):
        return getattr(HistoryBuffer, name)
    raise pickle.UnpicklingError(
        f'getattr({getattr(obj, "__name__", type(obj).__name__)!r}, {name!r}) is not allowed: only '
        "HistoryBuffer's statistics methods may be looked up while loading a checkpoint")


def load_checkpoint_file(path, map_location='cpu'):
    """Load a checkpoint with ``weights_only=True`` and mmc2f's allow-list.

    Args:
        path (str | os.PathLike | file-like): the checkpoint.
        map_location: as for :func:`torch.load` (default ``'cpu'``).

    Raises:
        FileNotFoundError: the file does not exist.
        UnsafeCheckpointError: the file holds a pickled object outside the allow-list.
    """
    if isinstance(path, (str, os.PathLike)):
        path = os.fspath(path)
        if not osp.isfile(path):
            raise FileNotFoundError(f'checkpoint file "{path}" does not exist')
    try:
        with torch.serialization.safe_globals(safe_globals()):
            return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        raise UnsafeCheckpointError(
            f'refused to load checkpoint "{path}": it contains a pickled object that is not on '
            f"mmc2f's allow-list ({_refusal_reason(err)}). mmc2f loads checkpoints with "
            'weights_only=True so that opening a file cannot run code. If the file comes from a '
            'source you trust, re-save only its tensors (for example with the converters in '
            'tools/model_converters/) and load that.') from err


def _refusal_reason(err: BaseException) -> str:
    """The one line of torch's long weights_only message that names what was refused."""
    text = str(err)
    m = re.search(r'GLOBAL (\S+) was not an allowed global', text)
    if m:
        return f'unsupported global {m.group(1)}'
    m = re.search(r'getattr\([^\n]*is not allowed', text)
    if m:
        return m.group(0)
    lines = [ln.strip() for ln in text.splitlines() if 'error' in ln.lower()]
    return (lines[-1] if lines else text.strip().splitlines()[0])[:200]


@contextlib.contextmanager
def _atomic_open(path: str):
    """Open a temporary file beside ``path``; on success fsync it and rename it over ``path``.

    ``os.replace`` is atomic on POSIX and Windows, so ``path`` is either the old file or the whole
    new one, never a half-written one, whenever the process is killed.
    """
    folder = osp.dirname(osp.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix='.' + osp.basename(path) + '.', suffix='.tmp', dir=folder)
    try:
        with os.fdopen(fd, 'wb') as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if osp.exists(tmp):
            os.remove(tmp)
        raise


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


def find_resumable_checkpoint(work_dir: str) -> Optional[str]:
    """The checkpoint ``--resume`` should continue from, or ``None`` when ``work_dir`` has none.

    The one named in ``work_dir/last_checkpoint`` if it is intact; otherwise (the record is missing,
    truncated or names a damaged file) the newest intact ``iter_*.pth`` / ``epoch_*.pth``.
    """
    record = osp.join(work_dir, 'last_checkpoint')
    if osp.isfile(record):
        with open(record) as f:
            named = f.read().strip()
        if named and not osp.isabs(named) and not osp.exists(named):
            named = osp.join(work_dir, named)
        if named and is_intact_checkpoint(named):
            return named
    if not osp.isdir(work_dir):
        return None
    found = []
    for name in os.listdir(work_dir):
        m = _CKPT_NAME.match(name)
        if m:
            found.append((int(m.group(2)), osp.join(work_dir, name)))
    for _, path in sorted(found, reverse=True):
        if is_intact_checkpoint(path):
            return path
    return None

"""The one way mmc2f reads a checkpoint: ``torch.load(weights_only=True)`` plus an explicit allow-list.

Every path that loads a checkpoint goes through here: the tools (train/test/resume), ``init_cfg``
(``Pretrained``), the model converters and the demos. Nothing in mmc2f switches the process to unsafe
unpickling; a checkpoint that carries any other pickled object is refused with a message that says so.

The allow-list holds exactly the non-tensor types that the two kinds of checkpoint we read contain:

* checkpoints written by MMEngine's runner (``meta.message_hub`` holds ``HistoryBuffer`` objects whose
  state is numpy arrays and numpy scalars);
* the Conv2Former authors' training-script checkpoints (``args`` is an ``argparse.Namespace``).
"""
import argparse
import contextlib
import io
import logging
import os
import os.path as osp
import pickle
import re
import tempfile
import zipfile
from typing import Callable, Dict, Iterable, List, Optional, Sequence

import torch
from mmengine.fileio import LocalBackend, register_backend

__all__ = [
    'CheckpointFormatError', 'UnsafeCheckpointError', 'safe_globals', 'install_safe_loading',
    'load_checkpoint_file', 'load_state_dict_checked', 'save_checkpoint_atomic', 'extract_state_dict',
    'load_pretrained_weights', 'AtomicLocalBackend', 'install_atomic_checkpointing', 'is_intact_checkpoint',
    'find_resumable_checkpoint'
]


class UnsafeCheckpointError(pickle.UnpicklingError):
    """A checkpoint holds a pickled object outside mmc2f's allow-list."""


class CheckpointFormatError(KeyError):
    """A checkpoint's keys do not match the model it is loaded into."""

    def __str__(self):  # KeyError quotes its message; keep it readable.
        return str(self.args[0]) if self.args else ''


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
    try:
        from mmengine.logging.history_buffer import HistoryBuffer
        allowed.append(HistoryBuffer)
    except ImportError:  # pragma: no cover - mmengine is a hard dependency
        pass
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


_INSTALLED = False


def install_safe_loading() -> None:
    """Make MMEngine's own checkpoint loading (resume, ``load_from``, ``Pretrained``) safe and working.

    * Adds the allow-list to torch's ``weights_only`` unpickler (it stays ``weights_only=True``).
    * Replaces MMEngine's local-file loader with :func:`load_checkpoint_file`, so that a refused
      checkpoint gives mmc2f's clear message instead of torch's generic one.

    Idempotent; called when :mod:`mmc2f.registry` is imported and by every tool.
    """
    global _INSTALLED
    if _INSTALLED:
        return
    # Process-wide, but only these types: torch's ``safe_globals`` context manager would be the
    # narrower tool, yet on exit it drops allow-list entries added before it was entered.
    torch.serialization.add_safe_globals(safe_globals())
    try:
        from mmengine.runner.checkpoint import CheckpointLoader

        def _load_local(filename, map_location=None):
            filename = osp.expanduser(filename)
            if not osp.isfile(filename):
                raise FileNotFoundError(f'checkpoint file "{filename}" does not exist')
            return load_checkpoint_file(filename, map_location=map_location)

        CheckpointLoader.register_scheme(prefixes='', force=True)(_load_local)
    except ImportError:  # pragma: no cover
        pass
    _INSTALLED = True


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
    install_safe_loading()
    try:
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


def extract_state_dict(checkpoint, prefer_ema: bool = False) -> Dict[str, torch.Tensor]:
    """The model weights inside a loaded checkpoint.

    Accepts a bare state dict or a dict with ``state_dict`` / ``model`` / ``state_dict_ema``.
    """
    if not isinstance(checkpoint, dict):
        raise CheckpointFormatError(
            f'expected a checkpoint dict, got {type(checkpoint).__name__}')
    if prefer_ema:
        for key in ('state_dict_ema', 'model_ema', 'ema_state_dict'):
            if key in checkpoint:
                return checkpoint[key]
        raise CheckpointFormatError(
            'an EMA state dict was requested but the checkpoint has none (keys: '
            f'{sorted(checkpoint)[:8]})')
    for key in ('state_dict', 'model'):
        if key in checkpoint and isinstance(checkpoint[key], dict):
            return checkpoint[key]
    if all(isinstance(v, torch.Tensor) for v in checkpoint.values()):
        return checkpoint
    raise CheckpointFormatError(
        'cannot find the weights in this checkpoint: it has neither "state_dict" nor "model" and is '
        f'not a bare state dict (top-level keys: {sorted(checkpoint)[:8]})')


def _short(keys: Iterable[str], n: int = 5) -> str:
    keys = list(keys)
    text = ', '.join(keys[:n])
    return text + (f', ... ({len(keys)} in all)' if len(keys) > n else '')


def load_state_dict_checked(module: torch.nn.Module, state_dict: Dict[str, torch.Tensor],
                            strict: bool = True, hint: Optional[str] = None,
                            source: str = 'checkpoint', allow_missing: Sequence[str] = ()):
    """``module.load_state_dict`` that names the first missing and unexpected keys.

    Args:
        hint: what to suggest when the keys do not match (e.g. which converter to run).
        strict: raise :class:`CheckpointFormatError` on any mismatch; otherwise return the
            ``(missing, unexpected)`` lists. Shape mismatches always raise.
        allow_missing: regexes of the module's keys that a checkpoint may lack (layers that are
            new in mmc2f, e.g. per-output norms); they keep their initialisation.
    """
    own = module.state_dict()
    optional = [re.compile(p) for p in allow_missing]
    missing = [k for k in own if k not in state_dict and not any(p.fullmatch(k) for p in optional)]
    unexpected = [k for k in state_dict if k not in own]
    shape_err = [
        f'{k}: checkpoint {tuple(state_dict[k].shape)} vs model {tuple(own[k].shape)}'
        for k in own if k in state_dict and hasattr(state_dict[k], 'shape')
        and tuple(state_dict[k].shape) != tuple(own[k].shape)
    ]
    if strict and (missing or unexpected or shape_err):
        parts = [f'the {source} does not match {type(module).__name__}:']
        if missing:
            parts.append(f'missing keys: {_short(missing)}')
        if unexpected:
            parts.append(f'unexpected keys: {_short(unexpected)}')
        if shape_err:
            parts.append(f'shape mismatch: {_short(shape_err, 3)}')
        if hint:
            parts.append(hint)
        raise CheckpointFormatError(' '.join(parts))
    if shape_err:
        raise CheckpointFormatError(f'the {source} does not match {type(module).__name__}: '
                                    f'shape mismatch: {_short(shape_err, 3)}')
    module.load_state_dict({k: v for k, v in state_dict.items() if k in own}, strict=False)
    return missing, unexpected


def load_pretrained_weights(module: torch.nn.Module, checkpoint: str,
                            prefix: Optional[str] = None, map_location='cpu', strict: bool = True,
                            convert: Optional[Callable[[Dict[str, torch.Tensor]],
                                                       Dict[str, torch.Tensor]]] = None,
                            hint: Optional[str] = None, allow_missing: Sequence[str] = ()):
    """What ``init_cfg=dict(type='Pretrained', ...)`` does for mmc2f's backbones, but checked.

    MMEngine's own ``Pretrained`` loads with ``strict=False``, so a checkpoint of the wrong layout
    only warns and the model silently keeps random weights. This reads the file (local paths with
    ``weights_only=True`` and the allow-list; URLs through MMEngine), takes its weights (bare or
    under ``state_dict``/``model``; a ``module.`` prefix dropped), keeps the keys under ``prefix``
    (e.g. ``'backbone.'`` for a whole-model checkpoint), applies ``convert`` (a known other layout ->
    the module's) and loads them strictly, naming the first missing and unexpected keys.
    """
    from mmengine.logging import print_log
    from mmengine.runner.checkpoint import CheckpointLoader

    install_safe_loading()
    name = type(module).__name__
    state = extract_state_dict(CheckpointLoader.load_checkpoint(checkpoint,
                                                                map_location=map_location))
    state = {k[7:] if k.startswith('module.') else k: v for k, v in state.items()}
    if prefix:
        prefix = prefix if prefix.endswith('.') else prefix + '.'
        state = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
        if not state:
            raise CheckpointFormatError(
                f'{name}: no key of checkpoint "{checkpoint}" starts with "{prefix}"')
    else:
        own = module.state_dict()
        if not any(k in own for k in state) and any(k.startswith('backbone.') for k in state):
            raise CheckpointFormatError(
                f'{name}: "{checkpoint}" looks like a whole-model checkpoint (keys start with '
                '"backbone."); load its backbone with init_cfg=dict(type="Pretrained", '
                'checkpoint=..., prefix="backbone.")')
    if convert is not None:
        state = convert(state)
    missing, unexpected = load_state_dict_checked(
        module, state, strict=strict, source=f'checkpoint "{checkpoint}"', hint=hint,
        allow_missing=allow_missing)
    if missing or unexpected:
        print_log(f'{name}: loaded "{checkpoint}" with {len(missing)} missing and '
                  f'{len(unexpected)} unexpected keys (strict=False)', logger='current',
                  level=logging.WARNING)
    print_log(f'{name}: loaded pretrained weights from {checkpoint}', logger='current')
    return missing, unexpected


@contextlib.contextmanager
def _atomic_open(path: str):
    """Open a temporary file beside ``path``; on success fsync it and rename it over ``path``.

    ``os.replace`` is atomic on POSIX and Windows, so ``path`` is either the old file or the whole new
    one, never a half-written one, whenever the process is killed.
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
    """MMEngine's local file backend with atomic writes.

    The runner writes every checkpoint through ``get_file_backend(path).put(bytes, path)``; with this
    backend installed a checkpoint appears under its name only once complete.
    """

    def put(self, obj: bytes, filepath) -> None:
        with _atomic_open(os.fspath(filepath)) as f:
            f.write(obj)

    def put_text(self, obj: str, filepath, encoding: str = 'utf-8') -> None:
        self.put(obj.encode(encoding), filepath)


_ATOMIC_INSTALLED = False


def install_atomic_checkpointing() -> None:
    """Route MMEngine's local file writes (checkpoints included) through :class:`AtomicLocalBackend`.

    Idempotent; called when :mod:`mmc2f.registry` is imported and by the tools.
    """
    global _ATOMIC_INSTALLED
    if not _ATOMIC_INSTALLED:
        register_backend('local', AtomicLocalBackend, force=True, prefixes='')
        _ATOMIC_INSTALLED = True


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

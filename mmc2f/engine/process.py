"""Everything mmc2f changes for the whole process, in one function: :func:`setup_process`.

* ``safe_loading``: MMEngine's checkpoint loaders for every scheme (local files, ``http(s)://``,
  ``open-mmlab://``, ``torchvision://``, ``mmcls://``, ``s3://``, ``petrel://``, ``pavi://``; used
  by resume, ``load_from``, ``Pretrained``, upstream tools) become :mod:`mmc2f.checkpoint.remote`
  and :func:`mmc2f.checkpoint.load_checkpoint_file` (downloads land in torch.hub's cache):
  ``weights_only=True`` with mmc2f's allow-list, so runner-written checkpoints load under
  torch >= 2.6 and a file that carries pickled code is refused with the global's name; the
  allow-list is also added to torch's ``weights_only`` unpickler, so code that calls
  ``torch.load`` itself loads runner checkpoints too (still ``weights_only``, only those types);
* ``atomic_checkpoints``: MMEngine's local file backend writes through a temporary file and a
  rename, so a kill never leaves a half-written checkpoint;
* ``cpu_allocator`` (tools only): glibc keeps freed blocks up to 32 MiB for reuse (the next step's
  activations are not page-faulted and zeroed again), with ``THP_MEM_ALLOC_ENABLE=1``
  (:func:`huge_pages_environ`, before torch starts) giving large tensors transparent huge pages.

``import mmc2f`` changes nothing. ``mmc2f.registry`` calls ``setup_process()`` (safe loading and
atomic writes) because MMEngine imports it at the first ``mmc2f.`` type of a config, so upstream
tools get the same benefit; ``tools/*.py`` add the allocator. Each change is logged once when
made. ``MMC2F_PROCESS_SETUP=0`` turns all of them off (``MMC2F_MALLOC_TUNING=0`` the allocator
alone).
"""
import ctypes
import ctypes.util
import os
import sys
from typing import List

__all__ = ['setup_process', 'applied', 'huge_pages_environ', 'tune_cpu_allocator']

ENV_SWITCH = 'MMC2F_PROCESS_SETUP'
ENV_MALLOC = 'MMC2F_MALLOC_TUNING'

_applied: List[str] = []
_disabled_logged = False


def _enabled(env: str = ENV_SWITCH) -> bool:
    return os.environ.get(env, '1') != '0'


def _log(msg: str) -> None:
    from mmengine.logging import print_log
    print_log(f'mmc2f process setup: {msg}', logger='current')


def applied() -> List[str]:
    """Names of the process-wide changes in effect (``'safe_loading'``, ...)."""
    return list(_applied)


def setup_process(safe_loading: bool = True, atomic_checkpoints: bool = True,
                  cpu_allocator: bool = False) -> List[str]:
    """Make the process-wide changes asked for (each once); returns those in effect."""
    global _disabled_logged
    if not _enabled():
        if not _disabled_logged:
            _log(f'{ENV_SWITCH}=0: MMEngine and torch are left unchanged (checkpoints written by '
                 "MMEngine's runner then fail to load under torch >= 2.6)")
            _disabled_logged = True
        return applied()
    if safe_loading and 'safe_loading' not in _applied:
        _install_safe_loading()
        _applied.append('safe_loading')
        _log("MMEngine's checkpoint loaders (local files, http(s)://, open-mmlab://, "
             'torchvision://, mmcls://, s3://, petrel://, pavi://) -> mmc2f.checkpoint: '
             'weights_only=True with an allow-list, downloads into torch.hub\'s cache; '
             "torch's weights_only allow-list += the types of runner checkpoints (numpy arrays "
             f'and scalars, HistoryBuffer, argparse.Namespace); {ENV_SWITCH}=0 turns this off')
    if atomic_checkpoints and 'atomic_checkpoints' not in _applied:
        from mmengine.fileio import register_backend

        from mmc2f.checkpoint import AtomicLocalBackend
        register_backend('local', AtomicLocalBackend, force=True, prefixes='')
        _applied.append('atomic_checkpoints')
        _log("MMEngine's local file backend -> mmc2f.checkpoint.AtomicLocalBackend (checkpoints "
             f'appear only when complete); {ENV_SWITCH}=0 turns this off')
    if cpu_allocator and 'cpu_allocator' not in _applied and tune_cpu_allocator():
        _applied.append('cpu_allocator')
        _log('glibc malloc keeps freed blocks up to 32 MiB (mmap threshold 32 MiB, trim threshold '
             f'1 GiB); {ENV_MALLOC}=0 turns this off')
    return applied()


def _install_safe_loading() -> None:
    """Every scheme of MMEngine's ``CheckpointLoader`` -> :mod:`mmc2f.checkpoint.remote`; the
    module globals that MMEngine's named-model loaders call by name (``load_from_http``,
    ``load_url``) too, so no path of MMEngine unpickles anything beyond the allow-list."""
    import torch
    from mmengine.runner import checkpoint as mmckpt

    from mmc2f.checkpoint import load_checkpoint_file, remote, safe_globals

    def load_from_local(filename, map_location=None):  # MMEngine logs name[10:]: "local"
        return load_checkpoint_file(os.path.expanduser(filename), map_location=map_location)

    for prefix, loader in remote.SCHEMES.items():
        mmckpt.CheckpointLoader.register_scheme(
            prefixes=prefix, loader=load_from_local if prefix == '' else loader, force=True)
    mmckpt.load_from_http = remote.load_from_http
    mmckpt.load_url = remote.load_url
    torch.serialization.add_safe_globals(safe_globals())


def huge_pages_environ() -> None:
    """``THP_MEM_ALLOC_ENABLE=1`` (PyTorch's switch for huge pages on large CPU tensors, read at
    the first allocation): tools call this before importing torch."""
    if _enabled() and _enabled(ENV_MALLOC):
        os.environ.setdefault('THP_MEM_ALLOC_ENABLE', '1')


_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_tuned = None


def tune_cpu_allocator(mmap_threshold: int = 32 << 20, trim_threshold: int = 1 << 30) -> bool:
    """Raise glibc's mmap threshold (to its maximum, 32 MiB) and trim threshold (once per
    process). Returns True if in effect: glibc on Linux, and neither ``MMC2F_MALLOC_TUNING=0`` nor
    ``MMC2F_PROCESS_SETUP=0``."""
    global _tuned
    if _tuned is not None:
        return _tuned
    _tuned = False
    if not (_enabled() and _enabled(ENV_MALLOC)) or not sys.platform.startswith('linux'):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library('c') or 'libc.so.6')
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (e.g. musl)
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    # mallopt returns 1 on success; an mmap threshold above glibc's maximum is refused (0).
    _tuned = bool(mallopt(_M_MMAP_THRESHOLD, int(mmap_threshold))) and \
        bool(mallopt(_M_TRIM_THRESHOLD, int(trim_threshold)))
    return _tuned

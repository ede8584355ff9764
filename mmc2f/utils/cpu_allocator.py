"""CPU memory settings for speed: reuse freed memory (glibc ``malloc``) and huge pages.

PyTorch's CPU tensors come straight from ``malloc``. With glibc's defaults a block of tens of MB is
returned to the kernel when it is freed (``mmap``'d, or trimmed from the top of the heap), so the
next step's activation of the same size is page-faulted and zeroed again. Measured on Conv2Former-T
training (CPU, batch 8): about 120k page faults and 0.2 s of kernel time per step, 0 with the
settings below. Two process-wide settings, as PyTorch's CPU performance guide suggests:

* :func:`tune_cpu_allocator` raises glibc's ``mmap`` threshold to its maximum (32 MiB) and the trim
  threshold to 1 GiB, so freed blocks up to 32 MiB stay in the heap for reuse;
* ``THP_MEM_ALLOC_ENABLE=1`` (PyTorch's own switch, read once before the first allocation, so the
  tools set it before importing torch): blocks of 2 MiB and more get transparent huge pages, so
  the larger ones that are still ``mmap``'d (e.g. 157 MB of 512x512 logits for 150 classes)
  fault in 2 MiB pages instead of 4 KiB ones.

Both affect every model in the process alike. ``tools/train.py``, ``tools/test.py`` and
``tools/analysis_tools/benchmark.py`` apply them; ``MMC2F_MALLOC_TUNING=0`` turns both off.
Importing :mod:`mmc2f` never changes the allocator; in your own scripts call
:func:`tune_cpu_allocator` and export ``THP_MEM_ALLOC_ENABLE=1`` before starting Python.
"""
import ctypes
import ctypes.util
import os
import sys

__all__ = ['tune_cpu_allocator']

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_applied = None


def tune_cpu_allocator(mmap_threshold: int = 32 << 20, trim_threshold: int = 1 << 30) -> bool:
    """Apply the settings (once per process). Returns True if they are in effect: glibc on Linux
    and not disabled by ``MMC2F_MALLOC_TUNING=0``; False (and no change) otherwise."""
    global _applied
    if _applied is not None:
        return _applied
    _applied = False
    if os.environ.get('MMC2F_MALLOC_TUNING', '1') == '0' or not sys.platform.startswith('linux'):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library('c') or 'libc.so.6')
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (e.g. musl)
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    # mallopt returns 1 on success; an mmap threshold above glibc's maximum is refused (0).
    _applied = bool(mallopt(_M_MMAP_THRESHOLD, int(mmap_threshold))) and \
        bool(mallopt(_M_TRIM_THRESHOLD, int(trim_threshold)))
    return _applied

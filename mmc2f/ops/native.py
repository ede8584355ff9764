"""Native CPU kernels for NHWC (channels-last) float32 tensors in inference
(``csrc/nhwc_kernels.cpp``): a 'same' depthwise convolution times a tensor (Conv2Former's
``A * V``: 1.5-2.3x oneDNN's speed for its 11x11 kernels), a 3x3 one with GELU, ``GELU(DW(x))``
(MSCAN's MLP) or with the residual ``x + GELU(DW(x))`` (Conv2Former's; up to 1.67x oneDNN's
convolution with GELU and an add) and LayerNorm over channels without affine (1.8-2.9x ATen's
``layer_norm``). See docs/deployment.md.

Compiled at first use with the system's C++ compiler (``$CXX``, ``c++``, ``g++`` or ``clang++``;
``-O3 -march=native -fopenmp``, about a second) into ``$MMC2F_KERNEL_CACHE`` (default
``~/.cache/mmc2f/kernels``), one file per source, compiler and CPU (a home directory shared by
different machines gets one build each), then loaded with ctypes. Its OpenMP runtime is the
``libgomp.so.1`` torch has already loaded, so both use one thread pool. Without a compiler, when the
build fails, or with ``MMC2F_NATIVE_KERNELS=0``, :func:`library` is ``None`` and the callers
(:mod:`.fused`) use ATen and oneDNN; each of these is logged once.
"""
import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import threading
import time
from pathlib import Path
from typing import Optional

import torch

__all__ = ['library', 'depthwise_conv_mul', 'depthwise_gelu', 'channel_norm',
           'ENV_SWITCH', 'ENV_CACHE']

ENV_SWITCH = 'MMC2F_NATIVE_KERNELS'
ENV_CACHE = 'MMC2F_KERNEL_CACHE'
SOURCE = Path(__file__).with_name('csrc') / 'nhwc_kernels.cpp'
#: narrower maps run faster in oneDNN (a tile of outputs is 7 or 8 wide)
MIN_WIDTH = 7
#: the 3x3 + GELU (+ residual) kernel: in Conv2Former-T (batch 8) oneDNN's convolution with GELU
#: and an add stay faster on 14- and 7-wide maps (measured in the model, not alone)
GELU_MIN_WIDTH = 28

_lock = threading.Lock()
_state: dict = {}


def _log(msg: str) -> None:
    from mmengine.logging import print_log
    print_log(f'mmc2f native kernels: {msg}', logger='current')


def _cpu_id() -> str:
    try:
        with open('/proc/cpuinfo') as f:
            for line in f:
                if line.startswith(('flags', 'Features')):
                    return line
    except OSError:
        pass
    return f'{platform.machine()} {platform.processor()}'


def _compiler() -> Optional[str]:
    for name in (os.environ.get('CXX'), 'c++', 'g++', 'clang++'):
        if name and shutil.which(name):
            return shutil.which(name)
    return None


def cache_dir() -> Path:
    cache = Path(os.environ.get('XDG_CACHE_HOME') or '~/.cache').expanduser()
    default = cache / 'mmc2f' / 'kernels'
    return Path(os.environ.get(ENV_CACHE) or default)


def _build(cxx: str, out: Path) -> None:
    tmp = out.with_name(f'{out.name}.{os.getpid()}.tmp')
    base = ['-O3', '-fopenmp', '-fPIC', '-shared', '-std=c++17', str(SOURCE), '-o', str(tmp)]
    try:
        for arch in (['-march=native'], []):  # some compilers/targets lack -march=native
            done = subprocess.run([cxx, *arch, *base], capture_output=True, text=True, timeout=600)
            if done.returncode == 0:
                os.replace(tmp, out)  # atomic: parallel ranks never load a half-written file
                return
        raise RuntimeError(done.stderr.strip()[-2000:])
    finally:
        tmp.unlink(missing_ok=True)


def _load() -> Optional[ctypes.CDLL]:
    if os.environ.get(ENV_SWITCH, '1') == '0':
        _log(f'{ENV_SWITCH}=0: ATen and oneDNN kernels run instead')
        return None
    cxx = _compiler()
    if cxx is None:
        _log('no C++ compiler (set CXX or install g++): ATen and oneDNN kernels run instead')
        return None
    try:
        version = subprocess.run([cxx, '--version'], capture_output=True, text=True,
                                 timeout=60).stdout
        key = hashlib.sha256(SOURCE.read_bytes() + version.encode() + _cpu_id().encode())
        path = cache_dir() / f'nhwc_kernels-{key.hexdigest()[:16]}.so'
        if path.exists():
            _log(f'loading {path}')
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            start = time.perf_counter()
            _build(cxx, path)
            _log(f'built {path} with {cxx} in {time.perf_counter() - start:.1f} s')
        lib = ctypes.CDLL(str(path))
    except (OSError, RuntimeError, subprocess.SubprocessError) as e:
        _log(f'could not build or load {SOURCE.name} ({e}): ATen and oneDNN kernels run instead')
        return None
    ptr, i32 = ctypes.c_void_p, ctypes.c_int
    lib.mmc2f_dw_mul.argtypes = [ptr] * 5 + [i32] * 6
    lib.mmc2f_dw_mul.restype = i32
    lib.mmc2f_dw_gelu.argtypes = [ptr] * 4 + [i32] * 7
    lib.mmc2f_dw_gelu.restype = i32
    lib.mmc2f_channel_norm.argtypes = [ptr, ptr, ctypes.c_long, i32, ctypes.c_float, i32]
    lib.mmc2f_channel_norm.restype = i32
    return lib


def library() -> Optional[ctypes.CDLL]:
    """The loaded kernels (built first if needed), or ``None`` when they cannot be had."""
    if 'lib' not in _state:
        with _lock:
            if 'lib' not in _state:
                _state['lib'] = _load()
    return _state['lib']


def _cpu_float(*tensors: torch.Tensor) -> bool:
    return all(t.dtype == torch.float32 and t.device.type == 'cpu' for t in tensors)


def _depthwise_applies(x: torch.Tensor, weight_khwc: torch.Tensor,
                       bias: Optional[torch.Tensor], *others: torch.Tensor,
                       min_width: int = MIN_WIDTH) -> bool:
    if x.dim() != 4 or weight_khwc.dim() != 3:
        return False
    k = weight_khwc.shape[0]
    tensors = (x, weight_khwc, *others) + ((bias, ) if bias is not None else ())
    return (weight_khwc.shape == (k, k, x.shape[1]) and x.shape[1] % 8 == 0
            and x.shape[3] >= min_width and all(o.shape == x.shape for o in others)
            and _cpu_float(*tensors) and weight_khwc.is_contiguous()
            and all(t.is_contiguous(memory_format=torch.channels_last) for t in (x, *others)))


def _run_depthwise(fn, x: torch.Tensor, weight_khwc: torch.Tensor, bias: Optional[torch.Tensor],
                   *others: torch.Tensor, flags: tuple = ()) -> Optional[torch.Tensor]:
    lib = library()
    if lib is None:
        return None
    n, c, h, w = x.shape
    bias = bias.contiguous() if bias is not None else x.new_zeros(c)
    out = torch.empty_like(x, memory_format=torch.channels_last)
    rc = getattr(lib, fn)(x.data_ptr(), weight_khwc.data_ptr(), bias.data_ptr(),
                          *(o.data_ptr() for o in others), out.data_ptr(), n, h, w, c,
                          weight_khwc.shape[0], *flags, torch.get_num_threads())
    return out if rc == 0 else None


def depthwise_conv_mul(x: torch.Tensor, weight_khwc: torch.Tensor, bias: Optional[torch.Tensor],
                       other: torch.Tensor) -> Optional[torch.Tensor]:
    """``conv2d(x, W, bias, padding=K // 2, groups=C) * other`` for channels-last float32 CPU
    tensors ``x``, ``other`` ``(N, C, H, W)``, with ``weight_khwc``: ``W.flatten(1).t()`` as
    ``(K, K, C)``; ``None`` unless ``C % 8 == 0``, ``K`` is 5, 7, 9 or 11 and ``W >= MIN_WIDTH``
    (the caller then computes it another way)."""
    if not _depthwise_applies(x, weight_khwc, bias, other):
        return None
    return _run_depthwise('mmc2f_dw_mul', x, weight_khwc, bias, other)


def depthwise_gelu(x: torch.Tensor, weight_khwc: torch.Tensor, bias: Optional[torch.Tensor],
                   residual: bool = False) -> Optional[torch.Tensor]:
    """``GELU(conv2d(x, W, bias, padding=1, groups=C))`` (exact-erf GELU, to 2e-7 ``|x|``), plus
    ``x`` with ``residual``, for a channels-last float32 CPU tensor ``(N, C, H, W)`` and a 3x3 ``W``
    given as ``weight_khwc`` ``(3, 3, C)``; ``None`` unless ``C % 8 == 0`` and
    ``W >= GELU_MIN_WIDTH``."""
    if not (_depthwise_applies(x, weight_khwc, bias, min_width=GELU_MIN_WIDTH)
            and weight_khwc.shape[0] == 3):
        return None
    return _run_depthwise('mmc2f_dw_gelu', x, weight_khwc, bias, flags=(int(residual), ))


def channel_norm(x: torch.Tensor, eps: float) -> Optional[torch.Tensor]:
    """LayerNorm over the channels of a channels-last float32 CPU tensor ``(N, C, H, W)`` without
    affine, ``C % 8 == 0``; ``None`` otherwise."""
    if not (x.dim() == 4 and x.shape[1] % 8 == 0 and _cpu_float(x)
            and x.is_contiguous(memory_format=torch.channels_last)):
        return None
    lib = library()
    if lib is None:
        return None
    out = torch.empty_like(x, memory_format=torch.channels_last)
    rc = lib.mmc2f_channel_norm(x.data_ptr(), out.data_ptr(), x.numel() // x.shape[1], x.shape[1],
                                eps, torch.get_num_threads())
    return out if rc == 0 else None

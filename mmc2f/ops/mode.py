"""When the fast kernels of :mod:`mmc2f.ops` may run."""
import torch

__all__ = ['eager']


def _compiling() -> bool:
    try:
        return torch.compiler.is_compiling()
    except AttributeError:  # pragma: no cover  (torch < 2.3)
        return False


def _faking() -> bool:
    try:
        from torch._guards import detect_fake_mode
        return detect_fake_mode() is not None
    except ImportError:  # pragma: no cover
        return False


def eager() -> bool:
    """True outside TorchScript tracing/scripting, ONNX export, ``torch.compile`` and fake-tensor
    tracing: custom autograd functions, oneDNN post-ops and strided in-place writes run only then;
    traced, exported, compiled or fake-traced graphs get the plain ATen ops."""
    if torch.jit.is_tracing() or torch.jit.is_scripting() or _compiling() or _faking():
        return False
    try:
        return not torch.onnx.is_in_onnx_export()
    except AttributeError:  # pragma: no cover
        return True

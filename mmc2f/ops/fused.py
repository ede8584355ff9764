"""Convolutions fused with the elementwise work around them, for inference.

On CPU in fp32 without autograd each call is one oneDNN kernel with a post-op
(``torch.ops.mkldnn._convolution_pointwise``, what TorchInductor's CPU backend emits), its weight
packed once into oneDNN's blocked layout for the input's shape (cached per weight tensor and
version, so updated weights are packed again), except 'same' depthwise convolutions times a tensor
(Conv2Former's ``A * V``) and ``(x +) GELU(DW3x3(x))``, which :mod:`.native`'s kernels compute where
they can be built; everywhere else -- CUDA, half precision, autograd, tracing, ONNX export,
``torch.compile``, a build without oneDNN -- the same result comes from the unfused ATen ops.
"""
import weakref
from typing import Callable, Dict, List, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from .mode import eager
from .native import channel_norm as native_channel_norm
from .native import depthwise_conv_mul as native_dw_mul
from .native import depthwise_gelu as native_dw_gelu

__all__ = ['ACTIVATIONS', 'activation_name', 'channel_norm', 'fused_conv', 'fused_conv_add',
           'fused_conv_mul', 'fused_conv_binary', 'dwconv_gelu', 'onednn_available']


def _mkldnn_pointwise():
    try:
        op = torch.ops.mkldnn._convolution_pointwise
        op.default, op.binary  # noqa: B018  (raises if this build lacks them)
        return op if torch.backends.mkldnn.is_available() else None
    except (AttributeError, RuntimeError):
        return None


_POINTWISE = _mkldnn_pointwise()

#: activations a fused convolution can apply: name -> (oneDNN attr, algorithm, ATen function)
ACTIVATIONS = {
    'gelu': ('gelu', 'none', F.gelu),
    'relu': ('relu', '', F.relu),
}


def onednn_available() -> bool:
    """Whether this torch build has the oneDNN fused-convolution ops."""
    return _POINTWISE is not None


def _cpu_inference(*tensors: torch.Tensor) -> bool:
    return (all(t.device.type == 'cpu' and t.dtype == torch.float32 for t in tensors)
            and not (torch.is_grad_enabled() and any(t.requires_grad for t in tensors))
            and eager())


def _use_onednn(x: torch.Tensor, weight: torch.Tensor) -> bool:
    return _POINTWISE is not None and _cpu_inference(x, weight)


#: id(weight) -> {(version, *key): weight in another layout}; a few each, dropped with the weight
_PACKED: Dict[int, dict] = {}
_PACKED_PER_WEIGHT = 4


def _cached(weight: torch.Tensor, key: tuple, make: Callable[[], torch.Tensor]) -> torch.Tensor:
    """``make()``, a layout of ``weight``, cached per weight tensor, version and ``key``."""
    try:
        key = (weight._version, ) + key
    except RuntimeError:  # an inference tensor has no version counter: no caching
        return make()
    cache = _PACKED.get(id(weight))
    if cache is None:
        cache = _PACKED[id(weight)] = {}
        weakref.finalize(weight, _PACKED.pop, id(weight), None)
    packed = cache.get(key)
    if packed is None:
        packed = make()
        if len(cache) >= _PACKED_PER_WEIGHT:
            cache.clear()
        cache[key] = packed
    return packed


def _packed(weight: torch.Tensor, padding: List[int], stride: List[int], groups: int,
            x: torch.Tensor) -> torch.Tensor:
    """``weight`` in oneDNN's layout for this input shape (otherwise oneDNN reorders it on every
    call); the plain weight if this build cannot pack."""
    def reorder():
        try:
            return torch.ops.mkldnn._reorder_convolution_weight(
                weight, padding, stride, [1, 1], groups, list(x.shape))
        except (AttributeError, RuntimeError):
            return weight

    return _cached(weight, (tuple(padding), tuple(stride), groups, tuple(x.shape)), reorder)


def _pair2(v) -> List[int]:
    return [int(v), int(v)] if isinstance(v, int) else [int(i) for i in v]


def activation_name(module: nn.Module) -> Optional[str]:
    """The :data:`ACTIVATIONS` name of an activation module (``nn.GELU()``, ``nn.ReLU``), or
    ``None`` if it cannot be fused (e.g. tanh-approximated GELU)."""
    if isinstance(module, nn.GELU) and module.approximate == 'none':
        return 'gelu'
    if isinstance(module, nn.ReLU):
        return 'relu'
    return None


def fused_conv(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],
               padding=0, stride=1, groups: int = 1, act: Optional[str] = None) -> torch.Tensor:
    """``act(conv2d(x))`` in one kernel where possible; ``act`` is ``None``, ``'gelu'`` (exact
    erf GELU, as ``nn.GELU()``) or ``'relu'``."""
    if act is not None and act not in ACTIVATIONS:
        raise ValueError(f'fused_conv: unsupported activation {act!r}; '
                         f'supported: {sorted(ACTIVATIONS)}')
    padding, stride = _pair2(padding), _pair2(stride)
    if _use_onednn(x, weight):
        attr, algorithm, _ = ACTIVATIONS[act] if act else ('none', '', None)
        return _POINTWISE(x, _packed(weight, padding, stride, groups, x), bias, padding, stride,
                          [1, 1], groups, attr, [], algorithm)
    out = F.conv2d(x, weight, bias, stride, padding, 1, groups)
    return ACTIVATIONS[act][2](out) if act else out


def fused_conv_add(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],
                   residual: torch.Tensor, padding=0, groups: int = 1) -> torch.Tensor:
    """``conv2d(x) + residual`` in one kernel where possible (the residual is not modified)."""
    return fused_conv_binary(x, weight, bias, residual, 'add', padding, groups)


def fused_conv_mul(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],
                   other: torch.Tensor, padding=0, groups: int = 1) -> torch.Tensor:
    """``conv2d(x) * other`` (a Hadamard product) in one kernel where possible: a 'same' depthwise
    convolution of channels-last tensors in :mod:`.native`'s kernel, others in oneDNN's."""
    khwc = _native_depthwise_weight(x, weight, padding, groups)
    if khwc is not None:
        out = native_dw_mul(x, khwc, bias, other)
        if out is not None:
            return out
    return fused_conv_binary(x, weight, bias, other, 'mul', padding, groups)


def dwconv_gelu(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],
                padding=1, residual: bool = False) -> torch.Tensor:
    """``GELU(conv2d(x, weight, bias, padding=padding, groups=C))`` for a depthwise ``weight``
    ``(C, 1, k, k)``, plus ``x`` with ``residual``: one pass in :mod:`.native`'s kernel for 3x3
    'same' convolutions of channels-last tensors, otherwise the convolution with its GELU (then
    the add)."""
    khwc = _native_depthwise_weight(x, weight, padding, x.shape[1])
    if khwc is not None:
        out = native_dw_gelu(x, khwc, bias, residual)
        if out is not None:
            return out
    out = fused_conv(x, weight, bias, padding=padding, groups=x.shape[1], act='gelu')
    return out.add_(x) if residual else out


def _native_depthwise_weight(x: torch.Tensor, weight: torch.Tensor, padding,
                             groups: int) -> Optional[torch.Tensor]:
    """``weight`` as :mod:`.native` takes it, ``(K, K, C)``, for a square 'same' depthwise
    convolution in CPU inference; ``None`` for other convolutions."""
    k = weight.shape[-1]
    if groups == x.shape[1] > 1 and weight.shape[-2] == k and _pair2(padding) == [k // 2] * 2 \
            and _cpu_inference(x, weight):
        return _cached(weight, ('khwc', ),
                       lambda: weight.flatten(1).t().contiguous().view(k, k, -1))
    return None


def fused_conv_binary(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],
                      other: torch.Tensor, binary: str, padding=0, groups: int = 1) -> torch.Tensor:
    """``conv2d(x) (+|*) other`` with ``binary`` ``'add'`` or ``'mul'``; ``other`` has the conv's
    output shape and is not modified."""
    if binary not in ('add', 'mul'):
        raise ValueError(f"binary must be 'add' or 'mul', got {binary!r}")
    padding = _pair2(padding)
    if _use_onednn(x, weight) and other.dtype == torch.float32 and \
            other.shape[1] == weight.shape[0]:
        return _POINTWISE.binary(x, other, _packed(weight, padding, [1, 1], groups, x), bias,
                                 padding, [1, 1], [1, 1], groups, binary, None, None, [], None)
    out = F.conv2d(x, weight, bias, 1, padding, 1, groups)
    return out + other if binary == 'add' else out * other


def channel_norm(x: torch.Tensor, eps: float) -> torch.Tensor:
    """Normalise an NCHW tensor over channels, without affine: ``(B, C, H, W) -> (B, C, H, W)``."""
    if _cpu_inference(x):
        out = native_channel_norm(x, eps)
        if out is not None:
            return out
    # int(): the channel count is static; traced (ONNX export) it must stay a constant.
    y = F.layer_norm(x.permute(0, 2, 3, 1), (int(x.shape[1]), ), None, None, eps)
    return y.permute(0, 3, 1, 2)

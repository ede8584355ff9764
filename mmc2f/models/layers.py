"""Layers shared by both backbones: channel LayerNorm, layer scale, stochastic depth.

Conv2Former and MSCAN both use pre-norm residual blocks of the form

    x = x + DropPath(gamma * F(Norm(x)))

with a learnable per-channel ``gamma`` ("layer scale", Touvron et al. 2021) and stochastic depth whose
rate rises linearly over all blocks. The pieces live here once.
"""
from typing import List, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from mmcv.cnn.bricks import DropPath
from torch.nn.modules.batchnorm import _BatchNorm

__all__ = [
    'LayerNorm2d', 'DropPath', 'layer_scale', 'init_layer_scale', 'drop_path_rates', 'fused_conv',
    'fused_conv_add', 'fused_conv_mul', 'fused_conv_binary', 'channel_norm', 'fold_channel_affine',
    'fold_output_scale', 'bn_affine', 'activation_name', 'depthwise_conv', 'depthwise_weight_grad',
    'pointwise_conv', 'eager'
]


class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channel dimension of an NCHW tensor.

    ``y[b, :, h, w] = (x[b, :, h, w] - mean_c) / sqrt(var_c + eps) * weight + bias``

    Shapes: ``(B, C, H, W) -> (B, C, H, W)``. Parameters ``weight`` and ``bias`` have shape ``(C,)``,
    the layout of the authors' ``LayerNorm(data_format='channels_first')`` and of mmseg's per-stage
    ``nn.LayerNorm``, so checkpoints load unchanged.
    """

    def __init__(self, num_channels: int, eps: float = 1e-6, **kwargs):
        super().__init__(num_channels, eps=eps, **kwargs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4:
            raise ValueError(f'LayerNorm2d expects (B, C, H, W) input, got shape {tuple(x.shape)}')
        # NHWC view: layer_norm normalises the last dim. For channels_last input the permute is free.
        x = x.permute(0, 2, 3, 1)
        x = F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
        return x.permute(0, 3, 1, 2)


def init_layer_scale(dim: int, init_value: float) -> nn.Parameter:
    """A layer-scale vector ``gamma`` of shape ``(C,)`` filled with ``init_value``."""
    return nn.Parameter(init_value * torch.ones(dim), requires_grad=True)


def layer_scale(x: torch.Tensor, gamma: torch.Tensor) -> torch.Tensor:
    """``gamma * x`` per channel: ``(B, C, H, W) * (C,) -> (B, C, H, W)``."""
    return x * gamma.view(1, -1, 1, 1)


def drop_path_rates(depths, max_rate: float) -> List[List[float]]:
    """Stochastic-depth rate per block, rising linearly from 0 to ``max_rate`` over all blocks.

    Returns one list per stage, e.g. ``drop_path_rates([2, 2], 0.3) == [[0, .1], [.2, .3]]``.
    """
    total = int(sum(depths))
    flat = torch.linspace(0, max_rate, total, device='cpu').tolist() if total > 0 else []
    rates, start = [], 0
    for depth in depths:
        rates.append(flat[start:start + depth])
        start += depth
    return rates


# ----------------------------------------------------------------------------------------------
# Large-kernel depthwise convolution for training.
# ----------------------------------------------------------------------------------------------
class _LargeKernelDepthwiseConv(torch.autograd.Function):
    """``conv2d(x, W, b, padding=p, groups=C)`` (stride 1) with a faster backward on CPU.

    PyTorch's CPU weight gradient of a depthwise conv with a large kernel is slow (measured 3-6x
    slower than below for 11x11 at the Conv2Former stages). Here, with ``g = dL/dy``:

    * ``dL/dx = conv2d(g, flip(W), padding=k - 1 - p, groups=C)`` (the transposed conv, stride 1);
    * ``dL/dW[c, i, j] = sum_{b,h,w} xpad[b, c, h + i, w + j] g[b, c, h, w]``: for each kernel
      row ``i`` one batched matrix product over channels, ``M_c = X_{c,i}^T G_c`` with
      ``X_{c,i}`` the rows ``i .. i + H_out`` of the padded input as an ``(H_out B, W_pad)``
      matrix and ``G_c`` of shape ``(H_out B, W_out)``; then ``dL/dW[c, i, j] = sum_w M_c[w + j, w]``;
    * ``dL/db = sum_{b,h,w} g``.
    """

    @staticmethod
    def forward(ctx, x, weight, bias, padding):
        ctx.padding = padding
        ctx.save_for_backward(x, weight)
        return F.conv2d(x, weight, bias, 1, padding, 1, weight.shape[0])

    @staticmethod
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        (ph, pw), (kh, kw) = ctx.padding, weight.shape[-2:]
        channels = weight.shape[0]
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            grad_x = F.conv2d(grad, weight.flip(2, 3), None, 1, (kh - 1 - ph, kw - 1 - pw), 1,
                              channels)
        if ctx.needs_input_grad[1]:
            grad_w = depthwise_weight_grad(x, grad, (kh, kw), (ph, pw))
        if ctx.needs_input_grad[2]:
            grad_b = grad.sum(dim=(0, 2, 3))
        return grad_x, grad_w, grad_b, None


def depthwise_weight_grad(x: torch.Tensor, grad: torch.Tensor, kernel_size,
                          padding) -> torch.Tensor:
    """``dL/dW`` of a stride-1 depthwise conv: ``(B, C, H, W)`` input and ``(B, C, H_out, W_out)``
    output gradient -> ``(C, 1, kh, kw)`` (see :class:`_LargeKernelDepthwiseConv`)."""
    (kh, kw), (ph, pw) = kernel_size, padding
    batch, channels, height, width = x.shape
    h_out, w_out = grad.shape[-2:]
    h_pad, w_pad = height + 2 * ph, width + 2 * pw
    # (C, H_pad, B, W_pad): the rows of kernel row i are a uniformly strided (H_out B, W_pad) block.
    xp = F.pad(x, (pw, pw, ph, ph)).permute(1, 2, 0, 3).contiguous().view(channels, -1, w_pad)
    g = grad.permute(1, 2, 0, 3).reshape(channels, h_out * batch, w_out)
    rows = []
    for i in range(kh):
        m = torch.bmm(xp[:, i * batch:(i + h_out) * batch].transpose(1, 2), g)  # (C, W_pad, W_out)
        # diagonal sums: element [c, j, w] of the view is m[c, w + j, w]
        rows.append(m.as_strided((channels, kw, w_out), (w_pad * w_out, w_out, w_out + 1),
                                 m.storage_offset()).sum(-1))
    return torch.stack(rows, 1).view(channels, 1, kh, kw).to(x.dtype)


def _cpu_autocast() -> bool:
    try:
        return torch.is_autocast_enabled('cpu')
    except TypeError:  # pragma: no cover  (torch < 2.4)
        return torch.is_autocast_cpu_enabled()


def pointwise_conv(x: torch.Tensor, conv: nn.Conv2d) -> torch.Tensor:
    """A 1x1 ``conv`` applied to an NHWC tensor: ``(B, H, W, C_in) -> (B, H, W, C_out)``.

    The same parameters as ``conv`` (its weight viewed as a ``(C_out, C_in)`` matrix), computed as
    one matrix product over channels: on channels_last activations this keeps every activation
    and gradient in NHWC memory (ATen's 1x1 conv may switch to NCHW on some paths)."""
    return F.linear(x, conv.weight.view(conv.out_channels, -1), conv.bias)


def depthwise_conv(x: torch.Tensor, conv: nn.Conv2d) -> torch.Tensor:
    """A depthwise ``conv`` (stride 1, no dilation) with :class:`_LargeKernelDepthwiseConv`'s
    backward on CPU in fp32 (no autocast) when gradients are needed; plain ``conv(x)`` otherwise."""
    if (torch.is_grad_enabled() and x.device.type == 'cpu' and x.dtype == torch.float32
            and conv.weight.dtype == torch.float32 and not _cpu_autocast() and eager()
            and (x.requires_grad or conv.weight.requires_grad)
            and isinstance(conv.padding, tuple)):
        return _LargeKernelDepthwiseConv.apply(x, conv.weight, conv.bias, conv.padding)
    return conv(x)


# ----------------------------------------------------------------------------------------------
# Fused inference kernels.
#
# ``switch_to_deploy()`` paths (inference only; the training graph never uses these) run a
# convolution together with the elementwise work around it in one pass over memory: on CPU through
# oneDNN's post-op fusion (``torch.ops.mkldnn._convolution_pointwise``, the kernels TorchInductor's
# CPU backend emits), elsewhere -- CUDA, half precision, autograd, ONNX export, a build without
# oneDNN -- through the equivalent unfused ATen ops. Both give the same numbers up to float rounding.
# ----------------------------------------------------------------------------------------------
def _mkldnn_pointwise():
    try:
        op = torch.ops.mkldnn._convolution_pointwise
        op.default, op.binary  # noqa: B018  (raises if this build lacks them)
        return op if torch.backends.mkldnn.is_available() else None
    except (AttributeError, RuntimeError):
        return None


_POINTWISE = _mkldnn_pointwise()


def _use_onednn(x: torch.Tensor, weight: torch.Tensor) -> bool:
    return (_POINTWISE is not None and x.device.type == 'cpu' and x.dtype == torch.float32
            and weight.dtype == torch.float32
            and not (torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad))
            and eager())


def eager() -> bool:
    """True outside TorchScript tracing/scripting and ONNX export: the faster kernels of this
    package (custom autograd functions, oneDNN post-ops, strided in-place writes) are used only
    then; traced or exported graphs get the plain ATen ops."""
    if torch.jit.is_tracing() or torch.jit.is_scripting():
        return False
    try:
        return not torch.onnx.is_in_onnx_export()
    except AttributeError:  # pragma: no cover
        return True


#: activations a fused convolution can apply: name -> (oneDNN attr, algorithm, ATen function)
_ACTIVATIONS = {
    'gelu': ('gelu', 'none', F.gelu),
    'relu': ('relu', '', F.relu),
}


def fused_conv(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],
               padding=0, stride=1, groups: int = 1, gelu: bool = False,
               act: Optional[str] = None) -> torch.Tensor:
    """``act(conv2d(x))`` in one kernel where possible.

    ``act`` is ``None`` (plain conv), ``'gelu'`` (exact erf GELU, as ``nn.GELU()``) or ``'relu'``;
    ``gelu=True`` is short for ``act='gelu'``.
    """
    act = 'gelu' if gelu else act
    if act is not None and act not in _ACTIVATIONS:
        raise ValueError(f'fused_conv: unsupported activation {act!r}; '
                         f'supported: {sorted(_ACTIVATIONS)}')
    padding, stride = _pair2(padding), _pair2(stride)
    if _use_onednn(x, weight):
        attr, algorithm, _ = _ACTIVATIONS[act] if act else ('none', '', None)
        return _POINTWISE(x, weight, bias, padding, stride, [1, 1], groups, attr, [], algorithm)
    out = F.conv2d(x, weight, bias, stride, padding, 1, groups)
    return _ACTIVATIONS[act][2](out) if act else out


def activation_name(module: nn.Module) -> Optional[str]:
    """The :func:`fused_conv` name of an activation module (``nn.GELU()``, ``nn.ReLU``), or
    ``None`` if it cannot be fused (e.g. tanh-approximated GELU)."""
    if isinstance(module, nn.GELU) and module.approximate == 'none':
        return 'gelu'
    if isinstance(module, nn.ReLU):
        return 'relu'
    return None


def fused_conv_add(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],
                   residual: torch.Tensor, padding=0, groups: int = 1) -> torch.Tensor:
    """``conv2d(x) + residual`` in one kernel where possible (the residual is not modified)."""
    return fused_conv_binary(x, weight, bias, residual, 'add', padding, groups)


def fused_conv_mul(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],
                   other: torch.Tensor, padding=0, groups: int = 1) -> torch.Tensor:
    """``conv2d(x) * other`` (a Hadamard product) in one kernel where possible."""
    return fused_conv_binary(x, weight, bias, other, 'mul', padding, groups)


def fused_conv_binary(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],
                      other: torch.Tensor, binary: str, padding=0, groups: int = 1) -> torch.Tensor:
    """``conv2d(x) (+|*) other`` with ``binary`` ``'add'`` or ``'mul'``; ``other`` has the conv's
    output shape and is not modified."""
    padding = _pair2(padding)
    if _use_onednn(x, weight) and other.dtype == torch.float32 and \
            other.shape[1] == weight.shape[0]:
        return _POINTWISE.binary(x, other, weight, bias, padding, [1, 1], [1, 1], groups,
                                 binary, None, None, [], None)
    out = F.conv2d(x, weight, bias, 1, padding, 1, groups)
    if binary == 'add':
        return out + other
    if binary == 'mul':
        return out * other
    raise ValueError(f"binary must be 'add' or 'mul', got {binary!r}")


def _pair2(v) -> List[int]:
    return [int(v), int(v)] if isinstance(v, int) else [int(i) for i in v]


def channel_norm(x: torch.Tensor, eps: float) -> torch.Tensor:
    """Normalise over channels without affine (``LayerNorm2d`` whose affine was folded away)."""
    # int(): the channel count is static; traced (ONNX export) it must stay a constant.
    y = F.layer_norm(x.permute(0, 2, 3, 1), (int(x.shape[1]), ), None, None, eps)
    return y.permute(0, 3, 1, 2)


@torch.no_grad()
def fold_channel_affine(weight: torch.Tensor, bias: Optional[torch.Tensor], scale: torch.Tensor,
                        shift: torch.Tensor):
    """Fold a per-input-channel affine ``y = scale * x + shift`` into the conv that consumes ``y``.

    ``conv(W, scale * x + shift) = conv(W * scale, x) + sum(W * shift)``: exact for convolutions
    without padding (1x1, or k x k stride k), which is where it is used. Returns ``(W', b')``.
    """
    w = weight * scale.view(1, -1, 1, 1)
    b = (weight * shift.view(1, -1, 1, 1)).sum(dim=(1, 2, 3))
    if bias is not None:
        b = b + bias
    return w.contiguous(), b


@torch.no_grad()
def fold_output_scale(weight: torch.Tensor, bias: Optional[torch.Tensor], gamma: torch.Tensor,
                      shift: Optional[torch.Tensor] = None):
    """Fold ``gamma * conv(x) (+ shift)`` per output channel into the conv: layer scale on a
    conv's output, or a BatchNorm after it (``gamma, shift = bn_affine(bn)``). Returns ``(W', b')``
    (``b'`` is ``None`` only when there is neither a bias nor a shift)."""
    w = weight * gamma.view(-1, 1, 1, 1)
    b = None if bias is None else bias * gamma
    if shift is not None:
        b = shift.clone() if b is None else b + shift
    return w.contiguous(), b


@torch.no_grad()
def bn_affine(bn: nn.Module):
    """An eval-mode BatchNorm as a per-channel affine ``scale * x + shift``: returns
    ``(scale, shift)``. Needs running statistics (``track_running_stats=True``)."""
    if not isinstance(bn, _BatchNorm):
        raise TypeError(f'expected a BatchNorm layer to fold, got {type(bn).__name__}')
    if bn.running_mean is None or bn.running_var is None:
        raise ValueError(f'{type(bn).__name__} has no running statistics '
                         '(track_running_stats=False): it cannot be folded for inference')
    scale = torch.rsqrt(bn.running_var + bn.eps)
    if bn.weight is not None:
        scale = scale * bn.weight
    shift = -bn.running_mean * scale
    if bn.bias is not None:
        shift = shift + bn.bias
    return scale, shift

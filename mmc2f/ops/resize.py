"""Bilinear upsampling of logits by an integer factor, written once into the output.

The decode head's stride-8 logits are resized to the input size at inference (mmseg's
``predict_by_feat``): at 512x512 with 150 classes that is a 157 MB output, and PyTorch's CPU kernel
spends about as long on it as on the decode head. For an integer factor ``s`` each output row (and
column) ``s q + p`` is a fixed blend of input rows ``q - 1, q`` or ``q, q + 1`` with a weight that
depends only on the phase ``p``, so the resize is ``s`` strided ``lerp`` calls per axis over
views, with no index tensors and one write of the output:

    align_corners=False:  src(j) = (j + 0.5) / s - 0.5,  i0 = floor(src) (clamped to >= 0),
                          out[j] = x[i0] + (src - i0) (x[min(i0 + 1, n - 1)] - x[i0])

(PyTorch's definition). Results equal ``F.interpolate(..., mode='bilinear')`` up to float rounding
(1e-6 relative). Other cases (non-integer factors, ``align_corners=True``, a downsampling) use
``F.interpolate``.

Training (the decode head's loss resizes the logits to the labels): on CPU the gradient is the
resize's adjoint, per axis one batched ``(3, s) @ (s, W)`` product that gathers each input row's
share from the ``s`` output rows of its block (``own``) and of the blocks above and below (``up``,
``down``), instead of PyTorch's scatter kernel (about 6x faster at 150 x 512 x 512; README).
Half-precision gradients keep PyTorch's kernel (it accumulates in float32).
"""
from typing import Optional, Sequence

import torch
import torch.nn.functional as F

from .mode import eager

__all__ = ['phase_wise', 'resize_bilinear']


def phase_wise(x: torch.Tensor, size: Sequence[int], align_corners: bool = False) -> bool:
    """Whether :func:`resize_bilinear` takes the phase-wise path for ``x`` and ``size``: an
    integer upsampling factor per axis, ``align_corners=False``, eager mode."""
    out_h, out_w = int(size[0]), int(size[1])
    in_h, in_w = x.shape[-2:]
    return (not align_corners and x.dim() == 4 and x.is_floating_point() and eager()
            and in_h > 0 and in_w > 0
            and out_h % in_h == 0 and out_w % in_w == 0 and (out_h, out_w) != (in_h, in_w))


def resize_bilinear(x: torch.Tensor, size: Sequence[int], align_corners: bool = False,
                    out: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``F.interpolate(x, size, mode='bilinear', align_corners=align_corners)`` for
    ``(B, C, H, W)`` tensors; integer upsampling factors take the phase-wise path above.

    ``out`` (no autograd): a ``(B, C, *size)`` tensor to write into, of any strides, for every
    factor; a channels_last ``out`` is written from a channels_last copy of ``x`` (contiguous
    channels per pixel: faster writes, and a faster argmax over classes afterwards)."""
    out_h, out_w = int(size[0]), int(size[1])
    fast = phase_wise(x, size, align_corners)
    grad = torch.is_grad_enabled() and x.requires_grad
    if out is not None:
        if tuple(out.shape) != (*x.shape[:2], out_h, out_w):
            raise ValueError(f'resize_bilinear: out has shape {tuple(out.shape)}, expected '
                             f'{(*x.shape[:2], out_h, out_w)}')
        if grad:
            raise ValueError('resize_bilinear: out= is for inference (x requires grad)')
        if fast:
            return _upsample(x, out_h, out_w, out)
        fmt = _layout(out)
        if fmt is None or not eager():
            return out.copy_(F.interpolate(x, size=(out_h, out_w), mode='bilinear',
                                           align_corners=align_corners))
        # PyTorch's kernel, written into out (no fresh, page-faulted output)
        return torch.ops.aten.upsample_bilinear2d.out(x.contiguous(memory_format=fmt),
                                                      [out_h, out_w], align_corners, None, None,
                                                      out=out)
    if not fast or grad and (x.device.type != 'cpu' or x.dtype not in (torch.float32,
                                                                      torch.float64)):
        return F.interpolate(x, size=(out_h, out_w), mode='bilinear', align_corners=align_corners)
    if grad:
        return _ResizeBilinear.apply(x, out_h, out_w)
    return _upsample(x, out_h, out_w)


class _ResizeBilinear(torch.autograd.Function):
    """The phase-wise upsampling with its adjoint as the backward (nothing saved)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, out_h: int, out_w: int) -> torch.Tensor:
        ctx.in_hw = tuple(x.shape[-2:])
        return _upsample(x, out_h, out_w)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        in_h, in_w = ctx.in_hw
        grad = grad.contiguous()
        grad = _adjoint_dim(grad, grad.shape[2] // in_h, dim=2)
        return _adjoint_dim(grad, grad.shape[3] // in_w, dim=3), None, None


def _layout(t: torch.Tensor) -> Optional[torch.memory_format]:
    """The memory format ``t`` is dense in (NCHW first), or ``None``."""
    if t.is_contiguous():
        return torch.contiguous_format
    return torch.channels_last if t.is_contiguous(memory_format=torch.channels_last) else None


def _upsample(x: torch.Tensor, out_h: int, out_w: int,
              out: Optional[torch.Tensor] = None) -> torch.Tensor:
    in_h, in_w = x.shape[-2:]
    b, c = x.shape[:2]
    fmt = (_layout(out) if out is not None else None) or torch.contiguous_format
    x = x.contiguous(memory_format=fmt)
    # along W first (the smaller intermediate), then along H straight into the output
    tmp = torch.empty(b, c, in_h, out_w, dtype=x.dtype, device=x.device, memory_format=fmt)
    _upsample_dim(x, tmp, out_w // in_w, dim=3)
    if out is None:
        out = x.new_empty(b, c, out_h, out_w)
    _upsample_dim(tmp, out, out_h // in_h, dim=2)
    return out


def _phase_weights(s: int):
    """Per phase ``p``: (``True`` if it blends rows ``q - 1, q``, else ``q, q + 1``; weight)."""
    for p in range(s):
        src = (p + 0.5) / s - 0.5  # relative to q
        if src < 0:
            yield p, True, 1.0 + src
        else:
            yield p, False, src


def _upsample_dim(x: torch.Tensor, out: torch.Tensor, s: int, dim: int) -> None:
    """Write ``x`` upsampled ``s`` times along ``dim`` into ``out`` (same shape otherwise)."""
    n = x.shape[dim]
    # [..., q, p, ...] = out[..., s q + p, ...]
    view = out.unflatten(dim, (n, s))
    lo, hi = x.narrow(dim, 0, n - 1), x.narrow(dim, 1, n - 1)
    for p, left, w in _phase_weights(s):
        dst = view.select(dim + 1, p)  # (..., n, ...): output rows s q + p
        if n == 1:
            dst.copy_(x)
        elif left:  # q >= 1 blends q - 1 and q; q = 0 is clamped to x[0]
            torch.lerp(lo, hi, w, out=dst.narrow(dim, 1, n - 1))
            dst.narrow(dim, 0, 1).copy_(x.narrow(dim, 0, 1))
        else:  # q <= n - 2 blends q and q + 1; q = n - 1 is clamped to x[n - 1]
            torch.lerp(lo, hi, w, out=dst.narrow(dim, 0, n - 1))
            dst.narrow(dim, n - 1, 1).copy_(x.narrow(dim, n - 1, 1))


def _adjoint_dim(g: torch.Tensor, s: int, dim: int) -> torch.Tensor:
    """The transpose of :func:`_upsample_dim`: ``g`` (``n s`` along ``dim``, 2 or 3) -> ``n``."""
    if s == 1:
        return g
    n = g.shape[dim] // s
    weights = g.new_zeros(3, s)  # rows: own block, the block above (q - 1), below (q + 1)
    for p, left, w in _phase_weights(s):
        weights[0, p] = w if left else 1.0 - w
        weights[1 if left else 2, p] = 1.0 - w if left else w
    if dim == 2:  # (B, C, n, s, W) -> (B, C, n, 3, W)
        parts = torch.matmul(weights, g.unflatten(2, (n, s))).unbind(3)
    else:  # (B, C, H, n, s) -> (B, C, H, n, 3)
        parts = torch.matmul(g.unflatten(3, (n, s)), weights.t()).unbind(4)
    own, up, down = parts
    out = own.contiguous()
    if n > 1:
        out.narrow(dim, 0, n - 1).add_(up.narrow(dim, 1, n - 1))
        out.narrow(dim, 1, n - 1).add_(down.narrow(dim, 0, n - 1))
    # the clamped edges: block 0's "above" and block n - 1's "below" stay in their own row
    out.narrow(dim, 0, 1).add_(up.narrow(dim, 0, 1))
    out.narrow(dim, n - 1, 1).add_(down.narrow(dim, n - 1, 1))
    return out

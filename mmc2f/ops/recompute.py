"""Training kernels that save less for backward: cheap elementwise work is recomputed instead.

All take NHWC tensors ``(B, H, W, C)`` (channels last, the layout of LayerNorm over channels and of
1x1 convs as matrix products). Where :func:`recompute_enabled` holds (autograd recording, CPU fp32
without autocast, eager) each is one autograd Function saving only the tensors listed; elsewhere
(CUDA, half precision, autocast, tracing, ONNX export, ``torch.compile``, fake tensors) the same
formula runs as plain ATen ops. Both agree to float rounding. What is saved and why:
docs/training_memory.md.

* :func:`layer_norm_linear`: ``linear(LN(x))``; saves ``x`` and the per-pixel statistics;
* :func:`gated_dwconv_residual`: ``x + s ⊙ γ ⊙ linear(DW(GELU(a)) ⊙ v)``; saves ``[a, v]`` and
  ``DW(GELU(a))``;
* :func:`dwconv_mlp_residual`: ``x + s ⊙ γ ⊙ linear(h + GELU(DW(h)))``, ``h = GELU(q)``; saves
  ``q`` only.

``γ``: a per-channel scale ``(C,)`` (layer scale) or ``None``; ``s``: a per-sample scale ``(B,)``
(stochastic depth: 0 or ``1 / keep``) or ``None``.
"""
from typing import Optional

import torch
import torch.nn.functional as F

from .depthwise import _cpu_autocast, depthwise_weight_grad
from .mode import eager

__all__ = ['recompute_enabled', 'layer_norm_linear', 'gated_dwconv_residual',
           'dwconv_mlp_residual']

_aten = torch.ops.aten


def recompute_enabled(*tensors: Optional[torch.Tensor]) -> bool:
    """Whether the recomputing Functions run for these tensors (``None`` entries ignored): grad
    mode on and one of them requires grad, all on CPU in fp32, no autocast, :func:`eager`."""
    if not torch.is_grad_enabled() or _cpu_autocast() or not eager():
        return False
    ts = [t for t in tensors if t is not None]
    return (all(t.device.type == 'cpu' and t.dtype == torch.float32 for t in ts)
            and any(t.requires_grad for t in ts))


def _rows(t: torch.Tensor) -> torch.Tensor:
    return t.reshape(-1, t.shape[-1])


def _pair(v):
    return (int(v), int(v)) if isinstance(v, int) else (int(v[0]), int(v[1]))


def _dwconv(x: torch.Tensor, weight, bias, padding) -> torch.Tensor:
    """Stride-1 depthwise conv of NHWC ``x``: ``(B, H, W, C) -> (B, H, W, C)`` (a view)."""
    out = F.conv2d(x.permute(0, 3, 1, 2), weight, bias, 1, padding, 1, weight.shape[0])
    return out.permute(0, 2, 3, 1)


def _residual_plain(x, z, weight, bias, gamma, scale):
    t = F.linear(z, weight, bias)
    if gamma is not None:
        t = t * gamma
    if scale is not None:
        t = t * scale.view(-1, 1, 1, 1)
    return x + t


def _residual_forward(x, z, weight, bias, gamma, scale):
    """``x + s ⊙ γ ⊙ (z W^T + b)`` with ``γ`` folded into ``W``, ``b``; ``z W^T`` accumulated
    into ``x + b`` by the GEMM when there is no ``s``. ``(B, H, W, C)``, contiguous."""
    if gamma is not None:
        weight = weight * gamma[:, None]
        bias = None if bias is None else bias * gamma
    if scale is not None:
        return torch.addcmul(x, F.linear(z, weight, bias), scale.view(-1, 1, 1, 1))
    out = x + bias if bias is not None else x.clone(memory_format=torch.contiguous_format)
    _rows(out).addmm_(_rows(z), weight.t())
    return out


def _residual_backward(grad, z, weight, bias, gamma, scale):
    """Gradients of :func:`_residual_forward` except ``x``'s (``grad`` itself): ``(dz (N, K),
    dW, db, dγ)``. ``dγ_c = sum_k W_ck M_ck + b_c sum_p g_pc`` with ``M = g^T z``, the product
    that gives ``dW`` anyway, so the linear's output is never needed."""
    g = _rows(grad if scale is None else grad * scale.view(-1, 1, 1, 1))
    gsum = g.sum(0)
    m = g.t().mm(_rows(z))  # (C, K)
    if gamma is None:
        return g.mm(weight), m, None if bias is None else gsum, None
    dgamma = (m * weight).sum(1)
    if bias is not None:
        dgamma += bias * gsum
    return (g.mm(weight * gamma[:, None]), m.mul_(gamma[:, None]),
            None if bias is None else gsum * gamma, dgamma)


class _LayerNormLinear(torch.autograd.Function):
    """``linear(layer_norm(x))``; saves ``x``, mean and 1/std, recomputes ``layer_norm(x)``."""

    @staticmethod
    def forward(ctx, x, norm_weight, norm_bias, eps, weight, bias):
        shape = (x.shape[-1], )
        n, mean, rstd = torch.native_layer_norm(x, shape, norm_weight, norm_bias, eps)
        ctx.eps, ctx.has_bias = eps, bias is not None
        ctx.save_for_backward(x, mean, rstd, norm_weight, norm_bias, weight)
        return F.linear(n, weight, bias)

    @staticmethod
    def backward(ctx, grad):
        x, mean, rstd, norm_weight, norm_bias, weight = ctx.saved_tensors
        shape = (x.shape[-1], )
        n = torch.native_layer_norm(x, shape, norm_weight, norm_bias, ctx.eps)[0]
        g = _rows(grad)
        grad_w = g.t().mm(_rows(n))
        grad_b = g.sum(0) if ctx.has_bias else None
        del n
        grad_n = g.mm(weight).view(x.shape)
        mask = [ctx.needs_input_grad[0], norm_weight is not None and ctx.needs_input_grad[1],
                norm_bias is not None and ctx.needs_input_grad[2]]
        grad_x, grad_nw, grad_nb = _aten.native_layer_norm_backward(
            grad_n, x, shape, mean, rstd, norm_weight, norm_bias, mask)
        return grad_x, grad_nw, grad_nb, None, grad_w, grad_b


def layer_norm_linear(x: torch.Tensor, norm_weight: Optional[torch.Tensor],
                      norm_bias: Optional[torch.Tensor], eps: float, weight: torch.Tensor,
                      bias: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``linear(layer_norm(x))`` over the last dim: ``(..., C_in) -> (..., C_out)``, ``weight``
    ``(C_out, C_in)``. Saves ``x`` (not the normalised tensor) for backward."""
    if recompute_enabled(x, norm_weight, norm_bias, weight, bias):
        return _LayerNormLinear.apply(x.contiguous(), norm_weight, norm_bias, eps, weight, bias)
    n = F.layer_norm(x, (int(x.shape[-1]), ), norm_weight, norm_bias, eps)
    return F.linear(n, weight, bias)


class _GatedDWConvResidual(torch.autograd.Function):
    """:func:`gated_dwconv_residual`; saves ``u = [a, v]`` and ``d = DW(GELU(a))``."""

    @staticmethod
    def forward(ctx, x, u, dw_weight, dw_bias, padding, weight, bias, gamma, scale):
        a, v = u.split(dw_weight.shape[0], -1)
        d = _dwconv(F.gelu(a), dw_weight, dw_bias, padding).contiguous()
        out = _residual_forward(x, d * v, weight, bias, gamma, scale)
        ctx.padding, ctx.has_dw_bias = padding, dw_bias is not None
        ctx.save_for_backward(u, d, dw_weight, weight, bias, gamma, scale)
        return out

    @staticmethod
    def backward(ctx, grad):
        u, d, dw_weight, weight, bias, gamma, scale = ctx.saved_tensors
        channels = dw_weight.shape[0]
        a, v = u.split(channels, -1)
        grad_z, grad_w, grad_b, grad_gamma = _residual_backward(grad, d * v, weight, bias, gamma,
                                                                scale)
        grad_z = grad_z.view(d.shape)
        grad_u = torch.empty_like(u, memory_format=torch.contiguous_format)
        grad_a, grad_v = grad_u.split(channels, -1)
        torch.mul(grad_z, d, out=grad_v)
        grad_d = grad_z.mul_(v)
        (kh, kw), (ph, pw) = dw_weight.shape[-2:], ctx.padding
        grad_g = _dwconv(grad_d, dw_weight.flip(2, 3), None, (kh - 1 - ph, kw - 1 - pw))
        g = F.gelu(a).permute(0, 3, 1, 2)
        grad_dw = depthwise_weight_grad(g, grad_d.permute(0, 3, 1, 2), (kh, kw), (ph, pw))
        del g
        grad_dwb = _rows(grad_d).sum(0) if ctx.has_dw_bias else None
        _aten.gelu_backward.grad_input(grad_g, a, approximate='none', grad_input=grad_a)
        return grad, grad_u, grad_dw, grad_dwb, None, grad_w, grad_b, grad_gamma, None


def gated_dwconv_residual(x: torch.Tensor, u: torch.Tensor, dw_weight: torch.Tensor,
                          dw_bias: Optional[torch.Tensor], padding, weight: torch.Tensor,
                          bias: Optional[torch.Tensor], gamma: Optional[torch.Tensor] = None,
                          scale: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``x + s ⊙ γ ⊙ linear(DW(GELU(a)) ⊙ v)``, ``[a, v] = u`` split along channels.

    Shapes: ``x (B, H, W, C)``, ``u (B, H, W, 2K)``, ``dw_weight (K, 1, kh, kw)`` (stride 1,
    ``padding`` keeping H, W), ``weight (C, K)``; out ``(B, H, W, C)``."""
    padding = _pair(padding)
    if recompute_enabled(x, u, dw_weight, dw_bias, weight, bias, gamma):
        return _GatedDWConvResidual.apply(x.contiguous(), u.contiguous(), dw_weight, dw_bias,
                                          padding, weight, bias, gamma, scale)
    a, v = u.split(dw_weight.shape[0], -1)
    z = _dwconv(F.gelu(a), dw_weight, dw_bias, padding) * v
    return _residual_plain(x, z, weight, bias, gamma, scale)


class _DWConvMLPResidual(torch.autograd.Function):
    """:func:`dwconv_mlp_residual`; saves ``q`` only."""

    @staticmethod
    def forward(ctx, x, q, dw_weight, dw_bias, padding, weight, bias, gamma, scale):
        h = F.gelu(q)
        h2 = h.add_(F.gelu(_dwconv(h, dw_weight, dw_bias, padding)))
        out = _residual_forward(x, h2, weight, bias, gamma, scale)
        ctx.padding = padding
        ctx.save_for_backward(q, dw_weight, dw_bias, weight, bias, gamma, scale)
        return out

    @staticmethod
    def backward(ctx, grad):
        q, dw_weight, dw_bias, weight, bias, gamma, scale = ctx.saved_tensors
        h = F.gelu(q)
        r = _dwconv(h, dw_weight, dw_bias, ctx.padding)
        h2 = F.gelu(r).add_(h)
        grad_h2, grad_w, grad_b, grad_gamma = _residual_backward(grad, h2, weight, bias, gamma,
                                                                 scale)
        del h2
        grad_h2 = grad_h2.view(q.shape)
        grad_r = _aten.gelu_backward.grad_input(grad_h2, r, approximate='none', grad_input=r)
        channels = dw_weight.shape[0]
        grad_h, grad_dw, grad_dwb = _aten.convolution_backward(
            grad_r.permute(0, 3, 1, 2), h.permute(0, 3, 1, 2), dw_weight,
            None if dw_bias is None else [channels], [1, 1], list(ctx.padding), [1, 1], False,
            [0, 0], channels, [True, True, dw_bias is not None])
        del grad_r, h
        grad_h2 += grad_h.permute(0, 2, 3, 1)
        grad_q = _aten.gelu_backward.grad_input(grad_h2, q, approximate='none',
                                                grad_input=grad_h2)
        return grad, grad_q, grad_dw, grad_dwb, None, grad_w, grad_b, grad_gamma, None


def dwconv_mlp_residual(x: torch.Tensor, q: torch.Tensor, dw_weight: torch.Tensor,
                        dw_bias: Optional[torch.Tensor], padding, weight: torch.Tensor,
                        bias: Optional[torch.Tensor], gamma: Optional[torch.Tensor] = None,
                        scale: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``x + s ⊙ γ ⊙ linear(h + GELU(DW(h)))``, ``h = GELU(q)``.

    Shapes: ``x (B, H, W, C)``, ``q (B, H, W, K)``, ``dw_weight (K, 1, kh, kw)`` (stride 1,
    ``padding`` keeping H, W), ``weight (C, K)``; out ``(B, H, W, C)``."""
    padding = _pair(padding)
    if recompute_enabled(x, q, dw_weight, dw_bias, weight, bias, gamma):
        return _DWConvMLPResidual.apply(x.contiguous(), q.contiguous(), dw_weight, dw_bias,
                                        padding, weight, bias, gamma, scale)
    h = F.gelu(q)
    return _residual_plain(x, h + F.gelu(_dwconv(h, dw_weight, dw_bias, padding)), weight, bias,
                           gamma, scale)

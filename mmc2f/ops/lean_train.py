"""Training kernels on NHWC (channels_last) activations that save little for backward.

Each function takes an activation ``(B, C, H, W)`` in channels_last memory (what :func:`lean`
checks) and the weights of plain ``nn.Conv2d`` layers, and computes the same values and gradients
as the plain ATen ops. On CPU in fp32 under :func:`~mmc2f.ops.mode.eager` (no autocast) they run as
custom autograd functions that save only their inputs and recompute the cheap intermediates
(1x1 products, depthwise convolutions, activations) in backward; otherwise they are the plain ATen
ops (CUDA, autocast, tracing, ONNX export, ``torch.compile``, fake tensors).

* :func:`pointwise` -- a 1x1 convolution as one matrix product over the channels;
* :func:`depthwise` -- a stride-1 depthwise convolution; a ``1 x k`` kernel runs as a ``k x 1``
  one on the ``(B H, C, W, 1)`` view of the NHWC tensor (oneDNN's NHWC backward of ``1 x k`` kernels
  is up to 50x slower than its ``k x 1`` one on CPU);
* :func:`pointwise_act` -- ``act(W x + b)``, saving ``x`` only;
* :func:`depthwise_branch_sum` -- ``A + sum_i dw_i2(dw_i1(A))`` with ``A = dw_0(u)``, saving ``u``;
* :func:`gated_pointwise` -- ``W_o ((W_g s + b_g) * u) + b_o``, saving ``s`` and ``u``;
* :func:`conv_mlp` -- ``W_2 act(dw(W_1 x + b_1)) + b_2``, saving ``x`` only.
"""
from typing import List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

from .mode import eager

__all__ = ['lean', 'pointwise', 'depthwise', 'pointwise_act', 'depthwise_branch_sum',
           'gated_pointwise', 'conv_mlp', 'LEAN_ACTIVATIONS']

_CL = torch.channels_last

#: activations the lean functions recompute: name -> (forward, backward(grad, pre-activation))
LEAN_ACTIVATIONS = {
    'gelu': (F.gelu, lambda g, x: torch.ops.aten.gelu_backward(g, x)),
    'relu': (F.relu, lambda g, x: g * (x > 0).to(g.dtype)),
}


def _cpu_autocast() -> bool:
    try:
        return torch.is_autocast_enabled('cpu')
    except TypeError:  # pragma: no cover  (torch < 2.4)
        return torch.is_autocast_cpu_enabled()


def lean(x: torch.Tensor) -> bool:
    """Whether the custom (recomputing) functions run for ``x``: CPU, fp32, gradients enabled,
    no autocast, :func:`eager`."""
    return (x.device.type == 'cpu' and x.dtype == torch.float32 and torch.is_grad_enabled()
            and not _cpu_autocast() and eager())


def _rows(x: torch.Tensor) -> torch.Tensor:
    """``(B, C, H, W)`` -> the ``(B, H, W, C)`` view (contiguous for channels_last memory)."""
    return x.permute(0, 2, 3, 1)


def _nchw(x: torch.Tensor) -> torch.Tensor:
    """``(B, H, W, C)`` -> ``(B, C, H, W)`` view (channels_last memory)."""
    return x.permute(0, 3, 1, 2)


def _mat(weight: torch.Tensor) -> torch.Tensor:
    """A 1x1 conv weight ``(C_out, C_in, 1, 1)`` as a ``(C_out, C_in)`` matrix."""
    return weight.view(weight.shape[0], -1)


def pointwise(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor]) -> torch.Tensor:
    """A 1x1 convolution, ``(B, C_in, H, W) -> (B, C_out, H, W)``; NHWC memory in and out."""
    return _nchw(F.linear(_rows(x), _mat(weight), bias))


def _is_row_strip(weight: torch.Tensor, padding: Sequence[int]) -> bool:
    return weight.shape[2] == 1 and weight.shape[3] > 1 and padding[0] == 0


def depthwise(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],
              padding: Sequence[int]) -> torch.Tensor:
    """A stride-1 depthwise convolution, ``(B, C, H, W) -> (B, C, H_out, W_out)``; a ``1 x k``
    kernel of an NHWC input runs as ``k x 1`` on the ``(B H, C, W, 1)`` view (a plain ATen conv,
    so autograd and every device see ordinary ops)."""
    channels = weight.shape[0]
    if _is_row_strip(weight, padding) and x.is_contiguous(memory_format=_CL) and x.dim() == 4 \
            and eager():
        b, c, h, w = x.shape
        view = x.permute(0, 2, 1, 3).reshape(b * h, c, w, 1)
        y = F.conv2d(view, weight.transpose(2, 3), bias, 1, (padding[1], 0), 1, channels)
        return y.reshape(b, h, c, y.shape[2]).permute(0, 2, 1, 3)
    return F.conv2d(x, weight, bias, 1, tuple(padding), 1, channels)


def _dw_backward(grad: torch.Tensor, x: torch.Tensor, weight: torch.Tensor,
                 padding: Sequence[int], mask: List[bool]):
    """``(dL/dx, dL/dW, dL/db)`` of :func:`depthwise` (NHWC tensors)."""
    channels = weight.shape[0]
    grad = grad.contiguous(memory_format=_CL)
    if _is_row_strip(weight, padding):
        b, c, h, w = x.shape
        gv = grad.permute(0, 2, 1, 3).reshape(b * h, c, grad.shape[3], 1)
        xv = x.permute(0, 2, 1, 3).reshape(b * h, c, w, 1)
        gx, gw, gb = torch.ops.aten.convolution_backward(
            gv, xv, weight.transpose(2, 3), [channels], [1, 1], [int(padding[1]), 0], [1, 1],
            False, [0, 0], channels, mask)
        if gx is not None:
            gx = gx.reshape(b, h, c, w).permute(0, 2, 1, 3)
        if gw is not None:
            gw = gw.transpose(2, 3)
        return gx, gw, gb
    return torch.ops.aten.convolution_backward(
        grad, x, weight, [channels], [1, 1], [int(p) for p in padding], [1, 1], False, [0, 0],
        channels, mask)


def _add(a: Optional[torch.Tensor], b: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
    return b if a is None else (a if b is None else a + b)


def _linear_grads(g_rows: torch.Tensor, x_rows: torch.Tensor, weight: torch.Tensor,
                  needs: Tuple[bool, bool, bool]):
    """Gradients of ``y = x W^T + b`` (rows ``(..., C)``): ``(dL/dx rows, dL/dW, dL/db)``."""
    gx = g_rows @ _mat(weight) if needs[0] else None
    gw = gb = None
    if needs[1]:
        gw = (g_rows.reshape(-1, g_rows.shape[-1]).t() @ x_rows.reshape(-1, x_rows.shape[-1])
              ).view_as(weight)
    if needs[2]:
        gb = g_rows.sum(dim=(0, 1, 2))
    return gx, gw, gb


class _PointwiseAct(torch.autograd.Function):
    """``act(W x + b)``; saves ``x``, recomputes ``W x + b`` in backward."""

    @staticmethod
    def forward(ctx, x, weight, bias, act):
        ctx.act = act
        ctx.save_for_backward(x, weight, bias)
        return _nchw(LEAN_ACTIVATIONS[act][0](F.linear(_rows(x), _mat(weight), bias)))

    @staticmethod
    def backward(ctx, grad):
        x, weight, bias = ctx.saved_tensors
        xr = _rows(x)
        pre = F.linear(xr, _mat(weight), bias)
        g = LEAN_ACTIVATIONS[ctx.act][1](_rows(grad.contiguous(memory_format=_CL)), pre)
        del pre
        gx, gw, gb = _linear_grads(g, xr, weight, ctx.needs_input_grad[:3])
        return (None if gx is None else _nchw(gx)), gw, gb, None


def pointwise_act(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],
                  act: str = 'gelu') -> torch.Tensor:
    """``act(conv1x1(x))``, ``(B, C_in, H, W) -> (B, C_out, H, W)``, ``act`` in
    :data:`LEAN_ACTIVATIONS`; saves only ``x`` for backward when :func:`lean`."""
    if lean(x):
        return _PointwiseAct.apply(x, weight, bias, act)
    return LEAN_ACTIVATIONS[act][0](pointwise(x, weight, bias))


def _branch_sum_forward(u, w0, b0, p0, branches):
    a = depthwise(u, w0, b0, p0)
    s = a
    for w1, b1, p1, w2, b2, p2 in branches:
        s = s + depthwise(depthwise(a, w1, b1, p1), w2, b2, p2)
    return a, s


class _BranchSum(torch.autograd.Function):
    """:func:`depthwise_branch_sum`; saves ``u``, recomputes ``A`` and the branch middles."""

    @staticmethod
    def forward(ctx, u, p0, pads, w0, b0, *weights):
        ctx.p0, ctx.pads = p0, pads
        ctx.save_for_backward(u, w0, b0, *weights)
        return _branch_sum_forward(u, w0, b0, p0, _branches(weights, pads))[1]

    @staticmethod
    def backward(ctx, grad):
        u, w0, b0, *weights = ctx.saved_tensors
        needs = ctx.needs_input_grad
        grad = grad.contiguous(memory_format=_CL)
        a = depthwise(u, w0, b0, ctx.p0)
        ga = grad
        grads: List[Optional[torch.Tensor]] = []
        for i, (w1, b1, p1, w2, b2, p2) in enumerate(_branches(weights, ctx.pads)):
            n = 5 + 4 * i  # index of w1 among forward's inputs
            mid = depthwise(a, w1, b1, p1)
            gmid, gw2, gb2 = _dw_backward(grad, mid, w2, p2, [True, needs[n + 2],
                                                              b2 is not None and needs[n + 3]])
            del mid
            gai, gw1, gb1 = _dw_backward(gmid, a, w1, p1, [True, needs[n],
                                                           b1 is not None and needs[n + 1]])
            ga = ga + gai
            grads += [gw1, gb1, gw2, gb2]
        del a
        gu, gw0, gb0 = _dw_backward(ga, u, w0, ctx.p0, [needs[0], needs[3],
                                                        b0 is not None and needs[4]])
        return (gu, None, None, gw0, gb0, *grads)


def _branches(weights, pads):
    """Flat ``(w1, b1, w2, b2, ...)`` and ``((p1, p2), ...)`` -> ``[(w1, b1, p1, w2, b2, p2)]``."""
    return [(weights[4 * i], weights[4 * i + 1], pads[i][0], weights[4 * i + 2],
             weights[4 * i + 3], pads[i][1]) for i in range(len(pads))]


def depthwise_branch_sum(u: torch.Tensor, w0: torch.Tensor, b0: Optional[torch.Tensor],
                         p0: Sequence[int], branches: Sequence[tuple]) -> torch.Tensor:
    """``A + sum_i dw(dw(A; W_i1); W_i2)`` with ``A = dw(u; W_0)``: ``(B, C, H, W)`` ->
    ``(B, C, H, W)``; ``branches``: ``(W_i1, b_i1, p_i1, W_i2, b_i2, p_i2)`` per branch (stride-1
    depthwise, "same" padding). Saves only ``u`` for backward when :func:`lean`."""
    branches = [tuple(b) for b in branches]
    if lean(u) and u.is_contiguous(memory_format=_CL):
        pads = tuple((tuple(b[2]), tuple(b[5])) for b in branches)
        flat = [t for b in branches for t in (b[0], b[1], b[3], b[4])]
        return _BranchSum.apply(u, tuple(p0), pads, w0, b0, *flat)
    return _branch_sum_forward(u, w0, b0, p0, branches)[1]


class _GatedPointwise(torch.autograd.Function):
    """:func:`gated_pointwise`; saves ``s`` and ``u``, recomputes the gate ``W_g s + b_g``."""

    @staticmethod
    def forward(ctx, s, u, wg, bg, wo, bo):
        ctx.save_for_backward(s, u, wg, bg, wo)
        gate = F.linear(_rows(s), _mat(wg), bg)
        return _nchw(F.linear(gate.mul_(_rows(u)), _mat(wo), bo))

    @staticmethod
    def backward(ctx, grad):
        s, u, wg, bg, wo = ctx.saved_tensors
        needs = ctx.needs_input_grad
        sr, ur = _rows(s), _rows(u)
        gr = _rows(grad.contiguous(memory_format=_CL))
        gate = F.linear(sr, _mat(wg), bg)
        gprod, gwo, gbo = _linear_grads(gr, gate * ur, wo, (True, needs[4], needs[5]))
        gu = gprod * gate if needs[1] else None
        del gate
        ggate = gprod.mul_(ur)
        gs, gwg, gbg = _linear_grads(ggate, sr, wg, (needs[0], needs[2], bg is not None and needs[3]))
        return (None if gs is None else _nchw(gs), None if gu is None else _nchw(gu), gwg, gbg,
                gwo, gbo)


def gated_pointwise(s: torch.Tensor, u: torch.Tensor, w_gate: torch.Tensor,
                    b_gate: Optional[torch.Tensor], w_out: torch.Tensor,
                    b_out: Optional[torch.Tensor]) -> torch.Tensor:
    """``conv1x1_out(conv1x1_gate(s) * u)``: ``(B, C, H, W), (B, C, H, W) -> (B, C_out, H, W)``;
    saves only ``s`` and ``u`` for backward when :func:`lean`."""
    if lean(s) and s.is_contiguous(memory_format=_CL) and u.is_contiguous(memory_format=_CL):
        return _GatedPointwise.apply(s, u, w_gate, b_gate, w_out, b_out)
    return pointwise(pointwise(s, w_gate, b_gate) * u, w_out, b_out)


class _ConvMlp(torch.autograd.Function):
    """:func:`conv_mlp`; saves ``x``, recomputes the hidden tensors in backward."""

    @staticmethod
    def forward(ctx, x, w1, b1, wd, bd, pad, w2, b2, act):
        ctx.pad, ctx.act = pad, act
        ctx.save_for_backward(x, w1, b1, wd, bd, w2, b2)
        h = _nchw(F.linear(_rows(x), _mat(w1), b1))
        h = LEAN_ACTIVATIONS[act][0](depthwise(h, wd, bd, pad))
        return _nchw(F.linear(_rows(h), _mat(w2), b2))

    @staticmethod
    def backward(ctx, grad):
        x, w1, b1, wd, bd, w2, b2 = ctx.saved_tensors
        needs = ctx.needs_input_grad
        xr = _rows(x)
        h = _nchw(F.linear(xr, _mat(w1), b1))
        d = depthwise(h, wd, bd, ctx.pad)
        gr = _rows(grad.contiguous(memory_format=_CL))
        a = LEAN_ACTIVATIONS[ctx.act][0](d)
        ga, gw2, gb2 = _linear_grads(gr, _rows(a), w2, (True, needs[6],
                                                        b2 is not None and needs[7]))
        del a
        gd = LEAN_ACTIVATIONS[ctx.act][1](ga, _rows(d))
        del d, ga
        gh, gwd, gbd = _dw_backward(_nchw(gd), h, wd, ctx.pad,
                                    [True, needs[3], bd is not None and needs[4]])
        del h, gd
        gx, gw1, gb1 = _linear_grads(_rows(gh.contiguous(memory_format=_CL)), xr, w1,
                                     (needs[0], needs[1], b1 is not None and needs[2]))
        return (None if gx is None else _nchw(gx), gw1, gb1, gwd, gbd, None, gw2, gb2, None)


def conv_mlp(x: torch.Tensor, w1: torch.Tensor, b1: Optional[torch.Tensor], w_dw: torch.Tensor,
             b_dw: Optional[torch.Tensor], padding: Sequence[int], w2: torch.Tensor,
             b2: Optional[torch.Tensor], act: str = 'gelu') -> torch.Tensor:
    """``conv1x1_2(act(dw(conv1x1_1(x))))``: ``(B, C, H, W) -> (B, C_hidden, H, W) ->
    (B, C_out, H, W)`` (stride-1 depthwise, "same" padding); saves only ``x`` for backward when
    :func:`lean`."""
    if lean(x) and x.is_contiguous(memory_format=_CL):
        return _ConvMlp.apply(x, w1, b1, w_dw, b_dw, tuple(padding), w2, b2, act)
    h = LEAN_ACTIVATIONS[act][0](depthwise(pointwise(x, w1, b1), w_dw, b_dw, padding))
    return pointwise(h, w2, b2)

"""Convolutions for training on NHWC activations.

* :func:`depthwise_conv`: a stride-1 depthwise convolution whose CPU backward computes the weight
  gradient as batched matrix products (PyTorch's CPU kernel is 3-6x slower for 11x11 kernels);
* :func:`pointwise_conv`: a 1x1 convolution as one matrix product over the channels of an NHWC
  tensor, so activations and gradients keep one memory format.

Other devices, dtypes, autocast, tracing and ``torch.compile`` take ``conv(x)`` unchanged.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F

from .mode import eager

__all__ = ['depthwise_conv', 'depthwise_weight_grad', 'pointwise_conv']


class _LargeKernelDepthwiseConv(torch.autograd.Function):
    """``conv2d(x, W, b, padding=p, groups=C)`` (stride 1) with a faster CPU backward; with
    ``g = dL/dy``:

    * ``dL/dx = conv2d(g, flip(W), padding=k - 1 - p, groups=C)`` (the transposed conv);
    * ``dL/dW``: :func:`depthwise_weight_grad`;
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
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            grad_x = F.conv2d(grad, weight.flip(2, 3), None, 1, (kh - 1 - ph, kw - 1 - pw), 1,
                              weight.shape[0])
        if ctx.needs_input_grad[1]:
            grad_w = depthwise_weight_grad(x, grad, (kh, kw), (ph, pw))
        if ctx.needs_input_grad[2]:
            grad_b = grad.sum(dim=(0, 2, 3))
        return grad_x, grad_w, grad_b, None


def depthwise_weight_grad(x: torch.Tensor, grad: torch.Tensor, kernel_size,
                          padding) -> torch.Tensor:
    """``dL/dW`` of a stride-1 depthwise conv: input ``(B, C, H, W)`` and output gradient
    ``(B, C, H_out, W_out)`` -> ``(C, 1, kh, kw)``.

    ``dL/dW[c, i, j] = sum_{b,h,w} xpad[b, c, h + i, w + j] g[b, c, h, w]``: for each kernel row
    ``i`` one batched product over channels ``M_c = X_{c,i}^T G_c`` (``X_{c,i}``: padded rows
    ``i .. i + H_out`` as an ``(H_out B, W_pad)`` matrix), then ``dL/dW[c, i, j] = sum_w
    M_c[w + j, w]``.
    """
    (kh, kw), (ph, pw) = kernel_size, padding
    batch, channels, height, width = x.shape
    h_out, w_out = grad.shape[-2:]
    w_pad = width + 2 * pw
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
    """A 1x1 ``conv`` on an NHWC tensor: ``(B, H, W, C_in) -> (B, H, W, C_out)``, the conv's
    weight viewed as a ``(C_out, C_in)`` matrix."""
    return F.linear(x, conv.weight.view(conv.out_channels, -1), conv.bias)


def depthwise_conv(x: torch.Tensor, conv: nn.Conv2d) -> torch.Tensor:
    """A depthwise ``conv`` (stride 1, no dilation) with the faster backward on CPU in fp32 (no
    autocast) when gradients are needed; plain ``conv(x)`` otherwise."""
    if (torch.is_grad_enabled() and x.device.type == 'cpu' and x.dtype == torch.float32
            and conv.weight.dtype == torch.float32 and not _cpu_autocast() and eager()
            and (x.requires_grad or conv.weight.requires_grad)
            and isinstance(conv.padding, tuple)):
        return _LargeKernelDepthwiseConv.apply(x, conv.weight, conv.bias, conv.padding)
    return conv(x)

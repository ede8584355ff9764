"""Training kernels against plain PyTorch: the large-kernel depthwise conv backward and the 1x1
conv as a matrix product on NHWC tensors."""
import pytest
import torch
import torch.nn as nn

from mmc2f.ops import depthwise


@pytest.mark.parametrize('kernel,padding,hw,channels_last', [
    ((11, 11), (5, 5), (14, 14), False),
    ((11, 11), (5, 5), (9, 23), True),  # maps smaller than the kernel, NHWC memory
    ((7, 3), (3, 1), (12, 10), False),  # non-square kernel
    ((1, 21), (0, 10), (6, 30), True),  # a strip, as MSCAN's
    ((5, 5), (0, 1), (11, 13), False),  # padding other than "same": smaller output
    ((3, 3), (1, 1), (1, 1), False),
])
def test_large_kernel_depthwise_conv_matches_aten(kernel, padding, hw, channels_last):
    torch.manual_seed(0)
    conv = nn.Conv2d(6, 6, kernel, padding=padding, groups=6)
    x = torch.randn(3, 6, *hw)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    results = []
    for fn in (conv, lambda t: depthwise.depthwise_conv(t, conv)):
        xi = x.clone().requires_grad_()
        conv.zero_grad()
        y = fn(xi)
        (y * torch.linspace(-1, 1, y.numel()).view_as(y)).sum().backward()
        results.append((y.detach(), xi.grad, conv.weight.grad.clone(), conv.bias.grad.clone()))
    for ref, got in zip(*results):
        assert got.shape == ref.shape
        torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)


def test_large_kernel_depthwise_conv_is_used_and_gradcheck():
    conv = nn.Conv2d(3, 3, 5, padding=2, groups=3)
    x = torch.randn(2, 3, 7, 6, requires_grad=True)
    y = depthwise.depthwise_conv(x, conv)
    assert type(y.grad_fn).__name__ == '_LargeKernelDepthwiseConvBackward'
    with torch.no_grad():  # inference: the plain module
        assert depthwise.depthwise_conv(x, conv).grad_fn is None
    # exact derivatives in float64
    fn = depthwise._LargeKernelDepthwiseConv.apply
    args = (torch.randn(2, 3, 6, 5, dtype=torch.double, requires_grad=True),
            torch.randn(3, 1, 3, 5, dtype=torch.double, requires_grad=True),
            torch.randn(3, dtype=torch.double, requires_grad=True), (1, 2))
    assert torch.autograd.gradcheck(fn, args)


@pytest.mark.parametrize('dtype', [torch.bfloat16, torch.float16])
def test_large_kernel_depthwise_conv_under_autocast(dtype):
    """Under CPU autocast the plain conv runs (the custom backward is fp32-only)."""
    conv = nn.Conv2d(4, 4, 7, padding=3, groups=4)
    x = torch.randn(2, 4, 12, 12, requires_grad=True)
    with torch.autocast('cpu', dtype=dtype):
        y = depthwise.depthwise_conv(x, conv)
    assert y.dtype == dtype and type(y.grad_fn).__name__ != '_LargeKernelDepthwiseConvBackward'
    y.float().sum().backward()
    assert x.grad.dtype == torch.float32 and conv.weight.grad is not None


def test_pointwise_conv_is_the_conv_on_nhwc():
    conv = nn.Conv2d(8, 5, 1)
    x = torch.randn(2, 8, 6, 7).contiguous(memory_format=torch.channels_last)
    got = depthwise.pointwise_conv(x.permute(0, 2, 3, 1), conv).permute(0, 3, 1, 2)
    torch.testing.assert_close(got, conv(x), rtol=1e-5, atol=1e-6)
    got.sum().backward()
    assert conv.weight.grad.shape == conv.weight.shape  # gradients reach the conv's parameters

"""resize_bilinear: integer-factor upsampling by phase-wise lerps equals F.interpolate."""
import pytest
import torch
import torch.nn.functional as F

from mmc2f.ops import resize_bilinear


@pytest.mark.parametrize('shape,size', [
    ((1, 150, 16, 16), (128, 128)),  # stride 8, as the decode heads' logits
    ((2, 19, 8, 16), (64, 128)),
    ((1, 4, 5, 7), (20, 21)),  # different factors per axis, odd sizes
    ((1, 3, 1, 4), (8, 8)),  # a single row
    ((1, 2, 6, 6), (6, 18)),  # factor 1 along H
    ((1, 2, 3, 3), (5, 7)),  # non-integer factors: F.interpolate itself
    ((1, 2, 8, 8), (4, 4)),  # downsampling: F.interpolate itself
])
def test_equals_interpolate(shape, size):
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(0))
    ref = F.interpolate(x, size, mode='bilinear', align_corners=False)
    got = resize_bilinear(x, size)
    assert got.shape == ref.shape and got.is_contiguous()
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-6)


def test_align_corners_and_channels_last_and_autograd():
    x = torch.randn(1, 3, 4, 6).contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(resize_bilinear(x, (16, 24), align_corners=True),
                               F.interpolate(x, (16, 24), mode='bilinear', align_corners=True))
    torch.testing.assert_close(resize_bilinear(x, (16, 24)),
                               F.interpolate(x, (16, 24), mode='bilinear', align_corners=False))


@pytest.mark.parametrize('layout', ['nchw', 'nhwc', 'strided'])
@pytest.mark.parametrize('shape,size', [
    ((1, 150, 16, 16), (128, 128)), ((2, 19, 8, 16), (64, 128)), ((1, 4, 5, 7), (20, 21)),
    ((1, 2, 3, 3), (5, 7))])  # the last: non-integer factors, PyTorch's kernel (out= or a copy)
def test_out_is_written_in_its_own_layout(shape, size, layout):
    from mmc2f.ops.resize import phase_wise
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(1))
    ref = F.interpolate(x, size, mode='bilinear', align_corners=False)
    b, c = shape[:2]
    out = {'nchw': lambda: torch.full((b, c, *size), float('nan')),
           'nhwc': lambda: torch.full((b, *size, c), float('nan')).permute(0, 3, 1, 2),
           'strided': lambda: torch.full((b, c, size[0], 2 * size[1]), float('nan'))[..., ::2],
           }[layout]()
    with torch.no_grad():
        got = resize_bilinear(x, size, out=out)
    assert got is out and got.stride() == out.stride()
    assert phase_wise(x, size) == (size != (5, 7))
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize('layout', ['nchw', 'nhwc'])
def test_out_with_align_corners_takes_pytorchs_kernel(layout):
    x = torch.randn(1, 5, 4, 6, generator=torch.Generator().manual_seed(2))
    ref = F.interpolate(x, (32, 48), mode='bilinear', align_corners=True)
    out = torch.empty(1, 5, 32, 48) if layout == 'nchw' else \
        torch.empty(1, 32, 48, 5).permute(0, 3, 1, 2)
    with torch.no_grad():
        torch.testing.assert_close(resize_bilinear(x, (32, 48), True, out=out), ref)


def test_out_refuses_a_wrong_shape_and_autograd():
    x = torch.randn(1, 2, 4, 4, requires_grad=True)
    with pytest.raises(ValueError, match='out has shape'):
        resize_bilinear(x.detach(), (8, 8), out=torch.empty(1, 2, 8, 9))
    with pytest.raises(ValueError, match='for inference'):
        resize_bilinear(x, (8, 8), out=torch.empty(1, 2, 8, 8))


@pytest.mark.parametrize('shape,size', [
    ((2, 3, 4, 5), (32, 40)), ((1, 2, 1, 3), (8, 9)), ((1, 2, 6, 6), (6, 18)),
    ((1, 1, 3, 2), (12, 2)), ((1, 2, 3, 3), (5, 7))])
def test_gradient_is_the_adjoint(shape, size):
    """The fast path's backward (the resize's adjoint) equals F.interpolate's gradient;
    gradcheck in float64, and the fast Function is the one that ran."""
    x = torch.randn(*shape, dtype=torch.float64, requires_grad=True)
    out = resize_bilinear(x, size)
    integer = size[0] % shape[2] == 0 and size[1] % shape[3] == 0
    assert (type(out.grad_fn).__name__ == '_ResizeBilinearBackward') == integer
    g = torch.randn_like(out)
    got, = torch.autograd.grad(out, x, g)
    exp, = torch.autograd.grad(F.interpolate(x, size, mode='bilinear', align_corners=False), x, g)
    torch.testing.assert_close(got, exp, rtol=1e-12, atol=1e-12)
    assert torch.autograd.gradcheck(lambda t: resize_bilinear(t, size), (x, ))


def test_half_precision_gradient_keeps_pytorch_kernel():
    g = torch.Generator().manual_seed(0)
    z = torch.randn(1, 3, 4, 4, generator=g).bfloat16().requires_grad_()
    assert type(resize_bilinear(z, (32, 32)).grad_fn).__name__ != '_ResizeBilinearBackward'
    with torch.no_grad():  # inference keeps the fast path in any float type
        torch.testing.assert_close(resize_bilinear(z, (32, 32)),
                                   F.interpolate(z, (32, 32), mode='bilinear'), rtol=1.6e-2,
                                   atol=1e-2)  # bfloat16: two roundings vs one


def test_the_comparison_can_fail():
    x = torch.randn(1, 2, 4, 4)
    ref = F.interpolate(x, (16, 16), mode='bilinear', align_corners=False)
    assert not torch.allclose(resize_bilinear(x, (16, 16), align_corners=True), ref, atol=1e-3)

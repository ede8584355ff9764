"""resized_cross_entropy: the cross-entropy of bilinearly upsampled logits, keeping only the small
logits, equals F.interpolate + F.cross_entropy (sum, argmax, gradient)."""
import pytest
import torch
import torch.nn.functional as F
from _reference.memory import saved_bytes

from mmc2f.ops import resized_cross_entropy
from mmc2f.ops.seg_loss import applies


@pytest.mark.parametrize('shape,size', [((2, 7, 4, 6), (32, 48)), ((1, 3, 5, 5), (5, 20)),
                                        ((1, 4, 1, 3), (8, 9))])
def test_equals_interpolate_cross_entropy(shape, size):
    g = torch.Generator().manual_seed(0)
    z = torch.randn(*shape, generator=g, requires_grad=True)
    label = torch.randint(0, shape[1], (shape[0], ) + size, generator=g)
    label[:, :size[0] // 3] = 255
    total, pred = resized_cross_entropy(z, label, ignore_index=255)
    up = F.interpolate(z, size, mode='bilinear', align_corners=False)
    ref = F.cross_entropy(up, label, ignore_index=255, reduction='sum')
    torch.testing.assert_close(total, ref, rtol=1e-5, atol=1e-5)
    assert torch.equal(pred, up.argmax(1)) and not pred.requires_grad
    got, = torch.autograd.grad(0.3 * total, z)
    exp, = torch.autograd.grad(0.3 * ref, z)
    assert exp.abs().max() > 0
    torch.testing.assert_close(got, exp, rtol=1e-5, atol=1e-6)


def test_saves_only_the_small_tensors():
    z = torch.randn(1, 10, 8, 8, requires_grad=True)
    label = torch.randint(0, 10, (1, 64, 64))
    full = 10 * 64 * 64 * 4  # one float32 tensor of the upsampled logits
    ours, _ = saved_bytes(lambda: resized_cross_entropy(z, label), exclude=[z])
    plain, _ = saved_bytes(lambda: F.cross_entropy(
        F.interpolate(z, (64, 64), mode='bilinear'), label), exclude=[z])
    assert ours < full / 2  # labels, mask, log-sum-exp: per pixel, not per class
    assert plain >= full  # what autograd keeps otherwise


def test_applies_only_where_measured():
    z = torch.randn(1, 3, 4, 4)
    assert applies(z, (32, 32))
    assert not applies(z, (30, 32))  # not an integer factor
    assert not applies(z.double(), (32, 32))
    with torch.autocast('cpu', dtype=torch.bfloat16):
        assert not applies(z, (32, 32))
    assert not applies(torch.empty(1, 3, 4, 4, device='meta'), (32, 32))

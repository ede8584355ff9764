"""Fused inference convolutions against plain PyTorch, on the oneDNN and the portable path."""
import pytest
import torch
import torch.nn.functional as F

from mmc2f.ops import fused


@pytest.mark.parametrize('binary', ['add', 'mul'])
@pytest.mark.parametrize('onednn', [True, False])
def test_fused_conv_binary_and_activations(binary, onednn, monkeypatch):
    if not onednn:
        monkeypatch.setattr(fused, '_POINTWISE', None)
    else:
        assert fused._POINTWISE is not None, 'this torch build has oneDNN: the op must load'
    torch.manual_seed(0)
    x = torch.randn(2, 6, 9, 11).contiguous(memory_format=torch.channels_last)
    other = torch.randn(2, 6, 9, 11).contiguous(memory_format=torch.channels_last)
    w, b = torch.randn(6, 1, 3, 5), torch.randn(6)
    ref = F.conv2d(x, w, b, padding=(1, 2), groups=6)
    with torch.no_grad():
        got = fused.fused_conv_binary(x, w, b, other, binary, padding=(1, 2), groups=6)
        torch.testing.assert_close(got, ref + other if binary == 'add' else ref * other)
        for act, fn in (('gelu', F.gelu), ('relu', F.relu)):
            got = fused.fused_conv(x, w, b, padding=(1, 2), groups=6, act=act)
            torch.testing.assert_close(got, fn(ref))
    with pytest.raises(ValueError, match='unsupported activation'):
        fused.fused_conv(x, w, b, act='tanh')


def test_eager_check_off_under_tracing():
    from mmc2f.ops import eager
    seen = []

    def fn(x):
        seen.append(eager())
        return x + 1

    assert eager()
    torch.jit.trace(fn, torch.zeros(1), check_trace=False)
    assert seen == [False]


def test_packed_weights_follow_updates_and_die_with_the_weight():
    import gc
    assert fused.onednn_available(), 'this torch build has oneDNN: weights must be packed'
    x = torch.randn(2, 8, 10, 12).contiguous(memory_format=torch.channels_last)
    weight, bias = torch.randn(16, 8, 3, 3), torch.randn(16)
    with torch.no_grad():
        first = fused.fused_conv(x, weight, bias, padding=1)
        assert id(weight) in fused._PACKED
        weight.mul_(-1.0)  # in place: a new version, packed again
        second = fused.fused_conv(x, weight, bias, padding=1)
    torch.testing.assert_close(second, F.conv2d(x, weight, bias, padding=1), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(second - bias.view(1, -1, 1, 1),
                               -(first - bias.view(1, -1, 1, 1)), rtol=1e-4, atol=1e-4)
    key = id(weight)
    del weight
    gc.collect()
    assert key not in fused._PACKED

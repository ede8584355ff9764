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

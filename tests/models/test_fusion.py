"""Weight folding and the deploy / revert bookkeeping of :class:`FusedInference`."""
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from mmc2f.models.fusion import (FusedInference, bn_affine, fold_output_scale, onnxruntime_forward,
                                 plain_forward)


def test_bn_affine_and_folds():
    bn = nn.BatchNorm2d(4).eval()
    with torch.no_grad():
        bn.weight.uniform_(0.5, 1.5), bn.bias.uniform_(-1, 1)
        bn.running_mean.uniform_(-1, 1), bn.running_var.uniform_(0.5, 2)
    conv = nn.Conv2d(3, 4, 3, padding=1)
    x = torch.randn(2, 3, 8, 8)
    w, b = fold_output_scale(conv.weight, conv.bias, *bn_affine(bn))
    torch.testing.assert_close(F.conv2d(x, w, b, padding=1), bn(conv(x)), rtol=1e-5, atol=1e-5)
    with pytest.raises(TypeError, match='BatchNorm'):
        bn_affine(nn.GroupNorm(2, 4))
    with pytest.raises(ValueError, match='running statistics'):
        bn_affine(nn.BatchNorm2d(4, track_running_stats=False))


class _Scaled(FusedInference, nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 1)
        self.gamma = nn.Parameter(torch.full((3, ), 2.))

    def fused_weights(self):
        w, b = fold_output_scale(self.conv.weight, self.conv.bias, self.gamma)
        return dict(weight=w, bias=b, note='folded')

    def forward(self, x):
        if self.fused:
            return F.conv2d(x, self.fused_weight, self.fused_bias)
        return self.conv(x) * self.gamma.view(1, -1, 1, 1)


def test_switch_to_deploy_is_reversible_and_never_stale():
    m = _Scaled().eval()
    x = torch.randn(1, 3, 4, 4)
    ref = m(x)
    assert m.switch_to_deploy() is m and m.deployed and m.fused_note == 'folded'
    assert 'fused_weight' not in m.state_dict()  # non-persistent
    torch.testing.assert_close(m(x), ref)
    m.train()  # drops the fused weights: they would go stale as training changes the parameters
    assert not m.deployed and not hasattr(m, 'fused_weight') and not hasattr(m, 'fused_note')
    with torch.no_grad():
        m.gamma.mul_(3)
    m.eval()
    torch.testing.assert_close(m(x), ref * 3)  # the original module, current weights
    m.switch_to_deploy()
    torch.testing.assert_close(m(x), ref * 3)
    m.eval()  # eval keeps them
    assert m.deployed


def test_plain_forward_runs_the_unfused_forward_for_a_while():
    outer = nn.Sequential(_Scaled(), _Scaled()).eval()
    for m in outer:
        m.switch_to_deploy()
    outer[1].train().eval()  # not deployed: stays so
    calls = []
    outer[0].conv.register_forward_hook(lambda *a: calls.append(0))
    x = torch.randn(1, 3, 4, 4)
    with plain_forward(outer):
        assert not outer[0].fused and not outer[1].deployed
        outer(x)
        assert calls == [0]  # the original conv ran
    assert outer[0].deployed and outer[0].fused and not outer[1].deployed
    outer(x)
    assert calls == [0]  # fused again, with the weights it kept
    with pytest.raises(RuntimeError), plain_forward(outer):
        raise RuntimeError('restored on errors too')
    assert outer[0].deployed


def test_onnxruntime_forward_keeps_and_refolds_only_the_modules_that_prefer_it():
    outer = nn.Sequential(_Scaled(), _Scaled()).eval()
    outer[0].onnxruntime_fused = True  # an instance attribute here; a class attribute in mmc2f
    for m in outer:
        m.switch_to_deploy()
    with torch.no_grad():
        for m in outer:
            m.gamma.mul_(3)  # in place after the fold: the fused weights are stale now
    x = torch.randn(1, 3, 4, 4)
    with torch.no_grad():
        want = [m.conv(x) * m.gamma.view(1, -1, 1, 1) for m in outer]
    with onnxruntime_forward(outer):
        assert outer[0].fused and not outer[1].fused
        torch.testing.assert_close(outer[0](x), want[0])  # folded again, current weights
        torch.testing.assert_close(outer[1](x), want[1])  # the plain forward
    assert outer[0].deployed and outer[1].deployed
    torch.testing.assert_close(outer[0](x), want[0])

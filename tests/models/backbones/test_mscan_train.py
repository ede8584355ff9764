"""MSCAN training (the NHWC lean path on CPU): gradients of every parameter and BN running stats
equal mmseg 1.2.2's for the same weights, input and RNG state; with_cp; what autograd saves."""
import pytest
import torch
from mmseg.models.backbones import MSCAN as MMSegMSCAN
from _reference.memory import saved_bytes

from mmc2f.models.backbones import mscan_lean
from mmc2f.models.backbones.mscan import MSCAN, arch_settings
from mmc2f.ops import lean_train

BN = dict(type='BN', requires_grad=True)


def _pair(arch='tiny', depths=None, **kw):
    torch.manual_seed(0)
    s = dict(arch_settings[arch], **({'depths': depths} if depths else {}))
    ours = MSCAN(arch=arch, depths=s['depths'], norm_cfg=BN, **kw)
    ours.init_weights()
    with torch.no_grad():  # non-trivial BN affines and layer scales
        for name, p in ours.named_parameters():
            if 'norm' in name or 'layer_scale' in name:
                p.add_(torch.randn_like(p) * 0.1)
    kw.pop('with_cp', None)
    ref = MMSegMSCAN(embed_dims=s['embed_dims'], depths=s['depths'], mlp_ratios=s['mlp_ratios'],
                     norm_cfg=BN, **kw)
    ref.load_state_dict(ours.state_dict())
    return ours, ref


def _step(model, x, seed=1):
    """One training forward + backward from the given RNG state: (grads, state dict)."""
    model.train().zero_grad(set_to_none=True)
    torch.manual_seed(seed)  # the same drop-path masks
    outs = model(x)
    loss = sum((o * torch.linspace(-1, 1, o.numel()).view_as(o)).sum() for o in outs)
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    return grads, {k: v.clone() for k, v in model.state_dict().items()}, outs


def _assert_equal_grads(got, exp):
    assert list(got) == list(exp)
    largest = max(g.abs().max() for g in exp.values())
    for name, g in exp.items():
        err = (got[name] - g).abs().max() / largest
        assert err < 1e-3, (name, err.item())


def _assert_equal_buffers(got, exp):
    for k, v in exp.items():
        if 'running' in k or 'num_batches' in k:
            torch.testing.assert_close(got[k], v, rtol=1e-5, atol=1e-5, msg=k)


@pytest.mark.parametrize('with_cp', [False, True])
def test_gradients_and_bn_stats_equal_mmseg(with_cp):
    ours, ref = _pair(drop_path_rate=0.2, with_cp=with_cp)
    x = torch.randn(2, 3, 64, 80)
    got, got_sd, outs = _step(ours, x)
    exp, exp_sd, exp_outs = _step(ref, x)
    for o, e in zip(outs, exp_outs):
        assert o.is_contiguous()
        torch.testing.assert_close(o, e, rtol=1e-4, atol=1e-4)
    _assert_equal_grads(got, exp)
    _assert_equal_buffers(got_sd, exp_sd)
    # the comparison can fail: another RNG state drops other paths
    other, _, _ = _step(ours, x, seed=5)
    largest = max(g.abs().max() for g in exp.values())
    assert max(((other[n] - exp[n]).abs().max() / largest).item() for n in exp) > 1e-3


def test_lean_path_is_taken(monkeypatch):
    ours, _ = _pair(depths=[1, 1, 1, 1])
    calls = []
    real = mscan_lean.lean_block_forward
    monkeypatch.setattr('mmc2f.models.backbones.mscan.lean_block_forward',
                        lambda b, x: calls.append(x.is_contiguous(memory_format=torch.channels_last))
                        or real(b, x))
    _step(ours, torch.randn(1, 3, 64, 64))
    assert calls == [True] * 4
    # not in eval mode, not without gradients: the plain modules (eval outputs unchanged)
    calls.clear()
    ours.eval()(torch.randn(1, 3, 64, 64))
    with torch.no_grad():
        ours.train()(torch.randn(1, 3, 64, 64))
    assert calls == []


def test_mlp_dropout_takes_the_plain_path(monkeypatch):
    """With MLP dropout the blocks run their plain NCHW modules (the lean MLP has no dropout)."""
    ours, _ = _pair(depths=[1, 1, 1, 1], drop_rate=0.1, drop_path_rate=0.)
    x = torch.randn(1, 3, 64, 64)
    nhwc = torch.randn(1, 32, 8, 8).contiguous(memory_format=torch.channels_last)
    assert not mscan_lean.use_lean(ours.block1[0].train(), nhwc)
    got, _, _ = _step(ours, x)
    monkeypatch.setattr('mmc2f.models.backbones.mscan.lean', lambda x: False)
    exp, _, _ = _step(ours, x)
    for name in exp:
        assert torch.equal(got[name], exp[name]), name


def _saved_bytes(model, x):
    size, outs = saved_bytes(lambda: model.train()(x), model.parameters())
    sum(o.sum() for o in outs).backward()
    return size


def test_saves_less_than_the_plain_modules(monkeypatch):
    """Structural memory check: autograd's saved bytes of a training step, lean vs plain."""
    ours, _ = _pair()
    x = torch.randn(2, 3, 128, 128)
    lean = _saved_bytes(ours, x)
    monkeypatch.setattr(lean_train, 'lean', lambda x: False)
    monkeypatch.setattr('mmc2f.models.backbones.mscan.lean', lambda x: False)
    monkeypatch.setattr(mscan_lean, 'lean', lambda x: False)
    plain = _saved_bytes(ours, x)
    assert lean < 0.35 * plain, (lean, plain)


def test_autocast_and_double_take_the_plain_modules(monkeypatch):
    """bf16 autocast and non-fp32 inputs keep the plain (portable) modules."""
    ours, _ = _pair(depths=[1, 1, 1, 1])
    calls = []
    monkeypatch.setattr('mmc2f.models.backbones.mscan.lean_block_forward',
                        lambda b, x: calls.append(1))
    x = torch.randn(1, 3, 64, 64)
    with torch.autocast('cpu', dtype=torch.bfloat16):
        outs = ours.train()(x)
    sum(o.float().sum() for o in outs).backward()
    ours.double()(x.double())
    assert calls == []

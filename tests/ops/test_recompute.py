"""The recomputing training kernels (mmc2f.ops.recompute) against plain autograd: values and
gradients on the fast (autograd Function) and the portable path, exact derivatives in float64, the
guard, and what they save for backward (byte counts, not timings)."""
import pytest
import torch
import torch.nn.functional as F
from _reference.memory import saved_bytes

from mmc2f.ops import recompute

B, H, W, C = 3, 7, 6, 8


def _params(dtype=torch.float32, gamma=True, bias=True, k=5, hidden=12, gen_seed=0):
    g = torch.Generator().manual_seed(gen_seed)

    def r(*shape, s=1.):
        return (torch.randn(*shape, generator=g, dtype=dtype) * s).requires_grad_()

    return dict(
        x=r(B, H, W, C), norm_w=r(C, s=.3), norm_b=r(C, s=.3), w_in=r(2 * hidden, C, s=.4),
        b_in=r(2 * hidden, s=.1) if bias else None, dw_w=r(hidden, 1, k, k, s=.3),
        dw_b=r(hidden, s=.1) if bias else None, w_out=r(C, hidden, s=.3),
        b_out=r(C, s=.1) if bias else None, gamma=r(C) if gamma else None)


def _plain_ln_linear(x, nw, nb, w, b):
    return F.linear(F.layer_norm(x, (x.shape[-1], ), nw, nb, 1e-6), w, b)


def _plain_gated(x, u, dw_w, dw_b, w, b, gamma, scale):
    a, v = u.chunk(2, -1)
    k = dw_w.shape[-1]
    d = F.conv2d(F.gelu(a).permute(0, 3, 1, 2), dw_w, dw_b, padding=k // 2,
                 groups=dw_w.shape[0]).permute(0, 2, 3, 1)
    t = F.linear(d * v, w, b)
    t = t if gamma is None else t * gamma
    return x + (t if scale is None else t * scale.view(-1, 1, 1, 1))


def _plain_mlp(x, q, dw_w, dw_b, w, b, gamma, scale):
    h = F.gelu(q)
    k = dw_w.shape[-1]
    r = F.conv2d(h.permute(0, 3, 1, 2), dw_w, dw_b, padding=k // 2,
                 groups=dw_w.shape[0]).permute(0, 2, 3, 1)
    t = F.linear(h + F.gelu(r), w, b)
    t = t if gamma is None else t * gamma
    return x + (t if scale is None else t * scale.view(-1, 1, 1, 1))


def _scale(dtype=torch.float32):
    return torch.tensor([2., 0., 2.], dtype=dtype)  # stochastic depth, keep 0.5: one sample dropped


def _run(op, p, scale):
    """The composed branch ``x -> op`` with the op under test or the plain formula."""
    hidden = p['dw_w'].shape[0]
    k = p['dw_w'].shape[-1]
    if op == 'gated':
        u = recompute.layer_norm_linear(p['x'], p['norm_w'], p['norm_b'], 1e-6, p['w_in'],
                                        p['b_in'])
        return recompute.gated_dwconv_residual(p['x'], u, p['dw_w'], p['dw_b'], k // 2,
                                               p['w_out'], p['b_out'], p['gamma'], scale)
    q = recompute.layer_norm_linear(p['x'], p['norm_w'], p['norm_b'], 1e-6,
                                    p['w_in'][:hidden], None if p['b_in'] is None else
                                    p['b_in'][:hidden])
    return recompute.dwconv_mlp_residual(p['x'], q, p['dw_w'], p['dw_b'], (k // 2, k // 2),
                                         p['w_out'], p['b_out'], p['gamma'], scale)


def _reference(op, p, scale):
    hidden = p['dw_w'].shape[0]
    if op == 'gated':
        u = _plain_ln_linear(p['x'], p['norm_w'], p['norm_b'], p['w_in'], p['b_in'])
        return _plain_gated(p['x'], u, p['dw_w'], p['dw_b'], p['w_out'], p['b_out'], p['gamma'],
                            scale)
    q = _plain_ln_linear(p['x'], p['norm_w'], p['norm_b'], p['w_in'][:hidden],
                         None if p['b_in'] is None else p['b_in'][:hidden])
    return _plain_mlp(p['x'], q, p['dw_w'], p['dw_b'], p['w_out'], p['b_out'], p['gamma'], scale)


def _grads(fn, p):
    out = fn()
    weight = torch.linspace(-1, 1, out.numel(), dtype=out.dtype).view_as(out)
    leaves = {n: t for n, t in p.items() if t is not None}
    grads = torch.autograd.grad((out * weight).sum(), list(leaves.values()))
    return out.detach(), dict(zip(leaves, grads))


FN_NAMES = {'gated': '_GatedDWConvResidualBackward', 'mlp': '_DWConvMLPResidualBackward'}


@pytest.mark.parametrize('op', ['gated', 'mlp'])
@pytest.mark.parametrize('gamma,bias,drop', [(True, True, False), (True, True, True),
                                             (False, False, False), (False, True, True)])
@pytest.mark.parametrize('fast', [True, False])
def test_matches_plain_autograd(op, gamma, bias, drop, fast, monkeypatch):
    p = _params(gamma=gamma, bias=bias, k=5 if op == 'gated' else 3)
    scale = _scale() if drop else None
    if not fast:
        monkeypatch.setattr(recompute, 'recompute_enabled', lambda *a: False)
    out = _run(op, p, scale)
    assert (type(out.grad_fn).__name__ == FN_NAMES[op]) is fast
    got_out, got = _grads(lambda: _run(op, p, scale), p)
    exp_out, exp = _grads(lambda: _reference(op, p, scale), p)
    torch.testing.assert_close(got_out, exp_out, rtol=1e-5, atol=1e-5)
    assert got.keys() == exp.keys()
    for name in exp:
        torch.testing.assert_close(got[name], exp[name], rtol=1e-4, atol=1e-5, msg=name)


def test_gradcheck_float64():
    """Exact derivatives of the three Functions (including layer scale and stochastic depth)."""
    d = torch.double
    p = _params(d, k=3, hidden=4)
    x = torch.randn(2, 4, 5, C, dtype=d, requires_grad=True)
    scale = torch.tensor([2., 0.], dtype=d)
    assert torch.autograd.gradcheck(
        recompute._LayerNormLinear.apply, (x, p['norm_w'], p['norm_b'], 1e-6, p['w_in'],
                                           p['b_in']))
    u = torch.randn(2, 4, 5, 8, dtype=d, requires_grad=True)
    for s in (None, scale):
        assert torch.autograd.gradcheck(
            recompute._GatedDWConvResidual.apply,
            (x, u, p['dw_w'], p['dw_b'], (1, 1), p['w_out'], p['b_out'], p['gamma'], s))
        assert torch.autograd.gradcheck(
            recompute._DWConvMLPResidual.apply,
            (x, u[..., :4].contiguous(), p['dw_w'], p['dw_b'], (1, 1), p['w_out'], p['b_out'],
             p['gamma'], s))


def _saved_bytes(fn, leaves):
    """Bytes autograd saves while ``fn()`` runs, ``leaves``' excluded."""
    return saved_bytes(fn, leaves)[0]


@pytest.mark.parametrize('op', ['gated', 'mlp'])
def test_saves_less_than_plain_autograd(op):
    """Floats per pixel saved besides the input and the weights, with K hidden channels: plain
    autograd saves LN(x), [a, v], GELU(a), d, d * v and the linear's output (7C, K = C) or LN(x),
    q, GELU(q), DW(.), the sum and the linear's output (2C + 4K); the Functions save [a, v] and d
    (3C) or q (K), plus two LayerNorm statistics."""
    hidden = {'gated': C, 'mlp': 4 * C}[op]
    p = _params(k=3, hidden=hidden)
    p['x'] = torch.randn(2, 16, 16, C, requires_grad=True)
    lean = _saved_bytes(lambda: _run(op, p, None), p.values())
    plain = _saved_bytes(lambda: _reference(op, p, None), p.values())
    pixel_bytes = 2 * 16 * 16 * 4
    assert lean == ({'gated': 3 * C, 'mlp': hidden}[op] + 2) * pixel_bytes
    assert plain == ({'gated': 7 * C, 'mlp': 2 * C + 4 * hidden}[op] + 2) * pixel_bytes


def test_guard_takes_the_portable_path():
    p = _params(k=3, hidden=C)
    u = torch.randn(B, H, W, 2 * C)
    args = (p['x'], u, p['dw_w'], p['dw_b'], p['w_out'], p['b_out'], p['gamma'])

    def op():
        return recompute.gated_dwconv_residual(*args[:4], 1, *args[4:])

    assert recompute.recompute_enabled(*args)
    assert type(op().grad_fn).__name__ == FN_NAMES['gated']
    with torch.no_grad():  # inference
        assert op().grad_fn is None
    with torch.autocast('cpu', dtype=torch.bfloat16):  # autocast: plain ops
        assert not recompute.recompute_enabled(*args)
        out = op()
        assert type(out.grad_fn).__name__ != FN_NAMES['gated']
    no_grad = [t.detach() for t in args]
    assert not recompute.recompute_enabled(*no_grad)  # nothing to differentiate
    assert not recompute.recompute_enabled(*(t.double() for t in args))
    assert not recompute.recompute_enabled(p['x'].to('meta'))


def test_fake_tensors_and_compile_take_the_portable_path():
    from torch._subclasses.fake_tensor import FakeTensorMode
    p = _params(k=3, hidden=C)
    with FakeTensorMode() as mode:
        x = mode.from_tensor(p['x']).requires_grad_()
        assert not recompute.recompute_enabled(x)
    import torch._dynamo as dynamo

    def fn(x, q):
        return recompute.dwconv_mlp_residual(x, q, p['dw_w'], p['dw_b'], 1, p['w_out'],
                                             p['b_out'], p['gamma'])

    explain = dynamo.explain(fn)(p['x'], torch.randn(B, H, W, C, requires_grad=True))
    assert explain.graph_break_count == 0 and explain.graph_count == 1

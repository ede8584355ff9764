"""mmc2f.ops.lean_train against plain autograd: values and gradients on the fast (custom function)
and portable paths, double-precision gradchecks of the functions, and what they save."""
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from _reference.memory import saved_bytes

from mmc2f.ops import lean_train as lt

CL = torch.channels_last


def _nhwc(*shape, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=dtype).contiguous(memory_format=CL)


def _dw(c, k, p, dtype=torch.float32):
    conv = nn.Conv2d(c, c, k, padding=p, groups=c).to(dtype)
    with torch.no_grad():
        conv.bias.normal_()
    return conv


def _pw(ci, co, dtype=torch.float32):
    return nn.Conv2d(ci, co, 1).to(dtype)


def _mlp(c=6, hidden=12, dtype=torch.float32):
    torch.manual_seed(0)
    return _pw(c, hidden, dtype), _dw(hidden, 3, 1, dtype), _pw(hidden, c, dtype)


def _msca(c=6, dtype=torch.float32):
    torch.manual_seed(0)
    conv0 = _dw(c, 5, 2, dtype)
    branches = [(_dw(c, (1, k), (0, k // 2), dtype), _dw(c, (k, 1), (k // 2, 0), dtype))
                for k in (3, 7)]
    return conv0, branches


def _branch_args(branches):
    return [(a.weight, a.bias, a.padding, b.weight, b.bias, b.padding) for a, b in branches]


# name -> (build modules, inputs, lean function, plain reference)
def _case(name, dtype=torch.float32):
    if name == 'pointwise_act':
        conv = _pw(6, 8, dtype)
        x = _nhwc(2, 6, 5, 7, dtype=dtype)
        return (conv, ), (x, ), (lambda x: lt.pointwise_act(x, conv.weight, conv.bias, 'gelu'),
                                 lambda x: F.gelu(conv(x)))
    if name == 'branch_sum':
        conv0, branches = _msca(dtype=dtype)
        x = _nhwc(2, 6, 9, 11, dtype=dtype)

        def plain(u):
            a = conv0(u)
            return a + sum(c2(c1(a)) for c1, c2 in branches)
        mods = (conv0, ) + tuple(m for b in branches for m in b)
        return mods, (x, ), (lambda u: lt.depthwise_branch_sum(
            u, conv0.weight, conv0.bias, conv0.padding, _branch_args(branches)), plain)
    if name == 'gated':
        torch.manual_seed(0)
        gate, out = _pw(6, 6, dtype), _pw(6, 4, dtype)
        s, u = _nhwc(2, 6, 5, 7, dtype=dtype, seed=1), _nhwc(2, 6, 5, 7, dtype=dtype, seed=2)
        return (gate, out), (s, u), (
            lambda s, u: lt.gated_pointwise(s, u, gate.weight, gate.bias, out.weight, out.bias),
            lambda s, u: out(gate(s) * u))
    if name == 'mlp':
        fc1, dw, fc2 = _mlp(dtype=dtype)
        x = _nhwc(2, 6, 8, 5, dtype=dtype)
        return (fc1, dw, fc2), (x, ), (
            lambda x: lt.conv_mlp(x, fc1.weight, fc1.bias, dw.weight, dw.bias, dw.padding,
                                  fc2.weight, fc2.bias, 'gelu'),
            lambda x: fc2(F.gelu(dw(fc1(x)))))
    raise KeyError(name)


CASES = ['pointwise_act', 'branch_sum', 'gated', 'mlp']


def _run(fn, inputs, mods):
    inputs = [t.detach().clone().requires_grad_() for t in inputs]
    for m in mods:
        m.zero_grad()
    out = fn(*inputs)
    w = torch.linspace(-1, 1, out.numel(), dtype=out.dtype).view_as(out)
    (out * w).sum().backward()
    return [out.detach()] + [t.grad for t in inputs] + \
        [p.grad.clone() for m in mods for p in m.parameters()], out


@pytest.mark.parametrize('portable', [False, True], ids=['fast', 'portable'])
@pytest.mark.parametrize('name', CASES)
def test_equals_plain_autograd(name, portable, monkeypatch):
    mods, inputs, (fn, plain) = _case(name)
    if portable:  # what tracing / compile / CUDA / autocast get
        monkeypatch.setattr(lt, 'lean', lambda x: False)
        monkeypatch.setattr(lt, 'eager', lambda: False)
    got, out = _run(fn, inputs, mods)
    exp, _ = _run(plain, inputs, mods)
    custom = type(out.grad_fn).__name__.startswith('_')
    assert custom != portable, type(out.grad_fn).__name__
    assert out.is_contiguous(memory_format=CL)
    for g, e in zip(got, exp):
        assert g.shape == e.shape
        torch.testing.assert_close(g, e, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize('name', CASES)
def test_gradcheck_double(name, monkeypatch):
    """Input gradients of the custom functions, numerically, in double precision (the dispatch
    picks them only for fp32; forced here)."""
    monkeypatch.setattr(lt, 'lean', lambda x: True)
    mods, inputs, (fn, _) = _case(name, dtype=torch.float64)
    inputs = [t.detach().clone().requires_grad_() for t in inputs]
    assert type(fn(*inputs).grad_fn).__name__.startswith('_')
    assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-6)


@pytest.mark.parametrize('name', CASES)
def test_parameter_gradients_double(name, monkeypatch):
    """Parameter gradients of the custom functions equal plain autograd's in double precision."""
    mods, inputs, (fn, plain) = _case(name, dtype=torch.float64)
    monkeypatch.setattr(lt, 'lean', lambda x: True)
    got, out = _run(fn, inputs, mods)
    assert type(out.grad_fn).__name__.startswith('_')
    exp, _ = _run(plain, inputs, mods)
    for g, e in zip(got, exp):
        torch.testing.assert_close(g, e, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize('k,channels_last', [((1, 7), True), ((1, 7), False), ((7, 1), True),
                                             ((1, 1), True), ((3, 5), True)])
def test_depthwise_row_strip_view(k, channels_last):
    """A ``1 x k`` kernel on NHWC memory runs as ``k x 1`` on the ``(B H, C, W, 1)`` view."""
    torch.manual_seed(0)
    conv = _dw(5, k, (k[0] // 2, k[1] // 2))
    x = _nhwc(2, 5, 6, 9)
    if not channels_last:
        x = x.contiguous()
    got, out = _run(lambda t: lt.depthwise(t, conv.weight, conv.bias, conv.padding), [x], [conv])
    exp, _ = _run(conv, [x], [conv])
    if k[0] == 1 and k[1] > 1 and channels_last:
        assert out.is_contiguous(memory_format=CL)
        assert type(out.grad_fn).__name__ == 'PermuteBackward0'  # the (B H, C, W, 1) view's conv
    for g, e in zip(got, exp):
        torch.testing.assert_close(g, e, rtol=1e-5, atol=1e-5)


def _saved_bytes(fn, inputs, params):
    size, out = saved_bytes(lambda: fn(*inputs), list(params) + list(inputs))
    out.sum().backward()
    return size


@pytest.mark.parametrize('name,most', [('pointwise_act', 0.), ('branch_sum', 0.),
                                       ('gated', 0.), ('mlp', 0.)])
def test_saves_only_inputs(name, most, monkeypatch):
    """Beyond their inputs and weights the custom functions save nothing; the plain ops save the
    intermediates (e.g. the MLP's three hidden tensors)."""
    mods, inputs, (fn, plain) = _case(name)
    inputs = [t.detach().clone().requires_grad_() for t in inputs]
    params = [p for m in mods for p in m.parameters()]
    lean = _saved_bytes(fn, inputs, params)
    ref = _saved_bytes(plain, inputs, params)
    assert lean <= most * ref and ref > 0

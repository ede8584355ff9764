"""The native CPU kernels (mmc2f/ops/csrc/nhwc_kernels.cpp) against ATen, their build and their
fallbacks. This machine has a C++ compiler (the project's setup needs one only for this): the
kernels must build."""
import pytest
import torch
import torch.nn.functional as F

from mmc2f.ops import fused, native


@pytest.fixture
def fresh(monkeypatch, tmp_path):
    """An empty kernel cache and no loaded library; returns the messages :mod:`native` logs."""
    monkeypatch.setenv(native.ENV_CACHE, str(tmp_path / 'kernels'))
    monkeypatch.delenv(native.ENV_SWITCH, raising=False)
    monkeypatch.setattr(native, '_state', {})
    logged = []
    monkeypatch.setattr(native, '_log', logged.append)
    return logged


def _inputs(n, c, h, w, k, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, c, h, w, generator=g).contiguous(memory_format=torch.channels_last)
    v = torch.randn(n, c, h, w, generator=g).contiguous(memory_format=torch.channels_last)
    weight = torch.randn(c, 1, k, k, generator=g) / k
    return x, v, weight, torch.randn(c, generator=g)


def _khwc(weight):
    k = weight.shape[-1]
    return weight.flatten(1).t().contiguous().view(k, k, -1)


@pytest.mark.parametrize('n,c,h,w,k,threads', [
    (1, 16, 16, 16, 11, 2),  # 16 channels a vector, tiles of 8
    (3, 24, 14, 28, 11, 2),  # 8 channels a vector, tiles of 7
    (2, 32, 3, 13, 7, 1),    # fewer rows than the kernel, a partial last tile
    (1, 40, 9, 8, 5, 2),
    (2, 48, 10, 21, 9, 2),
    (1, 16, 40, 12, 5, 2),   # one image, one channel block: bands of rows for the threads
])
def test_depthwise_conv_mul_equals_aten(n, c, h, w, k, threads):
    assert native.library() is not None, 'a C++ compiler is installed here: the kernel must build'
    x, v, weight, bias = _inputs(n, c, h, w, k)
    ref = F.conv2d(x, weight, bias, padding=k // 2, groups=c) * v
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(threads)
        got = native.depthwise_conv_mul(x, _khwc(weight), bias, v)
        no_bias = native.depthwise_conv_mul(x, _khwc(weight), None, v)
    finally:
        torch.set_num_threads(before)
    assert got is not None and got.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(no_bias, F.conv2d(x, weight, None, padding=k // 2, groups=c) * v,
                               rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('case', ['channels', 'narrow', 'kernel3', 'nchw', 'float64', 'v_shape'])
def test_uncovered_cases_are_left_to_the_caller(case):
    n, c, h, w, k = 1, 16, 9, 12, 5
    if case == 'channels':
        c = 12
    elif case == 'narrow':
        w = native.MIN_WIDTH - 1
    elif case == 'kernel3':
        k = 3
    x, v, weight, bias = _inputs(n, c, h, w, k)
    if case == 'nchw':
        x = x.contiguous()
    elif case == 'float64':
        x, v, weight, bias = x.double(), v.double(), weight.double(), bias.double()
    elif case == 'v_shape':
        v = v[:, :, :-1]
    assert native.depthwise_conv_mul(x, _khwc(weight), bias, v) is None


@pytest.mark.parametrize('residual', [True, False])
@pytest.mark.parametrize('n,c,h,w,threads', [
    (2, 32, 11, 16, 2),   # 16 channels a vector, tiles of 8
    (1, 24, 5, 14, 1),    # 8 channels a vector, tiles of 7
    (3, 48, 2, 9, 2),     # fewer rows than the kernel, a partial tile
    (1, 16, 30, 10, 2),   # bands of rows
])
def test_depthwise_gelu_equals_aten(n, c, h, w, threads, residual, monkeypatch):
    assert native.library() is not None
    monkeypatch.setattr(native, 'GELU_MIN_WIDTH', 7)  # the kernel on every tile shape
    g = torch.Generator().manual_seed(c)
    x = (torch.randn(n, c, h, w, generator=g) * 3).contiguous(memory_format=torch.channels_last)
    weight, bias = torch.randn(c, 1, 3, 3, generator=g) / 2, torch.randn(c, generator=g)
    exact = F.gelu(F.conv2d(x.double(), weight.double(), bias.double(), padding=1, groups=c))
    exact = exact + x.double() if residual else exact
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(threads)
        got = native.depthwise_gelu(x, _khwc(weight), bias, residual)
    finally:
        torch.set_num_threads(before)
    assert got is not None and got.is_contiguous(memory_format=torch.channels_last)
    # float32 rounding of the convolution, and the GELU's 2e-7 |x|
    torch.testing.assert_close(got.double(), exact, rtol=1e-6, atol=1e-5)
    with torch.no_grad():
        torch.testing.assert_close(fused.dwconv_gelu(x, weight, bias, residual=residual), got,
                                   rtol=0, atol=0)
    assert native.depthwise_gelu(x, _khwc(weight.expand(c, 1, 3, 3)[:, :, :2, :2]),
                                 bias) is None  # 2x2: no kernel
    assert native.depthwise_gelu(x.contiguous(), _khwc(weight), bias) is None  # NCHW
    monkeypatch.setattr(native, 'GELU_MIN_WIDTH', w + 1)  # narrower: oneDNN's
    assert native.depthwise_gelu(x, _khwc(weight), bias) is None
    with torch.no_grad():  # oneDNN's, the same to float rounding
        torch.testing.assert_close(fused.dwconv_gelu(x, weight, bias, residual=residual), got,
                                   rtol=1e-5, atol=1e-5)


def test_gelu_is_exact_to_float_precision(monkeypatch):
    """The kernel's GELU against float64's over the range where it matters (the identity above
    |x| ~ 6, zero below -6): a centre tap of 1 makes the output x + GELU(x); within 2e-7 |x| for
    the GELU plus the rounding of that sum."""
    monkeypatch.setattr(native, 'GELU_MIN_WIDTH', 8)
    x = torch.linspace(-12, 12, 8 * 3001).view(1, 8, 3001, 1).repeat(1, 1, 1, 8)
    x = x.contiguous(memory_format=torch.channels_last)
    tap = torch.zeros(8, 1, 3, 3)
    tap[:, :, 1, 1] = 1
    got = native.depthwise_gelu(x, _khwc(tap), torch.zeros(8), residual=True).double()
    exact = x.double() + F.gelu(x.double())
    err = (got - exact).abs() / x.double().abs().clamp_min(1e-3)
    assert err.max().item() < 2e-7 + 2 ** -23, err.max().item()


@pytest.mark.parametrize('c,threads', [(8, 1), (72, 2), (576, 2)])
def test_channel_norm_equals_layer_norm(c, threads):
    assert native.library() is not None
    g = torch.Generator().manual_seed(c)
    x = (torch.randn(3, c, 5, 7, generator=g) * 3 + 2).contiguous(memory_format=torch.channels_last)
    ref = F.layer_norm(x.permute(0, 2, 3, 1), (c, ), eps=1e-6).permute(0, 3, 1, 2)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(threads)
        got = native.channel_norm(x, 1e-6)
    finally:
        torch.set_num_threads(before)
    assert got is not None and got.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=2e-6)
    with torch.no_grad():
        torch.testing.assert_close(fused.channel_norm(x, 1e-6), got, rtol=0, atol=0)
    assert native.channel_norm(x[:, :6].contiguous(memory_format=torch.channels_last), 1e-6) is None
    assert native.channel_norm(x.contiguous(), 1e-6) is None  # NCHW memory
    assert native.channel_norm(x.double(), 1e-6) is None


def test_fused_conv_mul_runs_it_only_for_cpu_inference(monkeypatch):
    x, v, weight, bias = _inputs(2, 16, 10, 12, 7)
    ref = F.conv2d(x, weight, bias, padding=3, groups=16) * v
    calls, kernel = [], native.depthwise_conv_mul

    def spy(*args):
        calls.append(1)
        return kernel(*args)

    monkeypatch.setattr(fused, 'native_dw_mul', spy)
    with torch.no_grad():
        got = fused.fused_conv_mul(x, weight, bias, v, padding=3, groups=16)
    assert calls == [1]
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)
    trained = weight.clone().requires_grad_(True)
    got = fused.fused_conv_mul(x, trained, bias, v, padding=3, groups=16)  # autograd: ATen
    assert calls == [1] and got.requires_grad
    with torch.no_grad():
        torch.jit.trace(lambda t: fused.fused_conv_mul(t, weight, bias, v, padding=3, groups=16),
                        x, check_trace=False)
        wide = torch.randn(16, 1, 5, 7)  # not square: oneDNN
        other = torch.randn(2, 16, 12, 12).contiguous(memory_format=torch.channels_last)
        got = fused.fused_conv_mul(x, wide, bias, other, padding=3, groups=16)
    assert calls == [1]
    torch.testing.assert_close(got, F.conv2d(x, wide, bias, padding=3, groups=16) * other)


def test_builds_once_per_cpu_and_reuses_the_file(fresh, monkeypatch, tmp_path):
    lib = native.library()
    assert lib is not None and native.library() is lib
    built = list((tmp_path / 'kernels').glob('nhwc_kernels-*.so'))
    assert len(built) == 1 and [m for m in fresh if m.startswith('built ')], fresh
    assert not list((tmp_path / 'kernels').glob('*.tmp'))
    fresh.clear()
    monkeypatch.setattr(native, '_state', {})
    assert native.library() is not None  # loaded, not built again
    assert len(fresh) == 1 and fresh[0].startswith('loading '), fresh
    monkeypatch.setattr(native, '_state', {})
    monkeypatch.setattr(native, '_cpu_id', lambda: 'flags : another cpu')
    assert native.library() is not None
    assert len(list((tmp_path / 'kernels').glob('nhwc_kernels-*.so'))) == 2


def test_shares_torchs_openmp_runtime():
    assert native.library() is not None
    with open('/proc/self/maps') as f:
        gomp = {line.split()[-1] for line in f if 'libgomp' in line}
    assert len(gomp) == 1, gomp


@pytest.mark.parametrize('why', ['switched_off', 'no_compiler', 'build_fails'])
def test_without_the_kernel_the_result_comes_from_onednn(why, fresh, monkeypatch, tmp_path):
    if why == 'switched_off':
        monkeypatch.setenv(native.ENV_SWITCH, '0')
        expected = f'{native.ENV_SWITCH}=0'
    elif why == 'no_compiler':
        monkeypatch.setattr(native, '_compiler', lambda: None)
        expected = 'no C++ compiler'
    else:
        bad = tmp_path / 'broken.cpp'
        bad.write_text('this is not C++\n')
        monkeypatch.setattr(native, 'SOURCE', bad)
        expected = 'could not build or load broken.cpp'
    assert native.library() is None
    assert len(fresh) == 1 and expected in fresh[0], fresh
    assert not list((tmp_path / 'kernels').glob('*'))  # nothing half-built left behind
    x, v, weight, bias = _inputs(1, 16, 9, 12, 5)
    with torch.no_grad():
        got = fused.fused_conv_mul(x, weight, bias, v, padding=2, groups=16)
    torch.testing.assert_close(got, F.conv2d(x, weight, bias, padding=2, groups=16) * v,
                               rtol=1e-5, atol=1e-5)
    native.library()
    assert len(fresh) == 1  # logged once

"""Conv2Former / Conv2FormerIsotropic backbones (CPU, small inputs; full sizes only on 'meta')."""
import pytest
import torch
import torch.nn as nn
from _reference.checkpoints import reference_module
from _reference.memory import saved_bytes

from mmc2f.models.backbones.conv2former import Block, Conv2Former
from mmc2f.models.backbones.conv2former_iso import Conv2FormerIsotropic
from mmc2f.models.layers import LayerNorm2d
from mmc2f.checkpoint import load_state_dict_checked

ARCHS = ['nano', 'tiny', 'small', 'base', 'large']
# Backbone parameters (no classifier) of the authors' released models.
BACKBONE_PARAMS_M = {'nano': 13.05, 'tiny': 24.68, 'small': 48.01, 'base': 87.76, 'large': 196.30}
# A small custom size for the forward tests: runs in milliseconds.
SMALL = dict(dims=[16, 32, 48, 64], depths=[1, 2, 4, 1], kernel_size=5)




def n_params(model):
    return sum(p.numel() for p in model.parameters())


# --------------------------------------------------------------------------------------------
# arch settings, parameter names and counts


@pytest.mark.parametrize('arch', ARCHS)
def test_param_counts_and_default_kernel(arch):
    with torch.device('meta'):
        model = Conv2Former(arch)
    assert round(n_params(model) / 1e6, 2) == BACKBONE_PARAMS_M[arch]
    k = 7 if arch == 'nano' else 11
    assert model.kernel_size == k
    assert tuple(model.stages[0][0].attn.att[2].weight.shape) == (model.dims[0], 1, k, k)


def test_aliases_kernel_override_and_bad_arch():
    for alias, name in Conv2Former.arch_aliases.items():
        assert Conv2Former.resolve_arch(alias) == Conv2Former.resolve_arch(name)
    with torch.device('meta'):
        model = Conv2Former('n', kernel_size=11)
    assert model.kernel_size == 11 and model.depths == [2, 2, 8, 2]
    with pytest.raises(ValueError, match=r"unknown Conv2Former arch \"huge\".*'nano'.*'large'"):
        Conv2Former('huge')
    with pytest.raises(ValueError, match='dims.*depths'):
        Conv2Former(dict(dims=[8, 16, 32, 64]))
    with pytest.raises(ValueError, match='4 entries'):
        Conv2Former(dict(dims=[8, 16, 32], depths=[1, 1, 1]))
    with pytest.raises(ValueError, match='odd'):
        Conv2Former(SMALL, kernel_size=4)
    with pytest.raises(ValueError, match='out_indices'):
        Conv2Former(SMALL, out_indices=(4, ))
    with pytest.raises(ValueError, match='frozen_stages'):
        Conv2Former(SMALL, frozen_stages=5)


@pytest.mark.parametrize('arch', ['nano', 'small'])
def test_key_layout_is_the_authors(arch):
    ref = reference_module()
    with torch.device('meta'):
        ours = Conv2Former(arch).state_dict()
        theirs = ref.build_reference(arch).state_dict()
    theirs = {k: v.shape for k, v in theirs.items() if not k.startswith(('head.', 'pred.'))}
    assert {k: v.shape for k, v in ours.items()} == theirs
    assert 'downsample_layers.0.6.weight' in ours and 'downsample_layers.0.0.bias' not in ours
    assert 'stages.2.5.attn.att.0.weight' in ours and 'stages.2.5.mlp.pos.weight' in ours


def test_out_norms_add_new_keys_only():
    plain = Conv2Former(SMALL, out_indices=(1, 3))
    normed = Conv2Former(SMALL, out_indices=(1, 3), out_norms=True)
    extra = set(normed.state_dict()) - set(plain.state_dict())
    assert extra == {'out_norm1.weight', 'out_norm1.bias', 'out_norm3.weight', 'out_norm3.bias'}
    outs = normed(torch.randn(2, 3, 64, 64))
    for o in outs:  # LayerNorm over channels with weight 1, bias 0: zero mean, unit variance
        torch.testing.assert_close(o.mean(1), torch.zeros_like(o.mean(1)), atol=1e-5, rtol=0)
        torch.testing.assert_close(o.var(1, unbiased=False), torch.ones_like(o[:, 0]),
                                   atol=1e-3, rtol=0)


# --------------------------------------------------------------------------------------------
# forward: shapes, strides, input checks


def test_output_shapes_and_strides():
    model = Conv2Former(SMALL).eval()
    outs = model(torch.randn(2, 3, 64, 96))
    assert [tuple(o.shape) for o in outs] == [(2, 16, 16, 24), (2, 32, 8, 12), (2, 48, 4, 6),
                                            (2, 64, 2, 3)]
    model = Conv2Former(SMALL, out_indices=(-1, 1)).eval()
    assert model.out_indices == (3, 1)
    outs = model(torch.randn(1, 3, 64, 64))
    assert sorted(tuple(o.shape) for o in outs) == [(1, 32, 8, 8), (1, 64, 2, 2)]
    assert isinstance(Conv2Former(SMALL, out_indices=2)(torch.randn(1, 3, 32, 32)), tuple)


@pytest.mark.parametrize('hw', [(70, 45), (33, 31), (95, 64)])
def test_sizes_not_multiple_of_32_work(hw):
    """Documented rule: H4 = ceil(H / 2) // 2, then floor-halving per stage."""
    h, w = hw
    outs = Conv2Former(SMALL).eval()(torch.randn(1, 3, h, w))
    eh, ew = (h + 1) // 2 // 2, (w + 1) // 2 // 2
    for i, o in enumerate(outs):
        assert tuple(o.shape[-2:]) == (eh >> i, ew >> i)


def test_input_errors_are_early_and_clear(monkeypatch):
    model = Conv2Former(SMALL)

    def boom(*args, **kwargs):  # no layer may run before the checks
        raise AssertionError('the stem ran before the input was checked')

    monkeypatch.setattr(model.downsample_layers[0], 'forward', boom)
    with pytest.raises(ValueError, match=r'3 input channels.*4 channels'):
        model(torch.randn(1, 4, 64, 64))
    with pytest.raises(ValueError, match=r'at least 31x31.*30 x 64'):
        model(torch.randn(1, 3, 30, 64))
    with pytest.raises(ValueError, match=r'\(B, C, H, W\)'):
        model(torch.randn(3, 64, 64))
    with pytest.raises(ValueError, match=r'1 input channels.*3 channels'):
        Conv2Former(SMALL, in_channels=1)(torch.randn(1, 3, 64, 64))
    assert Conv2Former(SMALL, in_channels=1)(torch.randn(1, 1, 32, 32))[0].shape[1] == 16


# --------------------------------------------------------------------------------------------
# training behaviour: frozen stages, norm_eval, with_cp, init


def _frozen_prefixes(k):
    if k < 0:
        return []
    if k == 0:
        return ['downsample_layers.0.']
    return [f'{m}.{i}.' for i in range(k) for m in ('downsample_layers', 'stages')]


@pytest.mark.parametrize('frozen_stages', [-1, 0, 1, 2, 4])
def test_frozen_stages(frozen_stages):
    torch.manual_seed(0)
    model = Conv2Former(SMALL, frozen_stages=frozen_stages, out_norms=True, drop_path_rate=0.1)
    model.init_weights()
    model.train()
    frozen = _frozen_prefixes(frozen_stages)
    stem_bn = model.downsample_layers[0][2]
    before_mean = stem_bn.running_mean.clone()
    before = {k: v.clone() for k, v in model.state_dict().items()}

    outs = model(torch.randn(2, 3, 64, 64))
    sum(o.square().mean() for o in outs).backward()
    for name, param in model.named_parameters():
        is_frozen = any(name.startswith(p) for p in frozen)
        assert param.requires_grad is not is_frozen, name
        assert (param.grad is None) is is_frozen, name
    for name, module in model.named_modules():
        if any((name + '.').startswith(p) for p in frozen):
            assert not module.training, name
    # BN running statistics: kept when the stem is frozen, updated otherwise
    assert torch.equal(stem_bn.running_mean, before_mean) is (frozen_stages >= 0)
    # frozen buffers unchanged, and out_norm layers are never frozen
    for name, value in model.state_dict().items():
        if any(name.startswith(p) for p in frozen):
            assert torch.equal(value, before[name]), name
    assert model.out_norm0.weight.requires_grad and model.out_norm0.training


def test_norm_eval_keeps_bn_statistics():
    model = Conv2Former(SMALL, norm_eval=True)
    model.train()
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert len(bns) == 2 and all(not bn.training for bn in bns)
    assert model.stages[0].training
    stats = [bn.running_var.clone() for bn in bns]
    model(torch.randn(2, 3, 32, 32))[-1].sum().backward()
    assert all(torch.equal(bn.running_var, s) for bn, s in zip(bns, stats))
    assert bns[0].weight.grad is not None  # still trained, only the statistics are fixed
    model_plain = Conv2Former(SMALL).train()
    model_plain(torch.randn(2, 3, 32, 32))
    assert not torch.equal(model_plain.downsample_layers[0][2].running_var,
                           torch.ones_like(stats[0]))


@pytest.mark.parametrize('cls,arch', [(Conv2Former, SMALL),
                                      (Conv2FormerIsotropic, dict(embed_dims=32, depth=3))])
def test_with_cp_same_outputs_and_grads(cls, arch):
    torch.manual_seed(0)
    ref = cls(arch, drop_path_rate=0.3, layer_scale_init_value=0.5)
    ref.init_weights()
    cp_model = cls(arch, drop_path_rate=0.3, layer_scale_init_value=0.5, with_cp=True)
    cp_model.load_state_dict(ref.state_dict())
    ref.train(), cp_model.train()
    x = torch.randn(1, 3, 32, 32)
    results = []
    for model in (ref, cp_model):
        torch.manual_seed(1)  # the same drop-path masks (checkpoint restores the RNG on recompute)
        xi = x.clone().requires_grad_()
        outs = model(xi)
        sum((o * torch.linspace(-1, 1, o.numel()).view_as(o)).sum() for o in outs).backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters()}
        results.append((outs, xi.grad, grads))
    (o1, gx1, g1), (o2, gx2, g2) = results
    for a, b in zip(o1, o2):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    torch.testing.assert_close(gx1, gx2, rtol=1e-6, atol=1e-7)
    assert g1.keys() == g2.keys()
    for name in g1:
        torch.testing.assert_close(g1[name], g2[name], rtol=1e-5, atol=1e-7, msg=name)


def test_with_cp_uses_checkpoint(monkeypatch):
    import torch.utils.checkpoint as cp
    calls = []
    real = cp.checkpoint
    monkeypatch.setattr(cp, 'checkpoint', lambda *a, **k: calls.append(1) or real(*a, **k))
    model = Conv2Former(SMALL, with_cp=True)
    model(torch.randn(1, 3, 32, 32, requires_grad=True))
    assert len(calls) == sum(SMALL['depths'])


def test_init_weights_is_the_authors():
    torch.manual_seed(0)
    model = Conv2Former(dict(dims=[64, 128, 256, 512], depths=[1, 1, 1, 1]), out_norms=True)
    model.init_weights()
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    big = torch.cat([m.weight.flatten() for m in convs if m.weight.numel() > 100_000])
    assert abs(big.std().item() - 0.02) < 0.001 and big.abs().max() < 0.15
    assert all(m.bias is None or not m.bias.any() for m in convs)
    lns = [m for m in model.modules() if isinstance(m, LayerNorm2d)]
    assert all(torch.all(m.weight == 1) and not m.bias.any() for m in lns)
    assert torch.allclose(model.stages[3][0].layer_scale_1, torch.full((512, ), 1e-6))


def test_block_without_layer_scale():
    block = Block(8, kernel_size=3, layer_scale_init_value=0)
    assert 'layer_scale_1' not in block.state_dict()
    assert block(torch.randn(1, 8, 5, 5)).shape == (1, 8, 5, 5)


# --------------------------------------------------------------------------------------------
# equivalence with the authors' model


@pytest.mark.parametrize('arch', ['small_custom', 'nano'])
def test_numerically_equivalent_to_authors_model(arch):
    ref_mod = reference_module()
    spec = (SMALL['dims'], SMALL['depths'], SMALL['kernel_size']) if arch == 'small_custom' \
        else arch
    reference = ref_mod.randomize_(ref_mod.build_reference(spec)).eval()
    ours = Conv2Former(dict(dims=spec[0], depths=spec[1], kernel_size=spec[2])
                       if arch == 'small_custom' else arch).eval()
    weights = {k: v for k, v in reference.state_dict().items()
               if not k.startswith(('head.', 'pred.'))}
    load_state_dict_checked(ours, weights, strict=True)  # copy by name: every key, every shape
    x = torch.randn(1, 3, 64, 64) if arch == 'small_custom' else torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        expected = reference.forward_features(x)
        got = ours(x)
    assert len(got) == 4
    for e, g in zip(expected, got):
        assert e.abs().mean() > 0.1  # a non-trivial signal
        torch.testing.assert_close(g, e, rtol=1e-4, atol=1e-4)
    # and the check can fail: one changed weight changes the output
    with torch.no_grad():
        ours.stages[2][0].attn.v.weight.mul_(1.5)
        assert not torch.allclose(ours(x)[-1], expected[-1], rtol=1e-4, atol=1e-4)


def _authors_drop_path(reference, rate):
    """The authors' blocks with mmcv's stochastic depth, as their training code applies it:
    ``x + drop_path(gamma * branch(x))``, rates rising linearly over the blocks."""
    from mmcv.cnn.bricks.drop import drop_path

    from mmc2f.models.layers import drop_path_rates
    rates = drop_path_rates([len(s) for s in reference.stages], rate)
    for stage, stage_rates in zip(reference.stages, rates):
        for block, p in zip(stage, stage_rates):
            def forward(x, block=block, p=p):
                ls1, ls2 = block.layer_scale_1[:, None, None], block.layer_scale_2[:, None, None]
                x = x + drop_path(ls1 * block.attn(x), p, True)
                return x + drop_path(ls2 * block.mlp(x), p, True)
            block.forward = forward


@pytest.mark.parametrize('drop_path_rate', [0., 0.5])
@pytest.mark.parametrize('recompute', [True, False])
def test_training_gradients_equal_authors_model(drop_path_rate, recompute, monkeypatch):
    """Train mode, on the default CPU path (the recomputing Functions of mmc2f.ops.recompute) and
    on the plain modules (what CUDA, autocast and torch.compile run): outputs and every parameter's
    and the input's gradient as the authors' model computes them, with stochastic depth under the
    same RNG state."""
    from mmc2f.models.backbones import conv2former
    ref_mod = reference_module()
    spec = (SMALL['dims'], SMALL['depths'], SMALL['kernel_size'])
    reference = ref_mod.randomize_(ref_mod.build_reference(spec)).train()
    _authors_drop_path(reference, drop_path_rate)
    ours = Conv2Former(dict(dims=spec[0], depths=spec[1], kernel_size=spec[2]),
                       drop_path_rate=drop_path_rate).train()
    weights = {k: v for k, v in reference.state_dict().items()
               if not k.startswith(('head.', 'pred.'))}
    load_state_dict_checked(ours, weights, strict=True)
    if not recompute:
        monkeypatch.setattr(conv2former, 'recompute_enabled', lambda *a: False)
    x = torch.randn(4, 3, 64, 96, generator=torch.Generator().manual_seed(0))
    results = []
    for model, fwd in ((reference, reference.forward_features), (ours, ours)):
        xi = x.clone().requires_grad_()
        torch.manual_seed(3)  # the same drop-path masks
        outs = fwd(xi)
        sum((o * torch.linspace(-1, 1, o.numel()).view_as(o)).sum() for o in outs).backward()
        results.append((outs, xi.grad, {n: p.grad for n, p in model.named_parameters()
                                        if p.grad is not None}))
    names = {type(o.grad_fn).__name__ for o in results[1][0]}
    fns = {type(f).__name__ for f in _grad_fns(results[1][0])}
    assert ('_DWConvMLPResidualBackward' in fns) is recompute, (names, fns)
    (exp, exp_gx, exp_grads), (got, got_gx, got_grads) = results
    for e, g in zip(exp, got):
        torch.testing.assert_close(g, e, rtol=1e-4, atol=1e-4)

    def rel_err(got, exp):  # max abs difference relative to the gradient's largest entry
        return ((got - exp).abs().max() / exp.abs().max().clamp_min(1e-6)).item()

    assert rel_err(got_gx, exp_gx) < 1e-4
    assert set(got_grads) == set(exp_grads) and len(got_grads) > 20
    for name, grad in exp_grads.items():
        assert rel_err(got_grads[name], grad) < 1e-4, name
    if drop_path_rate:  # the masks drawn (2 per block with a rate > 0) dropped some branches
        from mmc2f.models.layers import drop_path_rates
        torch.manual_seed(3)
        masks = [(1 - p + torch.rand(4)).floor() for p in sum(drop_path_rates(
            SMALL['depths'], drop_path_rate), []) if p > 0 for _ in range(2)]
        assert 0 < sum(int((m == 0).sum()) for m in masks) < 4 * len(masks)


def _grad_fns(outs):
    """Every autograd node behind ``outs``."""
    seen, todo = set(), [o.grad_fn for o in outs]
    while todo:
        fn = todo.pop()
        if fn is None or fn in seen:
            continue
        seen.add(fn)
        todo += [f for f, _ in fn.next_functions]
    return seen


def _saved_bytes(model, x):
    """Bytes autograd saves in a training forward (parameters excluded)."""
    return saved_bytes(lambda: model(x), model.parameters())[0]


@pytest.mark.parametrize('drop_path_rate', [0., 0.3])
def test_training_saves_a_third_of_plain_autograd(drop_path_rate, monkeypatch):
    """Saved for backward per block, in floats per pixel (C channels, MLP ratio 4): plain
    autograd 27C (input, LN(x), W1 X, GELU, DW out, V, A * V, W3 out; LN, fc1 out, GELU, pos out,
    sum, fc2 out), the recomputing path 9C (input, [W1 X, V], DW out; mid input, fc1 out) plus
    four LayerNorm statistics."""
    from mmc2f.models.backbones import conv2former
    block = Block(32, kernel_size=5, drop_path=drop_path_rate).train()
    x = torch.randn(2, 32, 16, 16).contiguous(memory_format=torch.channels_last)
    x.requires_grad_()
    lean = _saved_bytes(block, x)
    monkeypatch.setattr(conv2former, 'recompute_enabled', lambda *a: False)
    plain = _saved_bytes(block, x)
    pixel_bytes = 2 * 16 * 16 * 4
    masks = 2 * 2 * 4 if drop_path_rate else 0  # the (B,) per-sample factors
    w12 = 2 * 32 * 32 * 4  # [W1; W2], concatenated
    assert lean == (9 * 32 + 4) * pixel_bytes + w12 + masks
    assert plain >= 27 * 32 * pixel_bytes and lean < plain / 2.9


# --------------------------------------------------------------------------------------------
# layer-wise lr decay ids


def _forward_order(model):
    """Backbone parameter names in the order the forward pass uses them."""
    names = []
    for i in range(4):
        names += [f'downsample_layers.{i}.{n}'
                  for n, _ in model.downsample_layers[i].named_parameters()]
        for j in range(len(model.stages[i])):
            names += [f'stages.{i}.{j}.{n}' for n, _ in model.stages[i][j].named_parameters()]
    return names


@pytest.mark.parametrize('arch', ARCHS)
def test_get_layer_depth_monotonic(arch):
    with torch.device('meta'):
        model = Conv2Former(arch, out_norms=True)
    names = _forward_order(model)
    assert set(names) | {n for n, _ in model.named_parameters() if n.startswith('out_norm')} \
        == {n for n, _ in model.named_parameters()}
    ids = [model.get_layer_depth('backbone.' + n, 'backbone.') for n in names]
    num_layers = {i[1] for i in ids}
    assert len(num_layers) == 1
    num_layers = num_layers.pop()
    layer_ids = [i[0] for i in ids]
    assert layer_ids == sorted(layer_ids)  # never decreasing along the forward pass
    assert layer_ids[0] == 0 and layer_ids[-1] == num_layers - 2
    expected_m = {'nano': 6, 'tiny': 7, 'small': 14, 'base': 15, 'large': 19}[arch]
    assert num_layers == expected_m + 2
    # stage 3 above every stage-2 block, and all ids in range
    last_s2 = model.get_layer_depth(f'stages.2.{model.depths[2] - 1}.mlp.fc1.weight')[0]
    assert model.get_layer_depth('stages.3.0.attn.v.weight')[0] == last_s2 + 1
    assert model.get_layer_depth('out_norm3.weight') == (num_layers - 1, num_layers)
    assert model.get_layer_depth('head.fc.weight', 'backbone.') == (num_layers - 1, num_layers)


@pytest.mark.parametrize('depths', [[3, 3, 9, 3], [3, 3, 27, 3]])
def test_get_layer_depth_equals_convnext_rule_on_convnext_depths(depths):
    from mmpretrain.models.backbones import ConvNeXt
    with torch.device('meta'):
        ours = Conv2Former(dict(dims=[8, 16, 32, 64], depths=depths))
    convnext = ConvNeXt(arch=dict(depths=depths, channels=[8, 16, 32, 64]))  # not on meta: .item()
    for name in _forward_order(ours) + ['head.fc.weight']:
        assert ours.get_layer_depth(name, 'backbone.' if name.startswith('head') else '') == \
            convnext.get_layer_depth(name, 'backbone.' if name.startswith('head') else ''), name


# ------------------------------------------------------------------ inference-only fused path
@pytest.mark.parametrize('onednn', [True, False])
def test_switch_to_deploy_matches_eval_outputs(onednn, randomised, run_deployed):
    model = randomised(Conv2Former(arch=dict(dims=[16, 32, 48, 64], depths=[1, 2, 2, 1]),
                                    kernel_size=7, drop_path_rate=0.1)).eval()
    x = torch.randn(2, 3, 96, 64)
    with torch.no_grad():
        ref = model(x)
    _, out = run_deployed(model, x, onednn)
    for r, o in zip(ref, out):
        assert o.shape == r.shape
        assert ((o - r).norm() / r.norm()).item() < 1e-5


def test_fused_cpu_inference_runs_native_kernels(monkeypatch, randomised):
    """``A * V`` (the large-kernel depthwise convolution times ``V``), the MLP's
    ``h + GELU(DW3x3(h))`` and the LayerNorms of the deployed model run in :mod:`mmc2f.ops.native`
    wherever its kernels apply (maps at least ``MIN_WIDTH``, ``GELU_MIN_WIDTH`` wide), and
    the outputs equal the eval model's."""
    from mmc2f.ops import fused as fused_ops
    from mmc2f.ops import native
    assert native.library() is not None, 'a C++ compiler is installed here: the kernels must build'
    torch.manual_seed(0)
    model = randomised(Conv2Former(arch=dict(dims=[16, 32, 48, 64], depths=[1, 1, 1, 1]),
                                    kernel_size=7)).eval()
    x = torch.randn(2, 3, 128, 128)  # stage maps 32, 16, 8, 4 wide
    with torch.no_grad():
        ref = model(x)
    calls = []

    def spy(name, fn):
        def wrapped(*args):
            out = fn(*args)
            calls.append((name, args[0].shape[-1], out is not None))
            return out
        monkeypatch.setattr(fused_ops, name, wrapped)

    spy('native_dw_mul', fused_ops.native_dw_mul)
    spy('native_dw_gelu', fused_ops.native_dw_gelu)
    spy('native_channel_norm', fused_ops.native_channel_norm)
    model.switch_to_deploy()
    with torch.no_grad():
        out = model(x)
    for a, b in zip(out, ref):
        assert ((a - b).norm() / b.norm()).item() < 1e-5
    dw = [(w, ran) for name, w, ran in calls if name == 'native_dw_mul']
    # one call per block (a batch of two is one chunk); the 4-wide stage 4 is left to oneDNN
    assert dw == [(32, True), (16, True), (8, True), (4, False)], dw
    pos = [(w, ran) for name, w, ran in calls if name == 'native_dw_gelu']
    # the MLP's 3x3 depthwise convolution, its GELU and residual: on maps >= 28 wide
    assert pos == [(32, True), (16, False), (8, False), (4, False)], pos
    norms = [ran for name, _, ran in calls if name == 'native_channel_norm']
    assert len(norms) == 2 * 4 + 3 and all(norms), calls  # two per block, three downsamplings


def test_fused_inference_runs_stage_one_in_chunks(monkeypatch, randomised):
    """Fused CPU inference runs the stem and stage 1 on ``fused_chunk`` images at a time (the rest
    on the whole batch) with the outputs of the whole batch at once; traced graphs (ONNX export)
    keep the batch whole."""
    torch.manual_seed(0)
    model = randomised(Conv2Former(arch=dict(dims=[16, 32, 48, 64], depths=[1, 2, 1, 1]),
                                    kernel_size=5)).eval().switch_to_deploy()
    x = torch.randn(5, 3, 64, 64)
    calls, stage = [], Conv2Former._stage

    def counting(self, i, x, fused):
        calls.append((i, x.shape[0]))
        return stage(self, i, x, fused)

    monkeypatch.setattr(Conv2Former, '_stage', counting)
    with torch.no_grad():
        chunked = model(x)
        assert calls == [(0, 2), (0, 2), (0, 1), (1, 5), (2, 5), (3, 5)]
        calls.clear()
        model.fused_chunk = 0
        whole = model(x)
        assert calls == [(0, 5), (1, 5), (2, 5), (3, 5)]
        for a, b in zip(chunked, whole):
            assert a.is_contiguous()
            torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)
        calls.clear()
        model.fused_chunk = 2
        torch.jit.trace(model, x, check_trace=False)
    assert calls == [(0, 5), (1, 5), (2, 5), (3, 5)]


def test_switch_to_deploy_keeps_training_graph(randomised, check_train_mode_unchanged):
    model = randomised(Conv2Former(arch=dict(dims=[16, 32, 48, 64], depths=[1, 1, 2, 1]),
                                    kernel_size=5))
    check_train_mode_unchanged(model, torch.randn(2, 3, 64, 64))


def test_pretrained_init_is_strict_and_names_keys(tmp_path):
    from mmc2f.checkpoint import CheckpointFormatError
    arch = dict(dims=[16, 32, 48, 64], depths=[1, 1, 1, 1])
    source = Conv2Former(arch=arch, kernel_size=5)
    source.init_weights()
    # The authors' own classifier file, older 'attn.a' naming, loads directly (classifier dropped).
    authors = {k.replace('.attn.att.', '.attn.a.'): v for k, v in source.state_dict().items()}
    authors.update({'head.0.weight': torch.zeros(8, 64, 1, 1), 'pred.weight': torch.zeros(3, 8)})
    torch.save({'state_dict': authors, 'epoch': 1}, tmp_path / 'authors.pth')
    model = Conv2Former(arch=arch, kernel_size=5, out_norms=True,
                        init_cfg=dict(type='Pretrained', checkpoint=str(tmp_path / 'authors.pth')))
    model.init_weights()
    for k, v in source.state_dict().items():
        assert torch.equal(model.state_dict()[k], v), k
    # A converted whole-classifier checkpoint needs prefix='backbone.'; without it: a clear error.
    torch.save({'state_dict': {f'backbone.{k}': v for k, v in source.state_dict().items()}},
               tmp_path / 'converted.pth')
    bad = Conv2Former(arch=arch, kernel_size=5,
                      init_cfg=dict(type='Pretrained', checkpoint=str(tmp_path / 'converted.pth')))
    with pytest.raises(CheckpointFormatError, match='prefix="backbone."'):
        bad.init_weights()
    # Another layout (here: a different kernel size) fails and suggests the converter.
    other = Conv2Former(arch=arch, kernel_size=7, init_cfg=dict(
        type='Pretrained', checkpoint=str(tmp_path / 'converted.pth'), prefix='backbone.'))
    with pytest.raises(CheckpointFormatError, match=r'shape mismatch: .*attn\.att\.2\.weight'):
        other.init_weights()
    renamed = {k.replace('mlp.fc1', 'mlp.fc_in'): v for k, v in source.state_dict().items()}
    torch.save(renamed, tmp_path / 'renamed.pth')
    wrong = Conv2Former(arch=arch, kernel_size=5,
                        init_cfg=dict(type='Pretrained', checkpoint=str(tmp_path / 'renamed.pth')))
    with pytest.raises(CheckpointFormatError) as info:
        wrong.init_weights()
    msg = str(info.value)
    assert 'missing keys: stages.0.0.mlp.fc1.weight' in msg
    assert 'unexpected keys: stages.0.0.mlp.fc_in.weight' in msg
    assert 'conv2former_to_mmc2f.py' in msg


@pytest.mark.parametrize('deploy', [False, True])
def test_outputs_are_contiguous_nchw(deploy):
    """mmcv's C++ ops (RoIAlign) read raw NCHW memory: outputs must not keep channels_last strides."""
    model = Conv2Former(arch=dict(dims=[16, 32, 48, 64], depths=[1, 1, 1, 1]), kernel_size=5,
                        out_norms=True).eval()
    if deploy:
        model.switch_to_deploy()
    with torch.no_grad():
        outs = model(torch.randn(1, 3, 64, 64))
    assert all(o.is_contiguous() for o in outs)
    iso = Conv2FormerIsotropic(arch='is').eval()
    with torch.no_grad():
        assert iso(torch.randn(1, 3, 64, 64))[0].is_contiguous()

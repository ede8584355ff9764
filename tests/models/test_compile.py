"""torch.compile: no graph breaks in the training and eval forwards (plain and deployed) of every
mmc2f model; compiled outputs and gradients equal eager ones (CPU inductor, slow)."""
import copy

import pytest
import torch
import torch._dynamo as dynamo
from mmengine.registry import DefaultScope

from mmc2f.models.backbones.conv2former import Conv2Former
from mmc2f.models.backbones.conv2former_iso import Conv2FormerIsotropic
from mmc2f.models.backbones.mscan import MSCAN

BN = dict(type='BN', requires_grad=True)


def _head():
    import mmseg.utils
    mmseg.utils.register_all_modules(init_default_scope=False)
    from mmc2f.registry import MODELS
    with DefaultScope.overwrite_default_scope('mmseg'):
        return MODELS.build(dict(
            type='mmc2f.LightHamHead', in_channels=[16, 24, 32], in_index=[1, 2, 3], channels=32,
            ham_channels=32, num_classes=5, ham_kwargs=dict(MD_R=4, eval_seed=0),
            norm_cfg=dict(type='GN', num_groups=8, requires_grad=True)))


MODELS = {
    'conv2former': lambda: Conv2Former(dict(dims=[16, 32, 48, 64], depths=[1, 1, 2, 1]),
                                       kernel_size=5, drop_path_rate=0.1),
    'conv2former_iso': lambda: Conv2FormerIsotropic(dict(embed_dims=16, depth=2),
                                                    patch_embed='3conv'),
    'mscan': lambda: MSCAN(arch=dict(embed_dims=[8, 16, 24, 32], depths=[1, 1, 1, 1]),
                           norm_cfg=BN, drop_path_rate=0.1),
    'light_ham_head': _head,
}


def _inputs(name):
    if name == 'light_ham_head':
        return ([torch.randn(1, c, s, s) for c, s in [(8, 16), (16, 8), (24, 4), (32, 2)]], )
    return (torch.randn(1, 3, 64, 64), )


#: (model, mode): the decode head has no fused inference path, so no 'deploy' for it.
CASES = [(n, m) for n in MODELS for m in ('train', 'eval', 'deploy')
         if not (n == 'light_ham_head' and m == 'deploy')]


@pytest.mark.parametrize('name,mode', CASES)
def test_no_graph_breaks(name, mode):
    model = MODELS[name]()
    if mode == 'deploy':
        model.eval().switch_to_deploy()
    else:
        getattr(model, mode)()
    explain = dynamo.explain(model)(*_inputs(name))
    assert explain.graph_break_count == 0, [str(b.reason)[:200] for b in explain.break_reasons]
    assert explain.graph_count == 1


@pytest.mark.slow
@pytest.mark.parametrize('name', ['conv2former', 'mscan'])
def test_compiled_equals_eager(name):
    import torch._inductor.config as inductor_config
    with inductor_config.patch(fallback_random=True):  # eager's RNG: the same drop paths
        _compiled_equals_eager(name)


def _compiled_equals_eager(name):
    torch.manual_seed(0)
    model = MODELS[name]().train()
    model.init_weights()
    compiled = torch.compile(copy.deepcopy(model), backend='inductor')
    (x, ) = _inputs(name)
    results = []
    for m in (model, compiled):
        torch.manual_seed(1)  # the same drop-path masks
        outs = m(x)
        sum((o * o).sum() for o in outs).backward()
        results.append((outs, {n: p.grad for n, p in m.named_parameters()}))
    (o1, g1), (o2, g2) = results
    for a, b in zip(o1, o2):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    # float reassociation in the compiled kernels: compare relative to the largest gradient
    largest = max(g.abs().max().item() for g in g1.values())
    for n in g1:
        torch.testing.assert_close(g2.get(n, g2.get('_orig_mod.' + n)), g1[n], rtol=1e-3,
                                   atol=1e-3 * largest, msg=n)
    model.eval().switch_to_deploy()
    with torch.no_grad():
        ref = model(x)
        got = torch.compile(model, backend='inductor')(x)
    for a, b in zip(ref, got):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def _fake_run(model, inputs, train):
    """``model`` on fake tensors (shapes only): every kernel must take its portable path."""
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.func import functional_call
    mode = FakeTensorMode()
    state = {n: mode.from_tensor(t) for n, t in
             list(model.named_parameters()) + list(model.named_buffers())}
    for n, p in model.named_parameters():
        state[n].requires_grad_(p.requires_grad)
    with mode:
        inputs = tuple([mode.from_tensor(t) for t in x] if isinstance(x, list) else
                       mode.from_tensor(x) for x in inputs)
        with torch.set_grad_enabled(train):
            outs = functional_call(model, state, inputs)
        outs = outs if isinstance(outs, (list, tuple)) else [outs]
        if train:
            sum(o.sum() for o in outs).backward()
    return [tuple(o.shape) for o in outs]


@pytest.mark.parametrize('name', list(MODELS))
@pytest.mark.parametrize('mode', ['train', 'deploy'])
def test_fake_tensors_take_the_portable_path(name, mode):
    model = MODELS[name]().train(mode == 'train')
    if mode == 'deploy' and hasattr(model, 'switch_to_deploy'):
        model.switch_to_deploy()
    inputs = _inputs(name)
    shapes = _fake_run(model, inputs, mode == 'train')
    with torch.no_grad():
        real = model(*inputs)
    real = real if isinstance(real, (list, tuple)) else [real]
    assert shapes == [tuple(o.shape) for o in real]


@pytest.mark.parametrize('name', ['conv2former', 'mscan'])
def test_meta_device_runs(name):
    with torch.device('meta'):
        model = MODELS[name]()
        outs = model(torch.randn(2, 3, 64, 64))
    assert all(o.device.type == 'meta' for o in outs)

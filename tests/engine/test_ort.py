"""mmc2f's ONNX Runtime engine for segmentors (mmc2f.engine.ort) and the deploy backends."""
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from mmc2f.engine.deploy_hook import SwitchToDeployHook, switch_to_deploy
from mmc2f.errors import ConfigError

pytest.importorskip('onnxruntime')

from mmc2f.engine.ort import (OnnxRuntimeForward, OutputPool, restore_pytorch,  # noqa: E402
                              run_on_onnxruntime)


def _segmentor(eval_seed=None, align_corners=False):
    from mmengine.registry import init_default_scope
    from mmseg.registry import MODELS
    init_default_scope('mmseg')
    torch.manual_seed(0)
    model = MODELS.build(dict(
        type='EncoderDecoder', data_preprocessor=None,
        backbone=dict(type='mmc2f.MSCAN', embed_dims=[8, 16, 24, 32], depths=[1, 1, 1, 1],
                      mlp_ratios=[2, 2, 2, 2], norm_cfg=dict(type='BN')),
        decode_head=dict(type='mmc2f.LightHamHead', in_channels=[16, 24, 32], in_index=[1, 2, 3],
                         channels=16, ham_channels=16, num_classes=5, align_corners=align_corners,
                         norm_cfg=dict(type='GN', num_groups=8),
                         ham_kwargs=dict(MD_R=4, train_steps=2, eval_steps=3,
                                         eval_seed=eval_seed)),
        test_cfg=dict(mode='whole')))
    with torch.no_grad():  # non-trivial BN statistics
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    return model.eval()


def _encode(model, x):
    metas = [dict(img_shape=tuple(x.shape[2:]), pad_shape=tuple(x.shape[2:]))] * x.shape[0]
    with torch.no_grad():
        return model.encode_decode(x, metas)


def _rel(a, b):
    return ((a - b).abs().max() / b.abs().max()).item()


# (70, 90): the logits are 9 x 12, a non-integer resize factor (PyTorch's kernel, into the buffer);
# align_corners=True (the head's setting, which the engine's resize must follow) always takes it
@pytest.mark.parametrize('size, align_corners', [
    ((64, 64), False), ((96, 160), False), ((72, 88), False), ((70, 90), False),
    ((64, 64), True), ((70, 90), True)])
def test_encode_decode_equals_pytorch(size, align_corners):
    model = _segmentor(eval_seed=3, align_corners=align_corners)
    assert model.align_corners is align_corners
    x = torch.randn(2, 3, *size, generator=torch.Generator().manual_seed(0))
    ref = _encode(model, x)
    run_on_onnxruntime(model)
    got = _encode(model, x)
    assert got.shape == ref.shape
    assert got.is_contiguous(memory_format=torch.channels_last) and not got.is_contiguous()
    assert _rel(got, ref) < 1e-5
    restore_pytorch(model)
    torch.testing.assert_close(_encode(model, x), ref, rtol=0, atol=0)


def _scale_in_place(model):
    with torch.no_grad():
        model.decode_head.conv_seg.weight.mul_(-2.0)


def _replace_the_submodule(model):
    old = model.decode_head.conv_seg
    model.decode_head.conv_seg = torch.nn.Conv2d(old.in_channels, old.out_channels, 1)


@pytest.mark.parametrize('change', [_scale_in_place, _replace_the_submodule])
def test_changed_weights_are_exported_again(change):
    model = _segmentor(eval_seed=1)
    run_on_onnxruntime(model)
    engine = model._mmc2f_onnxruntime
    x = torch.randn(1, 3, 64, 64)
    before = _encode(model, x)
    assert engine.exports == 1
    change(model)
    after = _encode(model, x)
    assert engine.exports == 2
    restore_pytorch(model)
    assert _rel(after, _encode(model, x)) < 1e-5
    assert _rel(after, before) > 0.1


def test_replaced_weights_are_exported_again():
    model = _segmentor(eval_seed=1)
    run_on_onnxruntime(model)
    engine = model._mmc2f_onnxruntime
    x = torch.randn(1, 3, 64, 64)
    _encode(model, x)
    conv = model.decode_head.conv_seg
    weight = torch.nn.Parameter(conv.weight.detach() * -2.0)
    with torch.no_grad():  # a new tensor with the old one's version counter
        while weight._version < conv.weight._version:
            weight.mul_(1.0)
    assert weight._version == conv.weight._version
    conv.weight = weight
    after = _encode(model, x)
    assert engine.exports == 2
    restore_pytorch(model)
    assert _rel(after, _encode(model, x)) < 1e-5


def test_training_mode_and_grad_fall_back_to_pytorch():
    model = _segmentor(eval_seed=1)
    run_on_onnxruntime(model)
    x = torch.randn(1, 3, 64, 64, requires_grad=True)
    metas = [dict(img_shape=(64, 64), pad_shape=(64, 64))]
    out = model.encode_decode(x, metas)
    out.sum().backward()  # the PyTorch path: differentiable
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_missing_eval_seed_is_fixed_and_reported():
    model = _segmentor(eval_seed=None)
    line = run_on_onnxruntime(model)
    assert 'eval_seed=0' in line
    assert model.decode_head.hamburger.ham.eval_seed == 0


def test_forward_of_a_module_with_several_outputs():
    from mmc2f.models.backbones.mscan import MSCAN
    torch.manual_seed(0)
    net = MSCAN(arch=dict(embed_dims=[8, 16, 24, 32], depths=[1, 1, 1, 1]),
                norm_cfg=dict(type='BN')).eval()
    engine = OnnxRuntimeForward(net, threads=1)
    x = torch.randn(1, 3, 96, 64)
    with torch.no_grad():
        refs = net(x)
    outs = engine(x)
    assert len(outs) == 4
    for got, ref in zip(outs, refs):
        assert got.shape == ref.shape and _rel(got, ref) < 1e-5


def test_backends_and_hook():
    model = _segmentor(eval_seed=2)
    switched = switch_to_deploy(model, backend='auto')
    assert switched[0] == 'backbone' and 'ONNX Runtime' in switched[1]
    assert switch_to_deploy(model, backend='pytorch') == ['backbone']
    assert not hasattr(model, '_mmc2f_onnxruntime')  # the PyTorch path again
    with pytest.raises(ConfigError, match='segmentors and MSCAN on CPU'):
        switch_to_deploy(torch.nn.Conv2d(3, 3, 1), backend='onnxruntime')
    with pytest.raises(ConfigError, match='unknown deploy backend'):
        switch_to_deploy(model, backend='tensorrt')
    with pytest.raises(ConfigError, match='unknown backend'):
        SwitchToDeployHook(backend='trt')
    hook = SwitchToDeployHook(backend='auto')
    messages = []
    wrapped = SimpleNamespace(module=model)  # DDP / TTA wrappers keep the model in .module
    hook.before_test_epoch(SimpleNamespace(model=wrapped,
                                           logger=SimpleNamespace(info=messages.append)))
    assert hasattr(model, '_mmc2f_onnxruntime') and 'ONNX Runtime' in messages[0]


def test_bare_mscan_backbone_on_onnxruntime():
    from mmc2f.models.backbones.mscan import MSCAN
    torch.manual_seed(0)
    net = MSCAN(arch=dict(embed_dims=[8, 16, 24, 32], depths=[1, 1, 1, 1]),
                norm_cfg=dict(type='BN')).eval()
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        refs = net(x)
    assert 'ONNX Runtime' in switch_to_deploy(net, backend='auto')[-1]
    with torch.no_grad():
        outs = net(x)
    assert all(_rel(a, b) < 1e-5 for a, b in zip(outs, refs))
    net.train()  # training runs PyTorch, with gradients
    sum(o.sum() for o in net(x)).backward()
    assert net.patch_embed1.proj[0].weight.grad is not None


def test_resize_target_other_than_the_input_takes_pytorch():
    model = _segmentor(eval_seed=1)
    x = torch.randn(1, 3, 64, 64)
    metas = [dict(img_shape=(48, 40))]
    with torch.no_grad():
        ref = model.encode_decode(x, metas)
        run_on_onnxruntime(model)
        got = model.encode_decode(x, metas)
    assert got.shape[2:] == (48, 40)
    torch.testing.assert_close(got, ref, rtol=0, atol=0)


def test_static_graphs_for_the_first_shapes_then_one_dynamic_graph():
    model = _segmentor(eval_seed=1)
    run_on_onnxruntime(model)
    engine = model._mmc2f_onnxruntime
    engine.static_shapes = 2
    shapes = [(64, 64), (64, 64), (72, 64), (80, 96), (96, 80), (72, 64)]
    for h, w in shapes:
        x = torch.randn(1, 3, h, w)
        got = _encode(model, x)
        assert _rel(got, type(model).encode_decode(
            model, x, [dict(img_shape=(h, w), pad_shape=(h, w))]).detach()) < 1e-5
    assert set(engine.sessions) == {(1, 3, 64, 64), (1, 3, 72, 64), 'dynamic'}
    assert engine.exports == 3


def _stops_spinning(session) -> bool:
    try:
        return session.get_session_options().get_session_config_entry(
            'session.force_spinning_stop') == '1'
    except RuntimeError:  # not set: ONNX Runtime's default, workers spin on after a run
        return False


@pytest.mark.parametrize('stop', [True, False])
def test_sessions_stop_spinning_after_a_run_unless_asked(stop):
    model = _segmentor(eval_seed=1)
    line = switch_to_deploy(model, backend='onnxruntime', stop_spinning=stop)[-1]
    assert 'ONNX Runtime' in line
    x = torch.randn(1, 3, 64, 64)
    _encode(model, x)
    (session, ) = model._mmc2f_onnxruntime.sessions.values()
    assert _stops_spinning(session) is stop


def _constants(graph) -> dict:
    from onnx import numpy_helper
    found = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    found.update({n.output[0]: numpy_helper.to_array(n.attribute[0].t) for n in graph.node
                  if n.op_type == 'Constant' and n.attribute[0].name == 'value'})
    return found


def test_the_graph_folds_the_mscan_blocks_and_pytorch_keeps_its_kernels(monkeypatch):
    import onnx

    import mmc2f.engine.ort as engine_module
    from mmc2f.models.backbones.mscan import MSCABlock
    graphs, export = [], engine_module.export_onnx

    def spy(*args, **kwargs):
        graphs.append(export(*args, **kwargs))
        return graphs[-1]

    monkeypatch.setattr(engine_module, 'export_onnx', spy)
    model = _segmentor(eval_seed=1)
    x = torch.randn(1, 3, 64, 64)
    ref = _encode(model, x)
    switch_to_deploy(model, backend='onnxruntime')
    blocks = [m for m in model.modules() if isinstance(m, MSCABlock)]
    calls = []
    fused_forward = MSCABlock.forward_fused

    def counted(self, x):
        calls.append(self)
        return fused_forward(self, x)

    monkeypatch.setattr(MSCABlock, 'forward_fused', counted)
    assert _rel(_encode(model, x), ref) < 1e-5
    assert len(graphs) == 1 and set(calls) == set(blocks)  # traced: the blocks' folded forward
    graph = onnx.load_from_string(graphs[0]).graph
    # the blocks' BN1 and BN2 precede a conv: folded into it (the exporter folds the embeddings'
    # BNs into the conv before them itself; the plain blocks would leave 8 BatchNormalization)
    assert 'BatchNormalization' not in [n.op_type for n in graph.node]
    # the shortcut's shift is in proj_2's bias: no per-channel constant is added on its own
    # (ONNX Runtime does not fuse such an add into the conv before it)
    consts = _constants(graph)
    assert not [n.name for n in graph.node if n.op_type == 'Add' and 'block' in n.name and
                any(i in consts and consts[i].size > 1 for i in n.input)]
    # MSCA's A (conv0's output, 5x5 weights) is added after the strip convolutions, right before
    # conv3: fused into the first strip's conv (which shares A with the other strips), that conv
    # ran 1.6-7x slower in ONNX Runtime, 20% of MSCA's time in stage 2
    readers = {}
    for n in graph.node:
        for i in n.input:
            readers.setdefault(i, []).append(n)
    a_outputs = [n.output[0] for n in graph.node if n.op_type == 'Conv'
                 and consts.get(n.input[1], np.empty(0)).shape[2:] == (5, 5)]
    assert len(a_outputs) == len(blocks)
    for a in a_outputs:
        (add, ) = [n for n in readers[a] if n.op_type == 'Add']
        (conv3, ) = readers[add.output[0]]
        assert conv3.op_type == 'Conv' and consts[conv3.input[1]].shape[2:] == (1, 1)
    calls.clear()
    _encode(model, x)
    assert not calls and len(graphs) == 1  # ONNX Runtime runs it
    restore_pytorch(model)
    assert _rel(_encode(model, x), ref) < 1e-5
    assert len(calls) == len(blocks)  # PyTorch keeps the fused kernels


def test_changed_block_weights_are_folded_again_before_the_export():
    from mmc2f.models.fusion import plain_forward
    model = _segmentor(eval_seed=1)
    switch_to_deploy(model, backend='onnxruntime')
    engine = model._mmc2f_onnxruntime
    x = torch.randn(1, 3, 64, 64)
    before = _encode(model, x)
    with torch.no_grad():  # in place, after switch_to_deploy folded it
        model.backbone.block2[0].attn.proj_1.weight.mul_(-3.0)
    after = _encode(model, x)
    assert engine.exports == 2
    restore_pytorch(model)
    with plain_forward(model):
        want = _encode(model, x)
    assert _rel(after, want) < 1e-5 and _rel(after, before) > 1e-3
    assert _rel(_encode(model, x), want) < 1e-5  # the PyTorch path got the new folds too


def test_output_pool_hands_a_buffer_out_again_only_when_nothing_holds_it():
    pool = OutputPool(size=2)
    a = pool.empty(2, 3)
    view = a[1:]  # a view keeps the buffer busy after the tensor itself is gone
    b = pool.empty(2, 3)
    assert a.data_ptr() != b.data_ptr()
    c = pool.empty(2, 3)  # both in use: a fresh tensor, not a pooled one
    assert c.data_ptr() not in (a.data_ptr(), b.data_ptr())
    ptr_a = a.data_ptr()
    del a
    assert pool.empty(2, 3).data_ptr() not in (ptr_a, b.data_ptr())  # the view still holds it
    del view
    d = pool.empty(1, 3)  # a smaller request takes the freed buffer
    assert d.data_ptr() == ptr_a and d.shape == (1, 3) and d.dtype == torch.float32
    del d
    e = pool.empty(4, 5)  # a larger one replaces it with a larger buffer
    assert e.shape == (4, 5) and e.is_contiguous()
    assert pool.arrays[0].size == 20 and e.data_ptr() == pool.arrays[0].ctypes.data


def test_results_kept_by_the_caller_are_never_overwritten():
    model = _segmentor(eval_seed=3)
    gen = torch.Generator().manual_seed(0)
    xs = [torch.randn(1, 3, 64, 64, generator=gen) for _ in range(4)]
    refs = [_encode(model, x) for x in xs]
    run_on_onnxruntime(model)
    kept = [_encode(model, x) for x in xs]  # four results alive at once, a pool of two
    for got, ref in zip(kept, refs):
        assert _rel(got, ref) < 1e-5
    ptr = kept[0].data_ptr()
    del kept
    got = _encode(model, xs[1])  # the freed buffers are used again
    assert _rel(got, refs[1]) < 1e-5
    assert got.data_ptr() == ptr

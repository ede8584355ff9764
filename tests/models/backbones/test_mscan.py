"""MSCAN: parameter counts, mmseg equivalence (keys, outputs), arch handling, pretrained loading."""
import pytest
import torch
from mmseg.models.backbones import MSCAN as MMSegMSCAN

from mmc2f.models.backbones.mscan import MSCAN, MSCABlock, arch_settings
from mmc2f.checkpoint import CheckpointFormatError

BN = dict(type='BN', requires_grad=True)
PARAMS_M = dict(tiny=3.904, small=13.450, base=26.278, large=44.637)



def _mmseg_for(arch, **kw):
    s = arch_settings[arch]
    return MMSegMSCAN(embed_dims=s['embed_dims'], depths=s['depths'], mlp_ratios=s['mlp_ratios'],
                      norm_cfg=BN, **kw)


def _shapes(sd):
    return [(k, tuple(v.shape)) for k, v in sd.items()]


@pytest.mark.parametrize('arch', ['tiny', 'small', 'base', 'large'])
def test_params_and_keys_match_mmseg(arch):
    model = MSCAN(arch=arch, norm_cfg=BN)
    n = sum(p.numel() for p in model.parameters()) / 1e6
    assert round(n, 3) == PARAMS_M[arch]
    assert _shapes(model.state_dict()) == _shapes(_mmseg_for(arch).state_dict())


def test_defaults_equal_mmseg_defaults():
    ours, ref = MSCAN(norm_cfg=BN), MMSegMSCAN(norm_cfg=BN)
    assert _shapes(ours.state_dict()) == _shapes(ref.state_dict())
    assert ours.embed_dims == [64, 128, 256, 512] and ours.depths == [3, 4, 6, 3]
    assert ours.drop_path_rate == 0.


@pytest.mark.parametrize('train', [True, False])
def test_outputs_equal_mmseg(train):
    torch.manual_seed(0)
    ours = MSCAN(arch='tiny', drop_path_rate=0., norm_cfg=BN)
    ours.init_weights()
    ref = _mmseg_for('tiny')
    ref.load_state_dict(ours.state_dict())
    # non-trivial BN statistics for eval mode
    for m in ours.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    ref.load_state_dict(ours.state_dict())
    ours.train(train)
    ref.train(train)
    x = torch.randn(2, 3, 70, 94)  # odd sizes: ceil rounding of every stride
    with torch.no_grad():
        out, exp = ours(x), ref(x)
    assert len(out) == 4
    for o, e, c in zip(out, exp, [32, 64, 160, 256]):
        assert o.shape == e.shape and o.shape[1] == c and o.is_contiguous()
        torch.testing.assert_close(o, e, atol=1e-5, rtol=0)
    # The comparison can fail: a perturbed weight changes the outputs.
    with torch.no_grad():
        ours.block4[0].layer_scale_2.fill_(1.0)
        assert (ours(x)[3] - exp[3]).abs().max() > 1e-3


def test_arch_and_overrides():
    m = MSCAN(arch='small', depths=[1, 1, 1, 1], norm_cfg=BN)
    assert m.embed_dims == [64, 128, 320, 512] and m.depths == [1, 1, 1, 1]
    assert m.mlp_ratios == [8, 8, 4, 4] and m.drop_path_rate == pytest.approx(0.1)
    assert len(m.block1) == 1 and m.block1[0].mlp.fc1.out_channels == 512
    large = MSCAN(arch='L', depths=[1, 1, 2, 1], norm_cfg=BN)
    assert large.drop_path_rate == pytest.approx(0.3)
    # stochastic depth rises linearly over all blocks to the arch's rate
    assert large.block4[0].drop_path.drop_prob == pytest.approx(0.3)
    assert isinstance(large.block1[0].drop_path, torch.nn.Identity)
    assert MSCAN(arch='tiny', drop_path_rate=0., depths=[1, 1, 1, 1],
                 norm_cfg=BN).drop_path_rate == 0.
    with pytest.raises(ValueError,
                       match=r"unknown MSCAN arch \"huge\".*'tiny', 'small', 'base', 'large'"):
        MSCAN(arch='huge')


def test_block_shapes():
    block = MSCABlock(16, mlp_ratio=2., norm_cfg=BN)
    x = torch.randn(1, 16, 9, 7)
    assert block(x).shape == x.shape


def test_input_channels_checked():
    m = MSCAN(arch='tiny', depths=[1, 1, 1, 1], norm_cfg=BN).eval()
    with pytest.raises(ValueError, match=r'built for 3 input channels.*\(1, 4, 32, 32\)'):
        m(torch.randn(1, 4, 32, 32))
    m4 = MSCAN(arch='tiny', in_channels=4, depths=[1, 1, 1, 1], norm_cfg=BN).eval()
    assert [o.shape[1] for o in m4(torch.randn(1, 4, 32, 32))] == [32, 64, 160, 256]


def test_registry_builds_from_mmc2f_and_mmseg_scopes():
    from mmseg.registry import MODELS as MMSEG_MODELS

    from mmc2f.registry import MODELS
    assert MODELS.get('MSCAN') is MSCAN
    assert MMSEG_MODELS.get('MSCAN') is MMSegMSCAN  # mmseg's own registration is untouched
    m = MMSEG_MODELS.build(dict(type='mmc2f.MSCAN', arch='tiny', depths=[1, 1, 1, 1],
                                norm_cfg=BN))
    assert isinstance(m, MSCAN)


@pytest.mark.parametrize('wrap', ['state_dict', None])
def test_mmseg_checkpoint_loads_unchanged(tmp_path, wrap):
    """An mmseg-layout ``mscan_*.pth`` loads via init_cfg Pretrained and the weights are equal."""
    torch.manual_seed(1)
    src = _mmseg_for('tiny')
    for p in src.parameters():
        p.data.normal_()
    sd = src.state_dict()
    path = tmp_path / 'mscan_t.pth'
    torch.save({wrap: sd, 'meta': {'epoch': 3}} if wrap else sd, path)
    m = MSCAN(arch='tiny', norm_cfg=BN, init_cfg=dict(type='Pretrained', checkpoint=str(path)))
    m.init_weights()
    mine = m.state_dict()
    assert list(mine) == list(sd)
    for k in sd:
        assert torch.equal(mine[k], sd[k]), k


def test_pretrained_mismatch_is_an_error(tmp_path):
    path = tmp_path / 'small.pth'
    torch.save(MSCAN(arch='small', depths=[1, 1, 1, 1], norm_cfg=BN).state_dict(), path)
    m = MSCAN(arch='tiny', depths=[1, 1, 1, 1], norm_cfg=BN,
              init_cfg=dict(type='Pretrained', checkpoint=str(path)))
    with pytest.raises(CheckpointFormatError, match='shape mismatch'):
        m.init_weights()


def test_pretrained_with_prefix_from_a_segmentor_checkpoint(tmp_path):
    torch.manual_seed(2)
    src = MSCAN(arch='tiny', depths=[1, 1, 1, 1], norm_cfg=BN)
    for p in src.parameters():
        p.data.normal_()
    full = {f'backbone.{k}': v for k, v in src.state_dict().items()}
    full['decode_head.conv_seg.weight'] = torch.zeros(19, 256, 1, 1)
    path = tmp_path / 'segnext.pth'
    torch.save({'state_dict': full, 'meta': {}}, path)
    m = MSCAN(arch='tiny', depths=[1, 1, 1, 1], norm_cfg=BN,
              init_cfg=dict(type='Pretrained', checkpoint=str(path), prefix='backbone.'))
    m.init_weights()
    assert all(torch.equal(m.state_dict()[k], v) for k, v in src.state_dict().items())
    # without the prefix: an error that says which prefix to use
    m2 = MSCAN(arch='tiny', depths=[1, 1, 1, 1], norm_cfg=BN,
               init_cfg=dict(type='Pretrained', checkpoint=str(path)))
    with pytest.raises(CheckpointFormatError, match='prefix="backbone."'):
        m2.init_weights()


def test_outputs_feed_mmpretrain_neck():
    """A tuple of stage outputs: mmpretrain's necks refuse lists, mmseg/mmdet heads index either."""
    from mmpretrain.models.necks import GlobalAveragePooling
    model = MSCAN(arch='tiny', norm_cfg=dict(type='BN', requires_grad=True))
    outs = model.eval()(torch.randn(1, 3, 64, 64))
    assert isinstance(outs, tuple) and len(outs) == 4
    pooled = GlobalAveragePooling()(outs)
    assert pooled[-1].shape == (1, 256)


# ------------------------------------------------------------------ inference-only fused path
@pytest.mark.parametrize('onednn', [True, False])
def test_switch_to_deploy_matches_mmseg(onednn, randomised, run_deployed):
    model = randomised(MSCAN(arch='tiny', drop_path_rate=0.1, norm_cfg=BN)).eval()
    ref = _mmseg_for('tiny', drop_path_rate=0.1).eval()
    ref.load_state_dict(model.state_dict())
    x = torch.randn(2, 3, 70, 94)
    with torch.no_grad():
        exp = ref(x)
    fused, out = run_deployed(model, x, onednn)
    for o, e in zip(out, exp):
        assert o.shape == e.shape and o.is_contiguous()
        assert ((o - e).norm() / e.norm()).item() < 1e-5
    # The comparison can fail: the fused weights are computed once, a later change is not seen.
    with torch.no_grad():
        fused.block4[0].layer_scale_2.mul_(3.0)
        fused.switch_to_deploy()
        assert ((fused(x)[3] - exp[3]).norm() / exp[3].norm()).item() > 1e-3


def _carried_shortcuts(model):
    return [[b.fused_shortcut_scale is None for b in getattr(model, f'block{i + 1}')]
            for i in range(model.num_stages)]


def test_deploy_carries_each_stages_stream_through_its_blocks(randomised):
    from mmc2f.models.fusion import bn_affine
    model = randomised(MSCAN(arch=dict(embed_dims=[16, 32, 48, 64], depths=[2, 3, 1, 2]),
                             norm_cfg=BN)).eval()
    with torch.no_grad():  # block2.1's shortcut scale d = 1 + ls1 s1 is 1e-6 on one channel
        blk = model.block2[1]
        blk.layer_scale_1[3] = (1e-6 - 1) / bn_affine(blk.norm1)[0][3]
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        ref = model(x)
        model.switch_to_deploy()
        got = model(x)
    # every block adds its shortcut in the carried units, but block2.1, whose scale would leave
    # the limit, keeps its product (and the blocks after it carry on from its stream)
    assert _carried_shortcuts(model) == [[True, True], [True, False, True], [True], [True, True]]
    assert all(getattr(model, f'block{i + 1}')[-1].fused_stream_out is not None for i in range(4))
    for o, e in zip(got, ref):
        assert ((o - e).norm() / e.norm()).item() < 1e-5
    with pytest.raises(RuntimeError, match='switch_to_deploy\\(\\) on the MSCAN backbone'):
        model.block1[1].switch_to_deploy()  # alone it would break its stage's stream
    model.train().eval()  # dropped: alone again, each block folds in plain units
    model.block1[1].switch_to_deploy()
    assert model.block1[1].fused_shortcut_scale is not None
    with torch.no_grad():
        for o, e in zip(model(x), ref):
            assert ((o - e).norm() / e.norm()).item() < 1e-5


def test_switch_to_deploy_keeps_training_graph(randomised, check_train_mode_unchanged):
    model = randomised(MSCAN(arch=dict(embed_dims=[16, 32, 48, 64], depths=[1, 1, 2, 1]),
                             norm_cfg=BN))
    check_train_mode_unchanged(model, torch.randn(2, 3, 64, 64))


def test_switch_to_deploy_needs_batchnorm():
    model = MSCAN(arch=dict(embed_dims=[16, 32, 48, 64], depths=[1, 1, 1, 1]),
                  norm_cfg=dict(type='GN', num_groups=4))
    with pytest.raises(TypeError, match='BatchNorm'):
        model.switch_to_deploy()


def test_deployed_graph_scales_each_stage_once(randomised):
    onnx = pytest.importorskip('onnx')
    from mmc2f.engine.export import export_onnx
    from mmc2f.models.fusion import onnxruntime_forward
    model = randomised(MSCAN(arch=dict(embed_dims=[16, 32, 48, 64], depths=[2, 3, 1, 2]),
                             norm_cfg=BN)).eval()
    model.switch_to_deploy()
    with onnxruntime_forward(model):
        graph = onnx.load_from_string(export_onnx(model, torch.randn(1, 3, 64, 64), None,
                                                  [f'out{i}' for i in range(4)])).graph
    dims = {t.name: list(t.dims) for t in graph.initializer}
    dims.update({n.output[0]: list(n.attribute[0].t.dims) for n in graph.node
                 if n.op_type == 'Constant'})
    vectors = {name for name, d in dims.items() if len(d) == 4 and d[0] == d[2] == d[3] == 1}
    scaled = [n.name for n in graph.node if n.op_type == 'Mul' and vectors & set(n.input)]
    # one product by the carried scale per stage (a product by d per block, 8, without carrying)
    assert len(scaled) == 4, scaled


def test_fused_cpu_inference_runs_the_mlps_3x3_and_gelu_natively(monkeypatch, randomised):
    from mmc2f.ops import fused as fused_ops
    from mmc2f.ops import native
    assert native.library() is not None, 'a C++ compiler is installed here: the kernels must build'
    model = randomised(MSCAN(arch=dict(embed_dims=[16, 32, 48, 64], depths=[1, 1, 1, 1]),
                             norm_cfg=BN)).eval()
    x = torch.randn(1, 3, 256, 256)  # stage maps 64, 32, 16, 8 wide
    with torch.no_grad():
        ref = model(x)
    calls, kernel = [], fused_ops.native_dw_gelu

    def spy(h, *args):
        out = kernel(h, *args)
        calls.append((h.shape[-1], args[-1], out is not None))
        return out

    monkeypatch.setattr(fused_ops, 'native_dw_gelu', spy)
    model.switch_to_deploy()
    with torch.no_grad():
        out = model(x)
    # GELU(DW3x3(h)), no residual, in one pass on maps >= 28 wide; oneDNN's on the others
    assert calls == [(64, False, True), (32, False, True), (16, False, False), (8, False, False)]
    for o, e in zip(out, ref):
        assert ((o - e).norm() / e.norm()).item() < 1e-5

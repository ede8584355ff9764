"""mmc2f.LayerDecayOptimWrapperConstructor: parity with mmdet/mmseg/mmpretrain; Conv2Former."""
import os.path as osp
from unittest import mock

import pytest
import torch
import torch.nn as nn

from mmc2f.engine.layer_decay import LayerDecayOptimWrapperConstructor, min_num_layers

OPTIM = dict(type='AdamW', lr=1e-4, betas=(0.9, 0.999), weight_decay=0.05)
REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))


class Wrapper(nn.Module):
    """The smallest mmdet-like model: a ``backbone`` attribute plus some head parameters."""

    def __init__(self, backbone, out_channels):
        super().__init__()
        self.backbone = backbone
        self.neck = nn.Conv2d(out_channels, 8, 1)
        self.neck_norm = nn.GroupNorm(2, 8)
        self.head = nn.Linear(8, 3)


def _ours(paramwise_cfg, optimizer=OPTIM):
    return LayerDecayOptimWrapperConstructor(dict(optimizer=dict(optimizer)), dict(paramwise_cfg))


def _per_param(model, groups):
    """name -> (lr, weight_decay, group_name), via the parameter tensors (not the names)."""
    names = {id(p): n for n, p in model.named_parameters()}
    out = {}
    for g in groups:
        for p in g['params']:
            assert names[id(p)] not in out, 'a parameter is in two groups'
            out[names[id(p)]] = (g['lr'], g['weight_decay'], g['group_name'])
    return out


def _assert_same(model, ours, theirs, compare_group_names=True):
    a, b = _per_param(model, ours), _per_param(model, theirs)
    assert a.keys() == b.keys()
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert a.keys() == trainable
    for name in a:
        assert a[name][:2] == b[name][:2], (name, a[name], b[name])  # exact float equality
        if compare_group_names:
            assert a[name][2] == b[name][2], (name, a[name], b[name])


def _convnext_tiny():
    from mmpretrain.models import ConvNeXt
    return ConvNeXt(arch='tiny', out_indices=(0, 1, 2, 3), gap_before_final_norm=False)


def _conv2former(depths, dims=(8, 16, 16, 16), **kwargs):
    """A thin Conv2Former with the given depths (cheap to build at any depth)."""
    from mmc2f.models.backbones.conv2former import Conv2Former
    return Conv2Former(arch=dict(dims=list(dims), depths=list(depths), kernel_size=3), **kwargs)


@pytest.fixture(scope='module')
def convnext_det():
    torch.manual_seed(0)
    return Wrapper(_convnext_tiny(), 768)


# --------------------------------------------------------------------------- parity with mmdet
@pytest.mark.parametrize('decay_type,num_layers', [('layer_wise', 6), ('layer_wise', 9),
                                                   ('stage_wise', 6), ('stage_wise', 12)])
def test_matches_mmdet_on_convnext_tiny(convnext_det, decay_type, num_layers):
    from mmdet.engine.optimizers import LearningRateDecayOptimizerConstructor
    cfg = dict(decay_rate=0.95, decay_type=decay_type, num_layers=num_layers)
    theirs = []
    LearningRateDecayOptimizerConstructor(dict(optimizer=dict(OPTIM)), dict(cfg)).add_params(
        theirs, convnext_det)
    ours = []
    _ours(cfg).add_params(ours, convnext_det)
    _assert_same(convnext_det, ours, theirs)
    assert len(ours) == len(theirs)


def test_matches_mmdet_with_frozen_stages():
    from mmdet.engine.optimizers import LearningRateDecayOptimizerConstructor
    from mmpretrain.models import ConvNeXt
    model = Wrapper(ConvNeXt(arch='tiny', out_indices=(0, 1, 2, 3), frozen_stages=2,
                             gap_before_final_norm=False), 768)
    cfg = dict(decay_rate=0.7, decay_type='layer_wise', num_layers=6)
    theirs, ours = [], []
    LearningRateDecayOptimizerConstructor(dict(optimizer=dict(OPTIM)), dict(cfg)).add_params(
        theirs, model)
    _ours(cfg).add_params(ours, model)
    _assert_same(model, ours, theirs)
    assert not any(n.startswith('backbone.stages.0.') for g in ours for n in g['param_names'])


def test_matches_mmdet_on_its_convnext_mask_rcnn_config():
    """The whole detector of mmdet's ConvNeXt-T Mask R-CNN 3x config, with its paramwise_cfg."""
    from mmdet.engine.optimizers import LearningRateDecayOptimizerConstructor
    from mmdet.registry import MODELS
    from mmdet.utils import register_all_modules
    from mmengine.config import Config
    import mmdet
    from mmengine.registry import DefaultScope
    register_all_modules(init_default_scope=False)
    cfg = Config.fromfile(osp.join(
        osp.dirname(mmdet.__file__), '.mim', 'configs', 'convnext',
        'mask-rcnn_convnext-t-p4-w7_fpn_amp-ms-crop-3x_coco.py'))
    cfg.model.backbone.init_cfg = None
    with DefaultScope.overwrite_default_scope('mmdet'):
        model = MODELS.build(cfg.model)
    paramwise_cfg = cfg.optim_wrapper.paramwise_cfg.to_dict()
    optimizer = cfg.optim_wrapper.optimizer.to_dict()
    theirs, ours = [], []
    LearningRateDecayOptimizerConstructor(dict(optimizer=optimizer),
                                          dict(paramwise_cfg)).add_params(theirs, model)
    _ours(paramwise_cfg, optimizer).add_params(ours, model)
    _assert_same(model, ours, theirs)


def test_matches_mmseg_stage_wise_on_convnext_segmentor():
    from mmengine.registry import DefaultScope
    from mmseg.engine.optimizers import LearningRateDecayOptimizerConstructor
    from mmseg.models import EncoderDecoder
    with DefaultScope.overwrite_default_scope('mmseg'):
        model = _convnext_segmentor(EncoderDecoder)
    cfg = dict(decay_rate=0.9, decay_type='stage_wise', num_layers=12)  # mmseg's UperNet-ConvNeXt
    theirs, ours = [], []
    LearningRateDecayOptimizerConstructor(dict(optimizer=dict(OPTIM)), dict(cfg)).add_params(
        theirs, model)
    _ours(cfg).add_params(ours, model)
    _assert_same(model, ours, theirs)


def _convnext_segmentor(EncoderDecoder):
    return EncoderDecoder(
        backbone=dict(type='mmpretrain.ConvNeXt', arch='tiny', out_indices=(0, 1, 2, 3),
                      gap_before_final_norm=False),
        decode_head=dict(type='UPerHead', in_channels=[96, 192, 384, 768], in_index=[0, 1, 2, 3],
                         channels=16, num_classes=4, norm_cfg=dict(type='BN')),
        auxiliary_head=dict(type='FCNHead', in_channels=384, in_index=2, channels=8,
                            num_classes=4, norm_cfg=dict(type='BN')))


def test_matches_mmpretrain_on_convnext_classifier():
    """mmpretrain's constructor follows ConvNeXt.get_layer_depth (6 layers for tiny)."""
    from mmpretrain.engine.optimizers import LearningRateDecayOptimWrapperConstructor
    from mmengine.registry import DefaultScope
    from mmpretrain.models import ImageClassifier
    with DefaultScope.overwrite_default_scope('mmpretrain'):
        model = ImageClassifier(
            backbone=dict(type='ConvNeXt', arch='tiny'), neck=dict(type='GlobalAveragePooling'),
            head=dict(type='LinearClsHead', num_classes=10, in_channels=768))
    mults = dict(norm_decay_mult=0., bias_decay_mult=0., flat_decay_mult=0.)
    theirs = []
    LearningRateDecayOptimWrapperConstructor(
        dict(optimizer=dict(OPTIM)), dict(layer_decay_rate=0.8, **mults)).add_params(theirs, model)
    for g in theirs:
        g['group_name'] = None
    ours = []
    _ours(dict(layer_decay_rate=0.8, num_layers=6, **mults)).add_params(ours, model)
    _assert_same(model, ours, theirs, compare_group_names=False)


# --------------------------------------------------------------------------- Conv2Former
@pytest.mark.parametrize('arch,minimum', [('nano', 6), ('tiny', 7), ('small', 14), ('base', 15),
                                          ('large', 19)])
def test_conv2former_minimum_num_layers(arch, minimum):
    from mmc2f.models.backbones.conv2former import Conv2Former
    depths = Conv2Former.arch_settings[arch]['depths']
    model = Wrapper(_conv2former(depths), 16)
    assert min_num_layers(model.backbone) == minimum
    # the minimum is accepted, and equals the backbone's own get_layer_depth numbering
    settings = _ours(dict(decay_rate=0.9, num_layers=minimum)).get_param_settings(model)
    default = _ours(dict(decay_rate=0.9)).get_param_settings(model)
    assert settings == default
    for name, s in settings.items():
        assert s['layer_id'] == model.backbone.get_layer_depth(name, 'backbone.')[0], name
    # one less is refused, and the message gives the minimum
    with pytest.raises(ValueError, match=f'minimum is {minimum}'):
        _ours(dict(decay_rate=0.9, num_layers=minimum - 1)).add_params([], model)
    with pytest.raises(ValueError, match='minimum is 4'):
        _ours(dict(decay_rate=0.9, decay_type='stage_wise', num_layers=3)).add_params([], model)


@pytest.mark.parametrize('decay_type,num_layers', [('layer_wise', 7), ('layer_wise', 12),
                                                   ('stage_wise', 6)])
def test_conv2former_tiny_scales_are_monotonic(decay_type, num_layers):
    from mmc2f.registry import MODELS
    backbone = MODELS.build(dict(type='mmc2f.Conv2Former', arch='tiny', drop_path_rate=0.2))
    model = Wrapper(backbone, 576)
    settings = _ours(dict(decay_rate=0.9, decay_type=decay_type,
                          num_layers=num_layers)).get_param_settings(model)
    names = [n for n, _ in model.named_parameters()]
    assert sorted(settings) == sorted(names)
    # forward order: downsample i, stage i (i = 0..3), then everything else
    forward = []
    for i in range(4):
        for part in (f'backbone.downsample_layers.{i}.', f'backbone.stages.{i}.'):
            forward += [n for n in names if n.startswith(part)]
    names = forward + [n for n in names if n not in forward]
    if decay_type == 'stage_wise':
        # mmdet/mmseg's stage-wise rule puts the stem and all downsampling layers at id 0 (kept
        # for parity); monotonic along the stages and heads.
        assert {settings[n]['layer_id'] for n in names if '.downsample_layers.' in n} == {0}
        names = [n for n in names if '.downsample_layers.' not in n]
    scales = [settings[n]['lr_scale'] for n in names]
    assert all(a <= b for a, b in zip(scales, scales[1:])), 'lr scale decreases along the net'
    head = {n: s for n, s in settings.items() if not n.startswith('backbone.')}
    assert {s['lr_scale'] for s in head.values()} == {1.0}
    first = settings['backbone.downsample_layers.0.0.weight']
    last = settings['backbone.stages.3.2.mlp.fc2.weight']
    if decay_type == 'layer_wise':
        assert first['lr_scale'] == pytest.approx(0.9**(num_layers + 1))
        assert last['lr_scale'] == pytest.approx(0.9)
        # stage 2 of T has 12 blocks: groups of three get ids 3, 4, 5, 6
        ids = {settings[f'backbone.stages.2.{j}.attn.v.weight']['layer_id'] for j in range(12)}
        assert ids == {3, 4, 5, 6}
    else:
        assert first['lr_scale'] == pytest.approx(0.9**(num_layers + 1))
        assert last['lr_scale'] == pytest.approx(0.9**(num_layers - 3))
    # weight decay: none for 1-D parameters (norms, biases, layer scales), full for the rest
    for name, param in model.named_parameters():
        expected = 0. if param.ndim == 1 else 0.05
        assert settings[name]['weight_decay'] == expected, name


def test_conv2former_segmentor_and_classifier():
    from mmengine.registry import DefaultScope
    from mmpretrain.models import ImageClassifier
    from mmseg.models import EncoderDecoder
    backbone = dict(type='mmc2f.Conv2Former', arch=dict(dims=[8, 16, 16, 16], depths=[2, 2, 8, 2],
                                                        kernel_size=3))
    with DefaultScope.overwrite_default_scope('mmseg'):
        seg = EncoderDecoder(
            backbone=backbone,
            decode_head=dict(type='UPerHead', in_channels=[8, 16, 16, 16], in_index=[0, 1, 2, 3],
                             channels=8, num_classes=4, norm_cfg=dict(type='BN')))
    with DefaultScope.overwrite_default_scope('mmpretrain'):
        cls = ImageClassifier(backbone=backbone, neck=dict(type='GlobalAveragePooling'),
                              head=dict(type='LinearClsHead', num_classes=10, in_channels=16))
    for model, decay_type in ((seg, 'stage_wise'), (seg, 'layer_wise'), (cls, 'layer_wise')):
        ctor = _ours(dict(decay_rate=0.8, decay_type=decay_type))
        wrapper = ctor(model)  # the full path: constructor -> AdamW -> OptimWrapper
        groups = wrapper.optimizer.param_groups
        assert sum(len(g['params']) for g in groups) == len(list(model.parameters()))
        by_id = {g['layer_id']: g['lr_scale'] for g in groups}
        ids = sorted(by_id)
        assert ids[0] == 0 and by_id[ids[-1]] == 1.0
        assert all(by_id[a] < by_id[b] for a, b in zip(ids, ids[1:]))
        head = [g for g in groups if any(not n.startswith('backbone.') for n in g['param_names'])]
        assert head and all(g['lr'] == pytest.approx(OPTIM['lr']) for g in head)
        # one optimisation step works with these groups
        loss = sum((p.float()**2).sum() for p in model.parameters())
        wrapper.update_params(loss)


def test_conv2former_mask_rcnn_config_builds_and_groups():
    """Our Mask R-CNN config: model + optim wrapper (AMP swapped for plain on CPU)."""
    from mmdet.registry import MODELS
    from mmdet.utils import register_all_modules
    from mmengine.config import Config
    from mmengine.optim import build_optim_wrapper
    from mmengine.registry import DefaultScope
    register_all_modules(init_default_scope=False)
    cfg = Config.fromfile(osp.join(REPO, 'configs', 'mask_rcnn',
                                   'mask-rcnn_conv2former-t_fpn_amp-ms-crop-3x_coco.py'))
    cfg.model.backbone.init_cfg = None
    with DefaultScope.overwrite_default_scope('mmdet'):
        model = MODELS.build(cfg.model)
    optim_cfg = cfg.optim_wrapper.to_dict()
    optim_cfg['type'] = 'OptimWrapper'
    optim_cfg.pop('loss_scale', None)
    with DefaultScope.overwrite_default_scope('mmdet'):
        wrapper = build_optim_wrapper(model, optim_cfg)
    groups = wrapper.optimizer.param_groups
    assert {g['lr_scale'] for g in groups if g['layer_id'] == 8} == {1.0}  # num_layers 7 + 1
    stem = [g for g in groups if 'backbone.downsample_layers.0.0.weight' in g['param_names']][0]
    assert stem['lr'] == pytest.approx(1e-4 * 0.95**8)


# --------------------------------------------------------------------------- other backbones
def test_generic_get_layer_depth_backbone():
    from mmc2f.models.backbones.conv2former_iso import Conv2FormerIsotropic
    model = Wrapper(Conv2FormerIsotropic(arch=dict(embed_dims=16, depth=4, kernel_size=3),
                                         final_norm=True), 16)
    settings = _ours(dict(decay_rate=0.5)).get_param_settings(model)  # num_layers -> 4
    assert settings['backbone.patch_embed.weight']['lr_scale'] == 0.5**5
    assert settings['backbone.blocks.3.mlp.fc2.weight']['lr_scale'] == 0.5
    assert settings['backbone.norm.weight']['lr_scale'] == 1.0
    assert settings['head.weight']['lr_scale'] == 1.0
    more = _ours(dict(decay_rate=0.5, num_layers=6)).get_param_settings(model)
    assert more['backbone.patch_embed.weight']['lr_scale'] == 0.5**7
    assert more['head.weight']['layer_id'] == 7
    with pytest.raises(ValueError, match='minimum is 4'):
        _ours(dict(decay_rate=0.5, num_layers=3)).get_param_settings(model)
    with pytest.raises(NotImplementedError, match='stage_wise'):
        _ours(dict(decay_rate=0.5, decay_type='stage_wise')).get_param_settings(model)


def test_unsupported_models_and_bad_cfg():
    with pytest.raises(NotImplementedError, match='get_layer_depth'):
        _ours(dict(decay_rate=0.9)).get_param_settings(Wrapper(nn.Conv2d(3, 4, 1), 4))
    with pytest.raises(TypeError, match='backbone'):
        _ours(dict(decay_rate=0.9)).get_param_settings(nn.Linear(2, 2))
    with pytest.raises(ValueError, match='decay_type'):
        _ours(dict(decay_rate=0.9, decay_type='layer'))
    with pytest.raises(ValueError, match='decay_rate'):
        _ours(dict(num_layers=6))
    with pytest.raises(ValueError, match='num_layers'):
        _ours(dict(decay_rate=0.9, num_layers=0))


def test_weight_decay_rules_and_custom_keys():
    model = Wrapper(_conv2former([1, 1, 3, 1]), 16)
    s = _ours(dict(decay_rate=0.9, norm_decay_mult=0.5, bias_decay_mult=0.1,
                   custom_keys={'head': dict(lr_mult=10., decay_mult=0.),
                                'layer_scale': dict(decay_mult=2.)})).get_param_settings(model)
    assert s['head.weight']['lr'] == pytest.approx(1e-3) and s['head.weight']['weight_decay'] == 0
    assert s['backbone.stages.0.0.layer_scale_1']['weight_decay'] == pytest.approx(0.1)
    assert s['neck_norm.weight']['weight_decay'] == pytest.approx(0.025)   # nn.GroupNorm
    assert s['neck.bias']['weight_decay'] == pytest.approx(0.005)
    assert s['neck.weight']['weight_decay'] == 0.05


def test_logs_a_table_and_builds_via_registry_from_other_scopes():
    from mmengine.optim import build_optim_wrapper
    from mmengine.registry import DefaultScope
    model = Wrapper(_conv2former([1, 1, 3, 1]), 16)
    cfg = dict(constructor='mmc2f.LayerDecayOptimWrapperConstructor', optimizer=dict(OPTIM),
               paramwise_cfg=dict(decay_rate=0.9, num_layers=5))
    for scope in ('mmdet', 'mmseg', 'mmpretrain'):
        with mock.patch('mmc2f.engine.layer_decay.print_log') as log, \
                DefaultScope.overwrite_default_scope(scope):
            wrapper = build_optim_wrapper(model, dict(cfg))
        table = log.call_args_list[0].args[0]
        assert 'lr_scale' in table and 'weight_decay' in table and 'layer_0_decay' in table
        rows = [line for line in table.splitlines() if line.startswith('layer_')]
        assert len(wrapper.optimizer.param_groups) == len(rows)


@pytest.mark.parametrize('path', [
    'mask_rcnn/mask-rcnn_conv2former-t_fpn_amp-ms-crop-3x_coco.py',
    'cascade_rcnn/cascade-mask-rcnn_conv2former-t_fpn_4conv1fc-giou_amp-ms-crop-3x_coco.py',
    'cascade_rcnn/cascade-mask-rcnn_conv2former-s_fpn_4conv1fc-giou_amp-ms-crop-3x_coco.py',
    'cascade_rcnn/cascade-mask-rcnn_conv2former-b_fpn_4conv1fc-giou_amp-ms-crop-3x_coco.py',
])
def test_detection_configs_use_the_minimum_num_layers(path):
    from mmengine.config import Config
    from mmc2f.models.backbones.conv2former import Conv2Former
    cfg = Config.fromfile(osp.join(REPO, 'configs', path))
    backbone = cfg.model.backbone
    settings = Conv2Former.arch_settings[backbone.arch]
    assert cfg.optim_wrapper.constructor == 'mmc2f.LayerDecayOptimWrapperConstructor'
    assert cfg.optim_wrapper.paramwise_cfg.num_layers == 4 + (settings['depths'][2] - 1) // 3
    assert list(cfg.model.neck.in_channels) == settings['dims']
    assert set(backbone) >= {'type', 'arch', 'drop_path_rate', 'init_cfg'}
    assert 'gap_before_final_norm' not in backbone  # the ConvNeXt dict was replaced, not merged

"""BaseBackbone: one arch-resolution rule and error style for every mmc2f backbone."""
import pytest
import torch

from mmc2f.models.backbones.base import BaseBackbone
from mmc2f.models.backbones.conv2former import Conv2Former
from mmc2f.models.backbones.conv2former_iso import Conv2FormerIsotropic
from mmc2f.models.backbones.mscan import MSCAN

BACKBONES = [Conv2Former, Conv2FormerIsotropic, MSCAN]


@pytest.mark.parametrize('cls', BACKBONES)
def test_one_error_style_for_arch(cls):
    assert issubclass(cls, BaseBackbone)
    with pytest.raises(ValueError, match=rf'unknown {cls.__name__} arch "huge"; choose one of '):
        cls.resolve_arch('huge')
    with pytest.raises(ValueError, match=rf'a {cls.__name__} arch dict needs .*unknown \[.bogus.\]'):
        cls.resolve_arch(dict(cls.arch_settings[next(iter(cls.arch_settings))], bogus=1))
    with pytest.raises(TypeError, match=f'{cls.__name__}: arch must be a str or a dict'):
        cls.resolve_arch(3)
    # aliases resolve to the same settings; explicit overrides win, None overrides are ignored
    alias, name = next(iter(cls.arch_aliases.items()))
    assert cls.resolve_arch(alias) == cls.resolve_arch(name.upper())
    key = next(iter(cls.arch_settings[name]))
    assert cls.resolve_arch(name, {key: 'x'})[key] == 'x'
    assert cls.resolve_arch(name, {key: None}) == cls.resolve_arch(name)


def test_custom_dicts_need_their_keys():
    with pytest.raises(ValueError, match=r"missing \['depths'\]"):
        Conv2Former.resolve_arch(dict(dims=[8, 16, 24, 32]))
    # MSCAN: every key optional, mmseg's defaults fill the rest
    assert MSCAN.resolve_arch(dict(depths=[1, 1, 1, 1]))['embed_dims'] == [64, 128, 256, 512]
    assert MSCAN.resolve_arch(None)['depths'] == [3, 4, 6, 3]


@pytest.mark.parametrize('frozen_stages', [0, 2])
def test_mscan_frozen_stages_and_norm_eval(frozen_stages):
    bn = dict(type='BN', requires_grad=True)
    model = MSCAN(arch=dict(embed_dims=[8, 16, 24, 32], depths=[1, 1, 1, 1]), norm_cfg=bn,
                  frozen_stages=frozen_stages, norm_eval=True).train()
    frozen = ['patch_embed1'] if frozen_stages == 0 else \
        [f'{n}{i}' for i in (1, 2) for n in ('patch_embed', 'block', 'norm')]
    for name, p in model.named_parameters():
        assert p.requires_grad == (name.split('.')[0] not in frozen), name
    assert not any(m.training for m in model.modules()
                   if isinstance(m, torch.nn.modules.batchnorm._BatchNorm))
    with pytest.raises(ValueError, match=r'frozen_stages must be in \[-1, 4\]'):
        MSCAN(frozen_stages=5, norm_cfg=bn)


def test_mscan_with_cp_same_gradients():
    bn = dict(type='BN', requires_grad=True)
    arch = dict(embed_dims=[8, 16, 24, 32], depths=[1, 2, 1, 1])
    torch.manual_seed(0)
    ref = MSCAN(arch=arch, norm_cfg=bn, drop_path_rate=0.2)
    cp_model = MSCAN(arch=arch, norm_cfg=bn, drop_path_rate=0.2, with_cp=True)
    cp_model.load_state_dict(ref.state_dict())
    x = torch.randn(2, 3, 32, 32)
    grads = []
    for model in (ref, cp_model):
        torch.manual_seed(1)  # the same drop-path masks (checkpoint restores the RNG on recompute)
        sum(o.square().sum() for o in model.train()(x)).backward()
        grads.append({n: p.grad for n, p in model.named_parameters()})
    for name in grads[0]:
        torch.testing.assert_close(grads[0][name], grads[1][name], rtol=1e-5, atol=1e-7, msg=name)

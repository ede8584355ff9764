import pytest
from mmengine.config import Config

from mmc2f.apis.config_check import check_mmc2f_types
from mmc2f.errors import UnscopedTypeError


def test_unscoped_mmc2f_type_names_key_and_fix():
    cfg = Config(dict(default_scope='mmdet', model=dict(
        type='MaskRCNN', backbone=dict(type='Conv2Former', arch='tiny'), neck=dict(type='FPN'))))
    with pytest.raises(UnscopedTypeError) as info:
        check_mmc2f_types(cfg)
    msg = str(info.value)
    assert 'model.backbone.type' in msg and 'type="mmc2f.Conv2Former"' in msg and 'mmdet' in msg


def test_unscoped_constructor_in_mmseg_config():
    cfg = Config(dict(default_scope='mmseg', model=dict(type='EncoderDecoder'), optim_wrapper=dict(
        type='OptimWrapper', constructor='LayerDecayOptimWrapperConstructor',
        optimizer=dict(type='AdamW'), paramwise_cfg=dict(decay_rate=0.9))))
    with pytest.raises(UnscopedTypeError,
                       match='optim_wrapper.constructor = "LayerDecayOptimWrapperConstructor".*'
                       'constructor="mmc2f.LayerDecayOptimWrapperConstructor"'):
        check_mmc2f_types(cfg)


def test_scoped_and_upstream_names_pass():
    cfg = Config(dict(default_scope='mmseg', model=dict(
        type='EncoderDecoder', backbone=dict(type='mmc2f.MSCAN'),
        decode_head=dict(type='LightHamHead'),  # mmseg's own: resolvable as written
        auxiliary_head=[dict(type='FCNHead')])))
    checked = check_mmc2f_types(cfg)
    assert 'model.decode_head.type' in checked and 'model.auxiliary_head[0].type' in checked


def test_every_shipped_config_passes(repo_root):
    import glob
    import os.path as osp
    paths = [p for p in glob.glob(osp.join(repo_root, 'configs', '**', '*.py'), recursive=True)
             if '_base_' not in p]
    assert len(paths) > 40
    for path in paths[:8]:  # loading is slow (mmseg metafiles); a sample suffices here
        check_mmc2f_types(Config.fromfile(path))


@pytest.mark.parametrize('node,option', [
    (dict(type='MSCAN', arch='tiny'), 'arch'),
    (dict(type='MSCAN', with_cp=True, norm_cfg=dict(type='BN')), 'with_cp'),
])
def test_unprefixed_mscan_with_mmc2f_options_suggests_prefix(node, option):
    cfg = Config(dict(default_scope='mmseg', model=dict(type='EncoderDecoder', backbone=node)))
    with pytest.raises(UnscopedTypeError, match=rf'model.backbone.type = "MSCAN" builds '
                       rf'mmseg.*MSCAN, which does not take {option} .*type="mmc2f.MSCAN"'):
        check_mmc2f_types(cfg)


def test_unprefixed_ham_head_with_mmc2f_nmf_options_suggests_prefix():
    head = dict(type='LightHamHead', ham_channels=256, ham_kwargs=dict(MD_R=16, eval_seed=0))
    cfg = Config(dict(default_scope='mmseg', model=dict(type='EncoderDecoder', decode_head=head)))
    with pytest.raises(UnscopedTypeError, match=r'does not take ham_kwargs.eval_seed .*'
                       r'type="mmc2f.LightHamHead"'):
        check_mmc2f_types(cfg)
    head['ham_kwargs'] = dict(MD_R=16)  # mmseg's own options: fine as written
    cfg = Config(dict(default_scope='mmseg', model=dict(type='EncoderDecoder', decode_head=head)))
    assert 'model.decode_head.type' in check_mmc2f_types(cfg)

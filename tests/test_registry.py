"""mmc2f's registries: reachable from the mmdet / mmseg / mmpretrain scopes, light, no clashes."""
import subprocess
import sys

import pytest
import torch
from mmengine.registry import DefaultScope, init_default_scope

import mmc2f.registry as mmc2f_registry

UPSTREAM = ['mmdet', 'mmseg', 'mmpretrain']
ARCHS = ['nano', 'tiny', 'small', 'base', 'large', 'n', 't', 's', 'b', 'l']
PARAMS_M = {'n': 13.05, 't': 24.68, 's': 48.01, 'b': 87.76, 'l': 196.30}


def upstream_models(scope):
    return __import__(f'{scope}.registry', fromlist=['MODELS']).MODELS


@pytest.mark.parametrize('scope', UPSTREAM)
def test_every_arch_builds_from_each_scope(scope):
    registry = upstream_models(scope)
    from mmc2f.models.backbones.conv2former import Conv2Former
    from mmc2f.models.backbones.conv2former_iso import Conv2FormerIsotropic
    from mmc2f.models.necks.conv2former_neck import Conv2FormerNeck
    with DefaultScope.overwrite_default_scope(scope):
        assert DefaultScope.get_current_instance().scope_name == scope
        for arch in ARCHS:
            with torch.device('meta'):  # full sizes without allocating or initialising weights
                model = registry.build(dict(type='mmc2f.Conv2Former', arch=arch))
            assert type(model) is Conv2Former
            n = sum(p.numel() for p in model.parameters())
            assert round(n / 1e6, 2) == PARAMS_M[arch[0]]
        iso = registry.build(dict(type='mmc2f.Conv2FormerIsotropic',
                                  arch=dict(embed_dims=16, depth=1)))
        neck = registry.build(dict(type='mmc2f.Conv2FormerNeck', in_channels=16))
    assert type(iso) is Conv2FormerIsotropic and type(neck) is Conv2FormerNeck
    assert iso(torch.randn(1, 3, 32, 32))[0].shape == (1, 16, 2, 2)
    assert neck((torch.randn(1, 16, 2, 2), ))[0].shape == (1, 1280)


@pytest.mark.parametrize('scope', UPSTREAM)
def test_builds_after_init_default_scope(scope):
    """What a config with ``default_scope=<scope>`` does (the Runner calls init_default_scope)."""
    saved = DefaultScope._instance_dict.copy()
    try:
        init_default_scope(scope)
        model = upstream_models(scope).build(
            dict(type='mmc2f.Conv2Former', arch=dict(dims=[8, 16, 24, 32], depths=[1, 1, 1, 1]),
                 out_indices=(0, 3)))
    finally:
        DefaultScope._instance_dict = saved
    outs = model(torch.randn(1, 3, 64, 64))
    assert [tuple(o.shape) for o in outs] == [(1, 8, 16, 16), (1, 32, 2, 2)]


def test_import_is_light():
    code = ('import sys, mmc2f, mmc2f.registry; '
            "heavy = sorted({m.split('.')[0] for m in sys.modules} & "
            "{'mmdet', 'mmseg', 'mmpretrain', 'mmc2f.models'}); "
            "heavy += [m for m in sys.modules if m.startswith('mmc2f.models')]; "
            'print(heavy)')
    proc = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert lines[-1] == '[]', proc.stdout
    # the registry's process-wide setup is visible: one log line per change, nothing else
    assert len(lines) == 3 and all('mmc2f process setup:' in ln for ln in lines[:2]), lines


def test_import_mmc2f_changes_nothing():
    code = ('import mmengine.fileio.backends.registry_utils as r, mmc2f, mmc2f.apis.config_check; '
            'import torch, mmc2f.checkpoint, mmc2f.ops; '
            "from mmengine.runner.checkpoint import CheckpointLoader as L; "
            "print(r.backends['local'].__name__, L._schemes[''].__module__, "
            "any('HistoryBuffer' in str(g) for g in torch.serialization.get_safe_globals()))")
    proc = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ['LocalBackend', 'mmengine.runner.checkpoint', 'False'], \
        proc.stdout


def _registries():
    """(mmc2f registry, its upstream counterparts) for every mmc2f registry."""
    pairs = []
    for name in ['MODELS', 'OPTIM_WRAPPER_CONSTRUCTORS', 'HOOKS']:
        ours = getattr(mmc2f_registry, name)
        theirs = [getattr(__import__(f'{s}.registry', fromlist=[name]), name) for s in UPSTREAM]
        pairs.append((name, ours, theirs))
    return pairs


def _fill_all(pairs):
    for _, ours, theirs in pairs:
        ours.import_from_location()  # register everything mmc2f has
        for registry in theirs:
            with DefaultScope.overwrite_default_scope(registry.scope):
                registry.import_from_location()
    assert 'Conv2Former' in mmc2f_registry.MODELS.module_dict


def test_no_override_of_upstream_registrations():
    import mmengine.registry as root_registries
    pairs = _registries()
    _fill_all(pairs)
    for name, ours, theirs in pairs:
        assert ours.scope == 'mmc2f' and ours.parent is getattr(root_registries, name)
        for cls_name, cls in ours.module_dict.items():
            assert cls.__module__.startswith('mmc2f.'), (name, cls_name)
        for registry in theirs + [ours.parent]:
            # mmc2f registered nothing into an upstream or the root registry
            for cls_name, cls in registry.module_dict.items():
                assert not cls.__module__.startswith('mmc2f'), (registry.scope, name, cls_name)
            # a name both define still resolves to the upstream class in the upstream scope,
            # and to mmc2f's only through the explicit 'mmc2f.' prefix
            for cls_name in set(ours.module_dict) & set(registry.module_dict):
                with DefaultScope.overwrite_default_scope(registry.scope):
                    assert registry.get(cls_name) is registry.module_dict[cls_name]
                    assert registry.get(f'mmc2f.{cls_name}') is ours.module_dict[cls_name]


# Drop-in replacements that issue #3 asks to carry mmseg's names; they live in mmc2f's own scope, so
# ``type='MSCAN'`` in an mmseg config still means mmseg's and ``type='mmc2f.MSCAN'`` means ours.
DELIBERATE_MIRRORS = {'MSCAN', 'LightHamHead'}


def test_no_name_clash_with_upstream():
    """mmc2f's names differ from every upstream name, except the deliberate drop-in mirrors."""
    pairs = _registries()
    _fill_all(pairs)
    clashes = {}
    for name, ours, theirs in pairs:
        for registry in theirs + [ours.parent]:
            clash = sorted(set(ours.module_dict) & set(registry.module_dict) - DELIBERATE_MIRRORS)
            if clash:
                clashes[f'{name} / {registry.scope}'] = clash
    assert not clashes, f'mmc2f names also registered upstream: {clashes}'


def test_mirrors_do_not_override_upstream():
    from mmengine.registry import DefaultScope
    from mmseg.models.backbones import MSCAN as MMSegMSCAN
    from mmseg.models.decode_heads import LightHamHead as MMSegHead
    from mmseg.registry import MODELS as MMSEG_MODELS

    from mmc2f.models.backbones.mscan import MSCAN
    from mmc2f.models.decode_heads.ham_head import LightHamHead
    with DefaultScope.overwrite_default_scope('mmseg'):
        assert MMSEG_MODELS.get('MSCAN') is MMSegMSCAN
        assert MMSEG_MODELS.get('LightHamHead') is MMSegHead
        assert MMSEG_MODELS.get('mmc2f.MSCAN') is MSCAN
        assert MMSEG_MODELS.get('mmc2f.LightHamHead') is LightHamHead

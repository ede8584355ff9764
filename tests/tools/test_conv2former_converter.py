"""Authors' Conv2Former checkpoints -> mmc2f / mmpretrain layout (function and CLI)."""
import argparse
import importlib.util
import os.path as osp
import subprocess
import sys

import pytest
import torch
from mmengine.registry import DefaultScope

from mmc2f.utils.checkpoint import load_checkpoint_file
from mmc2f.utils.convert.common import KeyMapError
from mmc2f.utils.convert.conv2former import convert_conv2former, describe_conv2former

REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
CLI = osp.join(REPO, 'tools', 'model_converters', 'conv2former_to_mmc2f.py')
SPEC = ([16, 32, 48, 64], [1, 2, 3, 1], 5)  # dims, depths, kernel: a small custom size
NUM_CLASSES = 10


def load_module(name, path):
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        sys.modules[name] = module
    return sys.modules[name]


def reference_module():
    return load_module('authors_conv2former',
                       osp.join(REPO, 'tests', '_reference', 'authors_conv2former.py'))


def authors_model(seed, legacy_names=False):
    ref = reference_module()
    return ref.randomize_(ref.build_reference(SPEC, num_classes=NUM_CLASSES,
                                              legacy_names=legacy_names), seed=seed).eval()


def authors_checkpoint(legacy_names=False, with_ema=True):
    """A checkpoint like the authors' training script writes (state_dict, EMA, optimizer, args)."""
    model = authors_model(0, legacy_names)
    ckpt = {
        'epoch': 299,
        'arch': 'conv2former_custom',
        'state_dict': model.state_dict(),
        'optimizer': {'state': {}, 'param_groups': [{'lr': 1e-3, 'weight_decay': 0.05,
                                                     'params': [0, 1, 2]}]},
        'args': argparse.Namespace(model='conv2former_t', lr=1e-3, drop_path=0.1, epochs=300),
        'version': 2,
    }
    ema = None
    if with_ema:
        ema = authors_model(1, legacy_names)
        ckpt['state_dict_ema'] = ema.state_dict()
    return ckpt, model, ema


@pytest.fixture(scope='module')
def inputs():
    return torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(3))


def build_classifier():
    from mmpretrain.registry import MODELS
    cfg = dict(
        type='ImageClassifier',
        backbone=dict(type='mmc2f.Conv2Former', arch=dict(dims=SPEC[0], depths=SPEC[1]),
                      kernel_size=SPEC[2], out_indices=(3, )),
        neck=dict(type='mmc2f.Conv2FormerNeck', in_channels=SPEC[0][-1]),
        head=dict(type='LinearClsHead', num_classes=NUM_CLASSES, in_channels=1280))
    with DefaultScope.overwrite_default_scope('mmpretrain'):
        return MODELS.build(cfg).eval()


def check_converted(path, source_model, inputs):
    """(a) load_checkpoint into an ImageClassifier: the authors' logits; (b) Pretrained with
    prefix='backbone.' in a bare backbone: exactly the source tensors."""
    from mmengine.runner import load_checkpoint

    from mmc2f.models.backbones.conv2former import Conv2Former

    ckpt = load_checkpoint_file(path)
    assert set(ckpt) == {'state_dict', 'meta'}
    assert all(isinstance(v, torch.Tensor) for v in ckpt['state_dict'].values())

    def plain(v):
        return isinstance(v, (str, int)) or (isinstance(v, list) and all(isinstance(i, int)
                                                                         for i in v))

    assert all(plain(v) for v in ckpt['meta'].values()), ckpt['meta']

    model = build_classifier()
    load_checkpoint(model, path, map_location='cpu', strict=True)  # what load_from does
    with torch.no_grad():
        torch.testing.assert_close(model(inputs, mode='tensor'), source_model(inputs),
                                   rtol=1e-4, atol=1e-5)

    backbone = Conv2Former(dict(dims=SPEC[0], depths=SPEC[1]), kernel_size=SPEC[2],
                           init_cfg=dict(type='Pretrained', checkpoint=path, prefix='backbone.'))
    backbone.init_weights()
    source = source_model.state_dict()
    own = backbone.state_dict()
    assert len(own) == len([k for k in source if not k.startswith(('head.', 'pred.'))])
    for key, value in own.items():
        src_key = key.replace('.attn.att.', '.attn.a.') if key not in source else key
        assert torch.equal(value, source[src_key]), key
    with torch.no_grad():
        for a, b in zip(backbone.eval()(inputs), source_model.forward_features(inputs)):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize('legacy_names,ema,how', [(False, True, 'subprocess'),
                                                   (True, False, 'in-process')])
def test_cli_round_trip(tmp_path, inputs, capsys, legacy_names, ema, how):
    ckpt, model, ema_model = authors_checkpoint(legacy_names, with_ema=True)
    src, dst = tmp_path / 'authors.pth', tmp_path / 'out' / 'converted.pth'
    torch.save(ckpt, src)
    argv = [str(src), str(dst)] + (['--ema'] if ema else [])
    if how == 'subprocess':  # the real command line (one run: importing the stack takes seconds)
        proc = subprocess.run([sys.executable, CLI] + argv, capture_output=True, text=True,
                              cwd=str(tmp_path))
        assert proc.returncode == 0, proc.stderr
        stdout = proc.stdout
    else:
        load_module('conv2former_to_mmc2f', CLI).main(argv)
        stdout = capsys.readouterr().out
    naming = 'a' if legacy_names else 'att'
    assert f'detected Conv2Former-custom: dims={SPEC[0]}, depths={SPEC[1]}, kernel_size=5, ' \
           f'num_classes=10, naming=attn.{naming}' in stdout
    n_tensors = len(model.state_dict())
    assert f'wrote {n_tensors} tensors to {dst}' in stdout
    meta = load_checkpoint_file(str(dst))['meta']
    assert meta['weights'] == ('state_dict_ema' if ema else 'state_dict')
    assert meta['source_epoch'] == 299 and meta['kernel_size'] == 5
    check_converted(str(dst), ema_model if ema else model, inputs)


@pytest.mark.parametrize('legacy_names', [False, True])
@pytest.mark.parametrize('use_ema', [False, True])
def test_function_picks_weights_and_renames(legacy_names, use_ema):
    ckpt, model, ema_model = authors_checkpoint(legacy_names)
    source = ckpt['state_dict_ema' if use_ema else 'state_dict']
    for key, value in (ema_model if use_ema else model).state_dict().items():
        assert torch.equal(source[key], value)
    assert not torch.equal(ckpt['state_dict']['pred.weight'], ckpt['state_dict_ema']['pred.weight'])
    out = convert_conv2former(ckpt, use_ema=use_ema)
    assert len(out) == len(source)
    for key, value in out.items():
        assert key.startswith(('backbone.', 'neck.proj.', 'neck.norm.', 'head.fc.'))
        assert '.attn.a.' not in key
    assert out['neck.proj.weight'] is source['head.0.weight']
    assert out['neck.norm.bias'] is source['head.2.bias']
    assert out['head.fc.weight'] is source['pred.weight']
    branch = 'a' if legacy_names else 'att'
    assert out['backbone.stages.2.1.attn.att.2.weight'] is \
        source[f'stages.2.1.attn.{branch}.2.weight']
    assert out['backbone.downsample_layers.0.2.running_var'] is \
        source['downsample_layers.0.2.running_var']


def test_bare_and_ddp_state_dicts_and_in_process_cli(tmp_path, inputs):
    _, model, _ = authors_checkpoint(with_ema=False)
    bare = model.state_dict()
    assert describe_conv2former(bare).weights == 'bare'
    ddp = {'module.' + k: v for k, v in bare.items()}
    assert convert_conv2former({'state_dict': ddp}).keys() == convert_conv2former(bare).keys()
    src, dst = tmp_path / 'bare.pth', tmp_path / 'bare_converted.pth'
    torch.save(bare, src)
    cli = load_module('conv2former_to_mmc2f', CLI)
    meta = cli.main([str(src), str(dst)])
    assert meta['arch'] == 'custom' and meta['dims'] == SPEC[0]
    check_converted(str(dst), model, inputs)


@pytest.mark.parametrize('arch', ['nano', 'tiny', 'small', 'base', 'large'])
def test_detects_every_released_size(arch):
    ref = reference_module()
    dims, depths, kernel = ref.ARCHS[arch]
    for k in {kernel, 7}:  # the released kernel, and a 7x7 release such as B 22k
        with torch.device('meta'):
            state = ref.AuthorsConv2Former(dims, depths, k).state_dict()
        info = describe_conv2former({'state_dict': state, 'epoch': 1})
        assert (info.arch, info.dims, info.depths, info.kernel_size) == (arch, dims, depths, k)
        assert (info.num_classes, info.head_channels, info.naming) == (1000, 1280, 'att')
        out = convert_conv2former({'state_dict': state})
        assert len(out) == len(state)


def test_refuses_unmapped_key():
    ckpt, _, _ = authors_checkpoint(with_ema=False)
    ckpt['state_dict']['extra_head.weight'] = torch.zeros(3)
    with pytest.raises(KeyMapError, match=r'1 key\(s\) match no known layout: extra_head.weight'):
        convert_conv2former(ckpt)


def test_refuses_unknown_key_that_matches_a_rule():
    ckpt, _, _ = authors_checkpoint(with_ema=False)
    ckpt['state_dict']['stages.0.0.attn.gate.weight'] = torch.zeros(3)
    with pytest.raises(KeyMapError, match=r'unexpected backbone.stages.0.0.attn.gate.weight'):
        convert_conv2former(ckpt)


def test_refuses_missing_key(tmp_path):
    ckpt, _, _ = authors_checkpoint(with_ema=False)
    del ckpt['state_dict']['stages.1.0.mlp.fc2.bias']
    with pytest.raises(KeyMapError, match=r'missing backbone.stages.1.0.mlp.fc2.bias'):
        convert_conv2former(ckpt)
    src, dst = tmp_path / 'broken.pth', tmp_path / 'never_written.pth'
    torch.save(ckpt, src)
    cli = load_module('conv2former_to_mmc2f', CLI)
    with pytest.raises(KeyMapError, match='missing backbone.stages.1.0.mlp.fc2.bias'):
        cli.main([str(src), str(dst)])
    assert not dst.exists()


def test_refuses_wrong_shape_and_missing_ema():
    ckpt, _, _ = authors_checkpoint(with_ema=False)
    with pytest.raises(KeyMapError, match='state_dict_ema'):
        convert_conv2former(ckpt, use_ema=True)
    w = ckpt['state_dict']['stages.3.0.attn.v.weight']
    ckpt['state_dict']['stages.3.0.attn.v.weight'] = torch.zeros(w.shape[0], w.shape[1] + 1, 1, 1)
    with pytest.raises(KeyMapError, match=r'shapes do not fit.*stages.3.0.attn.v.weight'):
        convert_conv2former(ckpt)
    with pytest.raises(KeyMapError, match='downsample_layers.0.6.weight'):
        convert_conv2former({'state_dict': {'foo': torch.zeros(1)}})

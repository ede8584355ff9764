"""tools/model_converters/*.py end to end: the authors' checkpoints in, loadable files out."""
import argparse
import os
import os.path as osp
import subprocess
import sys

import pytest
import torch
from _reference.checkpoints import (BN, CLI, MSCAN_CLI, SPEC, authors_checkpoint, check_converted,
                                    load_module, mscan_authors_state, random_mscan)

from mmc2f.apis.convert import convert_conv2former, convert_mscan_state_dict, describe_conv2former
from mmc2f.checkpoint import load_checkpoint_file
from mmc2f.errors import KeyMapError
from mmc2f.models.backbones.mscan import MSCAN


@pytest.fixture(scope='module')
def inputs():
    return torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(3))


@pytest.fixture(scope='module')
def cli():
    return load_module('mscan_to_mmc2f', MSCAN_CLI)


# ------------------------------------------------------------------ conv2former_to_mmc2f.py
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


# ------------------------------------------------------------------ mscan_to_mmc2f.py
@pytest.mark.parametrize('wrap', ['state_dict', 'model', 'module'])
def test_round_trip_tiny(tmp_path, cli, wrap):
    model = random_mscan(arch='tiny')
    state = mscan_authors_state(model)
    assert any('.mlp.dwconv.dwconv.' in k for k in state)
    if wrap == 'module':
        ckpt = {'module.' + k: v for k, v in state.items()}
    else:  # a training-script checkpoint with other pickled entries the allow-list accepts
        ckpt = {wrap: state, 'epoch': 300, 'args': argparse.Namespace(model='mscan_t')}
    src, dst = tmp_path / 'mscan_t.pth', tmp_path / 'out' / 'mscan_t_mmc2f.pth'
    torch.save(ckpt, src)
    info = cli.main([str(src), str(dst)])
    assert info['arch'] == 'tiny' and sorted(info['dropped']) == ['head.bias', 'head.weight']

    converted = load_checkpoint_file(str(dst))
    assert set(converted) == {'state_dict'}
    sd = converted['state_dict']
    assert all(isinstance(v, torch.Tensor) for v in sd.values())
    assert list(sd) == list(model.state_dict())
    for k, v in model.state_dict().items():
        assert torch.equal(sd[k], v), k

    fresh = MSCAN(arch='tiny', norm_cfg=BN,
                  init_cfg=dict(type='Pretrained', checkpoint=str(dst))).eval()
    fresh.init_weights()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        for a, b in zip(fresh(x), model(x)):
            assert torch.equal(a, b)


def test_mmseg_layout_and_custom_size_pass_through(tmp_path, cli):
    model = random_mscan(depths=[1, 1, 2, 1], embed_dims=[16, 32, 64, 96])
    src, dst = tmp_path / 'mmseg.pth', tmp_path / 'c.pth'
    torch.save(model.state_dict(), src)
    info = cli.main([str(src), str(dst)])
    assert info['arch'] is None and info['depths'] == [1, 1, 2, 1] and info['dropped'] == []
    sd = load_checkpoint_file(str(dst))['state_dict']
    assert all(torch.equal(sd[k], v) for k, v in model.state_dict().items())


def test_bad_checkpoints_are_refused(tmp_path, cli):
    model = MSCAN(arch='tiny', depths=[1, 1, 1, 1], norm_cfg=BN)
    expected = model.state_dict()
    state = mscan_authors_state(model)
    with pytest.raises(KeyMapError, match='match no known layout: pred.weight'):
        convert_mscan_state_dict(dict(state, **{'pred.weight': torch.zeros(1)}))
    incomplete = {k: v for k, v in state.items() if not k.startswith('block2.0.attn.proj_1')}
    with pytest.raises(KeyMapError, match='missing block2.0.attn.proj_1'):
        convert_mscan_state_dict(incomplete, expected=expected)
    path = tmp_path / 'not_mscan.pth'
    torch.save({'state_dict': {'stem.weight': torch.zeros(1)}}, path)
    with pytest.raises(KeyMapError, match='not an MSCAN checkpoint'):
        cli.main([str(path), str(tmp_path / 'x.pth')])
    assert not osp.exists(tmp_path / 'x.pth')


def test_cli_as_a_script(tmp_path):
    model = random_mscan(arch='tiny', depths=[1, 1, 1, 1])
    src, dst = tmp_path / 'a.pth', tmp_path / 'b.pth'
    torch.save({'state_dict': mscan_authors_state(model)}, src)
    env = dict(os.environ, OMP_NUM_THREADS='1')
    res = subprocess.run([sys.executable, MSCAN_CLI, str(src), str(dst)], cwd=str(tmp_path), env=env,
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    assert 'MSCAN-custom' in res.stdout and 'dropped 2 classifier key(s)' in res.stdout
    sd = load_checkpoint_file(str(dst))['state_dict']
    assert all(torch.equal(sd[k], v) for k, v in model.state_dict().items())

"""tools/model_converters/mscan_to_mmc2f.py: authors' MSCAN checkpoints -> mmc2f layout."""
import argparse
import importlib.util
import os
import os.path as osp
import subprocess
import sys

import pytest
import torch

from mmc2f.models.backbones.mscan import MSCAN
from mmc2f.utils.checkpoint import load_checkpoint_file
from mmc2f.utils.convert.common import KeyMapError
from mmc2f.utils.convert.mscan import convert_mscan_state_dict, detect_mscan_arch

BN = dict(type='BN', requires_grad=True)
ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
SCRIPT = osp.join(ROOT, 'tools', 'model_converters', 'mscan_to_mmc2f.py')


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope='module')
def cli():
    spec = importlib.util.spec_from_file_location('mscan_to_mmc2f', SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _random_model(**kw):
    torch.manual_seed(0)
    model = MSCAN(norm_cfg=BN, **kw)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.05)
        for name, b in model.named_buffers():
            if name.endswith('running_var'):
                b.uniform_(0.5, 2.0)
            elif name.endswith('running_mean'):
                b.normal_()
    return model.eval()


def _authors_state(model, num_classes=1000):
    """The authors' ImageNet layout: ``mlp.dwconv.dwconv.*`` and a classifier ``head.*``."""
    out = {}
    for k, v in model.state_dict().items():
        out[k.replace('.mlp.dwconv.', '.mlp.dwconv.dwconv.')] = v.clone()
    out['head.weight'] = torch.randn(num_classes, model.embed_dims[-1])
    out['head.bias'] = torch.randn(num_classes)
    return out


def test_detect_arch():
    for arch in ('tiny', 'base'):
        state = _authors_state(MSCAN(arch=arch, norm_cfg=BN))
        info = detect_mscan_arch(state)
        assert info['arch'] == arch and info['mlp_ratios'] == [8, 8, 4, 4]
    custom = detect_mscan_arch(MSCAN(depths=[1, 2, 1, 1], norm_cfg=BN).state_dict())
    assert custom['arch'] is None and custom['depths'] == [1, 2, 1, 1]
    assert custom['embed_dims'] == [64, 128, 256, 512] and custom['mlp_ratios'] == [4, 4, 4, 4]


@pytest.mark.parametrize('wrap', ['state_dict', 'model', 'module'])
def test_round_trip_tiny(tmp_path, cli, wrap):
    model = _random_model(arch='tiny')
    state = _authors_state(model)
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


def test_pretrained_accepts_authors_layout_directly(tmp_path):
    model = _random_model(arch='tiny', depths=[1, 1, 1, 1])
    path = tmp_path / 'authors.pth'
    torch.save({'state_dict': _authors_state(model)}, path)
    m = MSCAN(arch='tiny', depths=[1, 1, 1, 1], norm_cfg=BN,
              init_cfg=dict(type='Pretrained', checkpoint=str(path)))
    m.init_weights()
    for k, v in model.state_dict().items():
        assert torch.equal(m.state_dict()[k], v), k


def test_mmseg_layout_and_custom_size_pass_through(tmp_path, cli):
    model = _random_model(depths=[1, 1, 2, 1], embed_dims=[16, 32, 64, 96])
    src, dst = tmp_path / 'mmseg.pth', tmp_path / 'c.pth'
    torch.save(model.state_dict(), src)
    info = cli.main([str(src), str(dst)])
    assert info['arch'] is None and info['depths'] == [1, 1, 2, 1] and info['dropped'] == []
    sd = load_checkpoint_file(str(dst))['state_dict']
    assert all(torch.equal(sd[k], v) for k, v in model.state_dict().items())


def test_missing_num_batches_tracked_filled():
    model = MSCAN(arch='tiny', depths=[1, 1, 1, 1], norm_cfg=BN)
    expected = model.state_dict()
    state = {k: v for k, v in _authors_state(model).items()
             if not k.endswith('num_batches_tracked')}
    out = convert_mscan_state_dict(state, expected=expected)
    assert list(sorted(out)) == sorted(expected)
    assert int(out['block1.0.norm1.num_batches_tracked']) == 0


def test_bad_checkpoints_are_refused(tmp_path, cli):
    model = MSCAN(arch='tiny', depths=[1, 1, 1, 1], norm_cfg=BN)
    expected = model.state_dict()
    state = _authors_state(model)
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
    model = _random_model(arch='tiny', depths=[1, 1, 1, 1])
    src, dst = tmp_path / 'a.pth', tmp_path / 'b.pth'
    torch.save({'state_dict': _authors_state(model)}, src)
    env = dict(os.environ, OMP_NUM_THREADS='1')
    res = subprocess.run([sys.executable, SCRIPT, str(src), str(dst)], cwd=str(tmp_path), env=env,
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    assert 'MSCAN-custom' in res.stdout and 'dropped 2 classifier key(s)' in res.stdout
    sd = load_checkpoint_file(str(dst))['state_dict']
    assert all(torch.equal(sd[k], v) for k, v in model.state_dict().items())

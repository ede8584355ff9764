"""No code runs from a checkpoint fetched over HTTP, whatever the entry point.

A real HTTP server on 127.0.0.1 serves a checkpoint whose pickle calls ``os.system('touch
MARKER')``; every loader must refuse it, name the refused global and the URL / cache file, and
leave no MARKER. torch.hub's cache is redirected to the test's folder.
"""
import os
import os.path as osp

import pytest
import torch
import torch.nn as nn
from _reference.checkpoints import RunsCommand, serve_folder

import mmc2f.registry  # noqa: F401  (runs setup_process(), as a config with mmc2f. types does)
from mmc2f.checkpoint import load_checkpoint
from mmc2f.checkpoint.remote import hub_cache_file
from mmc2f.engine.process import setup_process
from mmc2f.errors import CheckpointError, UnsafeCheckpointError

REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
SEG_BASE = osp.join(REPO, 'configs', 'demo',
                    'segnext_mscan-t_1xb8-adamw-400iter_demo-seg-128x128.py')
TINY_SEG = """
_base_ = [{base!r}]
model = dict(
    backbone=dict(embed_dims=[8, 16, 32, 32], depths=[1, 1, 1, 1], mlp_ratios=[2, 2, 2, 2]),
    decode_head=dict(in_channels=[16, 32, 32], channels=16, ham_channels=16, num_classes=4,
                     norm_cfg=dict(type='GN', num_groups=8, requires_grad=True),
                     ham_kwargs=dict(MD_R=4, train_steps=2, eval_steps=2)))
"""


@pytest.fixture(scope='module')
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp('served')
    with serve_folder(root) as url:
        yield root, url


@pytest.fixture
def evil(server, tmp_path, monkeypatch, request):
    """(URL of a checkpoint that touches MARKER when unpickled, MARKER path)."""
    monkeypatch.setattr(torch.hub, '_hub_dir', str(tmp_path / 'hub'))
    setup_process()
    root, base = server
    marker = tmp_path / 'MARKER'
    name = f'evil_{request.node.name}.pth'.replace('[', '_').replace(']', '_')
    torch.save({'state_dict': {'weight': torch.zeros(2, 2)}, 'x': RunsCommand(f'touch {marker}')},
               root / name)
    yield f'{base}/{name}', marker
    assert not marker.exists(), 'code from the checkpoint ran'


def _check_refusal(err, url):
    msg = str(err.value)
    assert 'posix.system' in msg or 'os.system' in msg, msg  # the refused global
    assert url in msg and hub_cache_file(url) in msg, msg  # the URL and the file


def test_mmc2f_loader_refuses_url(evil):
    url, _ = evil
    with pytest.raises(UnsafeCheckpointError) as err:
        load_checkpoint(url)
    _check_refusal(err, url)
    assert osp.isfile(hub_cache_file(url))  # downloaded where torch.hub would put it


def test_mmengine_checkpoint_loader_and_load_checkpoint(evil):
    from mmengine.runner import CheckpointLoader
    from mmengine.runner import load_checkpoint as mm_load_checkpoint
    url, _ = evil
    with pytest.raises(UnsafeCheckpointError) as err:
        CheckpointLoader.load_checkpoint(url)
    _check_refusal(err, url)
    with pytest.raises(UnsafeCheckpointError) as err:
        mm_load_checkpoint(nn.Linear(2, 2), url, map_location='cpu')
    _check_refusal(err, url)


def test_init_cfg_pretrained_of_mmc2f_and_upstream_modules(evil):
    from mmengine.model.weight_init import PretrainedInit
    from mmpretrain.models import ResNet

    from mmc2f.models.backbones.mscan import MSCAN
    url, _ = evil
    backbone = MSCAN(embed_dims=[8, 16, 32, 32], depths=[1, 1, 1, 1], mlp_ratios=[2, 2, 2, 2],
                     init_cfg=dict(type='Pretrained', checkpoint=url))
    with pytest.raises(UnsafeCheckpointError) as err:
        backbone.init_weights()
    _check_refusal(err, url)
    upstream = ResNet(depth=18, init_cfg=dict(type='Pretrained', checkpoint=url))
    with pytest.raises(UnsafeCheckpointError) as err:
        upstream.init_weights()
    _check_refusal(err, url)
    with pytest.raises(UnsafeCheckpointError):  # a plain torch module, with a prefix
        PretrainedInit(checkpoint=url, prefix='backbone.')(nn.Linear(2, 2))


def test_named_model_schemes(evil, monkeypatch):
    from mmengine.runner import CheckpointLoader
    from mmengine.runner import checkpoint as mmckpt
    url, _ = evil
    monkeypatch.setattr(mmckpt, 'get_external_models', lambda: {'evil': url})
    monkeypatch.setattr(mmckpt, 'get_torchvision_models', lambda: {'evil': url})
    monkeypatch.setattr(mmckpt, 'get_mmcls_models', lambda: {'evil': url})
    for name in ('open-mmlab://evil', 'openmmlab://evil', 'torchvision://evil', 'mmcls://evil'):
        with pytest.raises(UnsafeCheckpointError) as err:
            CheckpointLoader.load_checkpoint(name)
        _check_refusal(err, url)
    # MMEngine's own functions call load_from_http by its global name: routed too.
    with pytest.raises(UnsafeCheckpointError):
        mmckpt.load_from_openmmlab('open-mmlab://evil')
    with pytest.raises(UnsafeCheckpointError):
        mmckpt.load_from_http(url)


def test_s3_scheme(evil, monkeypatch, tmp_path):
    import mmengine.fileio
    from mmengine.runner import CheckpointLoader
    url, _ = evil
    data = open(hub_cache_file(url), 'rb').read() if osp.isfile(hub_cache_file(url)) else None
    if data is None:
        import urllib.request
        data = urllib.request.urlopen(url).read()

    class FakeS3:
        def get(self, filepath):
            return data

    monkeypatch.setattr(mmengine.fileio, 'get_file_backend', lambda *a, **k: FakeS3())
    for name in ('s3://bucket/evil.pth', 'cluster:s3://bucket/evil.pth', 'petrel://b/evil.pth'):
        with pytest.raises(UnsafeCheckpointError, match=r'posix\.system|os\.system') as err:
            CheckpointLoader.load_checkpoint(name)
        assert name in str(err.value)


def test_hub_cache_loads_through_the_allow_list(evil, server):
    """A file already in torch.hub's cache is read without downloading, still allow-listed."""
    from mmengine.logging.history_buffer import HistoryBuffer
    from mmengine.runner import CheckpointLoader
    _, base = server
    url = f'{base}/not_on_server/cached_only.pth'
    cached = hub_cache_file(url)
    assert cached == osp.join(torch.hub.get_dir(), 'checkpoints', 'cached_only.pth')
    os.makedirs(osp.dirname(cached), exist_ok=True)
    buf = HistoryBuffer()
    buf.update(1.5)
    torch.save({'state_dict': {'w': torch.ones(3)}, 'message_hub': {'loss': buf}}, cached)
    ckpt = CheckpointLoader.load_checkpoint(url)
    assert torch.equal(ckpt['state_dict']['w'], torch.ones(3))
    # an unsafe file in the cache is refused as well, naming the cache file
    evil_url, _ = evil
    with pytest.raises(UnsafeCheckpointError) as err:
        load_checkpoint(evil_url)
    with pytest.raises(UnsafeCheckpointError) as err:  # second time: from the cache
        load_checkpoint(evil_url)
    _check_refusal(err, evil_url)


def test_good_url_loads_and_errors_are_user_errors(server, tmp_path, monkeypatch):
    from mmengine.runner import CheckpointLoader
    monkeypatch.setattr(torch.hub, '_hub_dir', str(tmp_path / 'hub'))
    root, base = server
    torch.save({'state_dict': {'w': torch.arange(4.)}}, root / 'good.pth')
    assert torch.equal(CheckpointLoader.load_checkpoint(f'{base}/good.pth')['state_dict']['w'],
                       torch.arange(4.))
    with pytest.raises(CheckpointError, match='cannot download checkpoint .*missing.pth'):
        load_checkpoint(f'{base}/missing.pth')
    (root / 'half.pth').write_bytes((root / 'good.pth').read_bytes()[:300])
    with pytest.raises(CheckpointError, match=r'truncated .*delete "'):
        load_checkpoint(f'{base}/half.pth')


def test_init_model_with_url(evil, server, tmp_path):
    from mmc2f.apis import init_model
    url, _ = evil
    cfg = tmp_path / 'tiny_seg.py'
    cfg.write_text(TINY_SEG.format(base=SEG_BASE))
    with pytest.raises(UnsafeCheckpointError) as err:
        init_model(str(cfg), url, device='cpu')
    _check_refusal(err, url)
    # a good URL loads strictly ...
    model = init_model(str(cfg), None, device='cpu')
    root, base = server
    torch.save({'state_dict': model.state_dict()}, root / 'seg_good.pth')
    loaded = init_model(str(cfg), f'{base}/seg_good.pth', device='cpu')
    assert all(torch.equal(v, loaded.state_dict()[k]) for k, v in model.state_dict().items())
    # ... and a classifier checkpoint is refused with the likely cause
    torch.save({'state_dict': {'backbone.stem.weight': torch.zeros(1), 'head.fc.weight':
                               torch.zeros(1)}}, root / 'cls.pth')
    with pytest.raises(CheckpointError, match='a classifier checkpoint for a segmentor'):
        init_model(str(cfg), f'{base}/cls.pth', device='cpu')

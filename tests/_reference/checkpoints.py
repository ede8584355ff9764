"""Checkpoints in the authors' layouts, made from small random models, for the converter tests
(tests/apis/test_convert.py and tests/tools/test_model_converters.py)."""
import argparse
import contextlib
import importlib.util
import os.path as osp
import sys

import torch
from mmengine.registry import DefaultScope

from mmc2f.checkpoint import load_checkpoint_file
from mmc2f.models.backbones.mscan import MSCAN

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


# ------------------------------------------------------------------ MSCAN
BN = dict(type='BN', requires_grad=True)
MSCAN_CLI = osp.join(REPO, 'tools', 'model_converters', 'mscan_to_mmc2f.py')




def random_mscan(**kw):
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


def mscan_authors_state(model, num_classes=1000):
    """The authors' ImageNet layout: ``mlp.dwconv.dwconv.*`` and a classifier ``head.*``."""
    out = {}
    for k, v in model.state_dict().items():
        out[k.replace('.mlp.dwconv.', '.mlp.dwconv.dwconv.')] = v.clone()
    out['head.weight'] = torch.randn(num_classes, model.embed_dims[-1])
    out['head.bias'] = torch.randn(num_classes)
    return out


# ------------------------------------------------------------------ malicious checkpoints
class RunsCommand:
    """Unpickling this runs a shell command (what a malicious checkpoint does)."""

    def __init__(self, command):
        self.command = command

    def __reduce__(self):
        import os
        return (os.system, (self.command, ))


@contextlib.contextmanager
def serve_folder(folder):
    """A real HTTP server on 127.0.0.1 serving ``folder``; yields its base URL."""
    import functools
    import threading
    from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

    class Quiet(SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    httpd = ThreadingHTTPServer(('127.0.0.1', 0), functools.partial(Quiet, directory=str(folder)))
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        yield f'http://127.0.0.1:{httpd.server_address[1]}'
    finally:
        httpd.shutdown()
        httpd.server_close()

"""Converters from the authors' layouts (mmc2f.apis.convert): detection, renames, refusals."""
import pytest
import torch
from _reference.checkpoints import (BN, authors_checkpoint, mscan_authors_state, random_mscan,
                                    reference_module)

from mmc2f.apis.convert import (convert_conv2former, convert_mscan_state_dict,
                                describe_conv2former, detect_mscan_arch)
from mmc2f.errors import CheckpointFormatError, KeyMapError
from mmc2f.models.backbones.mscan import MSCAN


# ------------------------------------------------------------------ Conv2Former
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


def test_refuses_wrong_shape_and_missing_ema():
    ckpt, _, _ = authors_checkpoint(with_ema=False)
    with pytest.raises(CheckpointFormatError, match='state_dict_ema'):
        convert_conv2former(ckpt, use_ema=True)
    w = ckpt['state_dict']['stages.3.0.attn.v.weight']
    ckpt['state_dict']['stages.3.0.attn.v.weight'] = torch.zeros(w.shape[0], w.shape[1] + 1, 1, 1)
    with pytest.raises(KeyMapError, match=r'shapes do not fit.*stages.3.0.attn.v.weight'):
        convert_conv2former(ckpt)
    with pytest.raises(KeyMapError, match='downsample_layers.0.6.weight'):
        convert_conv2former({'state_dict': {'foo': torch.zeros(1)}})


# ------------------------------------------------------------------ MSCAN
def test_detect_arch():
    for arch in ('tiny', 'base'):
        state = mscan_authors_state(MSCAN(arch=arch, norm_cfg=BN))
        info = detect_mscan_arch(state)
        assert info['arch'] == arch and info['mlp_ratios'] == [8, 8, 4, 4]
    custom = detect_mscan_arch(MSCAN(depths=[1, 2, 1, 1], norm_cfg=BN).state_dict())
    assert custom['arch'] is None and custom['depths'] == [1, 2, 1, 1]
    assert custom['embed_dims'] == [64, 128, 256, 512] and custom['mlp_ratios'] == [4, 4, 4, 4]


def test_missing_num_batches_tracked_filled():
    model = MSCAN(arch='tiny', depths=[1, 1, 1, 1], norm_cfg=BN)
    expected = model.state_dict()
    state = {k: v for k, v in mscan_authors_state(model).items()
             if not k.endswith('num_batches_tracked')}
    out = convert_mscan_state_dict(state, expected=expected)
    assert list(sorted(out)) == sorted(expected)
    assert int(out['block1.0.norm1.num_batches_tracked']) == 0


def test_pretrained_accepts_authors_layout_directly(tmp_path):
    model = random_mscan(arch='tiny', depths=[1, 1, 1, 1])
    path = tmp_path / 'authors.pth'
    torch.save({'state_dict': mscan_authors_state(model)}, path)
    m = MSCAN(arch='tiny', depths=[1, 1, 1, 1], norm_cfg=BN,
              init_cfg=dict(type='Pretrained', checkpoint=str(path)))
    m.init_weights()
    for k, v in model.state_dict().items():
        assert torch.equal(m.state_dict()[k], v), k

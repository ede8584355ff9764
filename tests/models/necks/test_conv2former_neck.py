"""Conv2FormerNeck: the authors' classifier head minus the Linear, for mmpretrain classifiers."""

import pytest
import torch
from _reference.checkpoints import reference_module
from mmengine.registry import DefaultScope

from mmc2f.models.necks.conv2former_neck import Conv2FormerNeck

SMALL = dict(dims=[16, 32, 48, 64], depths=[1, 2, 3, 1], kernel_size=5)


def test_shapes_and_conventions():
    neck = Conv2FormerNeck(in_channels=64, out_channels=96)
    assert set(neck.state_dict()) == {'proj.weight', 'proj.bias', 'norm.weight', 'norm.bias'}
    feats = (torch.randn(2, 16, 8, 8), torch.randn(2, 64, 3, 5))
    out = neck(feats)
    assert isinstance(out, tuple) and len(out) == 1 and out[0].shape == (2, 96)
    single = neck(feats[-1])
    assert isinstance(single, torch.Tensor)
    torch.testing.assert_close(single, out[0])
    with pytest.raises(ValueError, match=r'\(B, 64, H, W\).*\(2, 16, 8, 8\)'):
        neck(feats[:1])
    with pytest.raises(TypeError):
        neck(())


def test_matches_formula():
    torch.manual_seed(0)
    neck = Conv2FormerNeck(in_channels=8, out_channels=12)
    neck.init_weights()
    assert not neck.proj.bias.any() and abs(neck.proj.weight.std().item() - 0.02) < 0.01
    with torch.no_grad():
        neck.proj.bias.normal_()
        neck.norm.weight.uniform_(0.5, 1.5)
        neck.norm.bias.normal_()
    x = torch.randn(3, 8, 4, 6)
    h = torch.nn.functional.gelu(neck.proj(x))
    h = torch.nn.functional.layer_norm(h.permute(0, 2, 3, 1), (12, ), neck.norm.weight,
                                       neck.norm.bias, 1e-6).permute(0, 3, 1, 2)
    torch.testing.assert_close(neck(x), h.mean((2, 3)))


def _authors_to_classifier(state_dict):
    """The key map, written out independently of the converter under test."""
    out = {}
    for key, value in state_dict.items():
        if key.startswith('head.0.'):
            out['neck.proj.' + key[len('head.0.'):]] = value
        elif key.startswith('head.2.'):
            out['neck.norm.' + key[len('head.2.'):]] = value
        elif key.startswith('pred.'):
            out['head.fc.' + key[len('pred.'):]] = value
        else:
            out['backbone.' + key] = value
    return out


def test_image_classifier_reproduces_authors_logits():
    from mmpretrain.registry import MODELS
    ref = reference_module()
    reference = ref.randomize_(ref.build_reference(
        (SMALL['dims'], SMALL['depths'], SMALL['kernel_size']), num_classes=10)).eval()
    cfg = dict(
        type='ImageClassifier',
        backbone=dict(type='mmc2f.Conv2Former', arch=SMALL, out_indices=(3, )),
        neck=dict(type='mmc2f.Conv2FormerNeck', in_channels=64),
        head=dict(type='LinearClsHead', num_classes=10, in_channels=1280))
    with DefaultScope.overwrite_default_scope('mmpretrain'):
        model = MODELS.build(cfg).eval()
    # strict: the classifier has exactly the authors' tensors under the mapped names
    model.load_state_dict(_authors_to_classifier(reference.state_dict()), strict=True)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        expected = reference(x)
        got = model(x, mode='tensor')
    assert got.shape == (2, 10) and expected.abs().mean() > 0.05
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)

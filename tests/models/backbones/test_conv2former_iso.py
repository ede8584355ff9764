"""Conv2FormerIsotropic (IS/IB): shapes, layer depth, sizes vs the paper, fused inference."""
import pytest
import torch
import torch.nn as nn

from mmc2f.models.backbones.conv2former import Block
from mmc2f.models.backbones.conv2former_iso import Conv2FormerIsotropic


def n_params(model):
    return sum(p.numel() for p in model.parameters())



@pytest.mark.parametrize('patch_embed', ['1conv', '3conv'])
def test_isotropic_shapes(patch_embed):
    model = Conv2FormerIsotropic(dict(embed_dims=32, depth=2), patch_embed=patch_embed,
                                 final_norm=True).eval()
    (out, ) = model(torch.randn(2, 3, 64, 80))
    assert out.shape == (2, 32, 4, 5)
    assert 'norm.weight' in model.state_dict()
    assert len(model.blocks) == 2 and isinstance(model.blocks[0], Block)
    with pytest.raises(ValueError, match='3 input channels'):
        model(torch.randn(1, 1, 64, 64))
    with pytest.raises(ValueError, match='at least'):
        model(torch.randn(1, 3, 8, 64))
    with pytest.raises(ValueError, match='patch_embed'):
        Conv2FormerIsotropic('small', patch_embed='2conv')
    with pytest.raises(ValueError, match="unknown Conv2FormerIsotropic arch.*'small'"):
        Conv2FormerIsotropic('tiny')


def test_isotropic_layer_depth():
    model = Conv2FormerIsotropic(dict(embed_dims=16, depth=4), final_norm=True)
    assert model.get_layer_depth('patch_embed.weight') == (0, 6)
    assert [model.get_layer_depth(f'blocks.{j}.mlp.fc1.weight')[0] for j in range(4)] == \
        [1, 2, 3, 4]
    assert model.get_layer_depth('norm.weight') == (5, 6)
    assert model.get_layer_depth('head.fc.weight', 'backbone.') == (5, 6)


@pytest.mark.parametrize('arch,dims,backbone_m,backbone_g,target_m,target_g', [
    ('small', 320, 21.54, 4.21, 23.0, 4.3),
    ('base', 640, 83.62, 16.37, 86.0, 16.5),
])
def test_isotropic_size_matches_paper(arch, dims, backbone_m, backbone_g, target_m, target_g):
    """Params and multiply-adds at 224x224 (mmengine's counter), with and without the authors'
    classifier head (Conv2FormerNeck + Linear(1280, 1000)) -- within 3% of the paper's sizes.

    Every layer of the '1conv' model runs at stride 16 (or is pooled), so the count is exactly
    proportional to the number of tokens: the counter runs at 32x32 (4 tokens) and is scaled by
    196 / 4 = 49 to keep the test fast (checked once at 224: IS 4.21064448G both ways).
    """
    from mmengine.analysis import get_model_complexity_info

    from mmc2f.models.necks.conv2former_neck import Conv2FormerNeck
    model = Conv2FormerIsotropic(arch)
    assert model.embed_dims == dims and model.depth == 18
    neck, fc = Conv2FormerNeck(dims), nn.Linear(1280, 1000)

    def macs(module, shape):
        info = get_model_complexity_info(module, input_shape=shape, show_table=False,
                                         show_arch=False)
        return info['flops']

    backbone_macs = macs(model, (3, 32, 32)) * 49
    head_macs = macs(neck, (dims, 2, 2)) * 49 + 1280 * 1000  # the Linear runs once per image
    assert round(n_params(model) / 1e6, 2) == backbone_m
    assert round(backbone_macs / 1e9, 2) == backbone_g
    total_m = (n_params(model) + n_params(neck) + n_params(fc)) / 1e6
    total_g = (backbone_macs + head_macs) / 1e9
    assert abs(total_m - target_m) / target_m < 0.03, total_m
    assert abs(total_g - target_g) / target_g < 0.03, total_g


# ------------------------------------------------------------------ inference-only fused path
@pytest.mark.parametrize('onednn', [True, False])
@pytest.mark.parametrize('patch_embed', ['1conv', '3conv'])
def test_switch_to_deploy_matches_eval_outputs(onednn, patch_embed, randomised, run_deployed):
    model = randomised(Conv2FormerIsotropic(dict(embed_dims=32, depth=3), patch_embed=patch_embed,
                                            kernel_size=5, final_norm=True)).eval()
    x = torch.randn(2, 3, 64, 48)
    with torch.no_grad():
        (ref, ) = model(x)
    fused, (out, ) = run_deployed(model, x, onednn)
    assert all(block.deployed for block in fused.blocks)
    assert out.shape == ref.shape
    assert ((out - ref).norm() / ref.norm()).item() < 1e-5


def test_switch_to_deploy_keeps_training_graph(randomised, check_train_mode_unchanged):
    model = randomised(Conv2FormerIsotropic(dict(embed_dims=32, depth=2), kernel_size=5))
    check_train_mode_unchanged(model, torch.randn(2, 3, 32, 32))


def test_deploy_hook_reaches_it():
    from mmc2f.engine.deploy_hook import switch_to_deploy
    model = nn.Sequential()
    model.add_module('backbone', Conv2FormerIsotropic(dict(embed_dims=16, depth=2)))
    assert switch_to_deploy(model) == ['backbone']
    assert model.backbone.deployed and all(b.deployed for b in model.backbone.blocks)

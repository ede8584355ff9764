"""SwitchToDeployHook: fused inference kernels before every validation / test run."""
from types import SimpleNamespace

import torch

from mmc2f.engine.deploy_hook import SwitchToDeployHook, switch_to_deploy
from mmc2f.models.backbones.conv2former import Conv2Former
from mmc2f.models.backbones.mscan import MSCAN
from mmc2f.registry import HOOKS


def _model():
    return torch.nn.ModuleDict(dict(
        backbone=MSCAN(arch=dict(embed_dims=[8, 16, 24, 32], depths=[1, 1, 1, 1]),
                       norm_cfg=dict(type='BN')),
        other=Conv2Former(arch=dict(dims=[8, 16, 24, 32], depths=[1, 1, 1, 1]), kernel_size=3),
        head=torch.nn.Conv2d(8, 2, 1)))


def test_switch_to_deploy_finds_every_fusable_module():
    model = _model()
    assert switch_to_deploy(model) == ['backbone', 'other']
    assert model.backbone.deployed and model.other.deployed


def test_hook_recomputes_fused_weights_and_logs_once():
    hook = HOOKS.build(dict(type='mmc2f.SwitchToDeployHook'))
    assert isinstance(hook, SwitchToDeployHook)
    model = _model()
    messages = []
    runner = SimpleNamespace(model=model, logger=SimpleNamespace(info=messages.append))
    hook.before_val_epoch(runner)
    block = model.backbone.block1[0]
    assert model.backbone.deployed and block.deployed
    before = block.fused_fc2_weight.clone()
    with torch.no_grad():  # "training" changes the weights; the next validation must see them
        block.layer_scale_2.mul_(2.0)
    hook.before_val_epoch(runner)
    torch.testing.assert_close(block.fused_fc2_weight, before * 2.0)
    hook.before_test_epoch(runner)
    assert len(messages) == 1 and 'backbone, other' in messages[0]

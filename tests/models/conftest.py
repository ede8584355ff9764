"""Fixtures shared by the model tests: checking inference-only fused paths against the originals."""
import pytest
import torch


def _randomise(model, seed=0):
    """Non-trivial BatchNorm statistics, norm affines and layer scales, so that every fold of a
    ``switch_to_deploy()`` is exercised (fresh models have identity norms and tiny layer scales)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for mod in model.modules():
            if isinstance(mod, (torch.nn.modules.batchnorm._BatchNorm, torch.nn.LayerNorm)):
                mod.weight.copy_(torch.rand(mod.weight.shape, generator=g) + 0.5)
                mod.bias.copy_(torch.rand(mod.bias.shape, generator=g) - 0.5)
            if isinstance(mod, torch.nn.modules.batchnorm._BatchNorm):
                mod.running_mean.copy_(torch.rand(mod.running_mean.shape, generator=g) - 0.5)
                mod.running_var.copy_(torch.rand(mod.running_var.shape, generator=g) + 0.5)
        for name, p in model.named_parameters():
            if 'layer_scale' in name:
                p.copy_(torch.rand(p.shape, generator=g) * 0.9 + 0.1)
    return model


@pytest.fixture
def randomised():
    return _randomise


@pytest.fixture
def count_aten_convs(monkeypatch):
    """``start = count_aten_convs; calls = start()``: from then on ``calls`` collects the weight
    shape of every ``torch.nn.functional.conv2d`` call (the unfused ATen path)."""

    def start():
        calls, conv2d = [], torch.nn.functional.conv2d

        def counting(x, weight, *args, **kwargs):
            calls.append(tuple(weight.shape))
            return conv2d(x, weight, *args, **kwargs)

        monkeypatch.setattr(torch.nn.functional, 'conv2d', counting)
        return calls

    return start

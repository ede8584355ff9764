"""Layers shared by both backbones: channel LayerNorm, layer scale, stochastic depth.

Conv2Former and MSCAN both use pre-norm residual blocks of the form

    x = x + DropPath(gamma * F(Norm(x)))

with a learnable per-channel ``gamma`` ("layer scale", Touvron et al. 2021) and stochastic depth whose
rate rises linearly over all blocks. The pieces live here once.
"""
from typing import List

import torch
import torch.nn as nn
import torch.nn.functional as F
from mmcv.cnn.bricks import DropPath

__all__ = ['LayerNorm2d', 'DropPath', 'layer_scale', 'init_layer_scale', 'drop_path_rates']


class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channel dimension of an NCHW tensor.

    ``y[b, :, h, w] = (x[b, :, h, w] - mean_c) / sqrt(var_c + eps) * weight + bias``

    Shapes: ``(B, C, H, W) -> (B, C, H, W)``. Parameters ``weight`` and ``bias`` have shape ``(C,)``,
    the layout of the authors' ``LayerNorm(data_format='channels_first')`` and of mmseg's per-stage
    ``nn.LayerNorm``, so checkpoints load unchanged.
    """

    def __init__(self, num_channels: int, eps: float = 1e-6, **kwargs):
        super().__init__(num_channels, eps=eps, **kwargs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4:
            raise ValueError(f'LayerNorm2d expects (B, C, H, W) input, got shape {tuple(x.shape)}')
        # NHWC view: layer_norm normalises the last dim. For channels_last input the permute is free.
        x = x.permute(0, 2, 3, 1)
        x = F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
        return x.permute(0, 3, 1, 2)


def init_layer_scale(dim: int, init_value: float) -> nn.Parameter:
    """A layer-scale vector ``gamma`` of shape ``(C,)`` filled with ``init_value``."""
    return nn.Parameter(init_value * torch.ones(dim), requires_grad=True)


def layer_scale(x: torch.Tensor, gamma: torch.Tensor) -> torch.Tensor:
    """``gamma * x`` per channel: ``(B, C, H, W) * (C,) -> (B, C, H, W)``."""
    return x * gamma.view(1, -1, 1, 1)


def drop_path_rates(depths, max_rate: float) -> List[List[float]]:
    """Stochastic-depth rate per block, rising linearly from 0 to ``max_rate`` over all blocks.

    Returns one list per stage, e.g. ``drop_path_rates([2, 2], 0.3) == [[0, .1], [.2, .3]]``.
    """
    total = int(sum(depths))
    flat = torch.linspace(0, max_rate, total, device='cpu').tolist() if total > 0 else []
    rates, start = [], 0
    for depth in depths:
        rates.append(flat[start:start + depth])
        start += depth
    return rates

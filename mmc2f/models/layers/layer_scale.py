"""Layer scale (Touvron et al., 2021): a learnable per-channel factor on a residual branch."""
import torch
import torch.nn as nn

__all__ = ['init_layer_scale', 'layer_scale']


def init_layer_scale(dim: int, init_value: float) -> nn.Parameter:
    """A layer-scale vector ``gamma`` of shape ``(C,)`` filled with ``init_value``."""
    return nn.Parameter(init_value * torch.ones(dim), requires_grad=True)


def layer_scale(x: torch.Tensor, gamma: torch.Tensor) -> torch.Tensor:
    """``gamma * x`` per channel: ``(B, C, H, W) * (C,) -> (B, C, H, W)``."""
    return x * gamma.view(1, -1, 1, 1)

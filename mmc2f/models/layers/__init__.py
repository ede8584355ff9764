"""Layers both backbones build with: channel LayerNorm, layer scale, stochastic depth."""
from .drop import DropPath, drop_path_rates
from .layer_scale import init_layer_scale, layer_scale
from .norm import LayerNorm2d

__all__ = ['LayerNorm2d', 'DropPath', 'drop_path_rates', 'init_layer_scale', 'layer_scale']

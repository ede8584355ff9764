"""Stochastic depth: mmcv's ``DropPath`` and the linear per-block schedule."""
from typing import List

import torch
from mmcv.cnn.bricks import DropPath

__all__ = ['DropPath', 'drop_path_rates']


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

"""The Conv2Former classifier head without its final Linear, as an mmpretrain-style neck."""
import copy
from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
from mmengine.model import BaseModule

from mmc2f.registry import MODELS
from ..layers import LayerNorm2d

__all__ = ['Conv2FormerNeck']


@MODELS.register_module()
class Conv2FormerNeck(BaseModule):
    """Conv2Former's pre-logits: ``flatten(GAP(LN(GELU(W x))))`` with ``W`` a 1x1 conv (with bias).

    The authors' classifier is ``head = [conv1x1 (C3 -> 1280), GELU, LayerNorm]`` -> global average
    pool -> ``pred = Linear(1280, classes)``. This neck is everything before ``pred``; put
    mmpretrain's ``LinearClsHead(in_channels=1280)`` after it (inside ``ImageClassifier``, with the
    backbone's ``out_indices=(3,)``) to get the authors' logits. The converter maps the authors'
    ``head.0`` -> ``neck.proj``, ``head.2`` -> ``neck.norm`` and ``pred`` -> ``head.fc``.

    Shapes: ``(B, C3, H, W) -> (B, 1280, H, W) -> (B, 1280)``.

    Args:
        in_channels (int): channels of the last stage, ``C3`` (576 for T/S, 768 for B ...).
        out_channels (int): width of the projection. Defaults to 1280 (all released models).
        init_cfg (dict | list[dict], optional): ``None`` -> the authors' init (trunc-normal std
            0.02 for the conv, zero bias; the LayerNorm stays (1, 0)).

    Inputs follow mmpretrain's neck convention: a tuple of features (the last one is used and a
    one-element tuple is returned) or a single tensor (a tensor is returned).
    """

    def __init__(self, in_channels: int, out_channels: int = 1280,
                 init_cfg: Optional[Union[Dict, List[Dict]]] = None):
        if init_cfg is None:
            init_cfg = [dict(type='TruncNormal', layer='Conv2d', std=.02, bias=0.)]
        super().__init__(init_cfg=copy.deepcopy(init_cfg))
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.proj = nn.Conv2d(in_channels, out_channels, 1)
        self.act = nn.GELU()
        self.norm = LayerNorm2d(out_channels, eps=1e-6)

    def pool(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C3, H, W) -> (B, out_channels)``."""
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f'Conv2FormerNeck expects (B, {self.in_channels}, H, W) features, '
                             f'got shape {tuple(x.shape)}')
        x = self.norm(self.act(self.proj(x)))
        return x.mean(dim=(-2, -1))

    def forward(self, inputs: Union[torch.Tensor, Sequence[torch.Tensor]]
                ) -> Union[torch.Tensor, Tuple[torch.Tensor]]:
        if isinstance(inputs, torch.Tensor):
            return self.pool(inputs)
        if isinstance(inputs, (tuple, list)) and len(inputs) > 0:
            return (self.pool(inputs[-1]), )
        raise TypeError('Conv2FormerNeck expects a tensor or a non-empty tuple of tensors, got '
                        f'{type(inputs).__name__}')

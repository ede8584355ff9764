"""LayerNorm over the channels of an NCHW tensor."""
import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ['LayerNorm2d']


class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channel dimension of an NCHW tensor.

    ``y[b, :, h, w] = (x[b, :, h, w] - mean_c) / sqrt(var_c + eps) * weight + bias``

    Shapes: ``(B, C, H, W) -> (B, C, H, W)``. ``weight`` and ``bias`` have shape ``(C,)``, the
    layout of the Conv2Former authors' ``LayerNorm(data_format='channels_first')`` and of mmseg's
    per-stage ``nn.LayerNorm``, so checkpoints load unchanged.
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

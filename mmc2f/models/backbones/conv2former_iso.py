# Conv2Former, after the authors' code: https://github.com/HVision-NKU/Conv2Former (Hou et al., 2022).
"""The isotropic (ViT-like) Conv2Former of the paper: IS and IB."""
from typing import Dict, List, Optional, Tuple, Union

import torch
import torch.nn as nn

from mmc2f.ops import fused_conv
from mmc2f.registry import MODELS
from ..layers import LayerNorm2d, drop_path_rates
from .base import BaseBackbone
from .conv2former import (AUTHORS_INIT_CFG, Block, check_kernel_size, checkpoint_filter_fn,
                          conv_stem, conv_stem_fused, fold_conv_stem)

__all__ = ['Conv2FormerIsotropic']


@MODELS.register_module()
class Conv2FormerIsotropic(BaseBackbone):
    """One patch embedding to stride 16, then ``depth`` (18) identical :class:`Block` s at width
    ``D``, no downsampling. Output: ``((B, D, H/16, W/16),)``, optionally through a final
    LayerNorm2d (``norm``).

    Widths: IS ``D = 320`` (backbone 21.54M params), IB ``D = 640`` (83.62M); with the authors'
    classifier head 23.23M / 4.29G and 85.72M / 16.53G, the paper's 23M / 4.3G and 86M / 16.5G
    (how they were chosen: ``configs/conv2former/README.md``).

    Args:
        arch (str | dict): ``'small'`` / ``'s'`` / ``'is'`` or ``'base'`` / ``'b'`` / ``'ib'``, or a
            dict with ``embed_dims`` and ``depth`` (optionally ``kernel_size``).
        in_channels (int): input channels. Defaults to 3.
        patch_embed (str): ``'1conv'`` (one 16x16 stride-16 conv with bias) or ``'3conv'``
            (conv3x3 s2 -> GELU -> BN -> conv3x3 s2 -> GELU -> BN -> conv4x4 s4, widths D/8, D/4,
            D). Defaults to ``'1conv'``.
        kernel_size (int, optional): depthwise kernel of every block; ``None`` -> 11.
        mlp_ratio (int): MLP expansion. Defaults to 4.
        final_norm (bool): LayerNorm2d ``norm`` on the output. Defaults to False.
        drop_path_rate (float): stochastic depth of the last block (linear over blocks).
        layer_scale_init_value (float): initial layer scale (``<= 0`` disables). Defaults to 1e-6.
        norm_eval (bool): keep the ``'3conv'`` stem's BatchNorms in eval mode in training.
        with_cp (bool): gradient checkpointing per block. Defaults to False.
        init_cfg (dict | list[dict], optional): MMEngine init config; ``None`` -> the authors' init.

    Inputs: H, W >= 16 (``'1conv'``) or 13 (``'3conv'``); other sizes are floored.
    """

    arch_settings: Dict[str, Dict] = {
        'small': {'embed_dims': 320, 'depth': 18},
        'base': {'embed_dims': 640, 'depth': 18},
    }
    arch_aliases: Dict[str, str] = {'s': 'small', 'is': 'small', 'b': 'base', 'ib': 'base'}
    arch_required = ('embed_dims', 'depth')
    arch_optional = ('kernel_size', )
    patch_embeds = ('1conv', '3conv')
    default_init_cfg = AUTHORS_INIT_CFG
    checkpoint_filter_fn = staticmethod(checkpoint_filter_fn)

    def __init__(self,
                 arch: Union[str, Dict] = 'small',
                 in_channels: int = 3,
                 patch_embed: str = '1conv',
                 kernel_size: Optional[int] = None,
                 mlp_ratio: int = 4,
                 final_norm: bool = False,
                 drop_path_rate: float = 0.,
                 layer_scale_init_value: float = 1e-6,
                 norm_eval: bool = False,
                 with_cp: bool = False,
                 init_cfg: Optional[Union[Dict, List[Dict]]] = None):
        super().__init__(init_cfg=init_cfg)
        settings = self.resolve_arch(arch, dict(kernel_size=kernel_size))
        if patch_embed not in self.patch_embeds:
            raise ValueError(f'patch_embed must be one of {self.patch_embeds}, got {patch_embed!r}')
        self.kernel_size = kernel_size = check_kernel_size(settings.get('kernel_size', 11))
        self.embed_dims = dim = int(settings['embed_dims'])
        self.depth = int(settings['depth'])
        self.in_channels = in_channels
        self.patch_embed_type = patch_embed
        self.min_input_size = 16 if patch_embed == '1conv' else 13
        self.norm_eval = norm_eval
        self.with_cp = with_cp

        if patch_embed == '1conv':
            self.patch_embed = nn.Conv2d(in_channels, dim, 16, stride=16)
        else:
            self.patch_embed = conv_stem(in_channels, (max(dim // 8, 1), max(dim // 4, 1)), dim,
                                         stride2=2, patch=4, bias=True)
        rates = drop_path_rates([self.depth], drop_path_rate)[0]
        self.blocks = nn.Sequential(*[
            Block(dim, kernel_size, mlp_ratio, rates[j], layer_scale_init_value)
            for j in range(self.depth)
        ])
        self.final_norm = final_norm
        if final_norm:
            self.norm = LayerNorm2d(dim, eps=1e-6)

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor]:
        """``(B, in_channels, H, W)`` -> ``((B, D, H/16, W/16),)``."""
        self.check_input(x)
        x = x.contiguous(memory_format=torch.channels_last)  # NHWC throughout
        x = self._embed_fused(x) if self.fused else self.patch_embed(x)
        x = self.run_blocks(self.blocks, x)
        if self.final_norm:
            x = self.norm(x)
        return (x.contiguous(), )  # plain NCHW memory for necks, heads and mmcv's ops

    def fused_weights(self) -> Dict[str, torch.Tensor]:
        """``'3conv'``: :func:`fold_conv_stem`. The blocks fuse themselves."""
        return {} if self.patch_embed_type == '1conv' else fold_conv_stem(self.patch_embed)

    def _embed_fused(self, x: torch.Tensor) -> torch.Tensor:
        pe = self.patch_embed
        if self.patch_embed_type == '1conv':
            return fused_conv(x, pe.weight, pe.bias, stride=16)
        return conv_stem_fused(pe, x, self.fused_stem_weight, self.fused_stem_bias)

    def min_num_layers(self, decay_type: str = 'layer_wise') -> int:
        if decay_type != 'layer_wise':
            raise NotImplementedError(
                f"decay_type={decay_type!r} needs stages; Conv2FormerIsotropic has one stack of "
                "blocks: use decay_type='layer_wise'")
        return self.depth

    def get_layer_depth(self, param_name: str, prefix: str = '',
                        num_layers: Optional[int] = None,
                        decay_type: str = 'layer_wise') -> Tuple[int, int]:
        """``patch_embed`` -> 0, ``blocks.{j}`` -> j + 1, anything else (``norm``, the head) ->
        ``num_layers + 1`` (default ``depth``); returns ``(layer_id, num_layers + 2)``
        (mmpretrain's ViT convention)."""
        minimum = self.min_num_layers(decay_type)
        num_layers = minimum if num_layers is None else num_layers
        if num_layers < minimum:
            raise ValueError(f'num_layers={num_layers} is too small for Conv2FormerIsotropic: '
                             f'its blocks need ids up to {minimum}. Set num_layers >= {minimum}.')
        parts = param_name[len(prefix):].split('.') if param_name.startswith(prefix) else ['']
        if parts[0] == 'patch_embed':
            return 0, num_layers + 2
        if parts[0] == 'blocks':
            return int(parts[1]) + 1, num_layers + 2
        return num_layers + 1, num_layers + 2

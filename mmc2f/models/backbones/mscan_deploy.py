"""MSCAN's inference-only folds at the backbone level (:meth:`MSCAN.switch_to_deploy`): the
embeddings' BatchNorms, and the residual stream of each stage carried in per-channel units.

Carried stream: every block adds its input scaled by ``d = 1 + ls1 s1`` (the attention branch's
own shortcut ``BN1(x)`` joined to the block's; ``MSCABlock.fold``). Running the stage on
``y = x / S`` with ``S = d_1 d_2 ... d_k`` after block ``k`` puts each ``d`` into the weights
around it (``proj_2``, ``fc1``, ``fc2`` and the next block's ``proj_1``) instead of one product
per block; the stage's output is ``S y``, one product before its LayerNorm. In ONNX Runtime the
per-block product is a slow 1x1 depthwise convolution (0.1-0.16 ms each on MSCAN-T at 512x512,
~2% of its run). A block whose ``S`` would leave ``[1e-3, 1e3]`` keeps its product instead.
"""
from typing import Callable, Dict, Optional

import torch
import torch.nn as nn

from mmc2f.ops import activation_name, fused_conv
from ..fusion import bn_affine, fold_output_scale

__all__ = ['embed_fused_weights', 'embed_fused', 'carry_streams', 'stage_output', 'STREAM_LIMIT']

#: the largest ``max(S, 1 / S)`` a carried stream may reach (else the block keeps its product)
STREAM_LIMIT = 1e3


def embed_fused_weights(backbone: nn.Module) -> Dict[str, object]:
    """Every embedding BatchNorm of an MSCAN folded into the conv before it, and the stem's
    activation name."""
    out: Dict[str, object] = {}
    for i in range(backbone.num_stages):
        embed = getattr(backbone, f'patch_embed{i + 1}')
        convs = ([(embed.proj[0], embed.proj[1]), (embed.proj[3], embed.proj[4])]
                 if i == 0 else [(embed.proj, embed.norm)])
        for j, (conv, bn) in enumerate(convs):
            out.update(zip((f'embed{i + 1}_{j}_weight', f'embed{i + 1}_{j}_bias'),
                           fold_output_scale(conv.weight, conv.bias, *bn_affine(bn))))
    out['stem_act'] = activation_name(backbone.patch_embed1.proj[2])
    if out['stem_act'] is None:
        raise NotImplementedError('MSCAN.switch_to_deploy: cannot fuse the stem activation '
                                  f'{backbone.patch_embed1.proj[2]}')
    return out


def embed_fused(backbone: nn.Module, i: int, x: torch.Tensor) -> torch.Tensor:
    """Stage ``i``'s embedding with the weights of :func:`embed_fused_weights`."""
    embed = getattr(backbone, f'patch_embed{i + 1}')

    def conv(j, module, x, act=None):
        return fused_conv(x, getattr(backbone, f'fused_embed{i + 1}_{j}_weight'),
                          getattr(backbone, f'fused_embed{i + 1}_{j}_bias'),
                          padding=module.padding, stride=module.stride, act=act)

    if i == 0:
        x = conv(0, embed.proj[0], x, act=backbone.fused_stem_act)
        return conv(1, embed.proj[3], x)
    return conv(0, embed.proj, x)


def _within(scale: torch.Tensor) -> bool:
    return bool(((scale.abs() >= 1 / STREAM_LIMIT) & (scale.abs() <= STREAM_LIMIT)).all())


@torch.no_grad()
def carry_streams(backbone: nn.Module, fold_all: Callable[[], nn.Module]) -> nn.Module:
    """``fold_all()`` (every module folded on its own, the blocks' carried folds dropped first),
    then every stage's blocks folded again with the stream carried from block to block (see the
    module doc); the last block's ``fused_stream_out`` is the stage's output scale."""
    stages = [getattr(backbone, f'block{i + 1}') for i in range(backbone.num_stages)]
    for block in (b for blocks in stages for b in blocks):
        block._drop_fused()
    fold_all()
    for blocks in stages:
        stream: Optional[torch.Tensor] = None
        for block in blocks:
            fused = block.fold(stream, absorb=True)
            if not _within(fused['stream_out']):
                fused = block.fold(stream, absorb=False)
            block.set_fused(fused)
            stream = fused['stream_out']
    return backbone


def stage_output(blocks, x: torch.Tensor) -> torch.Tensor:
    """The output of a deployed stage's ``blocks``: ``x`` times the stream's carried scale."""
    scale = getattr(blocks[-1], 'fused_stream_out', None) if len(blocks) else None
    return x if scale is None else x * scale

"""MSCAN's training forward on NHWC activations (CPU, fp32, eager): the same arithmetic as the
plain modules of :mod:`.mscan`, composed from :mod:`mmc2f.ops.lean_train`, which save only
what backward needs (see ``docs/segnext_training.md``).

Per block, with ``xn = BN1(x)`` and ``xm = BN2(x')``, autograd keeps ``x, xn, u, S`` (attention)
and ``x', xm`` (MLP) plus the layer-scale inputs, instead of ten ``C``-channel tensors and three
``r C``-channel ones.
"""
from typing import Sequence

import torch
import torch.nn as nn
import torch.utils.checkpoint as cp

from mmc2f.ops import activation_name, eager
from mmc2f.ops.lean_train import (LEAN_ACTIVATIONS, conv_mlp, depthwise_branch_sum,
                                  gated_pointwise, lean, pointwise_act)
from ..layers import layer_scale

__all__ = ['lean_supported', 'use_lean', 'lean_block_forward', 'run_blocks']


def lean_supported(block: nn.Module) -> bool:
    """Whether ``block`` (an ``MSCABlock``) has what :func:`lean_block_forward` computes: training
    mode, activations the lean kernels know and no MLP dropout (with dropout the blocks run their
    plain NCHW modules: masks drawn in NHWC memory order would differ from mmseg's)."""
    mlp = block.mlp
    return (block.training and mlp.drop.p == 0
            and activation_name(block.attn.activation) in LEAN_ACTIVATIONS
            and activation_name(mlp.act) in LEAN_ACTIVATIONS)


def use_lean(block: nn.Module, x: torch.Tensor) -> bool:
    """Whether ``block`` takes :func:`lean_block_forward` for ``x``: :func:`lean_supported`, NHWC
    memory and :func:`~mmc2f.ops.lean_train.lean` (CPU, fp32, gradients, eager, no autocast)."""
    return (lean_supported(block) and x.dim() == 4
            and x.is_contiguous(memory_format=torch.channels_last) and lean(x))


def lean_block_forward(block: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``MSCABlock.forward`` for NHWC ``x`` ``(B, C, H, W)``: equal values and gradients."""
    attn, msca, mlp = block.attn, block.attn.spatial_gating_unit, block.mlp
    xn = block.norm1(x)
    u = pointwise_act(xn, attn.proj_1.weight, attn.proj_1.bias, activation_name(attn.activation))
    branches = []
    for i in range(msca.num_branches):
        c1, c2 = getattr(msca, f'conv{i}_1'), getattr(msca, f'conv{i}_2')
        branches.append((c1.weight, c1.bias, c1.padding, c2.weight, c2.bias, c2.padding))
    s = depthwise_branch_sum(u, msca.conv0.weight, msca.conv0.bias, msca.conv0.padding, branches)
    y = gated_pointwise(s, u, msca.conv3.weight, msca.conv3.bias, attn.proj_2.weight,
                        attn.proj_2.bias) + xn
    x = x + block.drop_path(layer_scale(y, block.layer_scale_1))
    y = conv_mlp(block.norm2(x), mlp.fc1.weight, mlp.fc1.bias, mlp.dwconv.weight, mlp.dwconv.bias,
                 mlp.dwconv.padding, mlp.fc2.weight, mlp.fc2.bias, activation_name(mlp.act))
    return x + block.drop_path(layer_scale(y, block.layer_scale_2))


def _no_stat_updates(block: nn.Module):
    """``block``'s call with its train-mode BatchNorms leaving their running statistics as they
    were (momentum 0: ``r <- 1 r + 0 m``; the step counter put back). The normalisation uses the
    batch statistics either way, and autograd saves the same tensors."""
    norms = [m for m in block.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)
             and m.track_running_stats and m.training]

    def run(x):
        momenta = [m.momentum for m in norms]
        for m in norms:
            m.momentum = 0.
        try:
            return block(x)
        finally:
            for m, momentum in zip(norms, momenta):
                m.momentum = momentum
                m.num_batches_tracked.sub_(1)
    return run


def run_blocks(blocks: Sequence[nn.Module], x: torch.Tensor, with_cp: bool) -> torch.Tensor:
    """Run ``blocks`` in order; with ``with_cp`` each under ``torch.utils.checkpoint`` whose
    recomputation in backward does not update the BatchNorm running statistics a second time
    (eager; so they equal a run without checkpointing, and mmseg's)."""
    for block in blocks:
        if with_cp and x.requires_grad:
            first = [True]

            def call(t, block=block, first=first):
                if first[0] or not eager():
                    first[0] = False
                    return block(t)
                return _no_stat_updates(block)(t)
            x = cp.checkpoint(call, x, use_reentrant=False)
        else:
            x = block(x)
    return x

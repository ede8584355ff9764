"""Conv2Former: a simple transformer-style ConvNet built on convolutional modulation.

Paper: Q. Hou, C.-Z. Lu, M.-M. Cheng, J. Feng, "Conv2Former: A Simple Transformer-Style ConvNet for
Visual Recognition" (2022). The layout follows the authors' released code, so their checkpoints load
with unchanged parameter names (see ``tools/model_converters/conv2former_to_mmc2f.py``).

Convolutional modulation replaces self-attention ``softmax(Q K^T) V`` by a Hadamard product::

    Z = A ⊙ V,   A = DWConv_kxk(GELU(W1 X)),   V = W2 X,   output = W3 Z

with ``W1, W2, W3`` 1x1 convolutions and a large (7x7 or 11x11) depthwise kernel. There is no
softmax, sigmoid or normalisation on ``A``. Cost is linear in the number of pixels.

This module holds the building blocks (:class:`ConvMod`, :class:`MLP`, :class:`Block`), the
hierarchical four-stage backbone :class:`Conv2Former` (N/T/S/B/L) and the paper's isotropic
variants :class:`Conv2FormerIsotropic` (IS/IB).
"""
import copy
import re
from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
import torch.utils.checkpoint as cp
from mmengine.model import BaseModule
from torch.nn.modules.batchnorm import _BatchNorm

from mmc2f.registry import MODELS
from mmc2f.utils.checkpoint import load_pretrained_weights
from ..layers import (DropPath, LayerNorm2d, bn_affine, channel_norm, depthwise_conv,
                      drop_path_rates, fold_channel_affine, fold_output_scale, fused_conv,
                      fused_conv_add, fused_conv_mul, init_layer_scale, layer_scale,
                      pointwise_conv)

__all__ = ['ConvMod', 'MLP', 'Block', 'Conv2Former', 'Conv2FormerIsotropic']


#: The authors' init, applied by ``init_weights()`` when no ``init_cfg`` is given: trunc-normal
#: (std 0.02) weights and zero biases for every conv and linear layer; norms keep (1, 0).
AUTHORS_INIT_CFG = [dict(type='TruncNormal', layer=['Conv2d', 'Linear'], std=.02, bias=0.)]


def _authors_backbone_layout(state: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """The authors' classifier checkpoint as backbone weights: their earlier ``attn.a.*`` names
    become ``attn.att.*`` and the classifier (``head.*``, ``pred.*``) is dropped. Backbone keys
    that are already mmc2f's pass through unchanged."""
    out = {}
    for key, value in state.items():
        if key.startswith(('head.', 'pred.')):
            continue
        out[re.sub(r'\.attn\.a\.(\d+)\.', r'.attn.att.\1.', key)] = value
    return out


class _CheckedPretrained:
    """``init_cfg=dict(type='Pretrained', checkpoint=..., prefix=None, strict=True)`` loaded strictly.

    MMEngine's ``Pretrained`` uses ``strict=False``: a checkpoint of another layout would only warn
    and leave random weights. Here the keys must match (new layers such as ``out_norm{i}`` may be
    absent); a mismatch names the first missing/unexpected keys and the converter to run. Accepts
    a converted checkpoint (with ``prefix='backbone.'``) or the authors' own file directly.
    """

    def init_weights(self):
        cfg = self.init_cfg
        if isinstance(cfg, dict) and cfg.get('type') == 'Pretrained':
            unknown = set(cfg) - {'type', 'checkpoint', 'prefix', 'map_location', 'strict'}
            if unknown:
                raise KeyError(f'{type(self).__name__}: unknown keys {sorted(unknown)} in the '
                               'Pretrained init_cfg')
            load_pretrained_weights(
                self, cfg['checkpoint'], prefix=cfg.get('prefix'),
                map_location=cfg.get('map_location', 'cpu'), strict=cfg.get('strict', True),
                convert=_authors_backbone_layout, allow_missing=[r'out_norm\d+\.(weight|bias)'],
                hint="Is it a Conv2Former checkpoint of this size (arch, kernel_size)? Convert the "
                     "authors' files with tools/model_converters/conv2former_to_mmc2f.py and load "
                     "the result with prefix='backbone.'.")
            self._is_init = True
        else:
            super().init_weights()


class ConvMod(nn.Module):
    """Convolutional modulation, the token mixer of Conv2Former.

    ``x -> LN(x) = X``; ``A = DWConv_kxk(GELU(W1 X))``; ``V = W2 X``; ``out = W3 (A ⊙ V)``.

    Submodule names are the authors': ``norm`` (LayerNorm over channels), ``att`` =
    ``Sequential(W1 (1x1), GELU, DWConv_kxk)`` (``att.0``, ``att.2``), ``v`` (``W2``, 1x1) and
    ``proj`` (``W3``, 1x1). All convolutions have a bias.

    Args:
        dim (int): channels ``C``.
        kernel_size (int): odd size ``k`` of the depthwise kernel; padding ``k // 2`` keeps H, W.

    Shapes: ``(B, C, H, W) -> (B, C, H, W)``.
    """

    def __init__(self, dim: int, kernel_size: int = 11):
        super().__init__()
        self.norm = LayerNorm2d(dim, eps=1e-6)
        self.att = nn.Sequential(
            nn.Conv2d(dim, dim, 1),
            nn.GELU(),
            nn.Conv2d(dim, dim, kernel_size, padding=kernel_size // 2, groups=dim),
        )
        self.v = nn.Conv2d(dim, dim, 1)
        self.proj = nn.Conv2d(dim, dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # 1x1 convs as matrix products over channels on NHWC views (free for channels_last
        # input, which Conv2Former feeds), so activations and gradients keep one memory format.
        n = self.norm(x).permute(0, 2, 3, 1)  # X, (B, H, W, C)
        a = self.att[1](pointwise_conv(n, self.att[0]))  # GELU(W1 X)
        # A = DWConv(.), with a faster CPU backward in training
        a = depthwise_conv(a.permute(0, 3, 1, 2), self.att[2]).permute(0, 2, 3, 1)
        v = pointwise_conv(n, self.v)  # V = W2 X
        return pointwise_conv(a * v, self.proj).permute(0, 3, 1, 2)  # W3 (A ⊙ V)


class MLP(nn.Module):
    """The feed-forward branch as released (the depthwise 3x3 ``pos`` is not in the paper's figure).

    ``h = GELU(fc1(LN(x)))``; ``h = h + GELU(DWConv_3x3(h))``; ``out = fc2(h)``.

    Args:
        dim (int): channels ``C``.
        mlp_ratio (int): hidden width ``r * C`` (4 in all released models).

    Shapes: ``(B, C, H, W) -> (B, rC, H, W) -> (B, C, H, W)``.
    """

    def __init__(self, dim: int, mlp_ratio: int = 4):
        super().__init__()
        hidden = int(dim * mlp_ratio)
        self.norm = LayerNorm2d(dim, eps=1e-6)
        self.fc1 = nn.Conv2d(dim, hidden, 1)
        self.pos = nn.Conv2d(hidden, hidden, 3, padding=1, groups=hidden)
        self.fc2 = nn.Conv2d(hidden, dim, 1)
        self.act = nn.GELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # 1x1 convs on NHWC views, as in ConvMod; the 3x3 depthwise conv on channels_last memory.
        h = self.act(pointwise_conv(self.norm(x).permute(0, 2, 3, 1), self.fc1))
        h = h.permute(0, 3, 1, 2)
        h = h + self.act(self.pos(h))
        return pointwise_conv(h.permute(0, 2, 3, 1), self.fc2).permute(0, 3, 1, 2)


class Block(nn.Module):
    """A Conv2Former block: two pre-norm residual branches with layer scale and stochastic depth.

    ``x = x + DropPath(gamma1 ⊙ ConvMod(x))``; ``x = x + DropPath(gamma2 ⊙ MLP(x))``.

    Parameter names: ``attn.*``, ``mlp.*``, ``layer_scale_1``, ``layer_scale_2`` (shape ``(C,)``;
    absent when ``layer_scale_init_value <= 0``).

    Shapes: ``(B, C, H, W) -> (B, C, H, W)``.
    """

    def __init__(self, dim: int, kernel_size: int = 11, mlp_ratio: int = 4,
                 drop_path: float = 0., layer_scale_init_value: float = 1e-6):
        super().__init__()
        self.attn = ConvMod(dim, kernel_size)
        self.mlp = MLP(dim, mlp_ratio)
        if layer_scale_init_value is not None and layer_scale_init_value > 0:
            self.layer_scale_1 = init_layer_scale(dim, layer_scale_init_value)
            self.layer_scale_2 = init_layer_scale(dim, layer_scale_init_value)
        else:
            self.layer_scale_1 = self.layer_scale_2 = None
        self.drop_path = DropPath(drop_path) if drop_path > 0. else nn.Identity()

    def _scaled(self, x: torch.Tensor, gamma: Optional[torch.Tensor]) -> torch.Tensor:
        return x if gamma is None else layer_scale(x, gamma)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.deployed and not self.training:
            return self.forward_fused(x)
        x = x + self.drop_path(self._scaled(self.attn(x), self.layer_scale_1))
        x = x + self.drop_path(self._scaled(self.mlp(x), self.layer_scale_2))
        return x

    # ---------------------------------------------------------------- inference-only fusion
    deployed = False

    @torch.no_grad()
    def fuse(self) -> None:
        """Precompute the inference weights of :meth:`forward_fused` (the parameters are untouched).

        * the LayerNorm affines are folded into the 1x1 convs that read them (``att.0``, ``v``,
          ``fc1``): ``W (g * n + b) + c = (W g) n + (W b + c)``;
        * the layer scales are folded into ``proj`` and ``fc2``: ``gamma * (W z + c)``.

        Stored as non-persistent buffers (not in the state dict; moved by ``.to()``). Call again
        after changing the weights.
        """
        attn, mlp = self.attn, self.mlp
        folded = {
            'att': fold_channel_affine(attn.att[0].weight, attn.att[0].bias, attn.norm.weight,
                                       attn.norm.bias),
            'v': fold_channel_affine(attn.v.weight, attn.v.bias, attn.norm.weight, attn.norm.bias),
            'proj': (fold_output_scale(attn.proj.weight, attn.proj.bias, self.layer_scale_1)
                     if self.layer_scale_1 is not None else
                     (attn.proj.weight.detach(), attn.proj.bias.detach())),
            'fc1': fold_channel_affine(mlp.fc1.weight, mlp.fc1.bias, mlp.norm.weight,
                                       mlp.norm.bias),
            'fc2': (fold_output_scale(mlp.fc2.weight, mlp.fc2.bias, self.layer_scale_2)
                    if self.layer_scale_2 is not None else
                    (mlp.fc2.weight.detach(), mlp.fc2.bias.detach())),
        }
        for name, (weight, bias) in folded.items():
            self.register_buffer(f'fused_{name}_weight', weight.detach(), persistent=False)
            self.register_buffer(f'fused_{name}_bias', bias.detach(), persistent=False)
        self.deployed = True

    def forward_fused(self, x: torch.Tensor) -> torch.Tensor:
        """The same block for inference with the weights of :meth:`fuse`, in fused kernels::

            n = norm(x);  z = DW(GELU(W1' n)) * (W2' n);  x = x + W3' z
            n = norm(x);  h = GELU(fc1' n);  h = h + GELU(DW3(h));  x = x + fc2' h

        where ``'`` marks folded weights and each ``GELU(conv)`` / ``conv * v`` /
        ``conv + residual`` is one kernel on CPU (oneDNN post-ops). Equal to :meth:`forward` in eval mode up to rounding.
        """
        attn, mlp = self.attn, self.mlp
        dw, pos = attn.att[2], mlp.pos
        n = channel_norm(x, attn.norm.eps)
        a = fused_conv(n, self.fused_att_weight, self.fused_att_bias, gelu=True)
        v = fused_conv(n, self.fused_v_weight, self.fused_v_bias)
        a = fused_conv_mul(a, dw.weight, dw.bias, v, padding=dw.padding, groups=dw.groups)
        x = fused_conv_add(a, self.fused_proj_weight, self.fused_proj_bias, x)
        n = channel_norm(x, mlp.norm.eps)
        h = fused_conv(n, self.fused_fc1_weight, self.fused_fc1_bias, gelu=True)
        h = fused_conv(h, pos.weight, pos.bias, padding=pos.padding, groups=pos.groups,
                       gelu=True).add_(h)
        return fused_conv_add(h, self.fused_fc2_weight, self.fused_fc2_bias, x)


def _run_blocks(blocks: nn.Sequential, x: torch.Tensor, with_cp: bool) -> torch.Tensor:
    """Run blocks in order; with ``with_cp`` each block's activations are recomputed in backward."""
    for block in blocks:
        if with_cp and x.requires_grad:
            x = cp.checkpoint(block, x, use_reentrant=False)
        else:
            x = block(x)
    return x


def _check_input(x: torch.Tensor, in_channels: int, min_size: int, name: str) -> None:
    if x.dim() != 4:
        raise ValueError(f'{name} expects a (B, C, H, W) tensor, got shape {tuple(x.shape)}')
    if x.shape[1] != in_channels:
        raise ValueError(f'{name} was built for {in_channels} input channels (in_channels='
                         f'{in_channels}) but got an input with {x.shape[1]} channels '
                         f'(shape {tuple(x.shape)})')
    if min(x.shape[-2:]) < min_size:
        raise ValueError(f'{name} needs inputs of at least {min_size}x{min_size} pixels (its '
                         f'coarsest feature map would be empty); got H x W = '
                         f'{x.shape[-2]} x {x.shape[-1]}')


@MODELS.register_module()
class Conv2Former(_CheckedPretrained, BaseModule):
    """Conv2Former, the hierarchical backbone (four stages at strides 4, 8, 16, 32).

    Layout (the authors' names, so released checkpoints load unchanged):

    * ``downsample_layers.0``: the stem, total stride 4: conv3x3 s2 (in -> C0/2) -> GELU -> BN ->
      conv3x3 (C0/2 -> C0/2) -> GELU -> BN -> conv2x2 s2 (C0/2 -> C0); convs without bias
      (``.0``, ``.3``, ``.6``), BNs ``.2`` and ``.5``. No norm after it.
    * ``downsample_layers.{1,2,3}``: LayerNorm over channels (``.0``) -> conv2x2 s2, bias (``.1``).
    * ``stages.{i}.{j}``: :class:`Block` s, ``depths[i]`` of them at width ``dims[i]``.
    * ``out_norm{i}`` (only with ``out_norms=True``): a LayerNorm2d on each returned feature. These
      are new (not in the authors' checkpoints, which have no multi-scale output).

    Backbone parameters (no classifier, released kernel sizes): N 13.05M, T 24.68M, S 48.01M,
    B 87.76M, L 196.30M.

    Input sizes: any ``H, W >= 31`` works; multiples of 32 are not required. The stem's first conv
    gives ``ceil(H / 2)`` rows; each 2x2 stride-2 conv after it floors (an odd last row/column is
    dropped), so the outputs have ``H4 = ceil(H/2) // 2``, ``H8 = H4 // 2``, ``H16 = H8 // 2``,
    ``H32 = H16 // 2`` rows (exactly ``H / 4 ... H / 32`` for multiples of 32, which is what the
    detection and segmentation pipelines feed after padding). Smaller inputs, a wrong channel count
    or a non-4D tensor raise a ``ValueError`` before any computation.

    Args:
        arch (str | dict): ``'nano'``, ``'tiny'``, ``'small'``, ``'base'``, ``'large'`` (or
            ``'n'``, ``'t'``, ``'s'``, ``'b'``, ``'l'``), or a dict with ``dims`` and ``depths``
            (four ints each) and optionally ``kernel_size``.
        in_channels (int): input channels. Defaults to 3.
        kernel_size (int, optional): depthwise kernel of every :class:`ConvMod` (odd). ``None``
            uses the released checkpoints' size: 7 for nano, 11 otherwise (and for a dict arch
            its ``kernel_size``, else 11, the paper's default).
        mlp_ratio (int): MLP expansion. Defaults to 4.
        out_indices (Sequence[int] | int): stages whose outputs are returned, as a tuple of NCHW
            tensors ``(B, dims[i], H / 2^(i+2), W / 2^(i+2))``. Negative indices count from the
            end. Defaults to ``(0, 1, 2, 3)``.
        out_norms (bool): add a LayerNorm2d ``out_norm{i}`` to each returned feature.
            Defaults to False (outputs are the raw stage outputs, as in the authors' model).
        frozen_stages (int): freeze (``requires_grad=False`` and eval mode, so BN statistics and
            drop path stay fixed in training) part of the network. ``-1``: nothing. ``0``: the
            stem only (``downsample_layers.0``). ``k >= 1``: ``downsample_layers.0 .. k-1`` and
            ``stages.0 .. k-1``, i.e. everything up to the output of stage ``k - 1`` -- the same as
            mmpretrain's ConvNeXt for ``k >= 1`` (whose ``0`` freezes nothing); ``4`` freezes the
            whole backbone except the new ``out_norm{i}`` layers, which are never frozen.
            Defaults to -1.
        norm_eval (bool): keep the stem's BatchNorm layers in eval mode (running statistics
            frozen) while the model is in train mode. Defaults to False.
        with_cp (bool): gradient checkpointing per block (``torch.utils.checkpoint``): same
            outputs and gradients, less memory, one extra forward per block. Defaults to False.
        drop_path_rate (float): stochastic-depth rate of the last block; it rises linearly from 0
            over all blocks. Defaults to 0.
        layer_scale_init_value (float): initial layer scale; ``<= 0`` disables layer scale
            (and its parameters). Defaults to 1e-6.
        init_cfg (dict | list[dict], optional): MMEngine init config, e.g.
            ``dict(type='Pretrained', checkpoint='conv2former_t.pth', prefix='backbone.')`` for a
            checkpoint written by the converter. ``None`` (default): ``init_weights`` applies the
            authors' init (trunc-normal std 0.02 conv weights, zero biases).

    Example:
        >>> model = Conv2Former('tiny', out_indices=(0, 1, 2, 3))
        >>> [tuple(o.shape) for o in model(torch.rand(1, 3, 64, 64))]
        [(1, 72, 16, 16), (1, 144, 8, 8), (1, 288, 4, 4), (1, 576, 2, 2)]
    """

    arch_settings: Dict[str, Dict] = {
        'nano': {'dims': [64, 128, 256, 512], 'depths': [2, 2, 8, 2], 'kernel_size': 7},
        'tiny': {'dims': [72, 144, 288, 576], 'depths': [3, 3, 12, 3], 'kernel_size': 11},
        'small': {'dims': [72, 144, 288, 576], 'depths': [4, 4, 32, 4], 'kernel_size': 11},
        'base': {'dims': [96, 192, 384, 768], 'depths': [4, 4, 34, 4], 'kernel_size': 11},
        'large': {'dims': [128, 256, 512, 1024], 'depths': [4, 4, 48, 4], 'kernel_size': 11},
    }
    arch_aliases: Dict[str, str] = {'n': 'nano', 't': 'tiny', 's': 'small', 'b': 'base',
                                    'l': 'large'}
    default_kernel_size = 11
    num_stages = 4

    def __init__(self,
                 arch: Union[str, Dict] = 'tiny',
                 in_channels: int = 3,
                 kernel_size: Optional[int] = None,
                 mlp_ratio: int = 4,
                 out_indices: Union[int, Sequence[int]] = (0, 1, 2, 3),
                 out_norms: bool = False,
                 frozen_stages: int = -1,
                 norm_eval: bool = False,
                 with_cp: bool = False,
                 drop_path_rate: float = 0.,
                 layer_scale_init_value: float = 1e-6,
                 init_cfg: Optional[Union[Dict, List[Dict]]] = None):
        if init_cfg is None:
            init_cfg = copy.deepcopy(AUTHORS_INIT_CFG)
        super().__init__(init_cfg=init_cfg)
        settings = self.resolve_arch(arch)
        self.dims: List[int] = list(settings['dims'])
        self.depths: List[int] = list(settings['depths'])
        if kernel_size is None:
            kernel_size = settings.get('kernel_size', self.default_kernel_size)
        if not isinstance(kernel_size, int) or kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f'kernel_size must be a positive odd int, got {kernel_size!r}')
        self.kernel_size = kernel_size
        self.in_channels = in_channels

        if isinstance(out_indices, int):
            out_indices = [out_indices]
        indices = []
        for i in out_indices:
            j = i + self.num_stages if i < 0 else i
            if not 0 <= j < self.num_stages:
                raise ValueError(f'out_indices must be in [-{self.num_stages}, '
                                 f'{self.num_stages - 1}], got {tuple(out_indices)}')
            indices.append(j)
        self.out_indices = tuple(indices)
        if not -1 <= frozen_stages <= self.num_stages:
            raise ValueError(f'frozen_stages must be in [-1, {self.num_stages}], '
                             f'got {frozen_stages}')
        self.frozen_stages = frozen_stages
        self.norm_eval = norm_eval
        self.with_cp = with_cp

        stem_dim = self.dims[0] // 2
        self.downsample_layers = nn.ModuleList()
        self.downsample_layers.append(nn.Sequential(
            nn.Conv2d(in_channels, stem_dim, 3, stride=2, padding=1, bias=False),
            nn.GELU(),
            nn.BatchNorm2d(stem_dim),
            nn.Conv2d(stem_dim, stem_dim, 3, stride=1, padding=1, bias=False),
            nn.GELU(),
            nn.BatchNorm2d(stem_dim),
            nn.Conv2d(stem_dim, self.dims[0], 2, stride=2, bias=False),
        ))
        for i in range(1, self.num_stages):
            self.downsample_layers.append(nn.Sequential(
                LayerNorm2d(self.dims[i - 1], eps=1e-6),
                nn.Conv2d(self.dims[i - 1], self.dims[i], 2, stride=2),
            ))

        rates = drop_path_rates(self.depths, drop_path_rate)
        self.stages = nn.ModuleList([
            nn.Sequential(*[
                Block(self.dims[i], kernel_size, mlp_ratio, rates[i][j], layer_scale_init_value)
                for j in range(self.depths[i])
            ]) for i in range(self.num_stages)
        ])

        self.out_norms = out_norms
        if out_norms:
            for i in self.out_indices:
                self.add_module(f'out_norm{i}', LayerNorm2d(self.dims[i], eps=1e-6))

        self._freeze_stages()

    @classmethod
    def resolve_arch(cls, arch: Union[str, Dict]) -> Dict:
        """``arch`` (name, alias or dict) -> ``{'dims': [...], 'depths': [...], ...}``."""
        if isinstance(arch, str):
            name = cls.arch_aliases.get(arch.lower(), arch.lower())
            if name not in cls.arch_settings:
                choices = list(cls.arch_settings) + list(cls.arch_aliases)
                raise ValueError(f'unknown Conv2Former arch "{arch}"; choose one of {choices} '
                                 "or pass a dict with 'dims' and 'depths'")
            return dict(cls.arch_settings[name])
        if isinstance(arch, dict):
            missing = {'dims', 'depths'} - set(arch)
            unknown = set(arch) - {'dims', 'depths', 'kernel_size'}
            if missing or unknown:
                raise ValueError(f"a Conv2Former arch dict needs 'dims' and 'depths' (optionally "
                                 f"'kernel_size'); missing {sorted(missing)}, unknown "
                                 f'{sorted(unknown)}')
            dims, depths = list(arch['dims']), list(arch['depths'])
            if len(dims) != cls.num_stages or len(depths) != cls.num_stages:
                raise ValueError(f'Conv2Former has {cls.num_stages} stages: dims and depths need '
                                 f'{cls.num_stages} entries each, got {dims} and {depths}')
            if any(int(d) < 1 for d in depths) or any(int(d) < 2 for d in dims):
                raise ValueError(f'depths must be >= 1 and dims >= 2, got {depths} and {dims}')
            return dict(arch, dims=dims, depths=depths)
        raise TypeError(f'arch must be a str or a dict, got {type(arch).__name__}')

    @property
    def min_input_size(self) -> int:
        """Smallest H (and W) whose stride-32 feature map is non-empty: ``ceil(H/2) // 16 >= 1``."""
        return 31

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, ...]:
        """``(B, in_channels, H, W)`` -> tuple of ``(B, dims[i], H_i, W_i)`` for ``out_indices``."""
        _check_input(x, self.in_channels, self.min_input_size, type(self).__name__)
        fused = self.deployed and not self.training
        # NHWC (channels_last) memory throughout: the layout of LayerNorm over channels, of the
        # blocks' 1x1 convs as matrix products, of fast depthwise kernels and of the fused path.
        x = x.contiguous(memory_format=torch.channels_last)
        outs = []
        for i in range(self.num_stages):
            x = self._downsample_fused(i, x) if fused else self.downsample_layers[i](x)
            x = _run_blocks(self.stages[i], x, self.with_cp)
            if i in self.out_indices:
                out = getattr(self, f'out_norm{i}')(x) if self.out_norms else x
                # LayerNorm2d leaves channels_last strides; necks, heads and mmcv's C++/CUDA ops
                # (RoIAlign reads raw NCHW memory) need plain contiguous NCHW tensors.
                outs.append(out.contiguous())
        return tuple(outs)

    # ---------------------------------------------------------------- inference-only fusion
    deployed = False

    @torch.no_grad()
    def switch_to_deploy(self) -> 'Conv2Former':
        """Switch inference (eval mode) to fused kernels; training is unaffected.

        Folds every LayerNorm/BatchNorm affine that feeds an unpadded convolution and every layer
        scale into the neighbouring convolution, and runs each convolution with its GELU or its
        residual add in one kernel (oneDNN post-ops on CPU; the same ops unfused elsewhere). The
        parameters, the state dict and the train-mode graph are unchanged: ``model.train()`` runs
        the original blocks, ``model.eval()`` the fused ones. Outputs equal the unfused model's up
        to float rounding. Call it after loading weights (and again after changing them).
        """
        for stage in self.stages:
            for block in stage:
                block.fuse()
        stem = self.downsample_layers[0]
        scale, shift = bn_affine(stem[5])
        # BN5 feeds the unpadded 2x2 stride-2 conv: exact to fold. (BN2 feeds a padded conv and
        # stays: folding its shift would change the zero padding.)
        weight, bias = fold_channel_affine(stem[6].weight, stem[6].bias, scale, shift)
        self.register_buffer('fused_stem_weight', weight, persistent=False)
        self.register_buffer('fused_stem_bias', bias, persistent=False)
        for i in range(1, self.num_stages):
            norm, conv = self.downsample_layers[i]
            weight, bias = fold_channel_affine(conv.weight, conv.bias, norm.weight, norm.bias)
            self.register_buffer(f'fused_down{i}_weight', weight, persistent=False)
            self.register_buffer(f'fused_down{i}_bias', bias, persistent=False)
        self.deployed = True
        return self

    def _downsample_fused(self, i: int, x: torch.Tensor) -> torch.Tensor:
        if i == 0:
            stem = self.downsample_layers[0]
            x = fused_conv(x, stem[0].weight, None, padding=1, stride=2, gelu=True)
            x = stem[2](x)
            x = fused_conv(x, stem[3].weight, None, padding=1, gelu=True)
            return fused_conv(x, self.fused_stem_weight, self.fused_stem_bias, stride=2)
        x = channel_norm(x, self.downsample_layers[i][0].eps)
        return fused_conv(x, getattr(self, f'fused_down{i}_weight'),
                          getattr(self, f'fused_down{i}_bias'), stride=2)

    def _frozen_modules(self) -> List[nn.Module]:
        if self.frozen_stages < 0:
            return []
        if self.frozen_stages == 0:
            return [self.downsample_layers[0]]
        return [m for i in range(self.frozen_stages)
                for m in (self.downsample_layers[i], self.stages[i])]

    def _freeze_stages(self) -> None:
        for module in self._frozen_modules():
            module.eval()
            for param in module.parameters():
                param.requires_grad = False

    def train(self, mode: bool = True):
        super().train(mode)
        self._freeze_stages()
        if mode and self.norm_eval:
            for m in self.modules():
                if isinstance(m, _BatchNorm):
                    m.eval()
        return self

    def get_layer_depth(self, param_name: str, prefix: str = '') -> Tuple[int, int]:
        """Layer id of a parameter for layer-wise learning-rate decay: ``(layer_id, num_layers)``.

        mmpretrain's ConvNeXt rule, generalised so that ids never decrease along the forward pass
        for any depth (ConvNeXt's fixed ``max_layer_id`` of 6 or 12 puts the last blocks of a
        deep third stage -- S: 32, B: 34, L: 48 blocks -- above stage 3). With ``G = ceil(
        depths[2] / 3)`` groups of three stage-2 blocks and ``M = 3 + G``:

        ==============================================  ==========
        parameter                                        layer id
        ==============================================  ==========
        ``downsample_layers.0`` (stem)                   0
        ``stages.0.*``                                   1
        ``downsample_layers.1``, ``stages.1.*``          2
        ``downsample_layers.2``                          3
        ``stages.2.{j}.*``                               3 + j // 3
        ``downsample_layers.3``, ``stages.3.*``          M
        other backbone parameters (``out_norm{i}``)      M + 1
        parameters outside the backbone (no ``prefix``)  M + 1
        ==============================================  ==========

        and ``num_layers = M + 2``: the head gets ``num_layers - 1`` (learning-rate scale 1 in
        mmpretrain's constructor, ``decay ** (num_layers - layer_id - 1)``). For ConvNeXt's depths
        (9 or 27 stage-2 blocks) this is exactly ConvNeXt's rule. N/T/S/B/L: M = 6/7/14/15/19.

        Args:
            param_name (str): e.g. ``'backbone.stages.2.5.attn.v.weight'``.
            prefix (str): the backbone's prefix in ``param_name``, e.g. ``'backbone.'``.
        """
        max_layer_id = 3 + (self.depths[2] + 2) // 3
        if not param_name.startswith(prefix):
            return max_layer_id + 1, max_layer_id + 2
        name = param_name[len(prefix):]
        parts = name.split('.')
        if parts[0] == 'downsample_layers':
            stage_id = int(parts[1])
            layer_id = {0: 0, 1: 2, 2: 3}.get(stage_id, max_layer_id)
        elif parts[0] == 'stages':
            stage_id, block_id = int(parts[1]), int(parts[2])
            if stage_id in (0, 1):
                layer_id = stage_id + 1
            elif stage_id == 2:
                layer_id = 3 + block_id // 3
            else:
                layer_id = max_layer_id
        else:
            layer_id = max_layer_id + 1
        return layer_id, max_layer_id + 2


@MODELS.register_module()
class Conv2FormerIsotropic(_CheckedPretrained, BaseModule):
    """The paper's isotropic (ViT-like) Conv2Former: IS and IB.

    One patch embedding to stride 16, then ``depth`` (18) identical :class:`Block` s at width ``D``,
    no downsampling. Output: a one-element tuple ``((B, D, H/16, W/16),)``, optionally through a
    final LayerNorm2d (``norm``).

    Widths. The paper only gives the targets (IS ~23M params / 4.3 GFLOPs, IB ~86M / 16.5 GFLOPs
    at 224x224, "to match DeiT-S / DeiT-B"). A block costs about ``11 D^2`` parameters (``3 D^2`` in
    ConvMod, ``8 D^2`` in the MLP), so 18 blocks are about ``198 D^2``:

    * IS: ``D = 320`` -> backbone 21.54M params, 4.21G multiply-adds (``'1conv'``); with the
      authors' classifier head (conv1x1 to 1280, GELU, LN, pool, Linear to 1000): 23.23M / 4.29G.
    * IB: ``D = 640`` -> backbone 83.62M, 16.37G (``'1conv'``); with that head 85.72M / 16.53G.

    (mmengine's ``get_model_complexity_info``, multiply-adds, 1x3x224x224; checked in
    ``tests/models/backbones/test_conv2former.py``.) Both are multiples of 64 and the closest such
    widths to the targets (IS at 384 would be 33M, IB at 704 101M). The kernel size was not
    published for these variants; the default is the paper's 11 (at stride 16 it covers most of a
    14x14 map).

    Patch embeddings (``patch_embed``):

    * ``'1conv'``: a single 16x16 stride-16 conv with bias (``patch_embed.weight``).
    * ``'3conv'``: a small conv stem, total stride 16, in the style of the hierarchical model's
      stem: conv3x3 s2 (in -> D/8) -> GELU -> BN -> conv3x3 s2 (D/8 -> D/4) -> GELU -> BN ->
      conv4x4 s4 (D/4 -> D, bias); the same widths, so it costs +0.19M / +0.14G (IS) and
      +1.26M / +0.62G (IB) over ``'1conv'``.

    Args:
        arch (str | dict): ``'small'`` / ``'s'`` / ``'is'`` or ``'base'`` / ``'b'`` / ``'ib'``, or a
            dict with ``embed_dims`` and ``depth`` (optionally ``kernel_size``).
        in_channels (int): input channels. Defaults to 3.
        patch_embed (str): ``'1conv'`` or ``'3conv'``. Defaults to ``'1conv'``.
        kernel_size (int, optional): depthwise kernel of every block; ``None`` -> 11.
        mlp_ratio (int): MLP expansion. Defaults to 4.
        final_norm (bool): LayerNorm2d ``norm`` on the output. Defaults to False.
        norm_eval (bool): keep the ``'3conv'`` stem's BatchNorms in eval mode in training.
        with_cp (bool): gradient checkpointing per block. Defaults to False.
        drop_path_rate (float): stochastic depth of the last block (linear over blocks).
        layer_scale_init_value (float): initial layer scale (``<= 0`` disables). Defaults to 1e-6.
        init_cfg (dict | list[dict], optional): MMEngine init config; ``None`` -> the authors' init.

    Inputs: H, W >= 16; sizes that are not multiples of 16 are floored (``'1conv'``: ``H // 16``;
    ``'3conv'``: ``ceil(H / 4) // 4``).
    """

    arch_settings: Dict[str, Dict] = {
        'small': {'embed_dims': 320, 'depth': 18},
        'base': {'embed_dims': 640, 'depth': 18},
    }
    arch_aliases: Dict[str, str] = {'s': 'small', 'is': 'small', 'b': 'base', 'ib': 'base'}
    patch_embeds = ('1conv', '3conv')

    def __init__(self,
                 arch: Union[str, Dict] = 'small',
                 in_channels: int = 3,
                 patch_embed: str = '1conv',
                 kernel_size: Optional[int] = None,
                 mlp_ratio: int = 4,
                 final_norm: bool = False,
                 norm_eval: bool = False,
                 with_cp: bool = False,
                 drop_path_rate: float = 0.,
                 layer_scale_init_value: float = 1e-6,
                 init_cfg: Optional[Union[Dict, List[Dict]]] = None):
        if init_cfg is None:
            init_cfg = copy.deepcopy(AUTHORS_INIT_CFG)
        super().__init__(init_cfg=init_cfg)
        if isinstance(arch, str):
            name = self.arch_aliases.get(arch.lower(), arch.lower())
            if name not in self.arch_settings:
                choices = list(self.arch_settings) + list(self.arch_aliases)
                raise ValueError(f'unknown Conv2FormerIsotropic arch "{arch}"; choose one of '
                                 f"{choices} or pass a dict with 'embed_dims' and 'depth'")
            settings = dict(self.arch_settings[name])
        elif isinstance(arch, dict):
            if not {'embed_dims', 'depth'} <= set(arch):
                raise ValueError("a Conv2FormerIsotropic arch dict needs 'embed_dims' and "
                                 f"'depth', got keys {sorted(arch)}")
            settings = dict(arch)
        else:
            raise TypeError(f'arch must be a str or a dict, got {type(arch).__name__}')
        if patch_embed not in self.patch_embeds:
            raise ValueError(f'patch_embed must be one of {self.patch_embeds}, got {patch_embed!r}')
        if kernel_size is None:
            kernel_size = settings.get('kernel_size', 11)
        if not isinstance(kernel_size, int) or kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f'kernel_size must be a positive odd int, got {kernel_size!r}')

        self.embed_dims = dim = int(settings['embed_dims'])
        self.depth = int(settings['depth'])
        self.kernel_size = kernel_size
        self.in_channels = in_channels
        self.patch_embed_type = patch_embed
        self.norm_eval = norm_eval
        self.with_cp = with_cp

        if patch_embed == '1conv':
            self.patch_embed = nn.Conv2d(in_channels, dim, 16, stride=16)
        else:
            c1, c2 = max(dim // 8, 1), max(dim // 4, 1)
            self.patch_embed = nn.Sequential(
                nn.Conv2d(in_channels, c1, 3, stride=2, padding=1, bias=False),
                nn.GELU(),
                nn.BatchNorm2d(c1),
                nn.Conv2d(c1, c2, 3, stride=2, padding=1, bias=False),
                nn.GELU(),
                nn.BatchNorm2d(c2),
                nn.Conv2d(c2, dim, 4, stride=4),
            )
        rates = drop_path_rates([self.depth], drop_path_rate)[0]
        self.blocks = nn.Sequential(*[
            Block(dim, kernel_size, mlp_ratio, rates[j], layer_scale_init_value)
            for j in range(self.depth)
        ])
        self.final_norm = final_norm
        if final_norm:
            self.norm = LayerNorm2d(dim, eps=1e-6)

    @property
    def min_input_size(self) -> int:
        return 16 if self.patch_embed_type == '1conv' else 13

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor]:
        """``(B, in_channels, H, W)`` -> ``((B, D, H/16, W/16),)``."""
        _check_input(x, self.in_channels, self.min_input_size, type(self).__name__)
        x = self.patch_embed(x.contiguous(memory_format=torch.channels_last))  # NHWC, as above
        x = _run_blocks(self.blocks, x, self.with_cp)
        if self.final_norm:
            x = self.norm(x)
        return (x.contiguous(), )  # plain NCHW memory for necks, heads and mmcv's ops

    def train(self, mode: bool = True):
        super().train(mode)
        if mode and self.norm_eval:
            for m in self.modules():
                if isinstance(m, _BatchNorm):
                    m.eval()
        return self

    def get_layer_depth(self, param_name: str, prefix: str = '') -> Tuple[int, int]:
        """``patch_embed`` -> 0, ``blocks.{j}`` -> j + 1, anything else (``norm``, the head) ->
        depth + 1; returns ``(layer_id, depth + 2)`` (mmpretrain's ViT convention)."""
        num_layers = self.depth + 2
        if not param_name.startswith(prefix):
            return num_layers - 1, num_layers
        parts = param_name[len(prefix):].split('.')
        if parts[0] == 'patch_embed':
            return 0, num_layers
        if parts[0] == 'blocks':
            return int(parts[1]) + 1, num_layers
        return num_layers - 1, num_layers

# SegNeXt's MSCAN, after the authors' code: https://github.com/Visual-Attention-Network/SegNeXt
# (Guo et al., NeurIPS 2022).
"""MSCAN: the Multi-Scale Convolutional Attention Network, SegNeXt's encoder.

Guo et al., "SegNeXt: Rethinking Convolutional Attention Design for Semantic Segmentation"
(NeurIPS 2022, https://arxiv.org/abs/2209.08575).

Four stages at strides 4/8/16/32. Every stage is an overlapping patch embedding, a stack of MSCA
blocks and a LayerNorm over channels, whose output is the stage output and the next stage's input::

    stage i:  x = Embed_i(x)                      (B, C_{i-1}, H, W) -> (B, C_i, H/2, W/2)
              x = Block(x)  (depth_i times)       (B, C_i, h, w)     -> (B, C_i, h, w)
              x = LN_c(x)   -> output i

    Block:    x = x + DropPath(ls1 * SpatialAttention(BN(x)))
              x = x + DropPath(ls2 * Mlp(BN(x)))

The parameter names (and hence the state-dict keys) are those of mmsegmentation 1.x's ``MSCAN``
(``patch_embed{i}``, ``block{i}.{j}``, ``norm{i}``), so mmseg's ``mscan_*.pth`` files load
unchanged; the authors' ImageNet checkpoints differ by one rename and are converted by
``tools/model_converters/mscan_to_mmc2f.py`` (or on the fly by ``init_cfg=dict(type='Pretrained',
...)`` through :func:`checkpoint_filter_fn`).
"""
import math
import warnings
from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
from mmcv.cnn import build_activation_layer, build_norm_layer
from mmengine.model.weight_init import constant_init, normal_init, trunc_normal_init

from mmc2f.checkpoint.keymap import apply_key_map
from mmc2f.ops import activation_name, dwconv_gelu, fused_conv, fused_conv_add, fused_conv_mul
from mmc2f.ops.lean_train import lean
from mmc2f.registry import MODELS
from ..fusion import FusedInference, bn_affine, fold_channel_affine, fold_output_scale
from ..layers import DropPath, LayerNorm2d, drop_path_rates, init_layer_scale, layer_scale
from .base import BaseBackbone
from .mscan_deploy import carry_streams, embed_fused, embed_fused_weights, stage_output
from .mscan_lean import lean_block_forward, lean_supported, run_blocks, use_lean

__all__ = ['MSCA', 'SpatialAttention', 'Mlp', 'MSCABlock', 'StemConv', 'OverlapPatchEmbed', 'MSCAN',
           'arch_settings', 'checkpoint_filter_fn', 'MSCAN_RULES', 'MSCAN_DROP']

#: Paper variants (SegNeXt Table 1 / the authors' configs). ``drop_path_rate`` is the ImageNet /
#: ADE20K value the authors used; any keyword given to :class:`MSCAN` overrides the table.
arch_settings: Dict[str, dict] = {
    'tiny': dict(embed_dims=[32, 64, 160, 256], depths=[3, 3, 5, 2], mlp_ratios=[8, 8, 4, 4],
                 drop_path_rate=0.1),
    'small': dict(embed_dims=[64, 128, 320, 512], depths=[2, 2, 4, 2], mlp_ratios=[8, 8, 4, 4],
                  drop_path_rate=0.1),
    'base': dict(embed_dims=[64, 128, 320, 512], depths=[3, 3, 12, 3], mlp_ratios=[8, 8, 4, 4],
                 drop_path_rate=0.1),
    'large': dict(embed_dims=[64, 128, 320, 512], depths=[3, 5, 27, 3], mlp_ratios=[8, 8, 4, 4],
                  drop_path_rate=0.3),
}
_ARCH_ALIASES = {'t': 'tiny', 's': 'small', 'b': 'base', 'l': 'large'}

#: Checkpoint key map, authors' layout -> mmseg's (= mmc2f's): ``mlp.dwconv.dwconv`` -> ``mlp.dwconv``.
MSCAN_RULES = [
    (r'(block\d+\.\d+\.mlp\.dwconv)\.dwconv\.(weight|bias)', r'\1.\2'),  # authors -> mmseg
    (r'(patch_embed\d+|block\d+|norm\d+)\..+', r'\g<0>'),  # identical in both layouts
]
#: keys deliberately discarded: the authors' ImageNet classifier.
MSCAN_DROP = [r'head\..+']


def checkpoint_filter_fn(state: Dict[str, torch.Tensor], model: Optional[nn.Module] = None,
                         what: str = 'MSCAN checkpoint') -> Dict[str, torch.Tensor]:
    """The authors' or mmseg's MSCAN weights in mmc2f's layout (the classifier ``head.*`` is
    dropped). Raises :class:`~mmc2f.errors.KeyMapError` for a key of no MSCAN layout."""
    return apply_key_map(state, MSCAN_RULES, drop=MSCAN_DROP, what=what)

# mmseg 1.2.2's MSCAN defaults (used when neither ``arch`` nor the keyword is given).
_MMSEG_DEFAULTS = dict(embed_dims=[64, 128, 256, 512], depths=[3, 4, 6, 3],
                       mlp_ratios=[4, 4, 4, 4], drop_path_rate=0.)
_DEFAULT_KERNELS = [5, [1, 7], [1, 11], [1, 21]]
_DEFAULT_PADDINGS = [2, [0, 3], [0, 5], [0, 10]]


def _pair(v) -> tuple:
    return tuple(v) if isinstance(v, (list, tuple)) else (v, v)


class MSCA(nn.Module):
    """Multi-scale convolutional attention (SegNeXt Fig. 2b, the ``spatial_gating_unit``).

    With ``F`` the input and ``Scale_i`` the strip-convolution branches (``Scale_0`` = identity)::

        A   = DW-Conv_5x5(F)
        Att = Conv_1x1( sum_{i=0..3} Scale_i(A) ),  Scale_i = DW-Conv_{k_i x 1} o DW-Conv_{1 x k_i}
        Out = Att (*) F                                           (element-wise, no sigmoid)

    with ``k = 7, 11, 21`` by default. Shapes: ``(B, C, H, W) -> (B, C, H, W)``.

    Args:
        channels (int): ``C``.
        kernel_sizes (list): ``[k0, [1, k1], [1, k2], ...]``: the square kernel of ``conv0``, then
            one ``[1, k]`` strip per branch (branch ``i`` is ``conv{i}_1`` (1 x k) followed by
            ``conv{i}_2`` (k x 1)).
        paddings (list): matching paddings, e.g. ``[2, [0, 3], [0, 5], [0, 10]]``.
    """

    def __init__(self, channels: int, kernel_sizes: Sequence = _DEFAULT_KERNELS,
                 paddings: Sequence = _DEFAULT_PADDINGS):
        super().__init__()
        if len(kernel_sizes) != len(paddings) or len(kernel_sizes) < 1:
            raise ValueError('MSCA: kernel_sizes and paddings must be non-empty lists of equal '
                             f'length, got {kernel_sizes} and {paddings}')
        self.conv0 = nn.Conv2d(channels, channels, _pair(kernel_sizes[0]),
                               padding=_pair(paddings[0]), groups=channels)
        self.num_branches = len(kernel_sizes) - 1
        for i, (k, p) in enumerate(zip(kernel_sizes[1:], paddings[1:])):
            k, p = _pair(k), _pair(p)
            # conv{i}_1: the given (1, k) strip; conv{i}_2: its transpose (k, 1).
            self.add_module(f'conv{i}_1', nn.Conv2d(channels, channels, k, padding=p,
                                                    groups=channels))
            self.add_module(f'conv{i}_2', nn.Conv2d(channels, channels, k[::-1], padding=p[::-1],
                                                    groups=channels))
        self.conv3 = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.conv0(x)
        att = a
        for i in range(self.num_branches):
            att = att + getattr(self, f'conv{i}_2')(getattr(self, f'conv{i}_1')(a))
        return self.conv3(att) * x


class SpatialAttention(nn.Module):
    """The attention branch of an MSCA block, with its own shortcut.

    ``Out = Conv_1x1(MSCA(GELU(Conv_1x1(X)))) + X``; shapes ``(B, C, H, W) -> (B, C, H, W)``.
    """

    def __init__(self, channels: int, kernel_sizes: Sequence = _DEFAULT_KERNELS,
                 paddings: Sequence = _DEFAULT_PADDINGS, act_cfg: dict = dict(type='GELU')):
        super().__init__()
        self.proj_1 = nn.Conv2d(channels, channels, 1)
        self.activation = build_activation_layer(act_cfg)
        self.spatial_gating_unit = MSCA(channels, kernel_sizes, paddings)
        self.proj_2 = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj_2(self.spatial_gating_unit(self.activation(self.proj_1(x)))) + x


class Mlp(nn.Module):
    """Convolutional feed-forward: ``fc2(Drop(Act(DW-Conv_3x3(fc1(X)))))`` (then dropout).

    Shapes: ``(B, C, H, W) -> (B, C*r, H, W) -> (B, C, H, W)`` with ``r`` the mlp ratio.
    """

    def __init__(self, in_features: int, hidden_features: int, act_cfg: dict = dict(type='GELU'),
                 drop: float = 0.):
        super().__init__()
        self.fc1 = nn.Conv2d(in_features, hidden_features, 1)
        self.dwconv = nn.Conv2d(hidden_features, hidden_features, 3, padding=1,
                                groups=hidden_features)
        self.act = build_activation_layer(act_cfg)
        self.fc2 = nn.Conv2d(hidden_features, in_features, 1)
        self.drop = nn.Dropout(drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.drop(self.act(self.dwconv(self.fc1(x))))
        return self.drop(self.fc2(x))


class MSCABlock(FusedInference, nn.Module):
    """One MSCAN block (pre-norm with BatchNorm, layer scale ``1e-2``, stochastic depth)::

        x = x + DropPath(ls1 * SpatialAttention(BN1(x)))
        x = x + DropPath(ls2 * Mlp(BN2(x)))

    Shapes: ``(B, C, H, W) -> (B, C, H, W)``.
    """

    onnxruntime_fused = True  # its folded graph leaves ONNX Runtime no BN or layer-scale Mul

    def __init__(self, channels: int, kernel_sizes: Sequence = _DEFAULT_KERNELS,
                 paddings: Sequence = _DEFAULT_PADDINGS, mlp_ratio: float = 4., drop: float = 0.,
                 drop_path: float = 0., act_cfg: dict = dict(type='GELU'),
                 norm_cfg: dict = dict(type='SyncBN', requires_grad=True),
                 layer_scale_init_value: float = 1e-2):
        super().__init__()
        self.norm1 = build_norm_layer(norm_cfg, channels)[1]
        self.attn = SpatialAttention(channels, kernel_sizes, paddings, act_cfg)
        self.drop_path = DropPath(drop_path) if drop_path > 0. else nn.Identity()
        self.norm2 = build_norm_layer(norm_cfg, channels)[1]
        self.mlp = Mlp(channels, int(channels * mlp_ratio), act_cfg=act_cfg, drop=drop)
        self.layer_scale_1 = init_layer_scale(channels, layer_scale_init_value)
        self.layer_scale_2 = init_layer_scale(channels, layer_scale_init_value)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.fused:
            return self.forward_fused(x)
        if use_lean(self, x):  # NHWC training on CPU: the same gradients, less memory
            return lean_block_forward(self, x)
        x = x + self.drop_path(layer_scale(self.attn(self.norm1(x)), self.layer_scale_1))
        x = x + self.drop_path(layer_scale(self.mlp(self.norm2(x)), self.layer_scale_2))
        return x

    def fused_weights(self) -> Dict[str, object]:
        if getattr(self, 'fused_stream_out', None) is not None:  # a carried stream's neighbours
            raise RuntimeError('this MSCABlock is folded with its stage (carried stream): call '
                               'switch_to_deploy() on the MSCAN backbone')
        return self.fold()

    def fold(self, stream: Optional[torch.Tensor] = None,
             absorb: bool = False) -> Dict[str, object]:
        """With ``BN1(x) = s1 x + t1`` and ``BN2(x) = s2 x + t2`` (running statistics): ``BN1``
        folded into ``proj_1``, ``BN2`` into ``fc1``, ``ls1`` into ``proj_2``, ``ls2`` into
        ``fc2``; the attention branch's own shortcut ``+ BN1(x)`` joins the block's:
        ``x + ls1 (P + s1 x + t1) = (ls1 P + ls1 t1) + d x``, ``d = 1 + ls1 s1``, its shift in
        ``proj_2``'s bias (a constant added on its own would keep ONNX Runtime from fusing the
        add). ``stream`` ``S`` (``(1, C, 1, 1)``): the input comes as ``x / S``; ``absorb``: the
        output leaves as ``x_out / (S d)`` (``stream_out``), without the product by ``d``
        (:func:`.mscan_deploy.carry_streams`)."""
        attn, mlp = self.attn, self.mlp
        s1, t1 = bn_affine(self.norm1)
        s2, t2 = bn_affine(self.norm2)
        ls1, ls2 = self.layer_scale_1, self.layer_scale_2
        d = 1 + ls1 * s1
        s_in = torch.ones_like(d) if stream is None else stream.flatten()
        s_out = s_in * d if absorb else s_in
        acts = tuple(activation_name(m) for m in (attn.activation, mlp.act))
        if None in acts:
            raise NotImplementedError(f'MSCABlock: cannot fuse the activations '
                                      f'{attn.activation}, {mlp.act}; supported: nn.GELU(), '
                                      'nn.ReLU')
        folded = {
            'proj_1': fold_channel_affine(attn.proj_1.weight, attn.proj_1.bias, s1 * s_in, t1),
            'proj_2': fold_output_scale(attn.proj_2.weight, attn.proj_2.bias, ls1 / s_out,
                                        ls1 * t1 / s_out),
            'fc1': fold_channel_affine(mlp.fc1.weight, mlp.fc1.bias, s2 * s_out, t2),
            'fc2': fold_output_scale(mlp.fc2.weight, mlp.fc2.bias, ls2 / s_out),
        }
        out: Dict[str, object] = {
            'acts': acts, 'shortcut_scale': None if absorb else d.view(1, -1, 1, 1),
            'stream_out': None if stream is None and not absorb else s_out.view(1, -1, 1, 1)}
        out.update({f'{name}_{kind}': t for name, wb in folded.items()
                    for kind, t in zip(('weight', 'bias'), wb)})
        return out

    def forward_fused(self, x: torch.Tensor) -> torch.Tensor:
        """The block for inference with the weights of :meth:`fuse` (``'`` = folded)::

            u = Act(proj_1' x);  A = conv0(u);  S = sum_i conv_i2(conv_i1(A)) + A
            x = proj_2'(conv3(S) * u) + d x        (proj_2' has ls1 t1 in its bias; d: see fold)
            x = fc2'(Act(DW3(fc1' x))) + x

        Each ``Act(conv)``, ``conv + y`` and ``conv * u`` is one kernel on CPU (oneDNN post-ops).
        Equal to :meth:`forward` in eval mode up to float rounding.
        """
        msca, mlp = self.attn.spatial_gating_unit, self.mlp
        attn_act, mlp_act = self.fused_acts
        u = fused_conv(x, self.fused_proj_1_weight, self.fused_proj_1_bias, act=attn_act)
        a = _conv(msca.conv0, u)
        s = None  # A is added last: fused into a strip conv, ONNX Runtime ran it 1.6-7x slower
        for i in range(msca.num_branches):
            strip = _conv(getattr(msca, f'conv{i}_1'), a)
            s = _conv(getattr(msca, f'conv{i}_2'), strip, add=s)
        z = fused_conv_mul(a if s is None else s + a, msca.conv3.weight, msca.conv3.bias, u)
        d = self.fused_shortcut_scale  # None: carried in the stream (absorb)
        x = fused_conv_add(z, self.fused_proj_2_weight, self.fused_proj_2_bias,
                           x if d is None else x * d)
        h = fused_conv(x, self.fused_fc1_weight, self.fused_fc1_bias)
        h = dwconv_gelu(h, mlp.dwconv.weight, mlp.dwconv.bias) if mlp_act == 'gelu' else \
            _conv(mlp.dwconv, h, act=mlp_act)
        return fused_conv_add(h, self.fused_fc2_weight, self.fused_fc2_bias, x)


def _conv(conv: nn.Conv2d, x: torch.Tensor, act: Optional[str] = None,
          add: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``conv(x)`` (stride 1) through the fused kernels, with an activation or an added tensor."""
    if add is not None:
        return fused_conv_add(x, conv.weight, conv.bias, add, padding=conv.padding,
                              groups=conv.groups)
    return fused_conv(x, conv.weight, conv.bias, padding=conv.padding, stride=conv.stride,
                      groups=conv.groups, act=act)


class StemConv(nn.Module):
    """Stage-1 embedding, stride 4: ``Conv3x3/s2 -> BN -> GELU -> Conv3x3/s2 -> BN``.

    Shapes: ``(B, C_in, H, W) -> (B, C, ceil(H/4), ceil(W/4))`` with ``C/2`` channels in between.
    """

    def __init__(self, in_channels: int, out_channels: int, act_cfg: dict = dict(type='GELU'),
                 norm_cfg: dict = dict(type='SyncBN', requires_grad=True)):
        super().__init__()
        mid = out_channels // 2
        self.proj = nn.Sequential(
            nn.Conv2d(in_channels, mid, 3, stride=2, padding=1),
            build_norm_layer(norm_cfg, mid)[1],
            build_activation_layer(act_cfg),
            nn.Conv2d(mid, out_channels, 3, stride=2, padding=1),
            build_norm_layer(norm_cfg, out_channels)[1],
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x)


class OverlapPatchEmbed(nn.Module):
    """Embedding of stages 2-4: ``Conv_{k x k}/s (padding k // 2) -> BN``.

    Shapes: ``(B, C_in, H, W) -> (B, C, ceil(H/s), ceil(W/s))`` (``k = 3, s = 2`` in MSCAN).
    """

    def __init__(self, patch_size: int = 3, stride: int = 2, in_channels: int = 3,
                 embed_dim: int = 768, norm_cfg: dict = dict(type='SyncBN', requires_grad=True)):
        super().__init__()
        self.proj = nn.Conv2d(in_channels, embed_dim, patch_size, stride=stride,
                              padding=patch_size // 2)
        self.norm = build_norm_layer(norm_cfg, embed_dim)[1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.proj(x))


@MODELS.register_module()
class MSCAN(BaseBackbone):
    """SegNeXt's MSCAN backbone (drop-in replacement for mmseg's ``MSCAN``, plus ``arch``).

    Outputs the four stage features, ``[(B, C_i, H / 2^(i+2), W / 2^(i+2)) for i in 0..3]``
    (ceil-rounded), NCHW and contiguous.

    ========  ==================  ===========  ============  ===  =================
    arch      embed_dims          depths       mlp_ratios    dpr  params (backbone)
    ========  ==================  ===========  ============  ===  =================
    tiny      32, 64, 160, 256    3, 3, 5, 2   8, 8, 4, 4    0.1  3.90M
    small     64, 128, 320, 512   2, 2, 4, 2   8, 8, 4, 4    0.1  13.45M
    base      64, 128, 320, 512   3, 3, 12, 3  8, 8, 4, 4    0.1  26.28M
    large     64, 128, 320, 512   3, 5, 27, 3  8, 8, 4, 4    0.3  44.64M
    ========  ==================  ===========  ============  ===  =================

    Args:
        in_channels (int): input image channels. Default 3. (mmseg 1.2.2 ignores this keyword and
            always builds a 3-channel stem; here it is honoured and checked in ``forward``.)
        embed_dims (list[int], optional): channels per stage. ``None``: from ``arch``, else mmseg's
            default ``[64, 128, 256, 512]``.
        mlp_ratios (list[float], optional): MLP expansion per stage. ``None``: from ``arch``, else
            ``[4, 4, 4, 4]``.
        drop_rate (float): dropout inside the MLPs. Default 0.
        drop_path_rate (float, optional): stochastic depth, rising linearly over all blocks to this
            value. ``None``: from ``arch``, else 0.
        depths (list[int], optional): blocks per stage. ``None``: from ``arch``, else
            ``[3, 4, 6, 3]``.
        num_stages (int): stages to build (and outputs). Default 4.
        attention_kernel_sizes (list): MSCA kernels, default ``[5, [1, 7], [1, 11], [1, 21]]``.
        attention_kernel_paddings (list): their paddings, default ``[2, [0, 3], [0, 5], [0, 10]]``.
        act_cfg (dict): activation. Default ``dict(type='GELU')``.
        norm_cfg (dict): the BatchNorm of embeddings and blocks. Default
            ``dict(type='SyncBN', requires_grad=True)`` (as mmseg; use ``BN`` on one device/CPU).
        pretrained (str, optional): deprecated, use ``init_cfg``.
        init_cfg (dict | list[dict], optional): ``dict(type='Pretrained', checkpoint=...,
            prefix=None, map_location='cpu', strict=True)`` loads mmseg's ``mscan_*.pth`` or the
            authors' ImageNet checkpoints (converted in memory; the classification head is dropped)
            and, unlike MMEngine's ``Pretrained``, reports missing/unexpected keys as an error
            (``strict=False`` only warns). ``None``: mmseg's default initialisation.
        arch (str | dict, optional): ``'tiny' | 'small' | 'base' | 'large'`` (or ``t/s/b/l``), or a
            dict of ``embed_dims``/``depths``/``mlp_ratios``/``drop_path_rate``. Explicit keywords
            override the arch's values. ``None`` (default): mmseg's defaults.
        frozen_stages (int): ``-1`` (default) nothing; ``0`` the stem (``patch_embed1``); ``k``:
            stages ``0 .. k - 1`` (embedding, blocks, norm).
        norm_eval (bool): keep every BatchNorm in eval mode in training. Defaults to False.
        with_cp (bool): gradient checkpointing per block. Defaults to False.
    """

    arch_settings = arch_settings
    onnxruntime_fused = True  # with its blocks (the carried streams span them)
    arch_aliases = _ARCH_ALIASES
    arch_optional = tuple(_MMSEG_DEFAULTS)
    arch_defaults = _MMSEG_DEFAULTS
    checkpoint_filter_fn = staticmethod(checkpoint_filter_fn)
    pretrained_hint = ('Is it an MSCAN checkpoint of this size (arch / embed_dims / depths)? '
                       "Convert the authors' files with tools/model_converters/mscan_to_mmc2f.py.")

    def __init__(self,
                 in_channels: int = 3,
                 embed_dims: Optional[List[int]] = None,
                 mlp_ratios: Optional[List[float]] = None,
                 drop_rate: float = 0.,
                 drop_path_rate: Optional[float] = None,
                 depths: Optional[List[int]] = None,
                 num_stages: int = 4,
                 attention_kernel_sizes: Sequence = _DEFAULT_KERNELS,
                 attention_kernel_paddings: Sequence = _DEFAULT_PADDINGS,
                 act_cfg: dict = dict(type='GELU'),
                 norm_cfg: dict = dict(type='SyncBN', requires_grad=True),
                 pretrained: Optional[str] = None,
                 init_cfg: Optional[Union[dict, List[dict]]] = None,
                 arch: Optional[Union[str, dict]] = None,
                 frozen_stages: int = -1,
                 norm_eval: bool = False,
                 with_cp: bool = False):
        super().__init__(init_cfg=init_cfg)
        if init_cfg and pretrained:
            raise ValueError('MSCAN: init_cfg and pretrained cannot be set at the same time')
        if isinstance(pretrained, str):
            warnings.warn('MSCAN: "pretrained" is deprecated, use '
                          'init_cfg=dict(type="Pretrained", checkpoint=...)')
            self.init_cfg = dict(type='Pretrained', checkpoint=pretrained)
        elif pretrained is not None:
            raise TypeError('MSCAN: pretrained must be a str or None')

        cfg = self.resolve_arch(arch, dict(embed_dims=embed_dims, depths=depths,
                                           mlp_ratios=mlp_ratios, drop_path_rate=drop_path_rate))
        embed_dims, depths = list(cfg['embed_dims']), list(cfg['depths'])
        mlp_ratios, drop_path_rate = list(cfg['mlp_ratios']), float(cfg['drop_path_rate'])
        if not 1 <= num_stages <= 4:
            raise ValueError(f'MSCAN: num_stages must be 1..4, got {num_stages}')
        for name, seq in (('embed_dims', embed_dims), ('depths', depths),
                          ('mlp_ratios', mlp_ratios)):
            if len(seq) < num_stages:
                raise ValueError(f'MSCAN: {name} has {len(seq)} entries, fewer than num_stages='
                                 f'{num_stages}')
        embed_dims, depths = embed_dims[:num_stages], depths[:num_stages]
        mlp_ratios = mlp_ratios[:num_stages]

        self.in_channels = in_channels
        self.embed_dims = embed_dims
        self.depths = depths
        self.mlp_ratios = mlp_ratios
        self.drop_path_rate = drop_path_rate
        self.num_stages = num_stages
        self.frozen_stages = self.check_frozen_stages(frozen_stages, num_stages)
        self.norm_eval = norm_eval
        self.with_cp = with_cp

        dpr = drop_path_rates(depths, drop_path_rate)
        for i in range(num_stages):
            if i == 0:
                embed = StemConv(in_channels, embed_dims[0], act_cfg=act_cfg, norm_cfg=norm_cfg)
            else:
                embed = OverlapPatchEmbed(3, 2, embed_dims[i - 1], embed_dims[i], norm_cfg)
            blocks = nn.ModuleList([
                MSCABlock(embed_dims[i], attention_kernel_sizes, attention_kernel_paddings,
                          mlp_ratio=mlp_ratios[i], drop=drop_rate, drop_path=dpr[i][j],
                          act_cfg=act_cfg, norm_cfg=norm_cfg) for j in range(depths[i])
            ])
            setattr(self, f'patch_embed{i + 1}', embed)
            setattr(self, f'block{i + 1}', blocks)
            # mmseg's per-stage nn.LayerNorm(C) uses eps 1e-5 (not the 1e-6 of Conv2Former).
            setattr(self, f'norm{i + 1}', LayerNorm2d(embed_dims[i], eps=1e-5))
        self._freeze_stages()

    def default_init(self) -> None:
        """mmseg's initialisation: Conv2d ``N(0, sqrt(2 / fan_out))`` with ``fan_out = k_h k_w
        C_out / groups``, zero bias; LayerNorm weight 1, bias 0; Linear trunc-normal(0.02)."""
        for m in self.modules():
            if isinstance(m, nn.Linear):
                trunc_normal_init(m, std=.02, bias=0.)
            elif isinstance(m, nn.LayerNorm):
                constant_init(m, val=1.0, bias=0.)
            elif isinstance(m, nn.Conv2d):
                fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels // m.groups
                normal_init(m, mean=0, std=math.sqrt(2.0 / fan_out), bias=0)

    def stage_modules(self, stage: int) -> List[nn.Module]:
        return [getattr(self, f'{name}{stage + 1}') for name in ('patch_embed', 'block', 'norm')]

    def run_blocks(self, blocks: Sequence[nn.Module], x: torch.Tensor) -> torch.Tensor:
        """As ``BaseBackbone``'s; with ``with_cp`` BN running stats are updated once per step."""
        return run_blocks(blocks, x, self.with_cp)

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, ...]:
        """``(B, in_channels, H, W) -> [(B, C_i, H_i, W_i)]`` for the ``num_stages`` stages."""
        self.check_input(x)
        fused = self.fused
        nhwc = fused or (self.training and lean(x) and lean_supported(self.block1[0]))
        if nhwc:
            # NHWC memory: oneDNN's depthwise (strip) kernels are several times faster in it.
            x = x.contiguous(memory_format=torch.channels_last)
        outs = []
        for i in range(self.num_stages):
            embed = getattr(self, f'patch_embed{i + 1}')
            x = embed_fused(self, i, x) if fused else embed(x)
            blocks = getattr(self, f'block{i + 1}')
            x = self.run_blocks(blocks, x)
            x = stage_output(blocks, x) if fused else x
            x = getattr(self, f'norm{i + 1}')(x)
            # Outputs in plain NCHW memory (heads and mmcv ops expect it); the fused path keeps
            # NHWC for the next stage.
            outs.append(x.contiguous())
            if not nhwc:
                x = outs[-1]
        return tuple(outs)

    def fused_weights(self) -> Dict[str, object]:
        return embed_fused_weights(self)  # the blocks fold themselves

    @torch.no_grad()
    def switch_to_deploy(self):
        """As :meth:`FusedInference.switch_to_deploy`, then every stage's residual stream carried
        in per-channel units (:func:`.mscan_deploy.carry_streams`). Returns ``self``."""
        return carry_streams(self, super().switch_to_deploy)

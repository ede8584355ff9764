# Conv2Former, after the authors' code: https://github.com/HVision-NKU/Conv2Former (Hou et al., 2022).
"""Conv2Former: a transformer-style ConvNet built on convolutional modulation.

Paper: Q. Hou, C.-Z. Lu, M.-M. Cheng, J. Feng, "Conv2Former: A Simple Transformer-Style ConvNet for
Visual Recognition" (2022). Convolutional modulation replaces self-attention ``softmax(Q K^T) V`` by
a Hadamard product::

    Z = A ⊙ V,   A = DWConv_kxk(GELU(W1 X)),   V = W2 X,   output = W3 Z

Parameter names follow the authors' released code, so their checkpoints load unchanged.
"""
import re
from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn

from mmc2f.ops import (channel_norm, depthwise_conv, dwconv_gelu, dwconv_mlp_residual,
                       eager, fused_conv, fused_conv_add, fused_conv_mul, gated_dwconv_residual,
                       layer_norm_linear, pointwise_conv, recompute_enabled)
from mmc2f.registry import MODELS
from ..fusion import FusedInference, bn_affine, fold_channel_affine, fold_output_scale
from ..layer_depth import convnext_layer_id, convnext_min_num_layers
from ..layers import DropPath, LayerNorm2d, drop_path_rates, init_layer_scale, layer_scale
from .base import BaseBackbone

__all__ = ['ConvMod', 'MLP', 'Block', 'Conv2Former', 'checkpoint_filter_fn', 'check_kernel_size',
           'conv_stem', 'AUTHORS_INIT_CFG']


#: The authors' init, applied by ``init_weights()`` when no ``init_cfg`` is given: trunc-normal
#: (std 0.02) weights and zero biases for every conv and linear layer; norms keep (1, 0).
AUTHORS_INIT_CFG = [dict(type='TruncNormal', layer=['Conv2d', 'Linear'], std=.02, bias=0.)]


def checkpoint_filter_fn(state: Dict[str, torch.Tensor],
                         model: Optional[nn.Module] = None) -> Dict[str, torch.Tensor]:
    """The authors' classifier checkpoint as backbone weights: their earlier ``attn.a.*`` names
    become ``attn.att.*`` and the classifier (``head.*``, ``pred.*``) is dropped. Keys that are
    already mmc2f's pass through unchanged."""
    out = {}
    for key, value in state.items():
        if key.startswith(('head.', 'pred.')):
            continue
        out[re.sub(r'\.attn\.a\.(\d+)\.', r'.attn.att.\1.', key)] = value
    return out


def check_kernel_size(kernel_size) -> int:
    """A positive odd depthwise kernel size (padding ``k // 2`` keeps H, W)."""
    if not isinstance(kernel_size, int) or kernel_size < 1 or kernel_size % 2 == 0:
        raise ValueError(f'kernel_size must be a positive odd int, got {kernel_size!r}')
    return kernel_size


def conv_stem(in_channels: int, mid_channels: Tuple[int, int], out_channels: int,
              stride2: int, patch: int, bias: bool) -> nn.Sequential:
    """The convolutional stem, total stride ``4 * stride2 * patch / 2``: conv3x3 s2 -> GELU -> BN
    -> conv3x3 s``stride2`` -> GELU -> BN -> conv ``patch x patch`` s``patch``; the two 3x3 convs
    without bias. Shapes: ``(B, C_in, H, W) -> (B, C_out, H / s, W / s)``."""
    c1, c2 = mid_channels
    return nn.Sequential(
        nn.Conv2d(in_channels, c1, 3, stride=2, padding=1, bias=False),
        nn.GELU(),
        nn.BatchNorm2d(c1),
        nn.Conv2d(c1, c2, 3, stride=stride2, padding=1, bias=False),
        nn.GELU(),
        nn.BatchNorm2d(c2),
        nn.Conv2d(c2, out_channels, patch, stride=patch, bias=bias),
    )


def fold_conv_stem(stem: nn.Sequential) -> Dict[str, torch.Tensor]:
    """The second BatchNorm folded into the unpadded last conv (the first feeds a padded conv and
    stays: folding its shift would change the zero padding)."""
    return dict(zip(('stem_weight', 'stem_bias'),
                    fold_channel_affine(stem[6].weight, stem[6].bias, *bn_affine(stem[5]))))


def conv_stem_fused(stem: nn.Sequential, x: torch.Tensor, weight: torch.Tensor,
                    bias: torch.Tensor) -> torch.Tensor:
    """:func:`conv_stem` in eval mode with :func:`fold_conv_stem`'s weights, GELUs fused."""
    x = fused_conv(x, stem[0].weight, None, padding=1, stride=2, act='gelu')
    x = fused_conv(stem[2](x), stem[3].weight, None, padding=1, stride=stem[3].stride,
                   act='gelu')
    return fused_conv(x, weight, bias, stride=stem[6].stride)


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


class Block(FusedInference, nn.Module):
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
        if self.fused:
            return self.forward_fused(x)
        if recompute_enabled(x, *self.parameters()):
            return self.forward_recompute(x)
        x = x + self.drop_path(self._scaled(self.attn(x), self.layer_scale_1))
        x = x + self.drop_path(self._scaled(self.mlp(x), self.layer_scale_2))
        return x

    def forward_recompute(self, x: torch.Tensor) -> torch.Tensor:
        """:meth:`forward` for CPU training: four Functions of :mod:`mmc2f.ops.recompute` that save
        9 instead of 27 floats per pixel and channel (docs/training_memory.md). ``W1`` and ``W2``
        read the same ``LN(x)``: one matrix product with both."""
        attn, mlp, dim = self.attn, self.mlp, self.attn.v.out_channels
        x = x.permute(0, 2, 3, 1)  # (B, H, W, C)
        u = layer_norm_linear(x, attn.norm.weight, attn.norm.bias, attn.norm.eps,
                              torch.cat([attn.att[0].weight, attn.v.weight]).view(2 * dim, dim),
                              torch.cat([attn.att[0].bias, attn.v.bias]))
        dw, pos = attn.att[2], mlp.pos
        x = gated_dwconv_residual(x, u, dw.weight, dw.bias, dw.padding, attn.proj.weight.flatten(1),
                                  attn.proj.bias, self.layer_scale_1, self._drop_scale(x))
        q = layer_norm_linear(x, mlp.norm.weight, mlp.norm.bias, mlp.norm.eps,
                              mlp.fc1.weight.flatten(1), mlp.fc1.bias)
        x = dwconv_mlp_residual(x, q, pos.weight, pos.bias, pos.padding, mlp.fc2.weight.flatten(1),
                                mlp.fc2.bias, self.layer_scale_2, self._drop_scale(x))
        return x.permute(0, 3, 1, 2)

    def _drop_scale(self, x: torch.Tensor) -> Optional[torch.Tensor]:
        """``self.drop_path``'s per-sample factor ``(B,)`` (0 or ``1 / keep``), drawn as mmcv's
        ``DropPath`` draws it (the same RNG use), or ``None`` for the identity."""
        p = getattr(self.drop_path, 'drop_prob', 0.)
        if not (p > 0. and self.drop_path.training):
            return None
        keep = 1 - p
        mask = (keep + torch.rand((x.shape[0], 1, 1, 1), dtype=x.dtype, device=x.device)).floor_()
        return mask.div_(keep).view(-1)

    def fused_weights(self) -> Dict[str, torch.Tensor]:
        """LayerNorm affines folded into the 1x1 convs that read them (``att.0``, ``v``, ``fc1``),
        layer scales into ``proj`` and ``fc2``."""
        attn, mlp = self.attn, self.mlp

        def scaled(conv, gamma):
            if gamma is None:
                return conv.weight, conv.bias
            return fold_output_scale(conv.weight, conv.bias, gamma)

        folded = {
            'att': fold_channel_affine(attn.att[0].weight, attn.att[0].bias, attn.norm.weight,
                                       attn.norm.bias),
            'v': fold_channel_affine(attn.v.weight, attn.v.bias, attn.norm.weight, attn.norm.bias),
            'proj': scaled(attn.proj, self.layer_scale_1),
            'fc1': fold_channel_affine(mlp.fc1.weight, mlp.fc1.bias, mlp.norm.weight,
                                       mlp.norm.bias),
            'fc2': scaled(mlp.fc2, self.layer_scale_2),
        }
        return {f'{name}_{kind}': t for name, wb in folded.items()
                for kind, t in zip(('weight', 'bias'), wb)}

    def forward_fused(self, x: torch.Tensor) -> torch.Tensor:
        """The block in eval mode with folded weights (``'``), each ``GELU(conv)``, ``conv * v``
        and ``conv + residual`` one kernel on CPU::

            n = norm(x);  z = DW(GELU(W1' n)) * (W2' n);  x = x + W3' z
            n = norm(x);  h = GELU(fc1' n);  h = h + GELU(DW3(h));  x = x + fc2' h
        """
        attn, mlp = self.attn, self.mlp
        dw, pos = attn.att[2], mlp.pos
        n = channel_norm(x, attn.norm.eps)
        a = fused_conv(n, self.fused_att_weight, self.fused_att_bias, act='gelu')
        v = fused_conv(n, self.fused_v_weight, self.fused_v_bias)
        a = fused_conv_mul(a, dw.weight, dw.bias, v, padding=dw.padding, groups=dw.groups)
        x = fused_conv_add(a, self.fused_proj_weight, self.fused_proj_bias, x)
        n = channel_norm(x, mlp.norm.eps)
        h = fused_conv(n, self.fused_fc1_weight, self.fused_fc1_bias, act='gelu')
        h = dwconv_gelu(h, pos.weight, pos.bias, padding=pos.padding, residual=True)
        return fused_conv_add(h, self.fused_fc2_weight, self.fused_fc2_bias, x)


@MODELS.register_module()
class Conv2Former(BaseBackbone):
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
    arch_required = ('dims', 'depths')
    arch_optional = ('kernel_size', )
    num_stages = 4
    #: smallest H (and W) whose stride-32 feature map is non-empty: ``ceil(H/2) // 16 >= 1``.
    min_input_size = 31

    #: fused CPU inference runs the stem and stage 1 on this many images at a time, so that the
    #: wide stage-1 activations stay in the last-level cache (``0``: the whole batch at once)
    fused_chunk = 2

    default_init_cfg = AUTHORS_INIT_CFG
    checkpoint_filter_fn = staticmethod(checkpoint_filter_fn)
    pretrained_allow_missing = (r'out_norm\d+\.(weight|bias)', )
    pretrained_hint = ("Is it a Conv2Former checkpoint of this size (arch, kernel_size)? Convert "
                       "the authors' files with tools/model_converters/conv2former_to_mmc2f.py "
                       "and load the result with prefix='backbone.'.")

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
        super().__init__(init_cfg=init_cfg)
        settings = self.resolve_arch(arch, dict(kernel_size=kernel_size))
        self.dims: List[int] = list(settings['dims'])
        self.depths: List[int] = list(settings['depths'])
        if len(self.dims) != self.num_stages or len(self.depths) != self.num_stages:
            raise ValueError(f'Conv2Former has {self.num_stages} stages: dims and depths need '
                             f'{self.num_stages} entries each, got {self.dims} and {self.depths}')
        if any(int(d) < 1 for d in self.depths) or any(int(d) < 2 for d in self.dims):
            raise ValueError(f'depths must be >= 1 and dims >= 2, got {self.depths} and '
                             f'{self.dims}')
        self.kernel_size = kernel_size = check_kernel_size(settings.get('kernel_size', 11))
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
        self.frozen_stages = self.check_frozen_stages(frozen_stages, self.num_stages)
        self.norm_eval = norm_eval
        self.with_cp = with_cp

        stem_dim = self.dims[0] // 2
        self.downsample_layers = nn.ModuleList()
        self.downsample_layers.append(conv_stem(in_channels, (stem_dim, stem_dim), self.dims[0],
                                                stride2=1, patch=2, bias=False))
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

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, ...]:
        """``(B, in_channels, H, W)`` -> tuple of ``(B, dims[i], H_i, W_i)`` for ``out_indices``."""
        self.check_input(x)
        fused = self.fused
        # NHWC (channels_last) memory throughout: the layout of LayerNorm over channels, of the
        # blocks' 1x1 convs as matrix products, of fast depthwise kernels and of the fused path.
        x = x.contiguous(memory_format=torch.channels_last)
        # traced/exported graphs keep the batch whole (a split would fix the batch size)
        chunk = self.fused_chunk if fused and x.device.type == 'cpu' and eager() else 0
        outs = []
        for i in range(self.num_stages):
            if i == 0 and 0 < chunk < x.shape[0]:
                x = torch.cat([self._stage(0, part, fused) for part in x.split(chunk)])
            else:
                x = self._stage(i, x, fused)
            if i in self.out_indices:
                out = getattr(self, f'out_norm{i}')(x) if self.out_norms else x
                # LayerNorm2d leaves channels_last strides; necks, heads and mmcv's C++/CUDA ops
                # (RoIAlign reads raw NCHW memory) need plain contiguous NCHW tensors.
                outs.append(out.contiguous())
        return tuple(outs)

    def _stage(self, i: int, x: torch.Tensor, fused: bool) -> torch.Tensor:
        x = self._downsample_fused(i, x) if fused else self.downsample_layers[i](x)
        return self.run_blocks(self.stages[i], x)

    def fused_weights(self) -> Dict[str, torch.Tensor]:
        """The stem's second BatchNorm (:func:`fold_conv_stem`) and each downsampling LayerNorm
        folded into the conv after it. The blocks fuse themselves."""
        out = fold_conv_stem(self.downsample_layers[0])
        for i in range(1, self.num_stages):
            norm, conv = self.downsample_layers[i]
            out.update(zip((f'down{i}_weight', f'down{i}_bias'),
                           fold_channel_affine(conv.weight, conv.bias, norm.weight, norm.bias)))
        return out

    def _downsample_fused(self, i: int, x: torch.Tensor) -> torch.Tensor:
        if i == 0:
            return conv_stem_fused(self.downsample_layers[0], x, self.fused_stem_weight,
                                   self.fused_stem_bias)
        x = channel_norm(x, self.downsample_layers[i][0].eps)
        return fused_conv(x, getattr(self, f'fused_down{i}_weight'),
                          getattr(self, f'fused_down{i}_bias'), stride=2)

    def stage_modules(self, stage: int) -> List[nn.Module]:
        return [self.downsample_layers[stage], self.stages[stage]]

    def min_num_layers(self, decay_type: str = 'layer_wise') -> int:
        """N/T/S/B/L: 6/7/14/15/19 (``layer_wise``), 4 (``stage_wise``)."""
        return convnext_min_num_layers(self.depths[2], decay_type)

    def get_layer_depth(self, param_name: str, prefix: str = '',
                        num_layers: Optional[int] = None,
                        decay_type: str = 'layer_wise') -> Tuple[int, int]:
        """``(layer_id, num_layers + 2)`` for layer-wise learning-rate decay: ConvNeXt's rule
        (:mod:`mmc2f.models.layer_depth`), with ``num_layers`` defaulting to
        :meth:`min_num_layers` so that ids never decrease along the forward pass for any depth
        (ConvNeXt's fixed 6 or 12 would put the last blocks of a deep third stage above stage 3).
        Parameters outside the backbone (no ``prefix``) get ``num_layers + 1``.

        Args:
            param_name (str): e.g. ``'backbone.stages.2.5.attn.v.weight'``.
            prefix (str): the backbone's prefix in ``param_name``, e.g. ``'backbone.'``.
            num_layers (int, optional): id of the last stage; at least :meth:`min_num_layers`.
            decay_type (str): ``'layer_wise'`` or ``'stage_wise'``.
        """
        minimum = self.min_num_layers(decay_type)
        num_layers = minimum if num_layers is None else num_layers
        if num_layers < minimum:
            raise ValueError(
                f'num_layers={num_layers} is too small for Conv2Former with depths {self.depths} '
                f'({decay_type}): the minimum is {minimum}, so that the last stage stays below '
                f'the heads. Set num_layers >= {minimum}.')
        return convnext_layer_id(param_name, num_layers, prefix, decay_type), num_layers + 2

"""Layer-wise / stage-wise learning-rate decay for detectors, segmentors and classifiers.

One optimizer-wrapper constructor, :class:`LayerDecayOptimWrapperConstructor`, serves mmdet,
mmseg and mmpretrain models alike. It finds the model's backbone (``model.backbone``, or the model
itself when it is a bare backbone) and asks it for every trainable parameter's layer id:

* mmc2f backbones answer themselves (``get_layer_depth(name, prefix, num_layers, decay_type)``
  and ``min_num_layers``; Conv2Former uses ConvNeXt's rule, :mod:`mmc2f.models.layer_depth`);
* foreign backbones laid out like ConvNeXt (``downsample_layers.{0..3}``, ``stages.{0..3}``, e.g.
  mmpretrain's ``ConvNeXt``) get that same rule, as mmdet's / mmseg's
  ``LearningRateDecayOptimizerConstructor`` (``layer_wise`` and ``stage_wise``), parameter by
  parameter, without depending on the class name;
* any other backbone with mmpretrain's ``get_layer_depth(param_name, prefix)`` gets its own ids
  (``layer_wise`` only).

Parameters outside the backbone (neck, heads) get id ``num_layers + 1``, the full learning rate.
The learning-rate scale of id ``i`` is ``decay_rate ** (num_layers + 1 - i)``.

``paramwise_cfg`` keys:

* ``decay_rate`` (float, required; ``layer_decay_rate`` is accepted as an alias).
* ``decay_type``: ``'layer_wise'`` (default) or ``'stage_wise'``.
* ``num_layers`` (int, optional): the largest backbone layer id. Defaults to the smallest value
  the backbone allows; a smaller value raises a ``ValueError`` that states the minimum.
  ConvNeXt layout, ``layer_wise``: minimum ``4 + (depths[2] - 1) // 3`` (ConvNeXt-T 6,
  ConvNeXt-S/B 12, Conv2Former N/T/S/B/L 6/7/14/15/19); ``stage_wise``: 4.
* ``bias_decay_mult`` (default ``0.``), ``flat_decay_mult`` (default ``0.``; one-dimensional
  parameters), ``norm_decay_mult`` (default ``None``: not applied; parameters of BN/IN/GN/LN
  modules): weight-decay multipliers. The defaults reproduce mmdet/mmseg (biases and 1-D
  parameters without weight decay). Precedence: ``custom_keys`` > ``pos_embed``/``cls_token``/
  ``mask_token`` (no decay) > norm > bias > flat > base weight decay.
* ``custom_keys`` (dict): as in MMEngine, the longest key that is a substring of a parameter name
  wins; it may set ``decay_mult`` and ``lr_mult`` (multiplied on top of the layer scale).

The grouping is logged (MMEngine's current logger) as a compact table of parameter groups and
per-parameter at DEBUG level; :meth:`LayerDecayOptimWrapperConstructor.get_param_settings`
returns it per parameter name, and ``constructor.param_groups`` holds the last groups built.
"""
from collections import OrderedDict
from typing import Callable, Dict, List, Optional, Tuple

import torch.nn as nn
from mmengine.logging import print_log
from mmengine.optim import DefaultOptimWrapperConstructor
from mmengine.utils.dl_utils.parrots_wrapper import _BatchNorm, _InstanceNorm

from mmc2f.models.backbones.base import BaseBackbone
from mmc2f.models.layer_depth import (DECAY_TYPES, TOKEN_NAMES, convnext_layer_id,
                                      convnext_min_num_layers)
from mmc2f.registry import OPTIM_WRAPPER_CONSTRUCTORS

_NORM_TYPES = (_BatchNorm, _InstanceNorm, nn.GroupNorm, nn.LayerNorm)


def find_backbone(model: nn.Module) -> Tuple[nn.Module, str]:
    """Return ``(backbone, prefix)``: ``model.backbone`` with prefix ``'backbone.'``, or the model
    itself with prefix ``''`` when it is a bare backbone."""
    backbone = getattr(model, 'backbone', None)
    if isinstance(backbone, nn.Module):
        return backbone, 'backbone.'
    if has_convnext_layout(model) or hasattr(model, 'get_layer_depth'):
        return model, ''
    raise TypeError(f'{type(model).__name__} has no `backbone` attribute and is not itself a '
                    'backbone with ConvNeXt-style stages or `get_layer_depth`; layer-wise lr '
                    'decay cannot tell which parameters belong to which layer.')


def has_convnext_layout(backbone: nn.Module) -> bool:
    """Whether the backbone names its parameters like ConvNeXt / Conv2Former:
    ``downsample_layers.{0..3}`` and ``stages.{0..3}.{block}``."""
    down = getattr(backbone, 'downsample_layers', None)
    stages = getattr(backbone, 'stages', None)
    return (isinstance(down, (nn.ModuleList, nn.Sequential))
            and isinstance(stages, (nn.ModuleList, nn.Sequential))
            and len(down) == 4 and len(stages) == 4)


def min_num_layers(backbone: nn.Module, decay_type: str = 'layer_wise') -> int:
    """The smallest ``num_layers`` for a backbone: its own answer (mmc2f backbones), else the
    ConvNeXt-layout rule's."""
    if isinstance(backbone, BaseBackbone):
        return backbone.min_num_layers(decay_type)
    return convnext_min_num_layers(len(backbone.stages[2]), decay_type)


def _fmt(x) -> str:
    return 'None' if x is None else f'{x:.4g}'


@OPTIM_WRAPPER_CONSTRUCTORS.register_module()
class LayerDecayOptimWrapperConstructor(DefaultOptimWrapperConstructor):
    """Optimizer-wrapper constructor with layer-wise (or stage-wise) learning-rate decay.

    Use it from any OpenMMLab config as ``constructor='mmc2f.LayerDecayOptimWrapperConstructor'``;
    see the module docstring for ``paramwise_cfg``.

    Example::

        optim_wrapper = dict(
            type='AmpOptimWrapper',
            constructor='mmc2f.LayerDecayOptimWrapperConstructor',
            paramwise_cfg=dict(decay_rate=0.95, decay_type='layer_wise', num_layers=7),
            optimizer=dict(type='AdamW', lr=1e-4, betas=(0.9, 0.999), weight_decay=0.05))
    """

    def __init__(self, optim_wrapper_cfg: dict, paramwise_cfg: Optional[dict] = None):
        paramwise_cfg = dict(paramwise_cfg or {})
        if 'layer_decay_rate' in paramwise_cfg:
            if 'decay_rate' in paramwise_cfg:
                raise ValueError('Give either `decay_rate` or its alias `layer_decay_rate`, '
                                 'not both.')
            paramwise_cfg['decay_rate'] = paramwise_cfg.pop('layer_decay_rate')
        super().__init__(optim_wrapper_cfg, paramwise_cfg)
        self.decay_rate = paramwise_cfg.get('decay_rate')
        if self.decay_rate is None:
            raise ValueError('LayerDecayOptimWrapperConstructor needs paramwise_cfg.decay_rate.')
        if not (isinstance(self.decay_rate, (int, float)) and self.decay_rate > 0):
            raise ValueError(f'decay_rate must be a positive number, got {self.decay_rate!r}.')
        self.decay_type = paramwise_cfg.get('decay_type', 'layer_wise')
        if self.decay_type not in DECAY_TYPES:
            raise ValueError(f'decay_type must be one of {DECAY_TYPES}, '
                             f'got {self.decay_type!r}.')
        self.num_layers = paramwise_cfg.get('num_layers')
        if self.num_layers is not None and (not isinstance(self.num_layers, int)
                                            or isinstance(self.num_layers, bool)
                                            or self.num_layers < 1):
            raise ValueError(f'num_layers must be a positive int, got {self.num_layers!r}.')
        self.bias_decay_mult = paramwise_cfg.get('bias_decay_mult', 0.)
        self.flat_decay_mult = paramwise_cfg.get('flat_decay_mult', 0.)
        self.norm_decay_mult = paramwise_cfg.get('norm_decay_mult', None)
        self.custom_keys = paramwise_cfg.get('custom_keys', {})
        for key, value in self.custom_keys.items():
            unknown = set(value) - {'lr_mult', 'decay_mult'}
            if unknown:
                raise ValueError(f'custom_keys[{key!r}] may set only lr_mult/decay_mult, '
                                 f'got {sorted(unknown)}.')
        # longest key first, ties alphabetical (MMEngine's rule)
        self._sorted_keys = sorted(sorted(self.custom_keys), key=len, reverse=True)
        #: parameter groups built by the last call of :meth:`add_params`.
        self.param_groups: List[dict] = []

    # ------------------------------------------------------------------ layer ids
    def _layer_id_fn(self, model: nn.Module) -> Tuple[Callable[[str], int], int, str]:
        """Return ``(name -> layer id, num_layers, description of the rule)``."""
        backbone, prefix = find_backbone(model)
        bname = type(backbone).__name__
        if isinstance(backbone, BaseBackbone) or has_convnext_layout(backbone):
            num_layers = self._num_layers(min_num_layers(backbone, self.decay_type), bname)
            if isinstance(backbone, BaseBackbone):
                def layer_id(name: str) -> int:
                    return backbone.get_layer_depth(name, prefix, num_layers, self.decay_type)[0]

                return layer_id, num_layers, f'{self.decay_type} get_layer_depth of {bname}'
            return (lambda name: convnext_layer_id(name, num_layers, prefix, self.decay_type)), \
                num_layers, f'ConvNeXt-layout {self.decay_type} rule on {bname}'

        if not hasattr(backbone, 'get_layer_depth'):
            raise NotImplementedError(
                f'Layer-wise lr decay does not know how to number the layers of {bname}: it '
                'neither has ConvNeXt-style `downsample_layers`/`stages` nor a '
                '`get_layer_depth(param_name, prefix)` method.')
        if self.decay_type == 'stage_wise':
            raise NotImplementedError(
                f"decay_type='stage_wise' needs a backbone with ConvNeXt-style "
                f"`downsample_layers`/`stages`; {bname} only offers `get_layer_depth`, "
                "use decay_type='layer_wise'.")
        # mmpretrain convention: ids 0..max_id-2 for backbone layers, max_id-1 for the rest.
        num_layers = self._num_layers(max(backbone.get_layer_depth(name, prefix)[1]
                                          for name, _ in model.named_parameters()) - 2, bname)

        def layer_id(name: str) -> int:
            if not name.startswith(prefix):
                return num_layers + 1
            lid, max_id = backbone.get_layer_depth(name, prefix)
            return num_layers + 1 if lid >= max_id - 1 else lid

        return layer_id, num_layers, f'get_layer_depth of {bname}'

    def _num_layers(self, minimum: int, bname: str) -> int:
        """``num_layers`` from the config (default: the backbone's minimum), checked."""
        num_layers = minimum if self.num_layers is None else self.num_layers
        if num_layers < minimum:
            raise ValueError(
                f'num_layers={num_layers} is too small for {bname} ({self.decay_type}): the '
                f'minimum is {minimum}, so that the last stage stays below the heads. Set '
                f'num_layers >= {minimum} (or leave it unset).')
        return num_layers

    # ------------------------------------------------------------------ weight decay
    def _decay(self, name: str, param: nn.Parameter,
               norm_names: set) -> Tuple[Optional[float], float]:
        """Return ``(weight_decay, lr_mult)`` of one parameter."""
        base_wd = self.base_wd
        key = next((k for k in self._sorted_keys if k in name), None)
        if key is not None:
            cfg = self.custom_keys[key]
            wd = None if base_wd is None else base_wd * cfg.get('decay_mult', 1.)
            return wd, cfg.get('lr_mult', 1.)
        if base_wd is None:
            return None, 1.
        short = name.rsplit('.', 1)[-1]
        if short in TOKEN_NAMES:
            return 0., 1.
        if self.norm_decay_mult is not None and name in norm_names:
            return base_wd * self.norm_decay_mult, 1.
        if short == 'bias' and self.bias_decay_mult is not None:
            return base_wd * self.bias_decay_mult, 1.
        if param.ndim == 1 and self.flat_decay_mult is not None:
            return base_wd * self.flat_decay_mult, 1.
        return base_wd, 1.

    # ------------------------------------------------------------------ grouping
    def build_param_groups(self, model: nn.Module) -> List[dict]:
        """Group the trainable parameters of ``model``; each group holds ``params``,
        ``param_names``, ``lr``, ``lr_scale``, ``weight_decay``, ``layer_id``, ``group_name``."""
        if hasattr(model, 'module') and not hasattr(model, 'backbone'):
            model = model.module  # model wrappers (DDP & co.)
        layer_id_of, num_layers, rule = self._layer_id_fn(model)
        norm_names = {f'{mname}.{pname}' if mname else pname
                      for mname, mod in model.named_modules() if isinstance(mod, _NORM_TYPES)
                      for pname, _ in mod.named_parameters(recurse=False)}
        groups: Dict[tuple, dict] = OrderedDict()
        for name, param in model.named_parameters():
            if not param.requires_grad:
                continue  # frozen weights stay out of the optimizer
            layer_id = layer_id_of(name)
            wd, lr_mult = self._decay(name, param, norm_names)
            key = (layer_id, wd, lr_mult)
            if key not in groups:
                gname = f'layer_{layer_id}_' + ('decay' if wd else 'no_decay')
                if wd not in (None, 0., self.base_wd):
                    gname += f'_wd{wd:g}'
                if lr_mult != 1.:
                    gname += f'_lr{lr_mult:g}'
                scale = self.decay_rate**(num_layers + 1 - layer_id)
                lr = None if self.base_lr is None else scale * self.base_lr
                if lr is not None and lr_mult != 1.:
                    lr = lr * lr_mult
                group = dict(params=[], param_names=[], lr_scale=scale, layer_id=layer_id,
                             group_name=gname)
                if lr is not None:
                    group['lr'] = lr
                if wd is not None:
                    group['weight_decay'] = wd
                groups[key] = group
            groups[key]['params'].append(param)
            groups[key]['param_names'].append(name)
        self._num_layers_used = num_layers
        self._rule = rule
        return list(groups.values())

    def add_params(self, params: List[dict], module: nn.Module, **kwargs) -> None:
        """Fill ``params`` (in place) with the layer-decayed parameter groups of ``module``."""
        self.param_groups = self.build_param_groups(module)
        self._log(self.param_groups)
        params.extend(self.param_groups)

    def get_param_settings(self, model: nn.Module) -> Dict[str, dict]:
        """Per parameter name: ``lr``, ``lr_scale``, ``weight_decay``, ``layer_id``,
        ``group_name`` (without building an optimizer)."""
        out = {}
        for group in self.build_param_groups(model):
            for name in group['param_names']:
                out[name] = dict(lr=group.get('lr'), lr_scale=group['lr_scale'],
                                 weight_decay=group.get('weight_decay'),
                                 layer_id=group['layer_id'], group_name=group['group_name'])
        return out

    # ------------------------------------------------------------------ logging
    @staticmethod
    def format_table(groups: List[dict]) -> str:
        """A compact text table of the parameter groups (one row per group)."""
        header = ('group', 'layer', 'tensors', 'elements', 'lr_scale', 'lr', 'weight_decay')
        rows = [header]
        for g in sorted(groups, key=lambda g: (g['layer_id'], g['group_name'])):
            rows.append((g['group_name'], str(g['layer_id']), str(len(g['params'])),
                         str(sum(p.numel() for p in g['params'])), _fmt(g['lr_scale']),
                         _fmt(g.get('lr')), _fmt(g.get('weight_decay'))))
        widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
        lines = ['  '.join(c.rjust(w) if i else c.ljust(w)
                           for i, (c, w) in enumerate(zip(r, widths))) for r in rows]
        lines.insert(1, '-' * len(lines[0]))
        return '\n'.join(lines)

    def _log(self, groups: List[dict]) -> None:
        n_params = sum(len(g['params']) for g in groups)
        print_log(
            f'LayerDecayOptimWrapperConstructor: {self._rule}, decay_rate={self.decay_rate}, '
            f'num_layers={self._num_layers_used}, {len(groups)} groups / {n_params} tensors '
            f'(lr scale = decay_rate ** (num_layers + 1 - layer)):\n' + self.format_table(groups),
            logger='current')
        detail = [f'{name}: layer {g["layer_id"]}, lr_scale {_fmt(g["lr_scale"])}, '
                  f'weight_decay {_fmt(g.get("weight_decay"))}'
                  for g in groups for name in g['param_names']]
        print_log('Per-parameter layer decay:\n' + '\n'.join(detail), logger='current',
                  level=10)  # logging.DEBUG

"""What every mmc2f backbone shares: arch resolution, checked Pretrained loading, input checks,
frozen stages and ``norm_eval``, ``with_cp`` and the fused-inference switch."""
import copy
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
import torch.utils.checkpoint as cp
from mmengine.model import BaseModule
from torch.nn.modules.batchnorm import _BatchNorm

from mmc2f.checkpoint import load_pretrained_weights
from ..fusion import FusedInference

__all__ = ['BaseBackbone']

_PRETRAINED_KEYS = {'type', 'checkpoint', 'prefix', 'map_location', 'strict'}


class BaseBackbone(FusedInference, BaseModule):
    """Base of ``Conv2Former``, ``Conv2FormerIsotropic`` and ``MSCAN``.

    A subclass sets:

    * ``arch_settings`` (name -> settings dict), ``arch_aliases`` (short name -> name),
      ``arch_required`` / ``arch_optional`` (keys of a custom ``arch`` dict) and, when ``arch``
      may be omitted, ``arch_defaults``;
    * ``checkpoint_filter_fn`` (a foreign layout -> its own, pure on state dicts),
      ``pretrained_allow_missing`` (regexes of new keys) and ``pretrained_hint``;
    * ``min_input_size`` and :meth:`stage_modules` (what ``frozen_stages`` freezes).
    """

    arch_settings: Dict[str, dict] = {}
    arch_aliases: Dict[str, str] = {}
    arch_required: Sequence[str] = ()
    arch_optional: Sequence[str] = ()
    arch_defaults: Optional[dict] = None
    #: ``init_cfg`` used when none is given (``None``: :meth:`default_init`).
    default_init_cfg: Optional[Union[dict, List[dict]]] = None

    checkpoint_filter_fn: Optional[Callable] = None
    pretrained_allow_missing: Sequence[str] = ()
    pretrained_hint: Optional[str] = None

    min_input_size = 1
    in_channels = 3
    frozen_stages = -1
    norm_eval = False
    with_cp = False

    def __init__(self, init_cfg: Optional[Union[dict, List[dict]]] = None):
        if init_cfg is None:
            init_cfg = copy.deepcopy(self.default_init_cfg)
        super().__init__(init_cfg=init_cfg)

    # ------------------------------------------------------------------ arch
    @classmethod
    def resolve_arch(cls, arch: Optional[Union[str, dict]],
                     overrides: Optional[dict] = None) -> dict:
        """``arch`` (name, alias, dict or ``None``) -> a settings dict; ``overrides`` (keywords
        given explicitly, ``None`` values ignored) win over the arch's values."""
        name = cls.__name__
        if isinstance(arch, str):
            key = cls.arch_aliases.get(arch.lower(), arch.lower())
            if key not in cls.arch_settings:
                raise ValueError(
                    f'unknown {name} arch "{arch}"; choose one of {list(cls.arch_settings)} '
                    f'(aliases {list(cls.arch_aliases)}) or pass a dict with '
                    f'{list(cls.arch_required) + list(cls.arch_optional)}')
            settings = copy.deepcopy(cls.arch_settings[key])
        elif isinstance(arch, dict) or (arch is None and cls.arch_defaults is not None):
            arch = arch or {}
            missing = set(cls.arch_required) - set(arch)
            unknown = set(arch) - set(cls.arch_required) - set(cls.arch_optional)
            if missing or unknown:
                raise ValueError(
                    f'a {name} arch dict needs {list(cls.arch_required)} (optionally '
                    f'{list(cls.arch_optional)}); missing {sorted(missing)}, unknown '
                    f'{sorted(unknown)}')
            settings = dict(copy.deepcopy(cls.arch_defaults or {}), **arch)
        else:
            raise TypeError(f'{name}: arch must be a str or a dict, got {type(arch).__name__}')
        settings.update({k: v for k, v in (overrides or {}).items() if v is not None})
        return settings

    # ------------------------------------------------------------------ init / loading
    def init_weights(self):
        """``init_cfg=dict(type='Pretrained', checkpoint=..., prefix=None, strict=True)`` loads
        strictly (MMEngine's own ``Pretrained`` only warns on a wrong layout); a foreign layout
        goes through ``checkpoint_filter_fn``. ``init_cfg=None``: :meth:`default_init`."""
        cfg = self.init_cfg
        if isinstance(cfg, dict) and cfg.get('type') == 'Pretrained':
            unknown = set(cfg) - _PRETRAINED_KEYS
            if unknown:
                raise KeyError(f'{type(self).__name__}: unknown keys {sorted(unknown)} in the '
                               'Pretrained init_cfg')
            self.load_pretrained(cfg['checkpoint'], prefix=cfg.get('prefix'),
                                 map_location=cfg.get('map_location', 'cpu'),
                                 strict=cfg.get('strict', True))
            self._is_init = True
        elif cfg is None:
            self.default_init()
            self._is_init = True
        else:
            super().init_weights()

    def default_init(self) -> None:
        """Initialisation without ``init_cfg`` (the reference implementation's)."""

    def load_pretrained(self, checkpoint: str, prefix: Optional[str] = None,
                        map_location='cpu', strict: bool = True):
        """Load weights from a file or URL, checking the key layout (see :meth:`init_weights`)."""
        fn = type(self).checkpoint_filter_fn
        return load_pretrained_weights(
            self, checkpoint, prefix=prefix, map_location=map_location, strict=strict,
            convert=None if fn is None else (lambda state: fn(state, self)),
            allow_missing=self.pretrained_allow_missing, hint=self.pretrained_hint)

    # ------------------------------------------------------------------ forward helpers
    def check_input(self, x: torch.Tensor) -> None:
        """A clear error before any computation for a non-4D input, a wrong channel count or an
        input smaller than :attr:`min_input_size`."""
        name = type(self).__name__
        if x.dim() != 4:
            raise ValueError(f'{name} expects a (B, C, H, W) tensor, got shape {tuple(x.shape)}')
        if x.shape[1] != self.in_channels:
            raise ValueError(f'{name} was built for {self.in_channels} input channels '
                             f'(in_channels={self.in_channels}) but got an input with '
                             f'{x.shape[1]} channels (shape {tuple(x.shape)})')
        if min(x.shape[-2:]) < self.min_input_size:
            raise ValueError(f'{name} needs inputs of at least {self.min_input_size}x'
                             f'{self.min_input_size} pixels (its coarsest feature map would be '
                             f'empty); got H x W = {x.shape[-2]} x {x.shape[-1]}')

    def run_blocks(self, blocks: Sequence[nn.Module], x: torch.Tensor) -> torch.Tensor:
        """Run blocks in order; with ``with_cp`` each block's activations are recomputed in
        backward (``torch.utils.checkpoint``): same outputs and gradients, less memory."""
        for block in blocks:
            if self.with_cp and x.requires_grad:
                x = cp.checkpoint(block, x, use_reentrant=False)
            else:
                x = block(x)
        return x

    # ------------------------------------------------------------------ frozen stages, norm_eval
    @staticmethod
    def check_frozen_stages(frozen_stages: int, num_stages: int) -> int:
        if not -1 <= frozen_stages <= num_stages:
            raise ValueError(f'frozen_stages must be in [-1, {num_stages}], got {frozen_stages}')
        return frozen_stages

    def stage_modules(self, stage: int) -> List[nn.Module]:
        """The modules of stage ``stage`` (embedding/downsampling, blocks, norm)."""
        raise NotImplementedError

    def frozen_modules(self) -> List[nn.Module]:
        """``frozen_stages = k >= 0`` freezes the modules of stages ``0 .. k - 1`` (``k = 0``:
        the stem, i.e. the first module of stage 0)."""
        if self.frozen_stages < 0:
            return []
        if self.frozen_stages == 0:
            return self.stage_modules(0)[:1]
        return [m for i in range(self.frozen_stages) for m in self.stage_modules(i)]

    def _freeze_stages(self) -> None:
        for module in self.frozen_modules():
            module.eval()
            for param in module.parameters():
                param.requires_grad = False

    def train(self, mode: bool = True):
        """Train mode, keeping frozen stages in eval mode and, with ``norm_eval``, every BatchNorm
        (running statistics frozen). Drops fused inference weights (see ``switch_to_deploy``)."""
        super().train(mode)
        self._freeze_stages()
        if mode and self.norm_eval:
            for m in self.modules():
                if isinstance(m, _BatchNorm):
                    m.eval()
        return self

    # ------------------------------------------------------------------ layer-wise lr decay
    def min_num_layers(self, decay_type: str = 'layer_wise') -> int:
        """The smallest ``num_layers`` :meth:`get_layer_depth` accepts."""
        raise NotImplementedError(f'{type(self).__name__} defines no layer-depth rule for '
                                  'layer-wise learning-rate decay')

    def get_layer_depth(self, param_name: str, prefix: str = '',
                        num_layers: Optional[int] = None,
                        decay_type: str = 'layer_wise') -> Tuple[int, int]:
        """``(layer_id, num_layers + 2)`` of a parameter for layer-wise learning-rate decay
        (mmpretrain's convention: the heads get ``num_layers + 1``)."""
        raise NotImplementedError(f'{type(self).__name__} defines no layer-depth rule for '
                                  'layer-wise learning-rate decay')

"""Weights inside a checkpoint: extraction, prefixes and checked loading into a module."""
import logging
import re
from typing import Callable, Dict, Optional, Sequence, Tuple

import torch

from mmc2f.errors import CheckpointFormatError, KeyMapError
from .keymap import short_keys

__all__ = [
    'WEIGHT_KEYS', 'EMA_KEYS', 'find_state_dict', 'extract_state_dict', 'strip_prefix',
    'load_state_dict_checked', 'load_pretrained_weights'
]

#: where a checkpoint keeps its weights (MMEngine / mmcv / the authors' scripts; timm's ``model``).
WEIGHT_KEYS = ('state_dict', 'model')
#: where it keeps exponential-moving-average weights.
EMA_KEYS = ('state_dict_ema', 'model_ema', 'ema_state_dict')


def strip_prefix(state: Dict[str, torch.Tensor], prefix: str) -> Dict[str, torch.Tensor]:
    """``prefix`` removed from every key that starts with it (e.g. DDP's ``module.``); ``state``
    itself when none does."""
    if not any(k.startswith(prefix) for k in state):
        return state
    return {k[len(prefix):] if k.startswith(prefix) else k: v for k, v in state.items()}


def find_state_dict(checkpoint, prefer_ema: bool = False) -> Tuple[Dict[str, torch.Tensor], str]:
    """``(weights, where)``: the weights of a loaded checkpoint (a DDP ``module.`` prefix
    removed) and the entry they came from (one of :data:`WEIGHT_KEYS` / :data:`EMA_KEYS`, or
    ``'bare'`` for a plain state dict).

    Raises:
        CheckpointFormatError: no weights found, or ``prefer_ema`` and no EMA weights.
    """
    if not isinstance(checkpoint, dict):
        raise CheckpointFormatError(
            f'expected a checkpoint dict, got {type(checkpoint).__name__}')
    keys = EMA_KEYS if prefer_ema else WEIGHT_KEYS
    for key in keys:
        if isinstance(checkpoint.get(key), dict):
            return strip_prefix(checkpoint[key], 'module.'), key
    if prefer_ema:
        raise CheckpointFormatError(
            f'EMA weights were requested but the checkpoint has none of {list(EMA_KEYS)} '
            f'(top-level keys: {sorted(checkpoint)[:8]})')
    if checkpoint and all(isinstance(v, torch.Tensor) for v in checkpoint.values()):
        return strip_prefix(checkpoint, 'module.'), 'bare'
    raise CheckpointFormatError(
        f'cannot find the weights in this checkpoint: it has none of {list(WEIGHT_KEYS)} and is '
        f'not a bare state dict (top-level keys: {sorted(checkpoint)[:8]})')


def extract_state_dict(checkpoint, prefer_ema: bool = False) -> Dict[str, torch.Tensor]:
    """The weights inside a loaded checkpoint (see :func:`find_state_dict`)."""
    return find_state_dict(checkpoint, prefer_ema)[0]


def load_state_dict_checked(module: torch.nn.Module, state_dict: Dict[str, torch.Tensor],
                            strict: bool = True, hint: Optional[str] = None,
                            source: str = 'checkpoint', allow_missing: Sequence[str] = ()):
    """``module.load_state_dict`` that names the first missing and unexpected keys.

    Args:
        hint: what to suggest when the keys do not match (e.g. which converter to run).
        strict: raise :class:`CheckpointFormatError` on any mismatch; otherwise return the
            ``(missing, unexpected)`` lists. Shape mismatches always raise.
        allow_missing: regexes of the module's keys that a checkpoint may lack (layers that are
            new in mmc2f, e.g. per-output norms); they keep their initialisation.
    """
    own = module.state_dict()
    optional = [re.compile(p) for p in allow_missing]
    missing = [k for k in own if k not in state_dict and not any(p.fullmatch(k) for p in optional)]
    unexpected = [k for k in state_dict if k not in own]
    shape_err = [
        f'{k}: checkpoint {tuple(state_dict[k].shape)} vs model {tuple(own[k].shape)}'
        for k in own if k in state_dict and hasattr(state_dict[k], 'shape')
        and tuple(state_dict[k].shape) != tuple(own[k].shape)
    ]
    if strict and (missing or unexpected or shape_err):
        parts = [f'the {source} does not match {type(module).__name__}:']
        if missing:
            parts.append(f'missing keys: {short_keys(missing)}')
        if unexpected:
            parts.append(f'unexpected keys: {short_keys(unexpected)}')
        if shape_err:
            parts.append(f'shape mismatch: {short_keys(shape_err, 3)}')
        if hint:
            parts.append(hint)
        raise CheckpointFormatError(' '.join(parts))
    if shape_err:
        raise CheckpointFormatError(f'the {source} does not match {type(module).__name__}: '
                                    f'shape mismatch: {short_keys(shape_err, 3)}')
    module.load_state_dict({k: v for k, v in state_dict.items() if k in own}, strict=False)
    return missing, unexpected


def load_pretrained_weights(module: torch.nn.Module, checkpoint: str,
                            prefix: Optional[str] = None, map_location='cpu', strict: bool = True,
                            convert: Optional[Callable[[Dict[str, torch.Tensor]],
                                                       Dict[str, torch.Tensor]]] = None,
                            hint: Optional[str] = None, allow_missing: Sequence[str] = ()):
    """What ``init_cfg=dict(type='Pretrained', ...)`` does, but checked.

    MMEngine's own ``Pretrained`` loads with ``strict=False``, so a checkpoint of the wrong layout
    only warns and the model silently keeps random weights. This reads the file (through
    MMEngine's ``CheckpointLoader``, whose local scheme mmc2f's process setup routes to
    :func:`~mmc2f.checkpoint.io.load_checkpoint_file`), takes its weights, keeps the keys under
    ``prefix`` (e.g. ``'backbone.'`` for a whole-model checkpoint), applies ``convert`` (a
    ``checkpoint_filter_fn`` from another layout to the module's) and loads them strictly.
    """
    from mmengine.logging import print_log
    from mmengine.runner.checkpoint import CheckpointLoader

    name = type(module).__name__
    state = extract_state_dict(CheckpointLoader.load_checkpoint(checkpoint,
                                                                map_location=map_location))
    if prefix:
        prefix = prefix if prefix.endswith('.') else prefix + '.'
        state = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
        if not state:
            raise CheckpointFormatError(
                f'{name}: no key of checkpoint "{checkpoint}" starts with "{prefix}"')
    else:
        own = module.state_dict()
        if not any(k in own for k in state) and any(k.startswith('backbone.') for k in state):
            raise CheckpointFormatError(
                f'{name}: "{checkpoint}" looks like a whole-model checkpoint (keys start with '
                '"backbone."); load its backbone with init_cfg=dict(type="Pretrained", '
                'checkpoint=..., prefix="backbone.")')
    if convert is not None:
        try:
            state = convert(state)
        except KeyMapError as err:
            raise KeyMapError(f'{name}: checkpoint "{checkpoint}": {err}') from None
    missing, unexpected = load_state_dict_checked(
        module, state, strict=strict, source=f'checkpoint "{checkpoint}"', hint=hint,
        allow_missing=allow_missing)
    if missing or unexpected:
        print_log(f'{name}: loaded "{checkpoint}" with {len(missing)} missing and '
                  f'{len(unexpected)} unexpected keys (strict=False)', logger='current',
                  level=logging.WARNING)
    print_log(f'{name}: loaded pretrained weights from {checkpoint}', logger='current')
    return missing, unexpected

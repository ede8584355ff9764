"""Weights inside a checkpoint: extraction, prefixes and checked loading into a module."""
import logging
import re
from collections import OrderedDict
from typing import Callable, Dict, Optional, Sequence, Tuple

import torch

from mmc2f.errors import CheckpointFormatError, KeyMapError
from .keymap import short_keys

__all__ = [
    'WEIGHT_KEYS', 'EMA_KEYS', 'find_state_dict', 'extract_state_dict', 'strip_prefix',
    'load_state_dict_checked', 'load_pretrained_weights', 'MatchReport', 'mismatch_cause',
    'compare_state_dict', 'load_into_model'
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
        cause = mismatch_cause(MatchReport(module, state_dict))
        if cause:
            parts.append(f'(likely cause: {cause})')
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


# ------------------------------------------------------------ whole-model loads (runner, API)
class MatchReport:
    """How a state dict fits a module: what matched, what is missing, unexpected or mis-shaped."""

    def __init__(self, module: torch.nn.Module, state: Dict[str, torch.Tensor]):
        self.own = module.state_dict()
        self.state = state
        self.missing = [k for k in self.own if k not in state]
        self.unexpected = [k for k in state if k not in self.own]
        self.shape = [(k, tuple(state[k].shape), tuple(v.shape)) for k, v in self.own.items()
                      if k in state and hasattr(state[k], 'shape')
                      and tuple(state[k].shape) != tuple(v.shape)]
        bad_shape = {k for k, _, _ in self.shape}
        self.matched = [k for k in self.own if k in state and k not in bad_shape]
        params = dict(module.named_parameters())
        done = set(self.matched)
        self.n_params = len(params)
        self.n_params_matched = sum(1 for k in params if k in done)
        self.numel = sum(p.numel() for p in params.values())
        self.numel_matched = sum(p.numel() for k, p in params.items() if k in done)

    @property
    def ok(self) -> bool:
        return not (self.missing or self.unexpected or self.shape)

    def shares(self) -> Tuple[float, float]:
        """Matched share of the module's parameter tensors and of their elements."""
        return (self.n_params_matched / max(self.n_params, 1),
                self.numel_matched / max(self.numel, 1))

    def summary(self) -> str:
        """``N missing keys (e.g. ...); M unexpected keys (e.g. ...); K shapes differ (...)``."""
        parts = []
        if self.missing:
            parts.append(f'{len(self.missing)} missing keys (e.g. {short_keys(self.missing, 3)})')
        if self.unexpected:
            parts.append(f'{len(self.unexpected)} unexpected keys (e.g. '
                         f'{short_keys(self.unexpected, 3)})')
        if self.shape:
            shapes = [f'{k}: checkpoint {c} vs model {m}' for k, c, m in self.shape]
            parts.append(f'{len(self.shape)} shapes differ (e.g. {short_keys(shapes, 2)})')
        return '; '.join(parts)

    def table(self) -> str:
        """What did not match, one row per kind (for the log of a partial load)."""
        p_share, e_share = self.shares()
        rows = [f'matched {len(self.matched)}/{len(self.own)} entries: '
                f'{self.n_params_matched}/{self.n_params} parameter tensors '
                f'({p_share:.0%}), {e_share:.0%} of parameter elements']
        for what, keys in (('missing in checkpoint (kept as initialised)', self.missing),
                           ('unexpected in checkpoint (ignored)', self.unexpected),
                           ('shape differs (kept as initialised)',
                            [f'{k} {c} vs {m}' for k, c, m in self.shape])):
            if keys:
                rows.append(f'  | {what:<44} | {len(keys):>5} | {short_keys(keys, 3)}')
        return '\n'.join(rows)


_KINDS = (('segmentor', ('decode_head.', 'auxiliary_head.')),
          ('detector', ('rpn_head.', 'roi_head.', 'bbox_head.', 'mask_head.')),
          ('classifier', ('head.',)))


def _kind(keys) -> Optional[str]:
    keys = list(keys)
    for kind, prefixes in _KINDS:
        if any(k.startswith(prefixes) for k in keys):
            return kind
    if keys and all(k.startswith('backbone.') for k in keys):
        return 'backbone'
    return None


_NUM_CLASSES_KEY = re.compile(r'(conv_seg|fc_cls|head\.fc|cls_score|fc_logits)\.(weight|bias)$')


def mismatch_cause(report: MatchReport) -> Optional[str]:
    """A likely cause of a mismatch, in words (``None`` if no rule fits)."""
    own, state = report.own, report.state
    if report.unexpected and any(k.startswith('backbone.') for k in own):
        prefixed = sum(1 for k in report.unexpected if 'backbone.' + k in own)
        if prefixed >= max(1, len(report.unexpected) // 2):
            return ('the checkpoint holds only backbone weights (keys without the "backbone." '
                    'prefix): load it with backbone init_cfg=dict(type="Pretrained", '
                    'checkpoint=...) instead')
    ck_kind, model_kind = _kind(state), _kind(own)
    if ck_kind == 'backbone' and model_kind != 'backbone':
        return 'the checkpoint holds only backbone weights'
    if ck_kind and model_kind and ck_kind != model_kind:
        return f'a {ck_kind} checkpoint for a {model_kind}'
    heads = [(k, c, m) for k, c, m in report.shape
             if _NUM_CLASSES_KEY.search(k) and c[1:] == m[1:]] or \
            [(k, c, m) for k, c, m in report.shape
             if 'head' in k and len(c) == len(m) and c[1:] == m[1:]]
    if heads:
        k, c, m = heads[0]
        extra = 1 if 'fc_cls' in k else 0  # mmdet's classifier has a background output
        return f'head shapes differ: num_classes {c[0] - extra} vs {m[0] - extra} ({k})'
    if report.shape:
        return (f'{len(report.shape)} layer shapes differ: a checkpoint of another model size '
                'or arch?')
    if report.missing and report.unexpected:
        for prefix in {k.split('.', 1)[0] + '.' for k in report.unexpected if '.' in k}:
            if sum(1 for k in report.unexpected
                   if k.startswith(prefix) and k[len(prefix):] in own) >= len(report.missing) // 2:
                return f'the checkpoint\'s keys carry an extra "{prefix}" prefix'
        return ('the layer names differ: a checkpoint of another model, or in the authors\' '
                'layout (convert it with tools/model_converters/)')
    if report.missing:
        return 'the checkpoint lacks part of the model (a checkpoint of a smaller model?)'
    if report.unexpected:
        return 'the checkpoint has layers this model lacks (a checkpoint of a larger model?)'
    return None


def _with_metadata(state, source_state):
    meta = getattr(source_state, '_metadata', None)
    if meta is not None:
        state = OrderedDict(state)
        state._metadata = meta  # BN/version upgrades in _load_from_state_dict
    return state


def load_into_model(module: torch.nn.Module, state: Dict[str, torch.Tensor], strict: bool = True,
                    source: str = 'checkpoint', min_match: float = 0.5,
                    hint: Optional[str] = None, logger='current') -> MatchReport:
    """Load a whole model's weights, checked.

    ``strict``: any missing, unexpected or mis-shaped key raises :class:`CheckpointFormatError`
    naming counts, examples and the likely cause (testing, resuming, inference). Otherwise
    (fine-tuning with ``load_from``) the matching entries are loaded, a table of what did not
    match is logged, and the load fails only when most of the model found no match: fewer than
    ``min_match`` of its parameter tensors *and* of their elements.
    """
    from mmengine.logging import print_log
    report = MatchReport(module, state)
    name = type(module).__name__
    cause = None if report.ok else mismatch_cause(report)
    tail = (f'; likely cause: {cause}' if cause else '') + (f'. {hint}' if hint else '')
    if strict and not report.ok:
        raise CheckpointFormatError(f'{source} does not match {name}: {report.summary()}{tail}')
    p_share, e_share = report.shares()
    if not strict and report.n_params and p_share < min_match and e_share < min_match:
        raise CheckpointFormatError(
            f'{source} does not fit {name}: only {p_share:.0%} of its parameter tensors '
            f'({e_share:.0%} of the elements) found a match ({report.summary()}){tail}')
    kept = {k: state[k] for k in report.matched}
    module.load_state_dict(_with_metadata(kept, state), strict=False)
    if not report.ok:
        print_log(f'{source}: partial load into {name}\n{report.table()}'
                  + (f'\n  likely cause: {cause}' if cause else ''), logger=logger,
                  level=logging.WARNING)
    return report


def compare_state_dict(module: torch.nn.Module, state: Dict[str, torch.Tensor]) -> MatchReport:
    """:class:`MatchReport` of ``state`` against ``module`` (nothing is loaded)."""
    return MatchReport(module, state)

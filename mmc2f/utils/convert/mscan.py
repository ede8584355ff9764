"""MSCAN checkpoints: the authors' ImageNet layout -> mmc2f's (= mmseg's) layout.

The authors' SegNeXt release (``mscan_{t,s,b,l}.pth``, ImageNet-1k classification) names the MLP's
depthwise convolution ``block{s}.{j}.mlp.dwconv.dwconv.*`` and carries a classifier ``head.*``;
mmseg (and :class:`mmc2f.models.backbones.mscan.MSCAN`) name it ``block{s}.{j}.mlp.dwconv.*``. All
other keys are equal.

Decision on the classification head: it is **dropped**. mmc2f has no MSCAN classifier, the
segmentation and detection models never use it, and keeping it would make the converted file fail
a strict load into the backbone. The converter reports how many head keys it dropped.

Missing BatchNorm ``num_batches_tracked`` counters (some exports omit them) are filled with 0; they
are not used by BN in eval mode or with a momentum.
"""
import re
from typing import Dict, Optional, Tuple

import torch

from .common import KeyMapError, apply_key_map

__all__ = ['MSCAN_RULES', 'MSCAN_DROP', 'detect_mscan_arch', 'convert_mscan_state_dict',
           'convert_mscan_checkpoint']

#: (regex, replacement) rules, applied to keys without any ``module.``/``backbone.`` prefix.
MSCAN_RULES = [
    (r'(block\d+\.\d+\.mlp\.dwconv)\.dwconv\.(weight|bias)', r'\1.\2'),  # authors -> mmseg
    (r'(patch_embed\d+|block\d+|norm\d+)\..+', r'\g<0>'),  # identical in both layouts
]
#: keys deliberately discarded: the ImageNet classifier.
MSCAN_DROP = [r'head\..+']


def detect_mscan_arch(state_dict: Dict[str, torch.Tensor]) -> dict:
    """Read ``embed_dims``, ``depths`` and ``mlp_ratios`` from MSCAN weights (either layout).

    Returns a dict with those three lists, ``in_channels`` and ``arch``: the name in
    :data:`mmc2f.models.backbones.mscan.arch_settings` they match, or ``None`` for a custom size.
    """
    from mmc2f.models.backbones.mscan import arch_settings
    dims, depths, ratios = [], [], []
    stage = 1
    while f'norm{stage}.weight' in state_dict:
        dims.append(int(state_dict[f'norm{stage}.weight'].shape[0]))
        blocks = {int(m.group(1)) for k in state_dict
                  for m in [re.match(rf'block{stage}\.(\d+)\.', k)] if m}
        depths.append(len(blocks))
        fc1 = state_dict.get(f'block{stage}.0.mlp.fc1.weight')
        ratios.append(fc1.shape[0] / dims[-1] if fc1 is not None else None)
        stage += 1
    if not dims:
        raise KeyMapError('not an MSCAN checkpoint: it has no "norm1.weight" (first keys: '
                          f'{list(state_dict)[:5]})')
    ratios = [int(r) if r is not None and float(r).is_integer() else r for r in ratios]
    stem = state_dict.get('patch_embed1.proj.0.weight')
    arch = None
    for name, setting in arch_settings.items():
        if (setting['embed_dims'] == dims and setting['depths'] == depths
                and setting['mlp_ratios'] == ratios):
            arch = name
            break
    return dict(arch=arch, embed_dims=dims, depths=depths, mlp_ratios=ratios,
                in_channels=int(stem.shape[1]) if stem is not None else 3)


def convert_mscan_state_dict(state_dict: Dict[str, torch.Tensor],
                             expected: Optional[Dict[str, torch.Tensor]] = None,
                             what: str = 'MSCAN checkpoint') -> Dict[str, torch.Tensor]:
    """Map the authors' or mmseg's MSCAN keys to mmc2f's; drops ``head.*``.

    Args:
        state_dict: backbone weights with no wrapper prefix.
        expected: a freshly built model's state dict; with it, the result must have exactly its
            keys (missing ``num_batches_tracked`` counters are filled with 0 first).

    Raises:
        KeyMapError: a key matches no MSCAN layout, or (with ``expected``) keys are missing/extra.
    """
    out = apply_key_map(state_dict, MSCAN_RULES, drop=MSCAN_DROP, what=what)
    if expected is not None:
        for key, value in expected.items():
            if key.endswith('num_batches_tracked') and key not in out:
                out[key] = torch.zeros_like(value)
        # Identity pass: only the coverage check against the model's keys.
        out = apply_key_map(out, [(r'.+', r'\g<0>')], expected=list(expected), what=what)
    return out


def convert_mscan_checkpoint(checkpoint, prefer_ema: bool = False
                             ) -> Tuple[Dict[str, torch.Tensor], dict]:
    """Convert a loaded MSCAN checkpoint (bare, or under ``state_dict``/``model``).

    Detects the size from the weights, builds that :class:`MSCAN` (plain BN) and checks that the
    converted keys and shapes are exactly the model's.

    Returns:
        ``(state_dict, info)``; ``info`` has ``arch``, ``embed_dims``, ``depths``, ``mlp_ratios``,
        ``dropped`` (the head keys) and ``num_keys``.
    """
    from mmc2f.models.backbones.mscan import MSCAN
    from mmc2f.utils.checkpoint import extract_state_dict
    state = extract_state_dict(checkpoint, prefer_ema=prefer_ema)
    state = {(k[7:] if k.startswith('module.') else k): v for k, v in state.items()}
    info = detect_mscan_arch(state)
    model = MSCAN(in_channels=info['in_channels'], embed_dims=info['embed_dims'],
                  depths=info['depths'], mlp_ratios=info['mlp_ratios'],
                  num_stages=len(info['embed_dims']), norm_cfg=dict(type='BN', requires_grad=True))
    expected = model.state_dict()
    out = convert_mscan_state_dict(state, expected=expected)
    bad = [f'{k}: {tuple(v.shape)} vs {tuple(expected[k].shape)}' for k, v in out.items()
           if tuple(v.shape) != tuple(expected[k].shape)]
    if bad:
        raise KeyMapError(f'MSCAN checkpoint: shapes do not match the detected model: {bad[:3]}')
    # Same order as the model's state dict; plain contiguous tensors only.
    out = {k: out[k].detach().clone().contiguous() for k in expected}
    info['dropped'] = [k for k in state if any(re.fullmatch(p, k) for p in MSCAN_DROP)]
    info['num_keys'] = len(out)
    return out, info

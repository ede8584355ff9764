"""Converters from the authors' checkpoint layouts, verified against freshly built models.

This layer sits above the models: the key maps themselves are pure functions beside each model
(``checkpoint_filter_fn`` in :mod:`mmc2f.models.backbones.conv2former` / ``.mscan``); here they are
applied to whole checkpoints and the result is checked key by key and shape by shape against the
model of the detected size. ``tools/model_converters/`` are thin command-line wrappers.

Conv2Former (the authors' training-script checkpoint -> mmpretrain ``ImageClassifier``)::

    downsample_layers.* / stages.*      -> backbone.*        (names unchanged)
    stages.*.attn.a.*   (earlier naming) -> backbone.stages.*.attn.att.*
    head.0.* (conv1x1 -> 1280)           -> neck.proj.*
    head.2.* (LayerNorm 1280)            -> neck.norm.*
    pred.*   (Linear)                    -> head.fc.*

MSCAN (the authors' ImageNet layout -> mmseg's = mmc2f's): ``mlp.dwconv.dwconv`` ->
``mlp.dwconv``; the ImageNet classifier ``head.*`` is dropped (no mmc2f model uses it, and it would
fail a strict load into the backbone).
"""
import re
from dataclasses import asdict, dataclass, field
from typing import Dict, List, Optional, Tuple, Union

import torch

from mmc2f.checkpoint import apply_key_map, extract_state_dict, find_state_dict
from mmc2f.errors import KeyMapError
from mmc2f.models.backbones.conv2former import Conv2Former
from mmc2f.models.backbones.mscan import MSCAN, MSCAN_DROP, arch_settings
from mmc2f.models.backbones.mscan import checkpoint_filter_fn as mscan_checkpoint_filter_fn
from mmc2f.models.necks.conv2former_neck import Conv2FormerNeck

__all__ = [
    'CONV2FORMER_RULES', 'Conv2FormerInfo', 'describe_conv2former', 'convert_conv2former',
    'detect_mscan_arch', 'convert_mscan_state_dict', 'convert_mscan_checkpoint'
]


#: ``(regex, replacement)`` rules, tried in order (see :func:`~.common.apply_key_map`).
CONV2FORMER_RULES = [
    (r'stages\.(\d+)\.(\d+)\.attn\.a\.(\d+)\.(weight|bias)',
     r'backbone.stages.\1.\2.attn.att.\3.\4'),
    (r'(downsample_layers\..+)', r'backbone.\1'),
    (r'(stages\..+)', r'backbone.\1'),
    (r'head\.0\.(weight|bias)', r'neck.proj.\1'),
    (r'head\.2\.(weight|bias)', r'neck.norm.\1'),
    (r'pred\.(weight|bias)', r'head.fc.\1'),
]


@dataclass
class Conv2FormerInfo:
    """What :func:`describe_conv2former` reads off a checkpoint's tensor shapes."""
    arch: Optional[str]  # 'nano' ... 'large', or None for a non-standard size
    dims: List[int]
    depths: List[int]
    kernel_size: int
    in_channels: int
    num_classes: int
    head_channels: int
    naming: str  # 'att' (released) or 'a' (earlier public version)
    weights: str  # which entry was read: 'state_dict', 'state_dict_ema', ... or 'bare'
    source_arch: Optional[str] = None  # the checkpoint's own 'arch' entry, if any
    source_epoch: Optional[int] = None
    extra: Dict = field(default_factory=dict)

    @property
    def backbone_arch(self) -> Union[str, Dict]:
        """``arch`` for :class:`~mmc2f.models.backbones.conv2former.Conv2Former`."""
        return self.arch if self.arch is not None else dict(dims=self.dims, depths=self.depths)

    def meta(self) -> Dict:
        """Plain strings, ints and lists of ints, for the converted checkpoint's ``meta``."""
        meta = {k: v for k, v in asdict(self).items() if v is not None and k != 'extra'}
        meta['arch'] = self.arch if self.arch is not None else 'custom'
        return meta


def _need(state_dict, key):
    if key not in state_dict:
        raise KeyMapError(f'not a Conv2Former checkpoint in the authors\' layout: no "{key}" '
                          f'(first keys: {list(state_dict)[:5]})')
    return state_dict[key]


def describe_conv2former(checkpoint, use_ema: bool = False) -> Conv2FormerInfo:
    """Detect size, kernel, naming and classes of an authors' checkpoint from its tensor shapes.

    * ``dims``: output channels of the stem's last conv (``downsample_layers.0.6``) and of the
      three 2x2 downsampling convs (``downsample_layers.{1,2,3}.1``);
    * ``depths``: the number of distinct block indices ``j`` in ``stages.{i}.{j}.*``;
    * ``kernel_size``: ``stages.0.0.attn.att.2.weight`` (or ``attn.a.2``) is ``[C, 1, k, k]``;
    * ``arch``: the named size with these dims and depths, else None (a custom size).
    """
    state_dict, weights = find_state_dict(checkpoint, use_ema)
    stem = _need(state_dict, 'downsample_layers.0.6.weight')
    dims = [int(stem.shape[0])]
    dims += [int(_need(state_dict, f'downsample_layers.{i}.1.weight').shape[0]) for i in (1, 2, 3)]
    blocks = [set() for _ in range(4)]
    for key in state_dict:
        m = re.match(r'stages\.(\d+)\.(\d+)\.', key)
        if m and int(m.group(1)) < 4:
            blocks[int(m.group(1))].add(int(m.group(2)))
    depths = [len(b) for b in blocks]
    if 'stages.0.0.attn.att.2.weight' in state_dict:
        naming, dw = 'att', state_dict['stages.0.0.attn.att.2.weight']
    else:
        naming, dw = 'a', _need(state_dict, 'stages.0.0.attn.a.2.weight')
    arch = next((name for name, s in Conv2Former.arch_settings.items()
                 if s['dims'] == dims and s['depths'] == depths), None)
    epoch = checkpoint.get('epoch') if weights != 'bare' else None
    source_arch = checkpoint.get('arch') if weights != 'bare' else None
    return Conv2FormerInfo(
        arch=arch, dims=dims, depths=depths, kernel_size=int(dw.shape[-1]),
        in_channels=int(_need(state_dict, 'downsample_layers.0.0.weight').shape[1]),
        num_classes=int(_need(state_dict, 'pred.weight').shape[0]),
        head_channels=int(_need(state_dict, 'head.0.weight').shape[0]),
        naming=naming, weights=weights,
        source_arch=source_arch if isinstance(source_arch, str) else None,
        source_epoch=epoch if isinstance(epoch, int) and not isinstance(epoch, bool) else None)


def expected_classifier_shapes(info: Conv2FormerInfo) -> Dict[str, torch.Size]:
    """Keys and shapes of the target ``ImageClassifier`` state dict, from models built on the
    ``meta`` device (no memory, no init): backbone + neck + ``head.fc`` of ``LinearClsHead``."""
    with torch.device('meta'):
        backbone = Conv2Former(info.backbone_arch, in_channels=info.in_channels,
                               kernel_size=info.kernel_size, out_indices=(3, ))
        neck = Conv2FormerNeck(info.dims[-1], info.head_channels)
    shapes = {f'backbone.{k}': v.shape for k, v in backbone.state_dict().items()}
    shapes.update({f'neck.{k}': v.shape for k, v in neck.state_dict().items()})
    shapes['head.fc.weight'] = torch.Size([info.num_classes, info.head_channels])
    shapes['head.fc.bias'] = torch.Size([info.num_classes])
    return shapes


def convert_conv2former(checkpoint, use_ema: bool = False) -> Dict[str, torch.Tensor]:
    """Convert an authors' Conv2Former checkpoint to mmpretrain ``ImageClassifier`` keys.

    Args:
        checkpoint (dict): the loaded checkpoint (a training-script dict or a bare state dict).
        use_ema (bool): convert ``state_dict_ema`` instead of ``state_dict``.

    Returns:
        dict: ``backbone.*``, ``neck.*``, ``head.fc.*`` tensors (the source tensors, unchanged).

    Raises:
        KeyMapError: an unknown key, a missing key or a shape that does not fit the detected size.
    """
    info = describe_conv2former(checkpoint, use_ema)
    state_dict, _ = find_state_dict(checkpoint, use_ema)
    expected = expected_classifier_shapes(info)
    what = f'Conv2Former checkpoint ({info.weights}, detected {info.arch or "custom"} size)'
    out = apply_key_map(state_dict, CONV2FORMER_RULES, expected=expected, what=what)
    wrong = [f'{k}: {tuple(v.shape)} (expected {tuple(expected[k])})'
             for k, v in out.items() if v.shape != expected[k]]
    if wrong:
        raise KeyMapError(f'{what}: tensor shapes do not fit the detected size: '
                          f'{", ".join(wrong[:5])}')
    return out


def detect_mscan_arch(state_dict: Dict[str, torch.Tensor]) -> dict:
    """Read ``embed_dims``, ``depths`` and ``mlp_ratios`` from MSCAN weights (either layout).

    Returns a dict with those three lists, ``in_channels`` and ``arch``: the name in
    :data:`mmc2f.models.backbones.mscan.arch_settings` they match, or ``None`` for a custom size.
    """
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
    """The model's ``checkpoint_filter_fn``, then (with ``expected``, a freshly built model's state
    dict) exactly its keys: missing BatchNorm ``num_batches_tracked`` counters (some exports omit
    them; unused in eval) are filled with 0, any other difference raises :class:`KeyMapError`."""
    out = mscan_checkpoint_filter_fn(state_dict, what=what)
    if expected is not None:
        for key, value in expected.items():
            if key.endswith('num_batches_tracked') and key not in out:
                out[key] = torch.zeros_like(value)
        # identity map: only the coverage check against the model's keys
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
    state = extract_state_dict(checkpoint, prefer_ema=prefer_ema)
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

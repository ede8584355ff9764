"""Conv2Former: the authors' checkpoint layout -> mmpretrain ``ImageClassifier`` with mmc2f parts.

Source (the authors' training script): a dict with ``state_dict`` (and sometimes
``state_dict_ema``, ``optimizer``, ``args`` = ``argparse.Namespace``, ``epoch``, ``arch``), or a
bare state dict. Keys::

    downsample_layers.* / stages.*      -> backbone.*        (names unchanged)
    stages.*.attn.a.*   (earlier naming) -> backbone.stages.*.attn.att.*
    head.0.* (conv1x1 -> 1280)           -> neck.proj.*
    head.2.* (LayerNorm 1280)            -> neck.norm.*
    pred.*   (Linear)                    -> head.fc.*

The target is ``ImageClassifier(backbone=mmc2f.Conv2Former(out_indices=(3,)),
neck=mmc2f.Conv2FormerNeck, head=LinearClsHead(in_channels=1280))``; its ``backbone.*`` keys also
load into a detection/segmentation backbone through
``init_cfg=dict(type='Pretrained', checkpoint=..., prefix='backbone.')``.

The conversion refuses (:class:`~mmc2f.utils.convert.common.KeyMapError`) when any source key
matches no rule, or when the result is not exactly the state dict of a freshly built model of the
detected size (no missing, no extra key, equal shapes).
"""
import re
from dataclasses import asdict, dataclass, field
from typing import Dict, List, Optional, Union

import torch

from .common import KeyMapError, apply_key_map

__all__ = ['Conv2FormerInfo', 'describe_conv2former', 'convert_conv2former', 'CONV2FORMER_RULES']

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


def _authors_state_dict(checkpoint, use_ema: bool):
    """The authors' weights inside ``checkpoint`` and the name of the entry they came from."""
    if not isinstance(checkpoint, dict):
        raise KeyMapError(f'expected a checkpoint dict, got {type(checkpoint).__name__}')
    if use_ema:
        for key in ('state_dict_ema', 'model_ema'):
            if isinstance(checkpoint.get(key), dict):
                return checkpoint[key], key
        raise KeyMapError('--ema / use_ema=True: this checkpoint has no "state_dict_ema" '
                          f'(top-level keys: {sorted(checkpoint)})')
    for key in ('state_dict', 'model'):
        if isinstance(checkpoint.get(key), dict):
            return checkpoint[key], key
    if checkpoint and all(isinstance(v, torch.Tensor) for v in checkpoint.values()):
        return checkpoint, 'bare'
    raise KeyMapError('cannot find the weights: the checkpoint has no "state_dict" and is not a '
                      f'bare state dict (top-level keys: {sorted(checkpoint)[:8]})')


def _strip_module_prefix(state_dict: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """Drop a DistributedDataParallel ``module.`` prefix shared by all keys."""
    if state_dict and all(k.startswith('module.') for k in state_dict):
        return {k[len('module.'):]: v for k, v in state_dict.items()}
    return state_dict


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
    from mmc2f.models.backbones.conv2former import Conv2Former

    raw, weights = _authors_state_dict(checkpoint, use_ema)
    state_dict = _strip_module_prefix(raw)
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
    from mmc2f.models.backbones.conv2former import Conv2Former
    from mmc2f.models.necks.conv2former_neck import Conv2FormerNeck

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
    raw, _ = _authors_state_dict(checkpoint, use_ema)
    state_dict = _strip_module_prefix(raw)
    expected = expected_classifier_shapes(info)
    what = f'Conv2Former checkpoint ({info.weights}, detected {info.arch or "custom"} size)'
    out = apply_key_map(state_dict, CONV2FORMER_RULES, expected=expected, what=what)
    wrong = [f'{k}: {tuple(v.shape)} (expected {tuple(expected[k])})'
             for k, v in out.items() if v.shape != expected[k]]
    if wrong:
        raise KeyMapError(f'{what}: tensor shapes do not fit the detected size: '
                          f'{", ".join(wrong[:5])}')
    return out

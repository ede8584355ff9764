"""The ConvNeXt-layout layer-depth rule for layer-wise learning-rate decay.

Backbones laid out like ConvNeXt -- ``downsample_layers.{0..3}`` and ``stages.{0..3}.{block}``,
i.e. mmpretrain's ``ConvNeXt`` and mmc2f's ``Conv2Former`` -- number their parameters as mmdet's
and mmseg's ``LearningRateDecayOptimizerConstructor`` do, driven by ``num_layers``:

* ``layer_wise``: stem (``downsample_layers.0``) 0; ``stages.0`` 1; ``downsample_layers.1`` and
  ``stages.1`` 2; ``downsample_layers.2`` 3; ``stages.2.{j}`` ``3 + j // 3``;
  ``downsample_layers.3`` and ``stages.3`` ``num_layers``; anything else ``num_layers + 1``;
* ``stage_wise``: every ``downsample_layers.*`` 0, ``stages.{i}`` ``i + 1``, anything else
  ``num_layers + 1``.

``Conv2Former.get_layer_depth`` and the layer-decay constructor (for foreign ConvNeXt-layout
backbones) both use this module.
"""

__all__ = ['DECAY_TYPES', 'TOKEN_NAMES', 'convnext_min_num_layers', 'convnext_layer_id']

DECAY_TYPES = ('layer_wise', 'stage_wise')
TOKEN_NAMES = ('pos_embed', 'cls_token', 'mask_token')


def convnext_min_num_layers(depth2: int, decay_type: str = 'layer_wise') -> int:
    """Smallest ``num_layers`` that keeps every stage below the next and the last stage below
    the heads, for a third stage of ``depth2`` blocks: ``4 + (depth2 - 1) // 3`` (layer_wise),
    4 (stage_wise)."""
    if decay_type not in DECAY_TYPES:
        raise ValueError(f'decay_type must be one of {DECAY_TYPES}, got {decay_type!r}')
    return 4 if decay_type == 'stage_wise' else 4 + (depth2 - 1) // 3


def convnext_layer_id(name: str, num_layers: int, prefix: str = 'backbone.',
                      decay_type: str = 'layer_wise') -> int:
    """Layer id of a parameter (its full name, with ``prefix``) under the rule above."""
    if name in tuple(prefix + t for t in TOKEN_NAMES):
        return 0
    if not name.startswith(prefix):
        return num_layers + 1
    parts = name[len(prefix):].split('.')
    if parts[0] == 'downsample_layers':
        return 0 if decay_type == 'stage_wise' else (0, 2, 3, num_layers)[int(parts[1])]
    if parts[0] == 'stages':
        stage_id = int(parts[1])
        if decay_type == 'stage_wise':
            return stage_id + 1
        if stage_id == 2:
            return 3 + int(parts[2]) // 3
        return (1, 2, None, num_layers)[stage_id]
    return num_layers + 1

"""mmc2f's registries.

Each registry hangs directly off MMEngine's root registry with the scope ``mmc2f``. MMEngine's
``Registry.get`` imports ``mmc2f.registry`` when it meets a ``'mmc2f.<Name>'`` type, so a config
whose ``default_scope`` is ``mmdet``, ``mmseg`` or ``mmpretrain`` can say ``type='mmc2f.Conv2Former'``
without importing anything first. The modules that fill a registry are imported lazily (the
``locations`` below) the first time that registry is searched, so ``import mmc2f.registry`` stays light.
"""
from mmengine.registry import DATASETS as MMENGINE_DATASETS
from mmengine.registry import HOOKS as MMENGINE_HOOKS
from mmengine.registry import METRICS as MMENGINE_METRICS
from mmengine.registry import MODELS as MMENGINE_MODELS
from mmengine.registry import \
    OPTIM_WRAPPER_CONSTRUCTORS as MMENGINE_OPTIM_WRAPPER_CONSTRUCTORS
from mmengine.registry import TRANSFORMS as MMENGINE_TRANSFORMS
from mmengine.registry import Registry

from .utils.checkpoint import install_atomic_checkpointing, install_safe_loading

#: Backbones, necks, heads and decode heads.
MODELS = Registry('model', parent=MMENGINE_MODELS, scope='mmc2f', locations=['mmc2f.models'])
#: Optimizer-wrapper constructors (layer-wise learning-rate decay).
OPTIM_WRAPPER_CONSTRUCTORS = Registry(
    'optimizer wrapper constructor', parent=MMENGINE_OPTIM_WRAPPER_CONSTRUCTORS, scope='mmc2f',
    locations=['mmc2f.engine'])
#: Runtime hooks.
HOOKS = Registry('hook', parent=MMENGINE_HOOKS, scope='mmc2f', locations=['mmc2f.engine'])
#: Datasets (the synthetic demo sets).
DATASETS = Registry('dataset', parent=MMENGINE_DATASETS, scope='mmc2f', locations=['mmc2f.datasets'])
#: Data transforms.
TRANSFORMS = Registry('transform', parent=MMENGINE_TRANSFORMS, scope='mmc2f',
                      locations=['mmc2f.datasets'])
#: Evaluation metrics.
METRICS = Registry('metric', parent=MMENGINE_METRICS, scope='mmc2f', locations=['mmc2f.evaluation'])

# Any process that resolves an mmc2f type may go on to load a runner-written checkpoint
# (resume, load_from, test): make that work with weights_only=True and an explicit allow-list.
install_safe_loading()
# ... and make the checkpoints it writes appear only when complete, so a kill never corrupts one.
install_atomic_checkpointing()

"""mmc2f's registries.

Each registry hangs directly off MMEngine's root registry with the scope ``mmc2f``. MMEngine's
``Registry.get`` imports ``mmc2f.registry`` when it meets a ``'mmc2f.<Name>'`` type, so a config
whose ``default_scope`` is ``mmdet``, ``mmseg`` or ``mmpretrain`` can say ``type='mmc2f.Conv2Former'``
without importing anything first. The modules that fill a registry are imported lazily (the
``locations`` below) the first time that registry is searched.

Importing this module runs :func:`mmc2f.engine.process.setup_process` (safe checkpoint loading
and atomic checkpoint writes for the process; logged; ``MMC2F_PROCESS_SETUP=0`` turns it off).
"""
from mmengine.registry import HOOKS as MMENGINE_HOOKS
from mmengine.registry import MODELS as MMENGINE_MODELS
from mmengine.registry import \
    OPTIM_WRAPPER_CONSTRUCTORS as MMENGINE_OPTIM_WRAPPER_CONSTRUCTORS
from mmengine.registry import Registry

from .engine.process import setup_process

__all__ = ['MODELS', 'OPTIM_WRAPPER_CONSTRUCTORS', 'HOOKS']

#: Backbones, necks and decode heads.
MODELS = Registry('model', parent=MMENGINE_MODELS, scope='mmc2f', locations=['mmc2f.models'])
#: Optimizer-wrapper constructors (layer-wise learning-rate decay).
OPTIM_WRAPPER_CONSTRUCTORS = Registry(
    'optimizer wrapper constructor', parent=MMENGINE_OPTIM_WRAPPER_CONSTRUCTORS, scope='mmc2f',
    locations=['mmc2f.engine.layer_decay'])
#: Runtime hooks.
HOOKS = Registry('hook', parent=MMENGINE_HOOKS, scope='mmc2f',
                 locations=['mmc2f.engine.deploy_hook', 'mmc2f.engine.guards'])

setup_process()

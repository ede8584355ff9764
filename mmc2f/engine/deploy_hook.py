"""``SwitchToDeployHook``: evaluate with mmc2f's inference path (fused kernels, or ONNX Runtime
for segmentors on CPU)."""
from typing import List

import torch.nn as nn
from mmengine.hooks import Hook

from mmc2f.errors import ConfigError
from mmc2f.registry import HOOKS

__all__ = ['SwitchToDeployHook', 'switch_to_deploy', 'fuse_outermost', 'DEPLOY_BACKENDS']

#: ``auto``: ONNX Runtime for mmseg segmentors on CPU when it is installed (the fastest CPU path,
#: README's Performance), else the PyTorch fused kernels; ``pytorch``; ``onnxruntime``.
DEPLOY_BACKENDS = ('auto', 'pytorch', 'onnxruntime')


def _model_device(model: nn.Module) -> str:
    tensor = next(iter(model.parameters()), None)
    return 'cpu' if tensor is None else tensor.device.type


def fuse_outermost(model: nn.Module) -> List[str]:
    """``switch_to_deploy()`` on every outermost module of ``model`` that has one (a backbone
    folds across its blocks, e.g. MSCAN's carried streams; its blocks must not fold alone after
    it); returns their names."""
    switched = []
    for name, module in model.named_modules():
        if any(s == '' or name.startswith(f'{s}.') for s in switched):
            continue  # inside a module switched already
        if callable(getattr(module, 'switch_to_deploy', None)):
            module.switch_to_deploy()
            switched.append(name)
    return [s or type(model).__name__ for s in switched]


def switch_to_deploy(model: nn.Module, backend: str = 'pytorch',
                     stop_spinning: bool = True) -> List[str]:
    """mmc2f's inference path for ``model``; returns what was switched, to log.

    ``pytorch``: ``switch_to_deploy()`` on every outermost submodule that has one (mmc2f's
    backbones fuse their blocks themselves): folded norms and layer scales, fused kernels; only
    in eval mode, ``train()`` drops them, parameters and state dict unchanged.
    ``onnxruntime`` (mmseg segmentors and :data:`~mmc2f.engine.ort.ONNXRUNTIME_FASTER`
    backbones, on CPU): :func:`mmc2f.engine.ort.run_on_onnxruntime`, after the fusion above
    (which the PyTorch fallbacks run; the exported graph is
    :func:`mmc2f.models.fusion.onnxruntime_forward`'s).
    ``auto``: ``onnxruntime`` where it applies and is installed. ``stop_spinning``: see
    :func:`mmc2f.engine.ort.session_options`.
    """
    if backend not in DEPLOY_BACKENDS:
        raise ConfigError(f'unknown deploy backend "{backend}"; choose one of '
                          f'{", ".join(DEPLOY_BACKENDS)}')
    from .ort import (ONNXRUNTIME_FASTER, is_segmentor, onnxruntime_available, restore_pytorch,
                      run_on_onnxruntime)
    switched = fuse_outermost(model)
    applies = (is_segmentor(model) or type(model).__name__ in ONNXRUNTIME_FASTER) and \
        _model_device(model) == 'cpu'
    if backend == 'onnxruntime' and not applies:
        raise ConfigError(f'the ONNX Runtime backend runs mmseg segmentors and '
                          f'{", ".join(ONNXRUNTIME_FASTER)} on CPU; {type(model).__name__} on '
                          f"{_model_device(model)} is not one: use backend 'pytorch' or 'auto'")
    if backend == 'onnxruntime' and not onnxruntime_available():
        raise ConfigError('the ONNX Runtime backend needs onnxruntime: pip install onnxruntime')
    if backend == 'onnxruntime' or backend == 'auto' and applies and onnxruntime_available():
        switched.append(run_on_onnxruntime(model, stop_spinning=stop_spinning))
    else:
        restore_pytorch(model)
    return switched


@HOOKS.register_module()
class SwitchToDeployHook(Hook):
    """Run validation and testing on mmc2f's inference path (:func:`switch_to_deploy`).

    The fused weights (or the ONNX Runtime graph) are recomputed before every validation/test
    run, after the checkpoint has been loaded and with the current weights during training, so
    they are never stale. Add it with ``custom_hooks = [dict(type='mmc2f.SwitchToDeployHook')]``
    or ``tools/test.py --deploy`` (which uses ``backend='auto'``).
    """

    priority = 'LOW'

    def __init__(self, backend: str = 'pytorch'):
        if backend not in DEPLOY_BACKENDS:
            raise ConfigError(f'SwitchToDeployHook: unknown backend "{backend}"; choose one of '
                              f'{", ".join(DEPLOY_BACKENDS)}')
        self.backend = backend
        self._logged = False

    def _switch(self, runner) -> None:
        model = runner.model.module if hasattr(runner.model, 'module') else runner.model
        switched = switch_to_deploy(model, self.backend)
        if not self._logged:
            where = ', '.join(switched) if switched else 'no module (none has them)'
            runner.logger.info(f'SwitchToDeployHook ({self.backend}): {where}')
            self._logged = True

    # Priority LOW: after EMAHook (NORMAL) has swapped the averaged weights in.
    def before_val_epoch(self, runner) -> None:
        self._switch(runner)

    def before_test_epoch(self, runner) -> None:
        self._switch(runner)

"""``SwitchToDeployHook``: evaluate with the models' inference-only fused kernels."""
from typing import List

import torch.nn as nn
from mmengine.hooks import Hook

from mmc2f.registry import HOOKS

__all__ = ['SwitchToDeployHook', 'switch_to_deploy']


def switch_to_deploy(model: nn.Module) -> List[str]:
    """Call ``switch_to_deploy()`` on every outermost submodule that has one (mmc2f's backbones;
    they fuse their blocks themselves); returns their qualified names. Training is unaffected:
    the fused kernels only run in eval mode, ``train()`` drops them, parameters and state dict
    are unchanged."""
    switched = []
    for name, module in model.named_modules():
        if any(s == '' or name.startswith(f'{s}.') for s in switched):
            continue  # inside a module switched already
        if callable(getattr(module, 'switch_to_deploy', None)):
            module.switch_to_deploy()
            switched.append(name)
    return [s or type(model).__name__ for s in switched]


@HOOKS.register_module()
class SwitchToDeployHook(Hook):
    """Run validation and testing with the inference-only fused kernels (``switch_to_deploy``).

    The fused weights are recomputed before every validation/test run, after the checkpoint has
    been loaded and with the current weights during training, so they are never stale. Add it
    with ``custom_hooks = [dict(type='mmc2f.SwitchToDeployHook')]`` or ``tools/test.py --deploy``.
    """

    priority = 'LOW'

    def __init__(self):
        self._logged = False

    def _switch(self, runner) -> None:
        switched = switch_to_deploy(runner.model)
        if not self._logged:
            where = ', '.join(switched) if switched else 'no module (none has them)'
            runner.logger.info(f'SwitchToDeployHook: inference-only fused kernels in {where}')
            self._logged = True

    # Priority LOW: after EMAHook (NORMAL) has swapped the averaged weights in.
    def before_val_epoch(self, runner) -> None:
        self._switch(runner)

    def before_test_epoch(self, runner) -> None:
        self._switch(runner)

"""The layer above the models: inference, converters, the shared command-line helpers and the
scope table (:mod:`.scope`). Nothing below it imports it."""
from mmc2f.errors import ConfigError, UserError
from .inference import (default_palette, init_model, load_config, model_num_classes,
                        resolve_device, set_nmf_eval_seed)
from .scope import SCOPE_TASKS, get_task, init_scope

__all__ = [
    'SCOPE_TASKS', 'ConfigError', 'UserError', 'load_config', 'get_task', 'init_scope',
    'resolve_device', 'init_model', 'set_nmf_eval_seed', 'model_num_classes', 'default_palette'
]

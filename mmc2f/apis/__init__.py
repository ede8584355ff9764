"""Inference helpers shared by ``demo/image_demo.py`` and ``tools/deployment/pytorch2onnx.py``."""
from .inference import (SCOPE_TASKS, InferenceError, default_palette, get_task, init_model,
                        init_scope, load_config, model_num_classes, resolve_device,
                        set_nmf_eval_seed)

__all__ = [
    'SCOPE_TASKS', 'InferenceError', 'load_config', 'get_task', 'init_scope', 'resolve_device',
    'init_model', 'set_nmf_eval_seed', 'model_num_classes', 'default_palette'
]

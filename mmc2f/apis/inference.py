"""Build a ready-to-run model from a config and a checkpoint, for any of mmc2f's three tasks.

This is what ``demo/image_demo.py`` and ``tools/deployment/pytorch2onnx.py`` share. The config's
``default_scope`` picks the OpenMMLab package (``mmseg`` -> segmentation, ``mmdet`` -> detection,
``mmpretrain`` -> classification); the model is built from that package's registry, with:

* no ``Pretrained`` initialisation (the checkpoint given here provides every weight);
* the checkpoint (a path, an ``http(s)://`` URL or an MMEngine scheme such as ``open-mmlab://``)
  read by :func:`mmc2f.checkpoint.load_checkpoint` (``weights_only=True`` plus mmc2f's
  allow-list; downloads land in torch.hub's cache) and loaded with a strict key check that names
  missing / unexpected keys and the likely cause;
* SyncBN converted to BatchNorm (SyncBN needs a GPU or a process group);
* ``dataset_meta`` (class names, palette) from the checkpoint's ``meta``, else from the config's
  test dataset, else generic names and a fixed palette;
* optionally a fixed NMF ``eval_seed`` for SegNeXt heads that have none (reproducible outputs);
* the model in eval mode on the chosen device.

Nothing here calls ``.cuda()``: the device is whatever ``device`` names (``None``: the first GPU
if there is one, else the CPU).
"""
import copy
import importlib
import os
import os.path as osp
import warnings
from typing import Dict, Optional, Union

import numpy as np
import torch
import torch.nn as nn
from mmengine.config import Config

from mmc2f.checkpoint import (CheckpointFormatError, extract_state_dict, load_checkpoint,
                              load_state_dict_checked)
from mmc2f.errors import ConfigError
from .scope import get_task, init_scope

__all__ = [
    'load_config', 'resolve_device', 'init_model', 'set_nmf_eval_seed', 'model_num_classes',
    'default_palette'
]

_KEY_HINT = ('Check that the checkpoint was trained with this config. Checkpoints released by '
             'the authors must be converted first: tools/model_converters/conv2former_to_mmc2f.py '
             '(Conv2Former) or tools/model_converters/mscan_to_mmc2f.py (MSCAN).')


# ---------------------------------------------------------------------------------- config
def load_config(config: Union[str, os.PathLike, Config],
                cfg_options: Optional[dict] = None) -> Config:
    """A :class:`Config` from a path (or a copy of a given config), with ``cfg_options`` merged."""
    if isinstance(config, (str, os.PathLike)):
        path = os.fspath(config)
        if not osp.isfile(path):
            raise ConfigError(f'config file "{path}" does not exist')
        try:
            cfg = Config.fromfile(path)
        except Exception as err:  # noqa: BLE001  (syntax, inheritance, missing base ...)
            raise ConfigError(f'cannot load config "{path}": {type(err).__name__}: {err}'
                                 ) from err
    elif isinstance(config, Config):
        cfg = copy.deepcopy(config)
    else:
        raise TypeError(f'config must be a path or an mmengine Config, got {type(config).__name__}')
    if cfg_options:
        cfg.merge_from_dict(cfg_options)
    return cfg


def _strip_pretrained(node):
    """Drop every ``init_cfg`` of type ``Pretrained`` (the checkpoint supplies the weights)."""
    if isinstance(node, dict):
        for key in list(node.keys()):
            value = node[key]
            if key == 'init_cfg':
                if isinstance(value, dict) and value.get('type') == 'Pretrained':
                    node[key] = None
                elif isinstance(value, (list, tuple)):
                    kept = [v for v in value
                            if not (isinstance(v, dict) and v.get('type') == 'Pretrained')]
                    node[key] = kept or None
            else:
                _strip_pretrained(value)
    elif isinstance(node, (list, tuple)):
        for value in node:
            _strip_pretrained(value)


def resolve_device(device: Optional[Union[str, torch.device]] = None) -> torch.device:
    """``None`` -> ``cuda:0`` when available, else ``cpu``; a CUDA device without CUDA -> error."""
    if device is None:
        return torch.device('cuda:0' if torch.cuda.is_available() else 'cpu')
    try:
        dev = torch.device(device)
    except RuntimeError as err:
        raise ConfigError(f'invalid device {device!r}: {err}') from err
    if dev.type == 'cuda':
        if not torch.cuda.is_available():
            raise ConfigError(f'device {device!r} requested but CUDA is not available on this '
                                 'machine; use --device cpu')
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ConfigError(f'device {device!r} requested but only '
                                 f'{torch.cuda.device_count()} GPU(s) are visible')
    return dev


# ---------------------------------------------------------------------------------- model
def set_nmf_eval_seed(model: nn.Module, seed: int = 0, force: bool = False) -> int:
    """Give every mmc2f ``NMF2D`` without an ``eval_seed`` (or all, with ``force``) ``seed``.

    Returns the number of NMF modules changed. Eval-mode outputs are then reproducible (and an
    ONNX export of them deterministic).
    """
    from mmc2f.models.decode_heads.nmf import NMF2D
    changed = 0
    for module in model.modules():
        if isinstance(module, NMF2D) and (force or module.eval_seed is None):
            module.eval_seed = int(seed)
            changed += 1
    return changed


def model_num_classes(model: nn.Module) -> Optional[int]:
    """Number of classes of a segmentor / detector / classifier (``None`` if not found)."""
    for path in ('decode_head', 'roi_head.bbox_head', 'bbox_head', 'head'):
        obj = model
        for part in path.split('.'):
            obj = getattr(obj, part, None)
            if obj is None:
                break
        if isinstance(obj, (list, tuple, nn.ModuleList)):  # cascade heads
            obj = obj[-1] if len(obj) else None
        n = getattr(obj, 'num_classes', None) if obj is not None else None
        if isinstance(n, int):
            return n
    return None


def default_palette(num_classes: int, seed: int = 42):
    """A fixed, reproducible RGB palette (list of ``(r, g, b)``) for ``num_classes`` classes."""
    rng = np.random.RandomState(seed)
    return [tuple(map(int, c)) for c in rng.randint(0, 256, size=(max(num_classes, 0), 3))]


def _dataset_cfg(cfg: Config):
    for loader in ('test_dataloader', 'val_dataloader'):
        ds = cfg.get(loader, None)
        ds = ds.get('dataset', None) if isinstance(ds, dict) else None
        while isinstance(ds, dict) and 'type' in ds and 'metainfo' not in ds and (
                'dataset' in ds or 'datasets' in ds):
            ds = ds.get('dataset') or ds['datasets'][0]  # dataset wrappers
        if isinstance(ds, dict):
            return ds
    return None


def _config_meta(cfg: Config, scope: str) -> Dict:
    """Class names / palette of the config's test dataset (its ``metainfo`` or class METAINFO)."""
    ds = _dataset_cfg(cfg)
    if ds is None:
        return {}
    meta = {}
    dtype = ds.get('type', None)
    if isinstance(dtype, str):
        try:
            registry = importlib.import_module(f'{scope}.registry').DATASETS
            cls = registry.get(dtype)
            meta.update(copy.deepcopy(getattr(cls, 'METAINFO', {}) or {}))
        except Exception:  # noqa: BLE001  (an unknown dataset only loses the names)
            pass
    if isinstance(ds.get('metainfo', None), dict):
        meta.update(dict(ds['metainfo']))
    return meta


def _complete_meta(meta: Dict, num_classes: Optional[int], task: str) -> Dict:
    meta = dict(meta)
    classes = meta.get('classes', None)
    if num_classes is not None and (classes is None or len(classes) != num_classes):
        if classes is not None:
            warnings.warn(f'the class names found ({len(classes)}) do not match the model\'s '
                          f'{num_classes} classes; using generic names')
        meta['classes'] = tuple(f'class_{i}' for i in range(num_classes))
        meta.pop('palette', None)
    n = len(meta['classes']) if meta.get('classes') is not None else (num_classes or 0)
    if task in ('seg', 'det') and (meta.get('palette') is None or len(meta['palette']) < n):
        meta['palette'] = default_palette(n)
    if meta.get('classes') is not None:
        meta['classes'] = tuple(meta['classes'])
    if meta.get('palette') is not None:  # (r, g, b) tuples: what mmdet's visualizer accepts
        meta['palette'] = [tuple(int(v) for v in c) for c in meta['palette']]
    return meta


def init_model(config: Union[str, os.PathLike, Config],
               checkpoint: Optional[str] = None,
               device: Optional[Union[str, torch.device]] = None,
               cfg_options: Optional[dict] = None,
               nmf_eval_seed: Optional[int] = 0,
               strict: bool = True) -> nn.Module:
    """Build a model from ``config`` and load ``checkpoint`` for inference.

    Args:
        config: config path or :class:`Config`; its ``default_scope`` picks the package.
        checkpoint: path or URL of a checkpoint (a dict with ``state_dict`` and optionally
            ``meta``, or a bare state dict). ``None``: random weights (with a warning).
        device: ``'cpu'``, ``'cuda'``, ``'cuda:1'``...; ``None`` picks CUDA when available.
        cfg_options: overrides merged into the config.
        nmf_eval_seed: seed given to every SegNeXt NMF whose config sets no ``eval_seed``, so that
            predictions are reproducible (``None`` keeps the config's behaviour).
        strict: fail (:class:`~mmc2f.errors.CheckpointFormatError`, naming the keys) unless the
            checkpoint's keys match the model exactly.

    Returns:
        The model in eval mode on ``device``, with ``model.cfg`` (the config),
        ``model.dataset_meta`` (``classes`` and, for segmentation and detection, ``palette``) and
        ``model.task`` (``'seg'``, ``'det'`` or ``'cls'``).
    """
    cfg = load_config(config, cfg_options)
    task = get_task(cfg)
    scope = init_scope(cfg)
    dev = resolve_device(device)
    model_cfg = copy.deepcopy(cfg.model)
    _strip_pretrained(model_cfg)
    if task == 'seg':
        model_cfg['pretrained'] = None
    if task in ('seg', 'cls'):
        model_cfg['train_cfg'] = None  # training-only parts (e.g. Mixup / CutMix)
    registry = importlib.import_module(f'{scope}.registry').MODELS
    model = registry.build(model_cfg)
    from mmengine.model import revert_sync_batchnorm
    model = revert_sync_batchnorm(model)

    meta: Dict = {}
    if checkpoint is None:
        warnings.warn('no checkpoint given: the model has random weights')
    else:
        ckpt = load_checkpoint(checkpoint, map_location='cpu')  # paths, URLs, MMEngine schemes
        try:
            state_dict = extract_state_dict(ckpt)
        except CheckpointFormatError as err:
            raise CheckpointFormatError(f'checkpoint "{checkpoint}": {err}') from None
        load_state_dict_checked(model, state_dict, strict=strict, hint=_KEY_HINT,
                                source=f'checkpoint "{checkpoint}"')
        ck_meta = ckpt.get('meta', None) if isinstance(ckpt, dict) else None
        if isinstance(ck_meta, dict):
            if isinstance(ck_meta.get('dataset_meta', None), dict):
                meta = dict(ck_meta['dataset_meta'])
            elif 'CLASSES' in ck_meta:  # OpenMMLab 1.x checkpoints
                meta = dict(classes=ck_meta['CLASSES'])
                if ck_meta.get('PALETTE') is not None:
                    meta['palette'] = ck_meta['PALETTE']
    if not meta.get('classes'):
        meta = dict(_config_meta(cfg, scope), **meta)
    meta = _complete_meta(meta, model_num_classes(model), task)

    if nmf_eval_seed is not None:
        set_nmf_eval_seed(model, nmf_eval_seed)
    model.cfg = cfg
    model._config = cfg  # mmpretrain's inferencers read these two
    model.dataset_meta = meta
    model._dataset_meta = meta
    model.task = task
    model.to(dev)
    model.eval()
    return model


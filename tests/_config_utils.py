"""Helpers for ``tests/test_configs.py``: find the configs, make them CPU-runnable, fake a batch.

Nothing here is specific to one config: the dataset table, the naming rules and the synthetic
samples cover every OpenMMLab task mmc2f ships configs for (mmseg, mmdet, mmpretrain).
"""
import copy
import functools
import math
import os
import re
from typing import Dict, Iterator, List, Optional, Tuple

import numpy as np
import torch

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG_DIR = os.path.join(REPO_ROOT, 'configs')

#: Input side of the synthetic images (classification: CLS_SIZE). Small enough for 2 CPU cores,
#: large enough for every backbone (Conv2Former needs >= 31, UperNet's PPM a 2x2 last stage).
DENSE_SIZE = 64
CLS_SIZE = 32
#: Images per synthetic batch: 2, because BatchNorm in train mode refuses a 1x1 map of one sample
#: (UperNet's PPM pools to 1x1; MSCAN's last stage is 1x1 at 32x32).
BATCH = 2

#: Dataset token of the config name -> (dataset type, data_root, number of classes), as the
#: upstream dataset bases (mmseg 1.2.2, mmdet 3.3, mmpretrain 1.2) define them.
KNOWN_DATASETS: Dict[str, Tuple[str, str, int]] = {
    'ade20k': ('ADE20KDataset', 'data/ade/ADEChallengeData2016', 150),
    'cityscapes': ('CityscapesDataset', 'data/cityscapes/', 19),
    'coco-stuff164k': ('COCOStuffDataset', 'data/coco_stuff164k', 171),
    'voc12aug': ('PascalVOCDataset', 'data/VOCdevkit/VOC2012', 21),
    'voc12trainval': ('PascalVOCDataset', 'data/VOCdevkit/VOC2012', 21),
    'pascal-context-59': ('PascalContextDataset59', 'data/VOCdevkit/VOC2010/', 59),
    'isaid': ('iSAIDDataset', 'data/iSAID', 16),
    'coco': ('CocoDataset', 'data/coco/', 80),
    'in1k': ('ImageNet', 'data/imagenet', 1000),
    'in21k': ('ImageNet21k', 'data/imagenet21k', 21841),
}

#: The project's backbone names, used to group configs by (directory, backbone and size).
BACKBONE_TOKEN = re.compile(r'^(conv2former|mscan)(-[a-z0-9]+)*$')
SCOPE_TASK = {'mmseg': 'seg', 'mmdet': 'det', 'mmpretrain': 'cls'}


# --------------------------------------------------------------------------- discovery
#: A short-name config (``segnext_b_ade20k.py``): the whole file is one line that inherits a
#: long-name config of the same folder, so the recipe lives in one place.
ALIAS_RE = re.compile(r"_base_ = \['\./([^'/]+\.py)'\]")


def alias_target(path: str) -> Optional[str]:
    """The repo-relative config a short-name alias inherits; None for any other config."""
    with open(os.path.join(REPO_ROOT, path)) as f:
        m = ALIAS_RE.fullmatch(f.read().strip())
    return os.path.join(os.path.dirname(path), m.group(1)) if m else None


def config_paths(aliases: bool = False) -> List[str]:
    """Every ``*.py`` under ``configs/`` outside ``_base_`` folders, repo-relative, sorted.

    The recipes (long OpenMMLab names) by default; with ``aliases=True`` only the short-name
    aliases (see :func:`alias_target`), which build exactly their target's model.
    """
    found = []
    for root, dirs, files in os.walk(CONFIG_DIR):
        dirs[:] = sorted(d for d in dirs if d != '_base_' and not d.startswith(('.', '__')))
        for f in files:
            if f.endswith('.py'):
                path = os.path.relpath(os.path.join(root, f), REPO_ROOT)
                if (alias_target(path) is not None) == aliases:
                    found.append(path)
    return sorted(found)


def config_stem(path: str) -> str:
    return os.path.splitext(os.path.basename(path))[0]


def group_key(path: str) -> Tuple[str, str]:
    """(folder, backbone-and-size token), e.g. ``('segnext', 'mscan-t')``,
    ``('conv2former', 'conv2former-l')``; a name without such a token is its own group."""
    folder = os.path.relpath(os.path.dirname(path), 'configs')
    for token in config_stem(path).split('_'):
        if BACKBONE_TOKEN.match(token):
            return folder, token
    return folder, config_stem(path)


def representatives(paths: List[str]) -> set:
    """The first config (sorted) of each :func:`group_key` group: these get the training step."""
    chosen = {}
    for p in sorted(paths):
        chosen.setdefault(group_key(p), p)
    return set(chosen.values())


_FAST_LOADING = False


def _speed_up_package_bases():
    """Cache what MMEngine recomputes for every ``mmseg::``/``mmdet::``/``mmpretrain::`` base.

    MMEngine 0.10.7 resolves each such base by parsing all of the package's metafiles (mmseg: 159
    YAML files, about 1 s) and by reloading ``pkg_resources`` (``is_installed``), on every
    reference; a SegNeXt config has three. Both answers are fixed while the tests run, so they are
    cached here (process-wide, read-only data): loading the configs gets several times faster
    and the results are unchanged.
    """
    global _FAST_LOADING
    if _FAST_LOADING:
        return
    import mmengine.config.config as config_mod
    import mmengine.config.utils as utils_mod

    utils_mod.load = functools.lru_cache(maxsize=None)(utils_mod.load)
    config_mod.is_installed = functools.lru_cache(maxsize=None)(config_mod.is_installed)
    config_mod.get_installed_path = functools.lru_cache(maxsize=None)(
        config_mod.get_installed_path)
    _FAST_LOADING = True


@functools.lru_cache(maxsize=None)
def _load(path: str):
    from mmengine import Config
    _speed_up_package_bases()
    return Config.fromfile(os.path.join(REPO_ROOT, path))


def load_config(path: str):
    """``Config.fromfile`` (cached: each test gets its own deep copy)."""
    return copy.deepcopy(_load(path))


# --------------------------------------------------------------------------- naming rules
def dataset_token(path: str) -> str:
    """``..._ade20k-512x512`` -> ``ade20k``; ``..._coco`` -> ``coco``;
    ``..._in1k-384px`` -> ``in1k``."""
    last = config_stem(path).split('_')[-1]
    last = re.sub(r'-\d+x\d+$', '', last)
    return re.sub(r'-\d+px$', '', last)


def name_crop(path: str) -> Optional[Tuple[int, int]]:
    """Crop in the name: ``-512x512`` -> (512, 512); ``-384px`` -> (384, 384); else None."""
    last = config_stem(path).split('_')[-1]
    m = re.search(r'-(\d+)x(\d+)$', last)
    if m:
        return int(m.group(1)), int(m.group(2))
    m = re.search(r'-(\d+)px$', last)
    if m:
        return int(m.group(1)), int(m.group(1))
    return None


def name_iters(path: str) -> Optional[int]:
    """``-160k`` / ``-80k`` / ``-1k`` in the schedule token -> iterations."""
    m = re.search(r'(?:^|[_-])(\d+)k(?:[_-]|$)', config_stem(path))
    return int(m.group(1)) * 1000 if m else None


def name_batch(path: str) -> Optional[Tuple[int, int]]:
    """``_8xb2-`` -> (8, 2): GPUs x images per GPU."""
    m = re.search(r'(?:^|_)(\d+)xb(\d+)(?:[_-]|$)', config_stem(path))
    return (int(m.group(1)), int(m.group(2))) if m else None


# --------------------------------------------------------------------------- config walking
def iter_datasets(ds) -> Iterator[dict]:
    """The leaf dataset dicts of a (possibly wrapped: Concat/Repeat/ClassBalanced) dataset cfg."""
    if ds is None:
        return
    if 'datasets' in ds:
        for d in ds['datasets']:
            yield from iter_datasets(d)
    elif 'dataset' in ds:
        yield from iter_datasets(ds['dataset'])
    else:
        yield ds


def iter_transforms(pipeline) -> Iterator[dict]:
    """Every transform of a pipeline, descending into RandomChoice/RandomApply/TestTimeAug."""
    for t in pipeline or []:
        if isinstance(t, (list, tuple)):
            yield from iter_transforms(t)
            continue
        yield t
        for key in ('transforms',):
            if key in t:
                yield from iter_transforms(t[key])


def iter_dicts(obj, path='') -> Iterator[Tuple[str, dict]]:
    """Every dict nested in ``obj`` with its dotted path."""
    if isinstance(obj, dict):
        yield path, obj
        for k, v in obj.items():
            yield from iter_dicts(v, f'{path}.{k}' if path else str(k))
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            yield from iter_dicts(v, f'{path}[{i}]')


def num_classes_values(model_cfg) -> Dict[str, int]:
    """``{dotted path: num_classes}`` for every head/preprocessor in the model cfg."""
    return {p: d['num_classes'] for p, d in iter_dicts(model_cfg) if 'num_classes' in d}


def pretrained_checkpoints(model_cfg) -> List[str]:
    """Checkpoints named by ``Pretrained`` init_cfgs anywhere in the model cfg."""
    out = []
    for _, d in iter_dicts(model_cfg):
        if d.get('type') == 'Pretrained':
            out.append(d.get('checkpoint'))
    return out


def drop_pretrained(obj):
    """Remove every ``init_cfg=dict(type='Pretrained', ...)`` (the checkpoints do not exist on a
    test machine); other init_cfgs (TruncNormal, Kaiming, ...) stay."""
    if isinstance(obj, dict):
        for k in list(obj.keys()):
            v = obj[k]
            if k == 'init_cfg':
                if isinstance(v, dict) and v.get('type') == 'Pretrained':
                    obj[k] = None
                elif isinstance(v, (list, tuple)):
                    kept = [c for c in v
                            if not (isinstance(c, dict) and c.get('type') == 'Pretrained')]
                    obj[k] = kept or None
            elif k == 'pretrained' and isinstance(v, str):
                obj[k] = None
            else:
                drop_pretrained(v)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            drop_pretrained(v)
    return obj


def cpu_optim_wrapper_cfg(cfg) -> dict:
    """``cfg.optim_wrapper`` with AmpOptimWrapper (GPU only) swapped for OptimWrapper."""
    ow = copy.deepcopy(cfg.optim_wrapper)
    if ow.get('type', 'OptimWrapper') in ('AmpOptimWrapper', 'mmengine.AmpOptimWrapper'):
        ow['type'] = 'OptimWrapper'
        for k in ('loss_scale', 'dtype', 'use_fsdp'):
            ow.pop(k, None)
    return ow


def model_task(cfg) -> str:
    scope = cfg.get('default_scope')
    if scope not in SCOPE_TASK:
        raise AssertionError(f'default_scope {scope!r}: expected one of {sorted(SCOPE_TASK)}')
    return SCOPE_TASK[scope]


def build_model(cfg, input_size: int):
    """Build ``cfg.model`` in its scope, CPU-ready: no pretrained loading, SyncBN -> BN,
    segmentation preprocessor padded to ``input_size`` instead of the training crop."""
    from mmengine.model import revert_sync_batchnorm
    from mmengine.registry import MODELS, init_default_scope

    init_default_scope(cfg.default_scope)
    model_cfg = copy.deepcopy(cfg.model)
    # the Runner gives the top-level data_preprocessor to the model (the mmpretrain convention)
    if cfg.get('data_preprocessor') is not None and isinstance(model_cfg, dict):
        model_cfg.setdefault('data_preprocessor', copy.deepcopy(cfg.data_preprocessor))
    drop_pretrained(model_cfg)
    if cfg.default_scope == 'mmdet':
        shrink_detector_sampling(model_cfg)
    dp = model_cfg.get('data_preprocessor')
    if dp is not None and dp.get('size') is not None:
        dp['size'] = (input_size, input_size)
    model = MODELS.build(model_cfg)
    return revert_sync_batchnorm(model)


#: Detector proposal / RoI budgets for the tests (the model itself is untouched): COCO's 2000
#: pre-NMS boxes, 1000 proposals and 512 sampled RoIs per image make one Cascade step (three
#: 4conv1fc heads) cost ~300 GFLOPs, on a 64x64 image that has a few hundred anchors anyway.
DET_LIMITS = dict(nms_pre=256, max_per_img=64, num=64)


def shrink_detector_sampling(model_cfg):
    """Cap ``nms_pre``, ``max_per_img`` and sampler ``num`` in the detector's train/test cfgs."""
    for key in ('train_cfg', 'test_cfg'):
        for _, d in iter_dicts(model_cfg.get(key)):
            for name, cap in DET_LIMITS.items():
                if isinstance(d.get(name), int) and d[name] > cap:
                    d[name] = cap
    return model_cfg


def build_optim_wrapper(model, cfg):
    from mmengine.optim import build_optim_wrapper as _build
    return _build(model, cpu_optim_wrapper_cfg(cfg))


def head_num_classes(cfg) -> int:
    """The number of classes the model predicts (first ``num_classes`` of the heads)."""
    values = num_classes_values(cfg.model)
    for key in sorted(values, key=lambda k: ('head' not in k, k)):
        return values[key]
    raise AssertionError('no num_classes in the model config')


def has_mask_head(cfg) -> bool:
    roi = cfg.model.get('roi_head') or {}
    return roi.get('mask_head') is not None


# --------------------------------------------------------------------------- synthetic batches
def _rand_image(size: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (3, size, size), generator=g, dtype=torch.uint8)


def seg_batch(num_classes: int, size: int = DENSE_SIZE, batch: int = BATCH) -> dict:
    """What ``PackSegInputs`` + the default collate produce: uint8 CHW images and SegDataSamples
    with ``gt_sem_seg`` (labels in [0, num_classes) plus some 255 = ignore)."""
    from mmengine.structures import PixelData
    from mmseg.structures import SegDataSample

    inputs, samples = [], []
    for i in range(batch):
        g = torch.Generator().manual_seed(100 + i)
        label = torch.randint(0, num_classes, (1, size, size), generator=g)
        label[:, :4, :] = 255
        s = SegDataSample()
        s.gt_sem_seg = PixelData(data=label)
        s.set_metainfo(dict(img_path=f'synthetic_{i}.png', ori_shape=(size, size),
                            img_shape=(size, size), pad_shape=(size, size),
                            scale_factor=(1.0, 1.0), flip=False, flip_direction=None,
                            reduce_zero_label=False))
        inputs.append(_rand_image(size, i))
        samples.append(s)
    return dict(inputs=inputs, data_samples=samples)


def det_batch(num_classes: int, with_mask: bool, size: int = DENSE_SIZE,
              batch: int = BATCH) -> dict:
    """What ``PackDetInputs`` produces: DetDataSamples with boxes, labels and bitmap masks."""
    from mmdet.structures import DetDataSample
    from mmdet.structures.mask import BitmapMasks
    from mmengine.structures import InstanceData

    inputs, samples = [], []
    for i in range(batch):
        boxes = torch.tensor([[4., 6., 40., 44.], [20., 12., 60., 58.]])
        labels = torch.tensor([0, (i + 1) % num_classes])
        inst = InstanceData(bboxes=boxes, labels=labels)
        if with_mask:
            masks = np.zeros((len(boxes), size, size), dtype=np.uint8)
            for j, (x1, y1, x2, y2) in enumerate(boxes.int().tolist()):
                masks[j, y1:y2, x1:x2] = 1
            inst.masks = BitmapMasks(masks, size, size)
        s = DetDataSample()
        s.gt_instances = inst
        s.ignored_instances = InstanceData(bboxes=torch.zeros((0, 4)),
                                           labels=torch.zeros((0,), dtype=torch.long))
        s.set_metainfo(dict(img_id=i, img_path=f'synthetic_{i}.jpg', ori_shape=(size, size),
                            img_shape=(size, size), scale_factor=(1.0, 1.0), flip=False,
                            flip_direction=None))
        inputs.append(_rand_image(size, i))
        samples.append(s)
    return dict(inputs=inputs, data_samples=samples)


def cls_batch(num_classes: int, size: int = CLS_SIZE, batch: int = BATCH) -> dict:
    """What ``PackInputs`` produces: mmpretrain DataSamples with ``gt_label``."""
    from mmpretrain.structures import DataSample

    inputs, samples = [], []
    for i in range(batch):
        s = DataSample().set_gt_label((7 * i + 3) % num_classes)
        s.set_metainfo(dict(img_shape=(size, size), ori_shape=(size, size)))
        inputs.append(_rand_image(size, i))
        samples.append(s)
    return dict(inputs=inputs, data_samples=samples)


def make_batch(task: str, cfg) -> dict:
    n = head_num_classes(cfg)
    if task == 'seg':
        return seg_batch(n)
    if task == 'det':
        return det_batch(n, has_mask_head(cfg))
    return cls_batch(n)


def finite(x) -> bool:
    if isinstance(x, torch.Tensor):
        return bool(torch.isfinite(x).all())
    if isinstance(x, (list, tuple)):
        return all(finite(v) for v in x)
    return math.isfinite(float(x))

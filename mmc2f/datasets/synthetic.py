"""Deterministic synthetic demo datasets: coloured, textured shapes on textured backgrounds.

Three layouts are generated from the same scene renderer, so that the segmentation, detection and
classification demos see the same kind of images:

* ``make_seg_dataset``: ADE20K-style semantic segmentation::

      <root>/images/training/demo_00000.jpg      RGB image (JPEG)
      <root>/annotations/training/demo_00000.png  uint8 label map, same size
      <root>/images/validation/...  <root>/annotations/validation/...

  Label convention (use ``reduce_zero_label=False``): ``0`` = background, ``1..K`` = the shape
  classes in :data:`SHAPE_CLASSES` order. No pixel is marked ``255`` (ignore); 255 is only used by
  the data pipeline for padding.

* ``make_det_dataset``: COCO-format instances::

      <root>/train/00000.jpg  <root>/val/00000.jpg
      <root>/annotations/instances_train.json  <root>/annotations/instances_val.json

  Category ids ``1..K`` follow :data:`SHAPE_CLASSES`; every instance has a polygon ``segmentation``,
  an ``area`` (pixel count of the rasterised polygon), a ``bbox`` ``[x, y, w, h]`` and
  ``iscrowd = 0``. Shapes never overlap and never touch the image border.

* ``make_cls_dataset``: ImageNet-style class folders (what mmpretrain's ``CustomDataset`` reads)::

      <root>/train/<class>/00000.png  <root>/val/<class>/00000.png
      <root>/meta/train.txt  <root>/meta/val.txt   lines "<class>/<file> <label>"
      <root>/classes.txt                          one class name per line, label order

Every generator writes ``<root>/demo_meta.json`` (its parameters). Randomness comes only from numpy
``Generator`` objects seeded with ``(seed, task, split, index)``, so the same arguments give
byte-identical files, and image ``i`` of a split does not depend on the size of the other split.
"""
import json
import os
import os.path as osp
import shutil
from typing import Dict, List, Optional, Sequence, Tuple

import cv2
import numpy as np

__all__ = [
    'SHAPE_CLASSES', 'SEG_CLASSES', 'SEG_PALETTE', 'render_scene', 'make_seg_dataset',
    'make_det_dataset', 'make_cls_dataset', 'make_demo_data', 'DEMO_TASKS'
]

#: The shape classes (detection/classification labels, segmentation labels 1..K).
SHAPE_CLASSES: Tuple[str, ...] = ('circle', 'square', 'triangle')
#: Segmentation classes: label value = index in this tuple.
SEG_CLASSES: Tuple[str, ...] = ('background', ) + SHAPE_CLASSES
#: Colours used to draw the segmentation classes (RGB), e.g. in prediction overlays.
SEG_PALETTE: Tuple[Tuple[int, int, int], ...] = ((120, 120, 120), (230, 25, 75), (60, 180, 75),
                                                 (0, 130, 200))
DEMO_TASKS: Tuple[str, ...] = ('seg', 'det', 'cls')

_VERSION = 1
_META_FILE = 'demo_meta.json'
_TASK_ID = {'seg': 1, 'det': 2, 'cls': 3}
_SPLIT_ID = {'train': 1, 'val': 2}
# Hue range (degrees) of each shape class: colour is informative, texture and shape too.
_HUES = {'circle': (345.0, 385.0), 'square': (95.0, 150.0), 'triangle': (200.0, 250.0)}
_JPEG_PARAMS = [int(cv2.IMWRITE_JPEG_QUALITY), 95]
_PNG_PARAMS = [int(cv2.IMWRITE_PNG_COMPRESSION), 3]


# --------------------------------------------------------------------------------------------
# rendering
# --------------------------------------------------------------------------------------------
def _rng(seed: int, task: str, split: str, index: int) -> np.random.Generator:
    return np.random.default_rng([int(seed), _TASK_ID[task], _SPLIT_ID[split], int(index)])


def _hsv_to_rgb(h: float, s: float, v: float) -> np.ndarray:
    """One colour, h in degrees, s and v in [0, 1] -> float RGB in [0, 255]."""
    h = (h % 360.0) / 60.0
    c = v * s
    x = c * (1 - abs(h % 2 - 1))
    r, g, b = [(c, x, 0), (x, c, 0), (0, c, x), (0, x, c), (x, 0, c), (c, 0, x)][int(h) % 6]
    m = v - c
    return (np.array([r, g, b], dtype=np.float64) + m) * 255.0


def _smooth_noise(rng: np.random.Generator, size: int, cells: int, channels: int) -> np.ndarray:
    """Low-frequency noise in [-1, 1]: a random grid upsampled bicubically."""
    grid = rng.uniform(-1.0, 1.0, size=(cells, cells, channels)).astype(np.float32)
    out = cv2.resize(grid, (size, size), interpolation=cv2.INTER_CUBIC)
    return out.reshape(size, size, channels).astype(np.float64)


def _pattern(rng: np.random.Generator, kind: str, size: int) -> np.ndarray:
    """A texture in [0, 1] of shape (size, size)."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    if kind == 'stripes':
        theta = rng.uniform(0, np.pi)
        period = rng.uniform(4.0, 9.0)
        t = xx * np.cos(theta) + yy * np.sin(theta)
        return 0.5 + 0.5 * np.sin(2 * np.pi * t / period)
    if kind == 'checker':
        period = int(rng.integers(3, 7))
        return (((xx // period) + (yy // period)) % 2).astype(np.float64)
    if kind == 'rings':
        cx, cy = rng.uniform(0, size, size=2)
        period = rng.uniform(4.0, 8.0)
        return 0.5 + 0.5 * np.cos(2 * np.pi * np.hypot(xx - cx, yy - cy) / period)
    # 'noise'
    return (_smooth_noise(rng, size, max(4, size // 4), 1)[..., 0] + 1.0) / 2.0


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """Textured, mostly desaturated background (float RGB)."""
    grey = rng.uniform(70, 190)
    tint = rng.uniform(-25, 25, size=3)
    base = np.full((size, size, 3), grey) + tint
    base += 45.0 * _smooth_noise(rng, size, int(rng.integers(3, 7)), 3).mean(-1, keepdims=True)
    base += 12.0 * _smooth_noise(rng, size, int(rng.integers(3, 7)), 3)
    kind = str(rng.choice(['stripes', 'checker', 'noise']))
    base += rng.uniform(8, 25) * (_pattern(rng, kind, size)[..., None] - 0.5)
    return base


def _polygon(rng: np.random.Generator, cls: str, cx: float, cy: float, r: float) -> np.ndarray:
    """Float (N, 2) polygon (x, y) of a shape of radius ``r`` around (cx, cy)."""
    if cls == 'circle':
        n = max(24, int(2 * np.pi * r / 1.5))
        ang = np.arange(n) * (2 * np.pi / n)
    elif cls == 'square':
        ang = np.arange(4) * (np.pi / 2) + rng.uniform(0, np.pi / 2)
    elif cls == 'triangle':
        ang = np.arange(3) * (2 * np.pi / 3) + rng.uniform(0, 2 * np.pi)
        ang = ang + rng.uniform(-0.25, 0.25, size=3)
    else:
        raise ValueError(f'unknown shape class {cls!r}')
    return np.stack([cx + r * np.cos(ang), cy + r * np.sin(ang)], axis=1)


def _rasterise(poly: np.ndarray, size: int) -> np.ndarray:
    """Boolean mask of a convex polygon: the pixels whose centre lies inside (or on an edge).

    Pixel ``(x, y)`` has its centre at ``(x, y)`` in the polygon's coordinates (COCO files add 0.5,
    since COCO puts pixel corners on integer coordinates).
    """
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float64)
    x0, y0 = poly[:, 0], poly[:, 1]
    x1, y1 = np.roll(x0, -1), np.roll(y0, -1)
    orient = np.sign(np.sum(x0 * y1 - x1 * y0)) or 1.0
    mask = np.ones((size, size), bool)
    for ax, ay, bx, by in zip(x0, y0, x1, y1):
        mask &= orient * ((bx - ax) * (ys - ay) - (by - ay) * (xs - ax)) >= -1e-9
    return mask


def render_scene(rng: np.random.Generator, size: int, num_shapes: Tuple[int, int] = (1, 4),
                 radius: Tuple[float, float] = (0.09, 0.2),
                 classes: Optional[Sequence[str]] = None) -> Tuple[np.ndarray, np.ndarray, list]:
    """Render one image.

    Args:
        rng: the only source of randomness.
        size: image side in pixels.
        num_shapes: inclusive range of the number of shapes.
        radius: range of the shape radius as a fraction of ``size``.
        classes: the class of each shape (overrides ``num_shapes``); random when None.

    Returns:
        ``(image, label, instances)``: ``image`` uint8 RGB (size, size, 3); ``label`` uint8
        (size, size) with 0 = background and ``1 + SHAPE_CLASSES.index(cls)`` for shapes;
        ``instances`` a list of dicts ``{'label': int (0-based), 'polygon': (N, 2) float array,
        'mask': bool array}``.
    """
    img = _background(rng, size)
    label = np.zeros((size, size), np.uint8)
    occupied = np.zeros((size, size), bool)
    if classes is None:
        n = int(rng.integers(num_shapes[0], num_shapes[1] + 1))
        classes = [SHAPE_CLASSES[int(k)] for k in rng.integers(0, len(SHAPE_CLASSES), size=n)]
    instances = []
    for cls in classes:
        for _ in range(50):  # rejection sampling: no overlap, inside the image
            r = rng.uniform(*radius) * size
            cx, cy = rng.uniform(r + 2, size - r - 2, size=2)
            poly = _polygon(rng, cls, cx, cy, r)
            mask = _rasterise(poly, size)
            grown = cv2.dilate(mask.astype(np.uint8), np.ones((5, 5), np.uint8)).astype(bool)
            if mask.sum() >= 16 and not (grown & occupied).any():
                break
        else:
            continue
        occupied |= mask
        k = SHAPE_CLASSES.index(cls)
        label[mask] = k + 1
        hue = rng.uniform(*_HUES[cls])
        colour = _hsv_to_rgb(hue, rng.uniform(0.55, 1.0), rng.uniform(0.55, 1.0))
        kind = str(rng.choice(['stripes', 'checker', 'rings', 'noise']))
        shade = 0.7 + 0.3 * _pattern(rng, kind, size)
        img[mask] = colour[None, :] * shade[mask][:, None]
        instances.append(dict(label=k, polygon=poly, mask=mask))
    img = cv2.GaussianBlur(img, (3, 3), 0.6)
    img += rng.normal(0.0, 4.0, size=img.shape)
    return np.clip(np.round(img), 0, 255).astype(np.uint8), label, instances


# --------------------------------------------------------------------------------------------
# writing
# --------------------------------------------------------------------------------------------
def _write_image(path: str, rgb: np.ndarray) -> None:
    os.makedirs(osp.dirname(path), exist_ok=True)
    params = _JPEG_PARAMS if path.endswith('.jpg') else _PNG_PARAMS
    ok, buf = cv2.imencode(osp.splitext(path)[1], np.ascontiguousarray(rgb[..., ::-1]), params)
    if not ok:  # pragma: no cover
        raise IOError(f'could not encode {path}')
    with open(path, 'wb') as f:
        f.write(buf.tobytes())


def _write_label(path: str, label: np.ndarray) -> None:
    os.makedirs(osp.dirname(path), exist_ok=True)
    ok, buf = cv2.imencode('.png', label, _PNG_PARAMS)
    if not ok:  # pragma: no cover
        raise IOError(f'could not encode {path}')
    with open(path, 'wb') as f:
        f.write(buf.tobytes())


def _prepare_root(root: str, meta: dict) -> None:
    """Create ``root``; replace an earlier demo set there, refuse to touch anything else."""
    if osp.isdir(root) and os.listdir(root):
        if not osp.isfile(osp.join(root, _META_FILE)):
            raise FileExistsError(
                f'{root} exists, is not empty and is not a demo data folder (no {_META_FILE}); '
                'refusing to write into it. Choose another --out or remove it.')
        shutil.rmtree(root)
    os.makedirs(root, exist_ok=True)
    with open(osp.join(root, _META_FILE), 'w') as f:
        json.dump(meta, f, indent=2)
        f.write('\n')


def _meta(task: str, **kwargs) -> dict:
    return dict(generator='mmc2f.datasets.synthetic', version=_VERSION, task=task, **kwargs)


def _check(num_train: int, num_val: int, size: int) -> None:
    if num_train < 1 or num_val < 1:
        raise ValueError(f'num_train and num_val must be >= 1, got {num_train}, {num_val}')
    if size < 32:
        raise ValueError(f'size must be >= 32 pixels, got {size}')


def make_seg_dataset(root: str, num_train: int = 300, num_val: int = 60, size: int = 128,
                     seed: int = 0) -> Dict[str, int]:
    """Write the ADE20K-style segmentation set; returns the number of images per split."""
    _check(num_train, num_val, size)
    _prepare_root(root, _meta('seg', classes=list(SEG_CLASSES),
                              palette=[list(c) for c in SEG_PALETTE],
                              num_train=num_train, num_val=num_val, size=size, seed=seed,
                              reduce_zero_label=False))
    counts = {}
    for split, folder, num in (('train', 'training', num_train), ('val', 'validation', num_val)):
        for i in range(num):
            img, label, _ = render_scene(_rng(seed, 'seg', split, i), size)
            _write_image(osp.join(root, 'images', folder, f'demo_{i:05d}.jpg'), img)
            _write_label(osp.join(root, 'annotations', folder, f'demo_{i:05d}.png'), label)
        counts[folder] = num
    return counts


def _coco_instance(inst: dict, ann_id: int, image_id: int) -> dict:
    ys, xs = np.nonzero(inst['mask'])
    x0, y0, x1, y1 = int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1
    poly = [round(float(v) + 0.5, 2) for v in inst['polygon'].reshape(-1)]  # pixel corners
    return dict(id=ann_id, image_id=image_id, category_id=inst['label'] + 1, segmentation=[poly],
                area=float(inst['mask'].sum()), bbox=[x0, y0, x1 - x0, y1 - y0], iscrowd=0)


def make_det_dataset(root: str, num_train: int = 100, num_val: int = 20, size: int = 128,
                     seed: int = 0) -> Dict[str, int]:
    """Write the COCO-format instance set; returns the number of instances per split."""
    _check(num_train, num_val, size)
    _prepare_root(root, _meta('det', classes=list(SHAPE_CLASSES), num_train=num_train,
                              num_val=num_val, size=size, seed=seed))
    categories = [dict(id=k + 1, name=c, supercategory='shape')
                  for k, c in enumerate(SHAPE_CLASSES)]
    counts = {}
    for split, num in (('train', num_train), ('val', num_val)):
        images, annotations = [], []
        for i in range(num):
            img, _, instances = render_scene(_rng(seed, 'det', split, i), size)
            file_name = f'{i:05d}.jpg'
            _write_image(osp.join(root, split, file_name), img)
            images.append(dict(id=i + 1, file_name=file_name, width=size, height=size))
            for inst in instances:
                annotations.append(_coco_instance(inst, len(annotations) + 1, i + 1))
        info = dict(description=f'mmc2f synthetic shapes ({split})', version=str(_VERSION))
        coco = dict(info=info,
                    licenses=[], images=images, annotations=annotations, categories=categories)
        os.makedirs(osp.join(root, 'annotations'), exist_ok=True)
        with open(osp.join(root, 'annotations', f'instances_{split}.json'), 'w') as f:
            json.dump(coco, f)
        counts[split] = len(annotations)
    return counts


def make_cls_dataset(root: str, num_train: int = 60, num_val: int = 20, size: int = 64,
                     seed: int = 0) -> Dict[str, int]:
    """Write the class-folder set (``num_*`` images per class); returns images per split."""
    _check(num_train, num_val, size)
    _prepare_root(root, _meta('cls', classes=list(SHAPE_CLASSES), num_train=num_train,
                              num_val=num_val, size=size, seed=seed))
    with open(osp.join(root, 'classes.txt'), 'w') as f:
        f.write('\n'.join(SHAPE_CLASSES) + '\n')
    os.makedirs(osp.join(root, 'meta'), exist_ok=True)
    counts = {}
    for split, num in (('train', num_train), ('val', num_val)):
        lines: List[str] = []
        for k, cls in enumerate(SHAPE_CLASSES):
            for i in range(num):
                rng = _rng(seed, 'cls', split, k * num + i)
                img, _, _ = render_scene(rng, size, radius=(0.2, 0.38), classes=[cls])
                rel = f'{cls}/{i:05d}.png'
                _write_image(osp.join(root, split, rel), img)
                lines.append(f'{rel} {k}')
        with open(osp.join(root, 'meta', f'{split}.txt'), 'w') as f:
            f.write('\n'.join(lines) + '\n')
        counts[split] = len(lines)
    return counts


_MAKERS = {'seg': make_seg_dataset, 'det': make_det_dataset, 'cls': make_cls_dataset}


def make_demo_data(out: str, tasks: Sequence[str] = DEMO_TASKS, num_train: Optional[int] = None,
                   num_val: Optional[int] = None, size: Optional[int] = None,
                   seed: int = 0) -> Dict[str, dict]:
    """Write the demo sets of ``tasks`` under ``out/<task>``; None keeps each generator's default.

    Returns ``{task: {'root': path, 'counts': {...}}}``.
    """
    done = {}
    for task in tasks:
        if task not in _MAKERS:
            raise ValueError(f'unknown demo task {task!r}; choose from {DEMO_TASKS}')
        kwargs = dict(num_train=num_train, num_val=num_val, size=size)
        kwargs = {k: v for k, v in kwargs.items() if v is not None}
        root = osp.join(out, task)
        counts = _MAKERS[task](root, seed=seed, **kwargs)
        done[task] = dict(root=root, counts=counts)
    return done

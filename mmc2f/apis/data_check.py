"""Checks of a run's data before anything trains, each naming the file or config key and the fix.

* cheap, always: every dataset of the run has samples (an empty folder or a wrong suffix is named),
  and the model's ``num_classes`` equals the number of classes of the datasets;
* one pass over the data (``tools/train.py --skip-data-check`` skips it; done once per work dir
  and dataset config): every image exists and is not truncated (JPEG/PNG trailer), every
  segmentation image has its label map, of the same size, with values in ``[0, num_classes)`` or
  ``ignore_index``; classification labels are in range.
"""
import hashlib
import json
import os
import os.path as osp
import sys
import time
from typing import Dict, Iterator, List, Optional, Tuple

import numpy as np
from mmengine.config import Config

from mmc2f.errors import ConfigError

__all__ = ['DataCheckError', 'model_num_classes_cfg', 'check_data']

_MAX_LISTED = 5


class DataCheckError(ConfigError):
    """The data does not fit the config or is damaged; the message lists the files."""


def model_num_classes_cfg(model_cfg: dict) -> List[Tuple[str, int]]:
    """``(config key, num_classes)`` of every head of a model config."""
    found = []

    def visit(node, key):
        if isinstance(node, dict):
            n = node.get('num_classes')
            if isinstance(n, int) and not isinstance(n, bool) and 'type' in node:
                found.append((f'{key}.num_classes', n))
            for k in ('decode_head', 'auxiliary_head', 'roi_head', 'bbox_head', 'mask_head',
                      'head'):
                if k in node:
                    visit(node[k], f'{key}.{k}')
        elif isinstance(node, (list, tuple)):
            for i, v in enumerate(node):
                visit(v, f'{key}[{i}]')

    visit(model_cfg, 'model')
    return found


def _leaves(dataset) -> Iterator:
    """The datasets inside wrappers (Concat/Repeat/ClassBalanced ...)."""
    inner = getattr(dataset, 'datasets', None)
    if isinstance(inner, (list, tuple)):
        for d in inner:
            yield from _leaves(d)
    elif getattr(dataset, 'dataset', None) is not None:
        yield from _leaves(dataset.dataset)
    else:
        yield dataset


def _where(ds_cfg: dict) -> str:
    parts = []
    root = ds_cfg.get('data_root')
    prefix = ds_cfg.get('data_prefix')
    if root:
        parts.append(f'data_root={root!r}')
    if prefix:
        parts.append(f'data_prefix={dict(prefix) if isinstance(prefix, dict) else prefix!r}')
    for key in ('img_suffix', 'seg_map_suffix', 'ann_file'):
        if ds_cfg.get(key):
            parts.append(f'{key}={ds_cfg[key]!r}')
    return ', '.join(parts)


def _innermost_cfg(ds_cfg: dict) -> dict:
    while isinstance(ds_cfg, dict) and isinstance(ds_cfg.get('dataset'), dict):
        ds_cfg = ds_cfg['dataset']
    return ds_cfg


def _empty_folder(ds_cfg: dict) -> Optional[str]:
    """Why an image folder yields no samples (no file with the configured suffix), or None."""
    prefix = ds_cfg.get('data_prefix') or {}
    folder = prefix.get('img_path', prefix.get('img')) if isinstance(prefix, dict) else prefix
    if not isinstance(folder, str):
        return None
    folder = osp.join(ds_cfg.get('data_root') or '', folder)
    suffix = ds_cfg.get('img_suffix', '.jpg')
    if not osp.isdir(folder):
        return None
    files = [f for _, _, fs in os.walk(folder) for f in fs]
    if any(f.endswith(suffix) for f in files):
        return None
    example = f', e.g. {files[0]}' if files else ''
    return (f'no file in {folder} ends with img_suffix={suffix!r} ({len(files)} files there'
            f'{example}). Set img_suffix (and seg_map_suffix) to the files\' suffix or point '
            'data_root/data_prefix at the right folder.')


def _truncated(path: str) -> Optional[str]:
    """Why the image file at ``path`` is damaged, or None (a JPEG must end with its EOI marker,
    a PNG with its IEND chunk)."""
    try:
        size = osp.getsize(path)
        with open(path, 'rb') as f:
            head = f.read(8)
            f.seek(max(size - 64, 0))
            tail = f.read()
    except OSError as err:
        return f'unreadable ({err.strerror})'
    if size == 0:
        return 'empty file'
    if head[:2] == b'\xff\xd8' and b'\xff\xd9' not in tail:
        return 'truncated JPEG (no end-of-image marker)'
    if head == b'\x89PNG\r\n\x1a\n' and b'IEND' not in tail:
        return 'truncated PNG (no IEND chunk)'
    return None


def _image_size(path: str) -> Optional[Tuple[int, int]]:
    from PIL import Image
    try:
        with Image.open(path) as img:
            return img.size
    except Exception:  # noqa: BLE001  (reported as unreadable by the caller)
        return None


def _labels(path: str) -> Optional[np.ndarray]:
    from PIL import Image
    try:
        with Image.open(path) as img:
            return np.unique(np.asarray(img))
    except Exception:  # noqa: BLE001
        return None


class _Progress:
    """A progress line on stderr, shown only when the pass takes more than a few seconds."""

    def __init__(self, total: int, what: str, after: float = 3.0):
        self.total, self.what, self.after = total, what, after
        self.start = self.last = time.time()
        self.shown = False

    def update(self, done: int) -> None:
        now = time.time()
        if now - self.start > self.after and (now - self.last > 2 or done == self.total):
            rate = done / max(now - self.start, 1e-6)
            eta = (self.total - done) / max(rate, 1e-6)
            print(f'\r[data check] {self.what}: {done}/{self.total} ({rate:.0f}/s, '
                  f'{eta:.0f}s left)', end='', file=sys.stderr, flush=True)
            self.last, self.shown = now, True

    def close(self) -> None:
        if self.shown:
            print(file=sys.stderr, flush=True)


def _check_samples(dataset, task: str, num_classes: Optional[int], ignore_index: int,
                   what: str) -> List[str]:
    problems: List[str] = []
    n = len(dataset)
    progress = _Progress(n, what)
    for i in range(n):
        info = dataset.get_data_info(i)
        img = info.get('img_path')
        if isinstance(img, str):
            if not osp.isfile(img):
                problems.append(f'image {img} does not exist')
            else:
                bad = _truncated(img)
                if bad:
                    problems.append(f'image {img}: {bad}')
        seg = info.get('seg_map_path')
        if task == 'seg' and isinstance(seg, str):
            if not osp.isfile(seg):
                problems.append(f'image {img} has no annotation: {seg} does not exist')
            else:
                isize, lsize = _image_size(img) if isinstance(img, str) else None, _image_size(seg)
                labels = _labels(seg)
                if lsize is None or labels is None:
                    problems.append(f'label map {seg} cannot be read')
                elif isize is not None and isize != lsize:
                    problems.append(f'label map {seg} is {lsize[0]}x{lsize[1]} (WxH) but its image '
                                    f'{img} is {isize[0]}x{isize[1]}')
                elif num_classes is not None:
                    if info.get('reduce_zero_label'):
                        labels = np.where(labels == 0, 255, labels.astype(np.int64) - 1)
                    bad_values = [int(v) for v in labels
                                  if not (0 <= v < num_classes or v == ignore_index)]
                    if bad_values:
                        problems.append(f'label map {seg} has values {bad_values[:5]} outside '
                                        f'[0, {num_classes}) and ignore_index {ignore_index}')
        label = info.get('gt_label')
        if task == 'cls' and num_classes is not None and label is not None:
            values = np.atleast_1d(np.asarray(label)).tolist()
            if any(not 0 <= int(v) < num_classes for v in values):
                problems.append(f'image {img} has label {values} outside [0, {num_classes})')
        if len(problems) > 100:
            break
        progress.update(i + 1)
    progress.close()
    return problems


def _fingerprint(ds_cfg: dict, num_samples: int) -> str:
    text = json.dumps(ds_cfg, sort_keys=True, default=str) + str(num_samples)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def check_data(cfg: Config, loaders: List[str], task: str, full_pass: bool = True,
               record_dir: Optional[str] = None) -> Dict[str, int]:
    """Build the datasets of ``loaders`` and check them (see the module docstring).

    Returns ``{loader: number of samples}``. With ``record_dir`` the full pass is recorded there
    (``.mmc2f_data_check.json``) and not repeated for the same dataset config.

    Raises:
        DataCheckError: an empty dataset, a class-count mismatch or damaged/mismatched files.
    """
    from mmengine.registry import DATASETS, DefaultScope
    heads = model_num_classes_cfg(cfg.get('model', {}))
    ignore_index = 255
    for key in ('decode_head', ):
        head = cfg.get('model', {}).get(key)
        if isinstance(head, dict) and isinstance(head.get('ignore_index'), int):
            ignore_index = head['ignore_index']
    record = osp.join(record_dir, '.mmc2f_data_check.json') if record_dir else None
    done = {}
    if record and osp.isfile(record):
        try:
            with open(record) as f:
                done = json.load(f)
        except (OSError, ValueError):
            done = {}
    sizes = {}
    for loader in loaders:
        loader_cfg = cfg.get(loader)
        if not isinstance(loader_cfg, dict) or not isinstance(loader_cfg.get('dataset'), dict):
            continue
        ds_cfg = loader_cfg['dataset']
        key = f'{loader}.dataset'
        with DefaultScope.overwrite_default_scope(cfg.get('default_scope')):
            try:
                dataset = DATASETS.build(ds_cfg)
            except Exception as err:  # noqa: BLE001
                empty = _empty_folder(_innermost_cfg(ds_cfg))
                if empty:
                    raise DataCheckError(f'{key} has no samples: {empty}') from None
                raise DataCheckError(f'{key} cannot be built ({_where(_innermost_cfg(ds_cfg))}): '
                                     f'{type(err).__name__}: {err}') from err
        sizes[loader] = n = len(dataset)
        inner = _innermost_cfg(ds_cfg)
        if n == 0:
            raise DataCheckError(
                f'{key} has no samples ({_where(inner)}): the folder is empty or its files do '
                'not end with the configured suffix. Check the paths and img_suffix / '
                'seg_map_suffix (e.g. ".jpg" vs ".png").')
        classes = None
        for leaf in _leaves(dataset):
            names = (getattr(leaf, 'metainfo', None) or {}).get('classes')
            if names is not None:
                classes = len(names)
                break
        if classes is not None:
            for head_key, num in heads:
                if num != classes and 'rpn' not in head_key:  # an RPN has one class
                    raise DataCheckError(
                        f'{head_key} = {num} but {key} has {classes} classes '
                        f'({_where(inner)}). Set {head_key}={classes} (e.g. --cfg-options '
                        f'{head_key}={classes}) or give the dataset the matching metainfo.')
        if not full_pass:
            continue
        fp = _fingerprint(ds_cfg, n)
        if done.get(key) == fp:
            continue
        num_classes = classes if classes is not None else (heads[0][1] if heads else None)
        problems = []
        for leaf in _leaves(dataset):
            problems += _check_samples(leaf, task, num_classes, ignore_index, key)
        if problems:
            listed = '\n  '.join(problems[:_MAX_LISTED])
            more = f'\n  ... {len(problems) - _MAX_LISTED} more' if len(problems) > _MAX_LISTED \
                else ''
            raise DataCheckError(
                f'{key}: {len(problems)}{"+" if len(problems) > 100 else ""} problem(s) in the '
                f'data ({_where(inner)}):\n  {listed}{more}\nFix or remove these files '
                '(--skip-data-check skips this pass).')
        done[key] = fp
    if record and done:
        try:
            os.makedirs(record_dir, exist_ok=True)
            with open(record, 'w') as f:
                json.dump(done, f)
        except OSError:
            pass
    return sizes

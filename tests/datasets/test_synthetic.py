"""The synthetic demo datasets: determinism, layouts, label values, COCO validity, class folders."""
import filecmp
import json
import os
import os.path as osp
import subprocess
import sys

import cv2
import numpy as np
import pytest

from mmc2f.datasets.synthetic import (SEG_CLASSES, SHAPE_CLASSES, make_cls_dataset, make_demo_data,
                                 make_det_dataset, make_seg_dataset, render_scene)


def _files(root):
    out = []
    for dirpath, _, names in os.walk(root):
        out += [osp.relpath(osp.join(dirpath, n), root) for n in names]
    return sorted(out)


def _same_tree(a, b):
    files = _files(a)
    assert files == _files(b)
    mismatch = filecmp.cmpfiles(a, b, files, shallow=False)[1:]
    assert mismatch == ([], []), mismatch


@pytest.mark.parametrize('maker', [make_seg_dataset, make_det_dataset, make_cls_dataset])
def test_same_seed_gives_identical_bytes(tmp_path, maker):
    maker(str(tmp_path / 'a'), num_train=3, num_val=2, size=48, seed=7)
    maker(str(tmp_path / 'b'), num_train=3, num_val=2, size=48, seed=7)
    _same_tree(tmp_path / 'a', tmp_path / 'b')
    maker(str(tmp_path / 'c'), num_train=3, num_val=2, size=48, seed=8)
    first = sorted(f for f in _files(tmp_path / 'a') if f.endswith(('.jpg', '.png')))[0]
    assert (tmp_path / 'a' / first).read_bytes() != (tmp_path / 'c' / first).read_bytes()


def test_image_does_not_depend_on_split_sizes(tmp_path):
    make_seg_dataset(str(tmp_path / 'a'), num_train=2, num_val=1, size=48, seed=0)
    make_seg_dataset(str(tmp_path / 'b'), num_train=4, num_val=3, size=48, seed=0)
    for rel in ('images/training/demo_00001.jpg', 'annotations/validation/demo_00000.png'):
        assert (tmp_path / 'a' / rel).read_bytes() == (tmp_path / 'b' / rel).read_bytes()


def test_render_scene_consistent():
    img, label, instances = render_scene(np.random.default_rng(3), 64, num_shapes=(3, 3))
    assert img.shape == (64, 64, 3) and img.dtype == np.uint8
    assert label.shape == (64, 64) and label.dtype == np.uint8
    assert len(instances) >= 1
    for inst in instances:
        assert (label[inst['mask']] == inst['label'] + 1).all()
    union = np.any([inst['mask'] for inst in instances], axis=0)
    assert ((label > 0) == union).all()


def test_seg_layout_and_labels(tmp_path):
    root = tmp_path / 'seg'
    counts = make_seg_dataset(str(root), num_train=4, num_val=2, size=64, seed=1)
    assert counts == {'training': 4, 'validation': 2}
    for folder, n in counts.items():
        imgs = sorted(os.listdir(root / 'images' / folder))
        anns = sorted(os.listdir(root / 'annotations' / folder))
        assert imgs == [f'demo_{i:05d}.jpg' for i in range(n)]
        assert anns == [f'demo_{i:05d}.png' for i in range(n)]
    seen = set()
    for name in os.listdir(root / 'annotations' / 'training'):
        label = cv2.imread(str(root / 'annotations' / 'training' / name), cv2.IMREAD_UNCHANGED)
        assert label.dtype == np.uint8 and label.ndim == 2 and label.shape == (64, 64)
        seen |= set(np.unique(label).tolist())
        img = cv2.imread(str(root / 'images' / 'training' / name.replace('.png', '.jpg')))
        assert img.shape == (64, 64, 3)
    assert seen <= set(range(len(SEG_CLASSES))) and 0 in seen and len(seen) > 1
    meta = json.loads((root / 'demo_meta.json').read_text())
    assert meta['classes'] == list(SEG_CLASSES) and meta['reduce_zero_label'] is False


def test_seg_set_loads_in_mmseg(tmp_path):
    from mmcv.transforms import LoadImageFromFile
    from mmseg.datasets import BaseSegDataset
    from mmseg.datasets.transforms import LoadAnnotations
    root = tmp_path / 'seg'
    make_seg_dataset(str(root), num_train=3, num_val=2, size=48, seed=0)
    ds = BaseSegDataset(
        data_root=str(root), data_prefix=dict(img_path='images/validation',
                                              seg_map_path='annotations/validation'),
        img_suffix='.jpg', seg_map_suffix='.png', metainfo=dict(classes=SEG_CLASSES),
        pipeline=[LoadImageFromFile(), LoadAnnotations(reduce_zero_label=False)],
        serialize_data=False)
    assert len(ds) == 2
    sample = ds[0]
    assert sample['gt_seg_map'].shape == (48, 48)
    assert sample['gt_seg_map'].max() < len(SEG_CLASSES)


def test_coco_json_valid(tmp_path):
    from pycocotools.coco import COCO
    root = tmp_path / 'det'
    counts = make_det_dataset(str(root), num_train=4, num_val=2, size=64, seed=2)
    for split in ('train', 'val'):
        coco = COCO(str(root / 'annotations' / f'instances_{split}.json'))
        assert [c['name'] for c in coco.loadCats(coco.getCatIds())] == list(SHAPE_CLASSES)
        assert len(coco.getAnnIds()) == counts[split] > 0
        for img_info in coco.loadImgs(coco.getImgIds()):
            img = cv2.imread(str(root / split / img_info['file_name']))
            assert img.shape == (img_info['height'], img_info['width'], 3)
        for ann in coco.loadAnns(coco.getAnnIds()):
            assert ann['iscrowd'] == 0 and ann['category_id'] in (1, 2, 3)
            mask = coco.annToMask(ann)
            x, y, w, h = ann['bbox']
            assert 0 <= x and 0 <= y and x + w <= 64 and y + h <= 64 and w > 0 and h > 0
            # pycocotools rasterises the polygon itself: it must agree with area and bbox.
            assert abs(int(mask.sum()) - ann['area']) <= 0.1 * ann['area'] + 4
            ys, xs = np.nonzero(mask)
            assert abs(xs.min() - x) <= 1 and abs(ys.min() - y) <= 1
            assert len(ann['segmentation'][0]) >= 6


def test_cls_folders(tmp_path):
    root = tmp_path / 'cls'
    counts = make_cls_dataset(str(root), num_train=2, num_val=1, size=32, seed=0)
    assert counts == {'train': 6, 'val': 3}
    assert sorted(os.listdir(root / 'train')) == sorted(SHAPE_CLASSES)
    assert (root / 'classes.txt').read_text().split() == list(SHAPE_CLASSES)
    lines = (root / 'meta' / 'val.txt').read_text().splitlines()
    assert len(lines) == 3
    for line in lines:
        rel, label = line.split()
        assert rel.split('/')[0] == SHAPE_CLASSES[int(label)]
        assert cv2.imread(str(root / 'val' / rel)).shape == (32, 32, 3)
    from mmpretrain.datasets import CustomDataset
    folders = CustomDataset(data_root=str(root), data_prefix='train', pipeline=[])
    assert len(folders) == 6 and list(folders.CLASSES) == sorted(SHAPE_CLASSES)
    with_ann = CustomDataset(data_root=str(root), data_prefix='val', ann_file='meta/val.txt',
                             classes=str(root / 'classes.txt'), pipeline=[])
    assert len(with_ann) == 3 and list(with_ann.CLASSES) == list(SHAPE_CLASSES)


def test_refuses_foreign_folder_and_replaces_own(tmp_path):
    foreign = tmp_path / 'mine'
    foreign.mkdir()
    (foreign / 'keep.txt').write_text('x')
    with pytest.raises(FileExistsError, match='not a demo data folder'):
        make_seg_dataset(str(foreign), num_train=1, num_val=1, size=32)
    assert (foreign / 'keep.txt').exists()
    root = tmp_path / 'seg'
    make_seg_dataset(str(root), num_train=3, num_val=1, size=32)
    make_seg_dataset(str(root), num_train=1, num_val=1, size=32)
    assert len(os.listdir(root / 'images' / 'training')) == 1


def test_cli(tmp_path, repo_root):
    out = tmp_path / 'demo'
    proc = subprocess.run(
        [sys.executable, osp.join(repo_root, 'tools', 'misc', 'make_demo_data.py'), '--out',
         str(out), '--task', 'all', '--num-train', '2', '--num-val', '1', '--size', '40'],
        capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    for task in ('seg', 'det', 'cls'):
        assert f'{task}: wrote' in proc.stdout
        assert (out / task / 'demo_meta.json').is_file()
    assert make_demo_data  # the CLI is a thin wrapper over make_demo_data

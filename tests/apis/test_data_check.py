"""Data checks before training: every problem named with its file, the key and the fix."""
import glob
import os
import os.path as osp

import numpy as np
import pytest
from mmengine.config import Config
from PIL import Image

from mmc2f.apis.data_check import DataCheckError, check_data
from mmc2f.apis.scope import init_scope
from mmc2f.datasets.synthetic import make_cls_dataset, make_seg_dataset

SEG_CFG = 'configs/demo/segnext_mscan-t_1xb8-adamw-400iter_demo-seg-128x128.py'
CLS_CFG = 'configs/demo/conv2former-n_1xb16-300iter_demo-cls-64px.py'


@pytest.fixture
def seg(tmp_path, repo_root):
    root = str(tmp_path / 'seg')
    make_seg_dataset(root, num_train=6, num_val=2, size=32)
    cfg = Config.fromfile(osp.join(repo_root, SEG_CFG))
    for loader in ('train_dataloader', 'val_dataloader'):
        cfg[loader].dataset.data_root = root
    init_scope(cfg)
    return cfg, root


def _files(root, kind):
    return sorted(glob.glob(osp.join(root, kind, 'training', '*')))


def test_clean_data_passes_and_is_recorded(seg, tmp_path):
    cfg, _ = seg
    sizes = check_data(cfg, ['train_dataloader', 'val_dataloader'], 'seg',
                       record_dir=str(tmp_path / 'wd'))
    assert sizes == {'train_dataloader': 6, 'val_dataloader': 2}
    assert osp.isfile(tmp_path / 'wd' / '.mmc2f_data_check.json')


def test_each_damage_is_named(seg):
    cfg, root = seg
    labels, images = _files(root, 'annotations'), _files(root, 'images')
    a = np.array(Image.open(labels[0]))
    a[0, 0] = 9
    Image.fromarray(a).save(labels[0])
    data = open(images[1], 'rb').read()
    open(images[1], 'wb').write(data[:len(data) // 2])
    Image.fromarray(np.array(Image.open(labels[2]))[:16]).save(labels[2])
    os.remove(labels[3])
    with pytest.raises(DataCheckError) as info:
        check_data(cfg, ['train_dataloader'], 'seg')
    msg = str(info.value)
    assert msg.startswith('train_dataloader.dataset: 4 problem(s)')
    assert f'label map {labels[0]} has values [9] outside [0, 4)' in msg
    assert f'image {images[1]}: truncated JPEG' in msg
    assert f'label map {labels[2]} is 32x16 (WxH) but its image' in msg
    assert f'has no annotation: {labels[3]} does not exist' in msg
    assert '--skip-data-check' in msg
    # the cheap checks alone do not read the files
    assert check_data(cfg, ['train_dataloader'], 'seg', full_pass=False)['train_dataloader'] == 6


def test_empty_folder_or_wrong_suffix(seg):
    cfg, root = seg
    cfg.train_dataloader.dataset.img_suffix = '.png'
    with pytest.raises(DataCheckError, match=r"has no samples: no file in .*images/training ends "
                       r"with img_suffix='.png' \(6 files there"):
        check_data(cfg, ['train_dataloader'], 'seg', full_pass=False)


@pytest.mark.parametrize('num_classes', [3, 5])
def test_num_classes_must_match_the_dataset(seg, num_classes):
    cfg, _ = seg
    cfg.model.decode_head.num_classes = num_classes
    with pytest.raises(DataCheckError, match=rf'model.decode_head.num_classes = {num_classes} but '
                       r'train_dataloader.dataset has 4 classes.*Set model.decode_head.num_classes=4'):
        check_data(cfg, ['train_dataloader'], 'seg', full_pass=False)


def test_classification_label_range(tmp_path, repo_root):
    root = str(tmp_path / 'cls')
    make_cls_dataset(root, num_train=2, num_val=1, size=32)
    cfg = Config.fromfile(osp.join(repo_root, CLS_CFG))
    for loader in ('train_dataloader', 'val_dataloader'):
        cfg[loader].dataset.data_root = root
    init_scope(cfg)
    assert check_data(cfg, ['train_dataloader'], 'cls')['train_dataloader'] == 6
    ann = osp.join(root, cfg.train_dataloader.dataset.ann_file)
    lines = open(ann).read().splitlines()
    lines[0] = lines[0].rsplit(' ', 1)[0] + ' 7'
    open(ann, 'w').write('\n'.join(lines) + '\n')
    with pytest.raises(DataCheckError, match=r'has label \[7\] outside \[0, 3\)'):
        check_data(cfg, ['train_dataloader'], 'cls')

"""Bad input through the real tools: an early one-line `error: ...`, exit status 2, naming the file
or config key and the fix; the traceback only with --debug."""
import glob
import os
import os.path as osp
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from mmc2f.datasets.synthetic import make_seg_dataset

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
SEG_CFG = osp.join(ROOT, 'configs', 'demo', 'segnext_mscan-t_1xb8-adamw-400iter_demo-seg-128x128.py')


def _run(args, cwd):
    env = dict(os.environ, PYTHONWARNINGS='ignore')
    proc = subprocess.run([sys.executable] + args, capture_output=True, text=True, cwd=cwd,
                          env=env, timeout=300)
    lines = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()]
    return proc.returncode, lines[-1] if lines else '', proc.stderr


def _train(cfg, tmp_path, *extra):
    return _run([osp.join(ROOT, 'tools', 'train.py'), cfg, '--work-dir', str(tmp_path / 'wd')]
                + list(extra), cwd=str(tmp_path))


def test_missing_config(tmp_path):
    rc, last, _ = _train('configs/nope.py', tmp_path)
    assert rc == 2 and last.startswith('train.py: error: config file "configs/nope.py" does not '
                                       'exist'), last


def test_syntax_error_names_the_base_file_and_line(tmp_path):
    base = tmp_path / 'base.py'
    base.write_text("default_scope = 'mmseg'\nmodel = dict(type='EncoderDecoder',\n")
    (tmp_path / 'top.py').write_text("_base_ = ['./base.py']\n")
    rc, last, _ = _train(str(tmp_path / 'top.py'), tmp_path)
    assert rc == 2 and last.startswith(f'train.py: error: syntax error in config {base}, line 2')


@pytest.fixture(scope='module')
def broken_seg(tmp_path_factory):
    root = str(tmp_path_factory.mktemp('data') / 'seg')
    make_seg_dataset(root, num_train=4, num_val=2, size=32)
    label = sorted(glob.glob(osp.join(root, 'annotations', 'training', '*.png')))[1]
    a = np.array(Image.open(label))
    a[3, 3] = 200
    Image.fromarray(a).save(label)
    return root, label


def test_data_problem_before_training_and_debug_traceback(tmp_path, broken_seg):
    root, label = broken_seg
    opts = ['--cfg-options', f'train_dataloader.dataset.data_root={root}',
            f'val_dataloader.dataset.data_root={root}']
    rc, last, err = _train(SEG_CFG, tmp_path, *opts)
    assert rc == 2 and last.startswith('Fix or remove these files'), err
    assert f'label map {label} has values [200] outside [0, 4)' in err
    assert 'train.py: error: train_dataloader.dataset: 1 problem(s)' in err
    assert 'Traceback' not in err and not glob.glob(str(tmp_path / 'wd' / '*.pth'))
    rc, _, err = _train(SEG_CFG, tmp_path, '--debug', *opts)
    assert rc != 0 and 'Traceback' in err and 'DataCheckError' in err


def test_image_demo_refuses_a_non_image(tmp_path):
    import torch

    from mmc2f.apis import init_model
    ckpt = tmp_path / 'model.pth'
    with pytest.warns(UserWarning, match='random weights'):
        torch.save({'state_dict': init_model(SEG_CFG, None, device='cpu').state_dict()}, ckpt)
    bogus = tmp_path / 'notes.jpg'
    bogus.write_text('not an image')
    rc, last, _ = _run([osp.join(ROOT, 'demo', 'image_demo.py'), str(bogus), SEG_CFG, str(ckpt),
                        '--device', 'cpu'], cwd=str(tmp_path))
    assert rc == 2 and last.startswith(f'error: cannot read image "{bogus}": not an image'), last

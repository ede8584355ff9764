"""tools/analysis_tools/analyze_logs.py on logs in MMEngine's JSON format (one object per line)."""
import json
import os.path as osp
import subprocess
import sys

import pytest

REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
TOOL = osp.join(REPO, 'tools', 'analysis_tools', 'analyze_logs.py')


def _write_run(work_dir, timestamp, records):
    vis = work_dir / timestamp / 'vis_data'
    vis.mkdir(parents=True)
    text = '\n'.join(json.dumps(r) for r in records) + '\n'
    (vis / 'scalars.json').write_text(text)
    (vis / f'{timestamp}.json').write_text(text)
    return vis / 'scalars.json'


def _seg_records(scale):
    """An iteration-based mmseg run: train lines every 10 iterations, validation at 20 and 40."""
    recs = []
    for it in range(10, 41, 10):
        recs.append({'lr': 1e-3 * (1 - it / 50), 'data_time': 0.01, 'loss': scale / it,
                     'decode.loss_ce': scale / it, 'time': 0.5, 'iter': it, 'memory': 100,
                     'step': it})
        if it % 20 == 0:
            recs.append({'aAcc': 80.0 + it / 10, 'mIoU': scale * it, 'mAcc': 50.0,
                         'data_time': 0.01, 'time': 0.2, 'step': it})
    return recs


def _run(args, cwd):
    return subprocess.run([sys.executable, TOOL] + [str(a) for a in args], cwd=str(cwd),
                          capture_output=True, text=True, timeout=120)


def test_two_runs_one_plot(tmp_path):
    from PIL import Image

    _write_run(tmp_path / 'a', '20260101_000000', [{'lr': 1, 'loss': 9, 'step': 1}])  # older
    _write_run(tmp_path / 'a', '20260102_000000', _seg_records(1.0))
    log_b = _write_run(tmp_path / 'b', '20260103_000000', _seg_records(2.0))
    out = tmp_path / 'plots' / 'curves.png'
    proc = _run([tmp_path / 'a', log_b, '--legend', 'seed0', 'seed1', '--out', out,
                 '--title', 'demo'], tmp_path)
    assert proc.returncode == 0, proc.stderr
    # default keys: loss, lr and the main validation metric; the newest run of a work_dir
    assert '20260102_000000' in proc.stdout
    assert 'loss: last 0.025 at iteration 40' in proc.stdout
    assert 'mIoU: last 40 at iteration 40, best 40 at iteration 40' in proc.stdout
    assert 'mIoU: last 80 at iteration 40' in proc.stdout
    img = Image.open(out)
    assert img.format == 'PNG' and img.size[1] > img.size[0] * 0.8  # three stacked panels


def test_keys_and_epoch_based_validation(tmp_path):
    """Chosen keys; an mmdet-style epoch-based run plots its metric against the epoch."""
    recs = [{'lr': 1e-4, 'loss': 2.0 - e / 10, 'loss_rpn_cls': 0.5, 'epoch': e, 'iter': 5,
             'step': 5 * e, 'time': 1.0} for e in (1, 2)]
    recs += [{'coco/bbox_mAP': 0.1 * e, 'coco/segm_mAP': 0.05 * e, 'step': e} for e in (1, 2)]
    _write_run(tmp_path, '20260101_000000', recs)
    out = tmp_path / 'det.png'
    proc = _run([tmp_path / '20260101_000000', '--keys', 'loss_rpn_cls', 'coco/bbox_mAP',
                 '--out', out], tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert 'coco/bbox_mAP: last 0.2 at epoch 2, best 0.2 at epoch 2' in proc.stdout
    assert 'lr:' not in proc.stdout and out.is_file()

    # the default metric of a detection run is its segm mAP, then bbox mAP
    proc = _run([tmp_path, '--out', tmp_path / 'default.png'], tmp_path)
    assert proc.returncode == 0 and 'coco/segm_mAP' in proc.stdout


@pytest.mark.parametrize('args, message', [
    (['--keys', 'nope'], "logged keys: ['aAcc', 'decode.loss_ce', 'loss', 'lr', 'mAcc', 'mIoU']"),
    (['--legend', 'x', 'y'], 'one name per run'),
])
def test_errors(tmp_path, args, message):
    _write_run(tmp_path, '20260101_000000', _seg_records(1.0))
    proc = _run([tmp_path] + args + ['--out', tmp_path / 'x.png'], tmp_path)
    assert proc.returncode == 2 and message in proc.stderr


def test_missing_log(tmp_path):
    proc = _run([tmp_path / 'nothing'], tmp_path)
    assert proc.returncode == 2 and 'no such log' in proc.stderr

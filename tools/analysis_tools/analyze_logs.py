"""Plot training curves (loss, learning rate, validation metric) from MMEngine's JSON logs.

    python tools/analysis_tools/analyze_logs.py RUN [RUN ...] [--keys loss lr mIoU]
        [--legend NAME ...] [--out curves.png] [--title TEXT]

RUN is a work_dir (its newest ``<timestamp>/vis_data/scalars.json`` is read), a
``<timestamp>`` folder, or a JSON log itself (``vis_data/scalars.json`` or ``<timestamp>.json``:
one JSON object per line, as MMEngine's ``LoggerHook`` writes them for mmseg, mmdet and
mmpretrain). Every key gets its own panel; every run is one line in each panel (so several runs
compare on one picture). Training keys (``loss``, ``lr``, ``decode.loss_ce``, ...) are plotted
against the iteration; validation keys (``mIoU``, ``coco/bbox_mAP``, ``accuracy/top1``, ...)
against the step MMEngine logged them at (the iteration, or the epoch for epoch-based runs).
Without ``--keys``: ``loss``, ``lr`` and the run's main validation metric. The script also prints
the last value of each key and the best validation value.
"""
import argparse
import glob
import json
import os
import os.path as osp
import re
import sys
from collections import OrderedDict
from typing import Dict, List, Optional, Tuple

#: Keys that are bookkeeping, not curves.
META_KEYS = {'step', 'iter', 'epoch', 'time', 'data_time', 'memory', 'eta'}
#: Validation metrics tried in this order when --keys is not given.
MAIN_METRICS = ('mIoU', 'coco/segm_mAP', 'coco/bbox_mAP', 'accuracy/top1', 'mDice', 'aAcc')


def find_log(path: str) -> str:
    """The JSON log of a work_dir / timestamp folder / JSON file (newest run first)."""
    if osp.isfile(path):
        return path
    if not osp.isdir(path):
        raise FileNotFoundError(f'{path}: no such log file or folder')
    for pattern in ('vis_data/scalars.json', '*/vis_data/scalars.json', 'vis_data/*.json',
                    '*/vis_data/*.json'):
        found = glob.glob(osp.join(path, pattern))
        if pattern.startswith('*'):  # only <timestamp> runs (not e.g. a --show-dir's vis_data)
            found = [p for p in found if re.fullmatch(r'\d{8}_\d{6}', p.split(os.sep)[-3])]
        if found:
            return sorted(found)[-1]  # timestamps sort chronologically
    raise FileNotFoundError(f'{path}: no MMEngine JSON log (<timestamp>/vis_data/scalars.json)')


def load_log(path: str) -> Tuple[List[dict], List[dict]]:
    """(train records, validation records) of a JSON log."""
    train, val = [], []
    with open(path) as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:  # a line cut by a killed run
                continue
            if 'step' not in rec:
                continue
            (train if ('lr' in rec or 'loss' in rec) else val).append(rec)
    return train, val


def default_keys(runs: List[Tuple[List[dict], List[dict]]]) -> List[str]:
    keys = []
    for train, val in runs:
        for k in ('loss', 'lr'):
            if k not in keys and any(k in r for r in train):
                keys.append(k)
        val_keys = [k for r in val for k in r if k not in META_KEYS]
        metric = next((m for m in MAIN_METRICS if m in val_keys), val_keys[0] if val_keys else None)
        if metric is not None and metric not in keys:
            keys.append(metric)
    return keys


def series(train: List[dict], val: List[dict], key: str) -> Optional[Tuple[list, list, str]]:
    """(x, y, x label) of one key in one run; None when the run does not log it."""
    for records, is_val in ((train, False), (val, True)):
        pts = [(r['step'], r[key]) for r in records
               if isinstance(r.get(key), (int, float))]
        if pts:
            by_epoch = is_val and any('epoch' in r for r in train)
            return [p[0] for p in pts], [p[1] for p in pts], 'epoch' if by_epoch else 'iteration'
    return None


def summarize(name: str, train: List[dict], val: List[dict], keys: List[str]) -> Dict:
    out = OrderedDict()
    for key in keys:
        s = series(train, val, key)
        if s is None:
            continue
        x, y, xlabel = s
        out[key] = dict(last=y[-1], at=x[-1], unit=xlabel)
        if any(key in r for r in val):
            higher_better = 'loss' not in key.lower()
            i = max(range(len(y)), key=lambda j: y[j] if higher_better else -y[j])
            out[key].update(best=y[i], best_at=x[i])
    return out


def plot(runs, names: List[str], keys: List[str], out: str, title: Optional[str] = None) -> str:
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(keys), 1, figsize=(8, 2.8 * len(keys)), squeeze=False)
    for ax, key in zip(axes[:, 0], keys):
        xlabel = 'iteration'
        for (train, val), name in zip(runs, names):
            s = series(train, val, key)
            if s is None:
                continue
            x, y, xlabel = s
            ax.plot(x, y, marker='o' if len(x) < 20 else None, markersize=4, label=name)
        ax.set_ylabel(key)
        ax.set_xlabel(xlabel)
        if key == 'lr':
            ax.ticklabel_format(axis='y', style='sci', scilimits=(-3, 3))
        ax.grid(alpha=0.3)
        if len(runs) > 1:
            ax.legend(fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    os.makedirs(osp.dirname(osp.abspath(out)), exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        description='Plot loss, learning rate and validation metrics of MMEngine runs to PNG')
    p.add_argument('runs', nargs='+',
                   help='work_dirs, <timestamp> folders or JSON logs (vis_data/scalars.json)')
    p.add_argument('--keys', nargs='+', default=None,
                   help='keys to plot, one panel each (default: loss, lr and the main metric)')
    p.add_argument('--legend', nargs='+', default=None, help='a name per run (default: paths)')
    p.add_argument('--out', default='curves.png', help='output PNG (default: curves.png)')
    p.add_argument('--title', default=None, help='figure title')
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    try:
        logs = [find_log(r) for r in args.runs]
    except FileNotFoundError as err:
        print(f'analyze_logs.py: error: {err}', file=sys.stderr)
        sys.exit(2)
    if args.legend is not None and len(args.legend) != len(logs):
        print('analyze_logs.py: error: --legend needs one name per run', file=sys.stderr)
        sys.exit(2)
    runs = [load_log(p) for p in logs]
    names = args.legend or [osp.relpath(r) for r in args.runs]
    keys = args.keys or default_keys(runs)
    available = sorted({k for t, v in runs for r in t + v for k in r if k not in META_KEYS})
    unknown = [k for k in keys if all(series(t, v, k) is None for t, v in runs)]
    if not keys or unknown:
        print(f'analyze_logs.py: error: no values for {unknown or "any key"} in {logs}; '
              f'logged keys: {available}', file=sys.stderr)
        sys.exit(2)
    for (train, val), name, log in zip(runs, names, logs):
        print(f'{name} ({log}):')
        for key, s in summarize(name, train, val, keys).items():
            best = f", best {s['best']:.4g} at {s['unit']} {s['best_at']}" if 'best' in s else ''
            print(f"  {key}: last {s['last']:.4g} at {s['unit']} {s['at']}{best}")
    print(f'saved {plot(runs, names, keys, args.out, args.title)}')


if __name__ == '__main__':
    main()

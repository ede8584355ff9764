"""Write mmc2f's synthetic demo datasets (deterministic: same arguments, byte-identical files).

    python tools/misc/make_demo_data.py --out data/demo                 # seg, det and cls
    python tools/misc/make_demo_data.py --out data/demo --task seg --num-train 300 --num-val 60

Layouts (see mmc2f/datasets/synthetic.py and docs/demo.md):
    <out>/seg  ADE20K style: images/{training,validation}/*.jpg, annotations/{...}/*.png
               (labels: 0 background, 1 circle, 2 square, 3 triangle; reduce_zero_label=False)
    <out>/det  COCO: {train,val}/*.jpg, annotations/instances_{train,val}.json
    <out>/cls  class folders: {train,val}/<class>/*.png, meta/{train,val}.txt, classes.txt
"""
import argparse
import sys
import time

from mmc2f.datasets import DEMO_TASKS, make_demo_data


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description='Generate the synthetic mmc2f demo datasets.')
    parser.add_argument('--out', default='data/demo', help='parent folder (default: data/demo)')
    parser.add_argument('--task', default='all', choices=('all', ) + DEMO_TASKS,
                        help='which set to write (default: all)')
    parser.add_argument('--num-train', type=int, default=None,
                        help='training images (per class for cls); default per task: '
                        'seg 300, det 100, cls 60')
    parser.add_argument('--num-val', type=int, default=None,
                        help='validation images (per class for cls); default: seg 60, det 20, '
                        'cls 20')
    parser.add_argument('--size', type=int, default=None,
                        help='image side in pixels; default: seg/det 128, cls 64')
    parser.add_argument('--seed', type=int, default=0, help='random seed (default: 0)')
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    tasks = DEMO_TASKS if args.task == 'all' else (args.task, )
    start = time.time()
    try:
        done = make_demo_data(args.out, tasks, num_train=args.num_train, num_val=args.num_val,
                              size=args.size, seed=args.seed)
    except (ValueError, FileExistsError) as err:
        sys.exit(f'make_demo_data.py: error: {err}')
    for task, info in done.items():
        counts = ', '.join(f'{k}: {v}' for k, v in info['counts'].items())
        unit = 'instances' if task == 'det' else 'images'
        print(f'[make_demo_data] {task}: wrote {info["root"]} ({unit} - {counts})')
    print(f'[make_demo_data] done in {time.time() - start:.1f}s (seed {args.seed})')


if __name__ == '__main__':
    main()

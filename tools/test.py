"""Test (and evaluate) a checkpoint with an mmseg, mmdet or mmpretrain config.

    python tools/test.py CONFIG CHECKPOINT [--work-dir DIR] [--out PATH] [--show] [--show-dir DIR]
                         [--wait-time S] [--tta] [--cfg-options KEY=VALUE ...] [--launcher ...]

Behaves like the upstream tools/test.py of the config's package (its default_scope):
  --out       mmseg: folder for the predicted label maps (PNG); mmdet: .pkl of the predictions
              (DumpDetResults); mmpretrain: .pkl of the predictions, or of the metrics with
              --out-item metrics.
  --show-dir  draw the predictions: mmseg writes <show-dir>/vis_data/vis_image/*.png (ground
              truth beside the coloured prediction overlay); mmdet writes
              <work_dir>/<timestamp>/<show-dir>/; mmpretrain writes <show-dir>/.
  --tta       test with cfg.tta_model and cfg.tta_pipeline.
The checkpoint is read with torch's weights_only=True (mmc2f.utils.checkpoint).
"""
import argparse
import os
import sys

# Before torch allocates: huge pages for large CPU tensors (see mmc2f/utils/cpu_allocator.py).
if os.environ.get('MMC2F_MALLOC_TUNING', '1') != '0':
    os.environ.setdefault('THP_MEM_ALLOC_ENABLE', '1')

# Before anything loads a checkpoint: safe weights_only loading of runner checkpoints.
import mmc2f.registry  # noqa: F401,E402  isort:skip
from mmengine.config import Config, DictAction  # noqa: E402

from mmc2f.utils import tools  # noqa: E402
from mmc2f.utils.cpu_allocator import tune_cpu_allocator  # noqa: E402


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description='Test (and evaluate) a model (mmseg, mmdet or mmpretrain config)')
    parser.add_argument('config', help='test config file path')
    parser.add_argument('checkpoint', help='checkpoint file')
    parser.add_argument('--work-dir', help='the dir to save the evaluation results (json) and logs')
    parser.add_argument('--out', help='where to dump the predictions: a folder of label maps '
                        '(mmseg) or a .pkl file (mmdet, mmpretrain)')
    parser.add_argument('--out-item', choices=['metrics', 'pred'],
                        help='mmpretrain only: dump the metrics or the predictions (default) to '
                        '--out')
    parser.add_argument('--show', action='store_true', help='show the prediction results')
    parser.add_argument('--show-dir', help='directory where painted images will be saved')
    parser.add_argument('--wait-time', type=float, default=2, help='the interval of show (s)')
    parser.add_argument('--tta', action='store_true', help='test-time augmentation')
    parser.add_argument('--deploy', action='store_true',
                        help="evaluate with mmc2f's inference-only fused kernels (switch_to_deploy "
                        'of Conv2Former / MSCAN; same predictions, faster on CPU)')
    parser.add_argument(
        '--cfg-options', nargs='+', action=DictAction,
        help='override settings in the config, key=value pairs; no white space in a pair')
    parser.add_argument('--launcher', choices=['none', 'pytorch', 'slurm', 'mpi'], default='none',
                        help='job launcher')
    parser.add_argument('--local_rank', '--local-rank', type=int, default=0)
    args = parser.parse_args(argv)
    if 'LOCAL_RANK' not in os.environ:
        os.environ['LOCAL_RANK'] = str(args.local_rank)
    return args


def build_cfg(args):
    if args.out_item is not None and args.out is None:
        raise tools.ToolError('--out-item needs --out')
    if not os.path.isfile(args.checkpoint) and '://' not in args.checkpoint:
        raise tools.ToolError(f'checkpoint "{args.checkpoint}" does not exist')
    cfg = Config.fromfile(args.config)
    cfg.launcher = args.launcher
    if args.cfg_options is not None:
        cfg.merge_from_dict(args.cfg_options)
    scope = tools.init_scope(cfg, args.config)
    tools.set_work_dir(cfg, args.config, args.work_dir)
    cfg.load_from = args.checkpoint
    if args.show or args.show_dir:
        tools.trigger_visualization_hook(cfg, scope, args.show, args.show_dir, args.wait_time)
    if args.tta:
        tools.setup_tta(cfg, scope)
    if args.deploy:
        cfg.custom_hooks = list(cfg.get('custom_hooks', None) or []) + [
            dict(type='mmc2f.SwitchToDeployHook')]
    tools.setup_test_out(cfg, scope, args.out)
    tools.setup_dist_backend(cfg, args.launcher)
    tools.check_data_roots(cfg, ['test_dataloader'])
    return cfg, scope


def main(argv=None):
    args = parse_args(argv)
    tune_cpu_allocator()  # reuse freed CPU memory (MMC2F_MALLOC_TUNING=0: off)
    try:
        cfg, scope = build_cfg(args)
    except tools.ToolError as err:
        print(f'{os.path.basename(sys.argv[0])}: error: {err}', file=sys.stderr)
        sys.exit(2)
    runner = tools.build_runner(cfg)
    tools.add_dump_metric(runner, scope, args.out, args.out_item)
    metrics = runner.test()
    if args.out and args.out_item == 'metrics':
        import mmengine
        mmengine.dump(metrics, args.out)


if __name__ == '__main__':
    main()

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
The checkpoint is read with torch's weights_only=True (mmc2f.checkpoint).
"""
import argparse
import os

from mmc2f.engine.process import huge_pages_environ  # noqa: E402  (imports no torch)

huge_pages_environ()  # before torch allocates (see mmc2f/engine/process.py)

from mmengine.config import DictAction  # noqa: E402

from mmc2f.apis import cli  # noqa: E402
from mmc2f.engine.process import setup_process  # noqa: E402
from mmc2f.engine.runner import build_runner  # noqa: E402
from mmc2f.apis.data_check import check_data  # noqa: E402
from mmc2f.apis.scope import SCOPE_TASKS  # noqa: E402
from mmc2f.errors import ConfigError  # noqa: E402


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
                        help="evaluate on mmc2f's inference path: fused kernels (switch_to_deploy "
                        'of Conv2Former / MSCAN) and, for segmentors on CPU, the network on ONNX '
                        'Runtime (see --deploy-backend); same predictions, faster on CPU')
    parser.add_argument('--deploy-backend', choices=['auto', 'pytorch', 'onnxruntime'],
                        default='auto',
                        help='with --deploy: auto (default) = onnxruntime for mmseg segmentors on '
                        'CPU when it is installed, else pytorch (fused kernels)')
    parser.add_argument(
        '--cfg-options', nargs='+', action=DictAction,
        help='override settings in the config, key=value pairs; no white space in a pair')
    parser.add_argument('--launcher', choices=['none', 'pytorch', 'slurm', 'mpi'], default='none',
                        help='job launcher')
    parser.add_argument('--skip-data-check', action='store_true',
                        help='skip the pass over the test data (files, pairs, sizes, labels)')
    parser.add_argument('--local_rank', '--local-rank', type=int, default=0)
    cli.add_common_args(parser)
    args = parser.parse_args(argv)
    if 'LOCAL_RANK' not in os.environ:
        os.environ['LOCAL_RANK'] = str(args.local_rank)
    return args


def build_cfg(args):
    if args.out_item is not None and args.out is None:
        raise ConfigError('--out-item needs --out')
    if not os.path.isfile(args.checkpoint) and '://' not in args.checkpoint:
        raise ConfigError(f'checkpoint "{args.checkpoint}" does not exist')
    cfg = cli.load_config(args.config, args.cfg_options)
    cfg.launcher = args.launcher
    scope = cli.init_scope(cfg, args.config)
    cli.set_work_dir(cfg, args.config, args.work_dir)
    cfg.load_from = args.checkpoint
    if args.show or args.show_dir:
        cli.trigger_visualization_hook(cfg, scope, args.show, args.show_dir, args.wait_time)
    if args.tta:
        cli.setup_tta(cfg, scope)
    if args.deploy:
        cfg.custom_hooks = list(cfg.get('custom_hooks', None) or []) + [
            dict(type='mmc2f.SwitchToDeployHook', backend=args.deploy_backend)]
    cli.setup_test_out(cfg, scope, args.out)
    cli.setup_dist_backend(cfg, args.launcher)
    cli.check_data_roots(cfg, ['test_dataloader'])
    check_data(cfg, ['test_dataloader'], SCOPE_TASKS[scope], full_pass=not args.skip_data_check)
    return cfg, scope


def main(argv=None):
    args = parse_args(argv)
    setup_process(cpu_allocator=True)  # logged; MMC2F_PROCESS_SETUP=0 turns it off
    with cli.exit_on_user_error(args.debug):
        cfg, scope = build_cfg(args)
        runner = build_runner(cfg)
        cli.add_dump_metric(runner, scope, args.out, args.out_item)
        metrics = runner.test()
    if args.out and args.out_item == 'metrics':
        import mmengine
        mmengine.dump(metrics, args.out)


if __name__ == '__main__':
    main()

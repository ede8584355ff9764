"""Train a model from an mmseg, mmdet or mmpretrain config (the config's default_scope decides).

    python tools/train.py CONFIG [--work-dir DIR] [--resume [CHECKPOINT]] [--amp] [--auto-scale-lr]
                                 [--cfg-options KEY=VALUE ...] [--launcher none|pytorch|slurm|mpi]

Behaves like the upstream tools/train.py of those packages (MMEngine's Runner), and also runs on a
machine without CUDA: --amp falls back to fp32 with a warning, distributed runs use gloo, SyncBN
becomes BN, and checkpoints load with torch's weights_only=True (mmc2f.checkpoint).
"""
import argparse
import os

from mmc2f.engine.process import huge_pages_environ  # noqa: E402  (imports no torch)

huge_pages_environ()  # before torch allocates (see mmc2f/engine/process.py)

from mmengine.config import DictAction  # noqa: E402

from mmc2f.apis import cli  # noqa: E402
from mmc2f.engine.process import setup_process  # noqa: E402
from mmc2f.engine.runner import build_runner  # noqa: E402
from mmc2f.checkpoint import remove_stale_temp_files  # noqa: E402
from mmc2f.engine.guards import setup_run_guards  # noqa: E402
from mmc2f.apis.data_check import check_data  # noqa: E402
from mmc2f.apis.recipes import check_stock_recipe  # noqa: E402
from mmc2f.apis.scope import SCOPE_TASKS  # noqa: E402


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description='Train a model (mmseg, mmdet or mmpretrain config)')
    parser.add_argument('config', help='train config file path')
    parser.add_argument('--work-dir', help='the dir to save logs and models '
                        '(default: work_dir in the config, else ./work_dirs/<config name>)')
    parser.add_argument(
        '--resume', nargs='?', type=str, const='auto',
        help='resume from CHECKPOINT; without a value, from the latest checkpoint in work_dir')
    parser.add_argument('--amp', action='store_true', default=False,
                        help='automatic mixed precision (needs CUDA; off with a warning on CPU)')
    parser.add_argument('--auto-scale-lr', action='store_true',
                        help='scale the learning rate by total batch size / auto_scale_lr.'
                        'base_batch_size')
    parser.add_argument(
        '--cfg-options', nargs='+', action=DictAction,
        help='override settings in the config, key=value pairs, e.g. '
        'train_cfg.max_iters=100 "model.backbone.depths=[1,1,1,1]"; no white space in a pair')
    parser.add_argument('--launcher', choices=['none', 'pytorch', 'slurm', 'mpi'], default='none',
                        help='job launcher')
    parser.add_argument('--skip-data-check', action='store_true',
                        help='skip the pass over the data before training (files, pairs, sizes, '
                        'label values); the cheap checks (non-empty datasets, num_classes) stay')
    # torch.distributed.launch passes --local-rank (torch >= 2.0) or --local_rank.
    parser.add_argument('--local_rank', '--local-rank', type=int, default=0)
    cli.add_common_args(parser)
    args = parser.parse_args(argv)
    if 'LOCAL_RANK' not in os.environ:
        os.environ['LOCAL_RANK'] = str(args.local_rank)
    return args


def build_cfg(args):
    cfg = cli.load_config(args.config, args.cfg_options)
    cfg.launcher = args.launcher
    scope = cli.init_scope(cfg, args.config)
    check_stock_recipe(cfg)  # stock components that cannot work with mmc2f models, named
    cli.set_work_dir(cfg, args.config, args.work_dir)
    cli.setup_amp(cfg, args.amp)
    cli.setup_auto_scale_lr(cfg, args.auto_scale_lr)
    args.resume = setup_run_guards(cfg, args.resume)  # work-dir lock, guard hooks, --resume
    if int(os.environ.get('RANK', '0')) == 0:
        remove_stale_temp_files(cfg.work_dir)  # left by a save that a kill interrupted
    cli.setup_resume(cfg, args.resume)
    cli.setup_dist_backend(cfg, args.launcher)
    loaders = ['train_dataloader']
    if cfg.get('val_cfg', None) is not None:
        loaders.append('val_dataloader')
    cli.check_data_roots(cfg, loaders)
    check_data(cfg, loaders, SCOPE_TASKS[scope], full_pass=not args.skip_data_check and
               int(os.environ.get('RANK', '0')) == 0, record_dir=cfg.work_dir)
    return cfg


def main(argv=None):
    args = parse_args(argv)
    setup_process(cpu_allocator=True)  # logged; MMC2F_PROCESS_SETUP=0 turns it off
    with cli.exit_on_user_error(args.debug):
        cfg = build_cfg(args)
        runner = build_runner(cfg)
        runner.train()


if __name__ == '__main__':
    main()

"""What ``tools/train.py`` and ``tools/test.py`` share: one tool for mmseg, mmdet, mmpretrain.

Every function takes the loaded :class:`mmengine.Config` and changes it the way the upstream tools
of the config's package would, plus the CPU fall-backs that this project needs:

* ``--amp`` without CUDA: warn, keep the plain ``OptimWrapper`` (``AmpOptimWrapper`` refuses CPU);
* distributed without CUDA: gloo backend (see :class:`mmc2f.engine.runner.CPUCapableRunner`);
* missing data folders: a clear error naming the path and the config key, before anything is built.

Errors are :class:`mmc2f.errors.ConfigError`; the tools print them and exit with status 2.
"""
import contextlib
import os
import os.path as osp
import sys
import warnings
from copy import deepcopy
from typing import Iterator, List, Optional, Tuple

import torch
from mmengine.config import Config, ConfigDict

from mmc2f.errors import ConfigError, TrainingError, UserError
from .config import load_config
from .scope import init_scope

__all__ = [
    'exit_on_user_error', 'add_common_args', 'load_config', 'init_scope', 'set_work_dir', 'setup_resume', 'setup_amp', 'setup_auto_scale_lr',
    'setup_dist_backend', 'check_data_roots', 'trigger_visualization_hook', 'setup_tta',
    'setup_test_out', 'add_dump_metric'
]


@contextlib.contextmanager
def exit_on_user_error(debug: bool = False):
    """Print a :class:`~mmc2f.errors.UserError` as one line, ``<tool>: error: ...``, and exit
    with status 2 (a :class:`~mmc2f.errors.TrainingError`: status 1); with ``debug`` the traceback
    is shown instead."""
    try:
        yield
    except (UserError, TrainingError) as err:
        if debug:
            raise
        print(f'{osp.basename(sys.argv[0])}: error: {err}', file=sys.stderr)
        sys.exit(2 if isinstance(err, UserError) else 1)


def add_common_args(parser) -> None:
    """``--debug`` (tracebacks for user errors) for every tool."""
    parser.add_argument('--debug', action='store_true',
                        help='show the full traceback of errors in the config, data or '
                        'checkpoint instead of a one-line message')


def set_work_dir(cfg: Config, config_path: str, work_dir: Optional[str]) -> None:
    """CLI ``--work-dir`` > ``work_dir`` in the file > ``./work_dirs/<config name>``."""
    if work_dir is not None:
        cfg.work_dir = work_dir
    elif cfg.get('work_dir', None) is None:
        cfg.work_dir = osp.join('./work_dirs', osp.splitext(osp.basename(config_path))[0])


# --------------------------------------------------------------------------------------------
# training options
# --------------------------------------------------------------------------------------------
def setup_resume(cfg: Config, resume: Optional[str]) -> None:
    """``--resume`` (no value, or ``auto``): the newest intact checkpoint in work_dir, naming the
    damaged ones skipped (:func:`mmc2f.engine.workdir.resolve_resume`); ``--resume PATH``: that
    file."""
    if resume == 'auto':
        from mmc2f.engine.workdir import resolve_resume
        resume = resolve_resume(cfg.work_dir, resume)
        cfg.resume = resume is not None
        cfg.load_from = resume
    elif resume is not None:
        cfg.resume = True
        cfg.load_from = resume


def _is_amp(type_) -> bool:
    return isinstance(type_, str) and type_.split('.')[-1] == 'AmpOptimWrapper'


def setup_amp(cfg: Config, amp: bool, cuda: Optional[bool] = None) -> None:
    """``--amp``: ``AmpOptimWrapper`` with dynamic loss scaling; on a machine without CUDA, warn and
    use the plain ``OptimWrapper`` (also when the config itself asks for AMP)."""
    cuda = torch.cuda.is_available() if cuda is None else cuda
    optim_wrapper = cfg.get('optim_wrapper', None)
    if optim_wrapper is None:
        if amp:
            raise ConfigError('--amp needs an optim_wrapper in the config')
        return
    type_ = optim_wrapper.get('type', 'OptimWrapper')
    if amp and cuda:
        if _is_amp(type_):
            warnings.warn('AMP training is already enabled in the config.')
        elif type_.split('.')[-1] != 'OptimWrapper':
            raise ConfigError(f'--amp works only with optim_wrapper.type OptimWrapper, got {type_}')
        else:
            optim_wrapper.type = 'AmpOptimWrapper'
            optim_wrapper.loss_scale = 'dynamic'
        return
    if amp or _is_amp(type_):
        warnings.warn(
            'CUDA is not available: mixed-precision training (AmpOptimWrapper) needs a GPU, '
            'so it is switched off and the model trains in fp32 with the plain OptimWrapper.',
            stacklevel=2)
        if _is_amp(type_):
            optim_wrapper.type = 'OptimWrapper'
            for key in ('loss_scale', 'dtype', 'use_fsdp'):
                optim_wrapper.pop(key, None)


def setup_auto_scale_lr(cfg: Config, enable: bool) -> None:
    """``--auto-scale-lr``: needs ``auto_scale_lr = dict(base_batch_size=...)`` in the config."""
    if not enable:
        return
    auto = cfg.get('auto_scale_lr', None)
    if not auto or 'base_batch_size' not in auto:
        raise ConfigError('--auto-scale-lr needs auto_scale_lr = dict(enable=False, '
                        'base_batch_size=N) in the config (N: the total batch size the learning '
                        'rate was tuned for).')
    auto.enable = True


def setup_dist_backend(cfg: Config, launcher: str, cuda: Optional[bool] = None) -> None:
    """Distributed on a machine without CUDA: NCCL cannot work, use gloo."""
    cuda = torch.cuda.is_available() if cuda is None else cuda
    if launcher == 'none' or cuda:
        return
    env_cfg = cfg.setdefault('env_cfg', ConfigDict())
    dist_cfg = env_cfg.setdefault('dist_cfg', ConfigDict())
    if dist_cfg.get('backend', 'nccl') in ('nccl', None):
        dist_cfg['backend'] = 'gloo'


# --------------------------------------------------------------------------------------------
# data folders
# --------------------------------------------------------------------------------------------
def _dataset_cfgs(cfg: dict, key: str) -> Iterator[Tuple[str, dict]]:
    """Yield ``(config key, dataset cfg)`` for a dataset and the datasets it wraps."""
    if not isinstance(cfg, dict):
        return
    yield key, cfg
    inner = cfg.get('dataset', None)
    if isinstance(inner, dict):
        yield from _dataset_cfgs(inner, f'{key}.dataset')
    inners = cfg.get('datasets', None)
    if isinstance(inners, (list, tuple)):
        for i, d in enumerate(inners):
            yield from _dataset_cfgs(d, f'{key}.datasets[{i}]')


def _is_remote(path: str) -> bool:
    return '://' in path


def _missing_hint(path: str) -> str:
    norm = osp.normpath(path)
    task = osp.basename(norm)
    if task in ('seg', 'det', 'cls') and 'demo' in osp.basename(osp.dirname(norm)):
        return (f' It looks like the synthetic demo set: create it with '
                f'`python tools/misc/make_demo_data.py --out {osp.dirname(norm)} --task {task}`.')
    return ''


def check_data_roots(cfg: Config, loaders: List[str]) -> None:
    """Fail early, naming the path and the config key, when a dataset's folder does not exist.

    Checks ``data_root`` of each dataset (and of wrapped datasets) of the given dataloaders, and
    then the ``ann_file`` and the ``data_prefix`` folders under it. Remote paths are skipped.

    Raises:
        ConfigError: a folder or annotation file is missing.
    """
    for loader in loaders:
        loader_cfg = cfg.get(loader, None)
        if not isinstance(loader_cfg, dict) or not isinstance(loader_cfg.get('dataset'), dict):
            continue
        for key, ds in _dataset_cfgs(loader_cfg['dataset'], f'{loader}.dataset'):
            root = ds.get('data_root', None)
            if isinstance(root, str) and _is_remote(root):
                continue
            if isinstance(root, str) and root:
                if not osp.isdir(root):
                    raise ConfigError(
                        f'data folder "{root}" does not exist (config key {key}.data_root, '
                        f'resolved from {os.getcwd()}).{_missing_hint(root)} To use other data, '
                        f'set it with --cfg-options {key}.data_root=PATH (for each dataloader).')
            else:
                root = ''
            checks = []
            prefix = ds.get('data_prefix', None)
            if isinstance(prefix, str):
                checks.append(('data_prefix', prefix))
            elif isinstance(prefix, dict):
                checks += [(f'data_prefix.{k}', v) for k, v in prefix.items()
                           if isinstance(v, str) and v]
            ann = ds.get('ann_file', None)
            if isinstance(ann, str) and ann:
                checks.append(('ann_file', ann))
            for sub, value in checks:
                path = value if osp.isabs(value) or _is_remote(value) else osp.join(root, value)
                if _is_remote(path) or osp.exists(path):
                    continue
                raise ConfigError(f'"{path}" does not exist (config key {key}.{sub} = {value!r}'
                                f'{f" under data_root {root!r}" if root else ""}).'
                                f'{_missing_hint(root) if root else ""}')


# --------------------------------------------------------------------------------------------
# test options
# --------------------------------------------------------------------------------------------
def trigger_visualization_hook(cfg: Config, scope: str, show: bool, show_dir: Optional[str],
                               wait_time: float) -> None:
    """``--show`` / ``--show-dir``, as each package's ``tools/test.py`` does it.

    * mmseg: ``SegVisualizationHook(draw=True)``; ``visualizer.save_dir = show_dir`` (images under
      ``<show_dir>/vis_data/vis_image/``);
    * mmdet: ``DetVisualizationHook(draw=True, test_out_dir=show_dir)`` (images under
      ``<work_dir>/<timestamp>/<show_dir>/``);
    * mmpretrain: ``VisualizationHook(enable=True, out_dir=show_dir)``.
    """
    hooks = cfg.get('default_hooks', None) or {}
    if 'visualization' not in hooks:
        raise ConfigError('--show/--show-dir need a visualization hook in default_hooks, e.g. '
                        "default_hooks = dict(visualization=dict(type='SegVisualizationHook'))")
    hook = hooks['visualization']
    if scope == 'mmpretrain':
        hook['enable'] = True
        hook['show'] = show
        hook['wait_time'] = wait_time
        hook['out_dir'] = show_dir
        hook['interval'] = 1
        return
    hook['draw'] = True
    if show:
        hook['show'] = True
        hook['wait_time'] = wait_time
    if show_dir:
        if scope == 'mmdet':
            hook['test_out_dir'] = show_dir
        else:
            if cfg.get('visualizer', None) is None:
                raise ConfigError('--show-dir needs a visualizer in the config')
            cfg.visualizer['save_dir'] = show_dir


def _innermost_test_dataset(cfg: Config) -> dict:
    ds = cfg.test_dataloader.dataset
    while 'dataset' in ds:
        ds = ds['dataset']
    return ds


def setup_tta(cfg: Config, scope: str) -> None:
    """``--tta``: wrap the model in ``cfg.tta_model`` and test with ``cfg.tta_pipeline``.

    mmdet and mmpretrain fill in their upstream defaults (flip TTA) when the config has none;
    mmseg needs both in the config (its upstream tool does too).
    """
    if scope == 'mmseg':
        missing = [k for k in ('tta_model', 'tta_pipeline') if k not in cfg]
        if missing:
            raise ConfigError(f'--tta needs {" and ".join(missing)} in the config')
    if 'tta_model' not in cfg:
        if scope == 'mmdet':
            cfg.tta_model = dict(type='DetTTAModel', tta_cfg=dict(
                nms=dict(type='nms', iou_threshold=0.5), max_per_img=100))
        else:
            cfg.tta_model = dict(type='mmpretrain.AverageClsScoreTTA')
    if 'tta_pipeline' not in cfg:
        pipeline = deepcopy(_innermost_test_dataset(cfg).pipeline)
        pack = pipeline[-1]
        if scope == 'mmdet':
            pack = dict(type='PackDetInputs', meta_keys=(
                'img_id', 'img_path', 'ori_shape', 'img_shape', 'scale_factor', 'flip',
                'flip_direction'))
        pipeline[-1] = dict(type='TestTimeAug', transforms=[
            [dict(type='RandomFlip', prob=1.), dict(type='RandomFlip', prob=0.)], [pack]])
        cfg.tta_pipeline = pipeline
    cfg.model = ConfigDict(**cfg.tta_model, module=cfg.model)
    _innermost_test_dataset(cfg).pipeline = cfg.tta_pipeline


def setup_test_out(cfg: Config, scope: str, out: Optional[str]) -> None:
    """The config part of ``--out``: mmseg writes the predicted label maps (PNG) into the folder
    ``out`` (``IoUMetric(output_dir=out, keep_results=True)``); mmdet and mmpretrain dump a pickle
    (see :func:`add_dump_metric`)."""
    if out is None:
        return
    if scope == 'mmseg':
        evaluator = cfg.test_evaluator
        for metric in (evaluator if isinstance(evaluator, list) else [evaluator]):
            metric['output_dir'] = out
            metric['keep_results'] = True
    elif scope == 'mmdet' and not out.endswith(('.pkl', '.pickle')):
        raise ConfigError(f'--out must be a .pkl/.pickle file for mmdet configs, got {out}')


def add_dump_metric(runner, scope: str, out: Optional[str], out_item: Optional[str]) -> None:
    """The runner part of ``--out``: mmdet ``DumpDetResults``; mmpretrain ``DumpResults``
    (predictions, unless ``--out-item metrics``, which the tool dumps after testing)."""
    if out is None:
        return
    if scope == 'mmdet':
        from mmdet.evaluation import DumpDetResults
        runner.test_evaluator.metrics.append(DumpDetResults(out_file_path=out))
    elif scope == 'mmpretrain' and out_item in (None, 'pred'):
        from mmengine.evaluator import DumpResults
        runner.test_evaluator.metrics.append(DumpResults(out_file_path=out))

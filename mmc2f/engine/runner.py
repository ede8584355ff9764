"""MMEngine's runner, plus distributed runs on machines without CUDA."""
import contextlib
import datetime
import os
import re
import subprocess
from collections import OrderedDict
from typing import Optional

import torch
from mmengine.runner import Runner

from mmc2f.errors import CheckpointError, ConfigError

__all__ = ['CPUCapableRunner', 'build_runner']


def _init_dist_cpu(launcher: str, backend: str = 'gloo', timeout=None, port: Optional[int] = None,
                   **kwargs) -> None:
    """``mmengine.dist.init_dist`` without its ``torch.cuda.set_device`` call (no GPU here)."""
    import torch.distributed as dist
    if backend in (None, 'nccl'):
        backend = 'gloo'
    if timeout is not None and not isinstance(timeout, datetime.timedelta):
        timeout = datetime.timedelta(seconds=timeout)
    if timeout is not None:
        kwargs['timeout'] = timeout
    env = os.environ
    if launcher == 'slurm':
        proc_id = int(env['SLURM_PROCID'])
        ntasks = int(env['SLURM_NTASKS'])
        node_list = env['SLURM_NODELIST']
        addr = subprocess.getoutput(f'scontrol show hostname {node_list} | head -n1')
        if port is not None:
            env['MASTER_PORT'] = str(port)
        env.setdefault('MASTER_PORT', '29500')
        env.setdefault('MASTER_ADDR', addr)
        env['WORLD_SIZE'] = str(ntasks)
        env['LOCAL_RANK'] = env.get('SLURM_LOCALID', '0')
        env['RANK'] = str(proc_id)
    elif launcher == 'mpi':
        env['RANK'] = env['OMPI_COMM_WORLD_RANK']
        env['WORLD_SIZE'] = env['OMPI_COMM_WORLD_SIZE']
        env['LOCAL_RANK'] = env['OMPI_COMM_WORLD_LOCAL_RANK']
        env.setdefault('MASTER_PORT', '29500')
        if 'MASTER_ADDR' not in env:
            raise ConfigError('the mpi launcher needs MASTER_ADDR in the environment')
    elif launcher != 'pytorch':
        raise ConfigError(f'unknown launcher {launcher!r}')
    dist.init_process_group(backend=backend, **kwargs)


class CPUCapableRunner(Runner):
    """MMEngine's runner, plus distributed runs on machines without CUDA.

    Without CUDA, MMEngine would call ``torch.cuda.set_device`` while initialising the process
    group and pass ``device_ids=[LOCAL_RANK]`` to ``DistributedDataParallel``; both fail on CPU.
    Here the gloo process group is set up directly, the model is wrapped without ``device_ids``
    and SyncBN layers are reverted to BN (SyncBN needs a GPU). Non-distributed runs are unchanged
    (MMEngine already reverts SyncBN there); with CUDA everything is MMEngine's own code.

    Checkpoint loading is checked (MMEngine's ``load_checkpoint`` has ``strict=False``): while
    testing / validating (``test()``, ``val()``), resuming, or with ``strict_load`` set (attribute
    or config key ``mmc2f_strict_load=True``) every key must match, else a
    :class:`~mmc2f.errors.CheckpointFormatError` names the keys and the likely cause;
    ``load_from`` for training (fine-tuning) loads what matches, logs a table of the rest and fails
    when most of the model found no match (``mmc2f_load_from_min_match``, default 0.5). A resume
    checkpoint must carry the runner's ``meta`` (epoch, iter).
    """

    #: force strict loading for every ``load_checkpoint`` (``None``: decided per call).
    strict_load: Optional[bool] = None
    _mmc2f_phase: Optional[str] = None

    @contextlib.contextmanager
    def _phase(self, name):
        """What the runner is doing, for ``load_checkpoint`` (the outermost phase wins)."""
        old = self._mmc2f_phase
        self._mmc2f_phase = old or name
        try:
            yield
        finally:
            self._mmc2f_phase = old

    def test(self):
        with self._phase('test'):
            return super().test()

    def val(self):
        with self._phase('test'):
            return super().val()

    def train(self):
        with self._phase('train'):
            return super().train()

    def resume(self, filename, *args, **kwargs):
        old, self._mmc2f_phase = self._mmc2f_phase, 'resume'
        try:
            return super().resume(filename, *args, **kwargs)
        finally:
            self._mmc2f_phase = old

    def _strict_for(self, strict) -> bool:
        if self._mmc2f_phase in ('resume', 'test'):
            return True
        configured = self.strict_load
        if configured is None and self.cfg is not None:
            configured = self.cfg.get('mmc2f_strict_load', None)
        if configured is not None:
            return bool(configured)
        return bool(strict)

    def load_checkpoint(self, filename, map_location='cpu', strict: bool = False,
                        revise_keys: list = [(r'^module.', '')]):  # noqa: B006 (MMEngine's)
        """MMEngine's ``load_checkpoint`` with checked key matching (see the class doc)."""
        from mmengine.model import BaseTTAModel, is_model_wrapper
        from mmengine.runner.checkpoint import _load_checkpoint

        from mmc2f.checkpoint import load_into_model
        checkpoint = _load_checkpoint(filename, map_location=map_location)
        resuming = self._mmc2f_phase == 'resume'
        if resuming:
            _check_resumable(checkpoint, filename)
        self.call_hook('after_load_checkpoint', checkpoint=checkpoint)
        model = self.model.module if is_model_wrapper(self.model) else self.model
        if isinstance(model, BaseTTAModel):  # --tta: the weights are the wrapped model's
            model = model.module
        if not isinstance(checkpoint, dict):
            raise CheckpointError(f'checkpoint "{filename}" is a {type(checkpoint).__name__}, '
                                  'not a dict of weights')
        state = checkpoint.get('state_dict', checkpoint)
        if not isinstance(state, dict):
            raise CheckpointError(f'checkpoint "{filename}": its state_dict is a '
                                  f'{type(state).__name__}, not a dict of weights')

        def revise(key):
            for pattern, repl in revise_keys or []:
                key = re.sub(pattern, repl, key)
            return key

        revised = OrderedDict((revise(k), v) for k, v in state.items()
                              if isinstance(v, torch.Tensor))  # a bare dict may hold 'meta'
        metadata = getattr(state, '_metadata', None)
        if metadata is not None:
            revised._metadata = OrderedDict((revise(k), v) for k, v in metadata.items())
        strict = self._strict_for(strict)
        what = {'resume': '--resume checkpoint', 'train': 'load_from checkpoint'}.get(
            self._mmc2f_phase or '', 'checkpoint')
        min_match = float(self.cfg.get('mmc2f_load_from_min_match', 0.5)) if self.cfg else 0.5
        load_into_model(model, revised, strict=strict, source=f'{what} "{filename}"',
                        min_match=min_match, logger=self.logger)
        self._has_loaded = True
        self.logger.info(f'Load checkpoint from {filename}' + (' (strict)' if strict else ''))
        return checkpoint

    def setup_env(self, env_cfg):
        from mmengine.dist import is_distributed
        if self.distributed and not is_distributed() and not torch.cuda.is_available():
            _init_dist_cpu(self.launcher, **dict(env_cfg.get('dist_cfg', {})))
        super().setup_env(env_cfg)

    def wrap_model(self, model_wrapper_cfg, model):
        from mmengine.model import is_model_wrapper, revert_sync_batchnorm
        if not self.distributed or torch.cuda.is_available() or is_model_wrapper(model):
            return super().wrap_model(model_wrapper_cfg, model)
        from mmengine.registry import MODEL_WRAPPERS
        self.logger.info('Distributed run without CUDA: SyncBN layers (if any) are reverted to BN '
                         'and the model is wrapped for CPU (gloo).')
        model = revert_sync_batchnorm(model.to('cpu'))
        if model_wrapper_cfg is None:
            model_wrapper_cfg = dict(
                type='MMDistributedDataParallel', broadcast_buffers=False,
                find_unused_parameters=self.cfg.get('find_unused_parameters', False))
        model_wrapper_cfg = dict(model_wrapper_cfg)
        model_wrapper_cfg.setdefault('type', 'MMDistributedDataParallel')
        return MODEL_WRAPPERS.build(model_wrapper_cfg, default_args=dict(module=model))


def _check_resumable(checkpoint, filename) -> None:
    """A resume checkpoint must be one a training run wrote: ``meta.epoch``/``meta.iter`` and
    the message hub."""
    meta = checkpoint.get('meta') if isinstance(checkpoint, dict) else None
    lacks = [k for k in ('epoch', 'iter') if not isinstance(meta, dict) or k not in meta]
    if not (isinstance(checkpoint, dict) and 'message_hub' in checkpoint):
        lacks.append('message_hub')
    if lacks:
        raise CheckpointError(
            f'cannot resume from "{filename}": it has no runner state ({", ".join(lacks)} '
            'missing), so it was not written by a training run (a converted, published or bare '
            'state dict?). To fine-tune from its weights, set load_from (e.g. --cfg-options '
            f'load_from={filename}) and drop --resume.')


def build_runner(cfg):
    """:class:`CPUCapableRunner` from a config; ``RUNNERS.build`` when it names a runner_type."""
    if 'runner_type' in cfg:
        from mmengine.registry import RUNNERS
        return RUNNERS.build(cfg)
    return CPUCapableRunner.from_cfg(cfg)

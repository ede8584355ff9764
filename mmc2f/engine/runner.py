"""MMEngine's runner, plus distributed runs on machines without CUDA."""
import datetime
import os
import subprocess
from typing import Optional

import torch
from mmengine.runner import Runner

from mmc2f.errors import ConfigError

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
    """

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


def build_runner(cfg):
    """:class:`CPUCapableRunner` from a config; ``RUNNERS.build`` when it names a runner_type."""
    if 'runner_type' in cfg:
        from mmengine.registry import RUNNERS
        return RUNNERS.build(cfg)
    return CPUCapableRunner.from_cfg(cfg)

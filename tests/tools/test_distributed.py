"""Two-process training through ``tools/dist_train.sh`` (torchrun, ``--launcher pytorch``) on CPU
with the gloo backend (issue 7, item 5).

The script itself is run, with ``GPUS=2``, ``PYTHON`` = this interpreter and ``PORT`` = a free port,
on a tiny SegNeXt and a tiny synthetic set for 4 iterations. A test-only hook (imported through
``custom_imports``) writes, on every rank, its rank, world size, process-group backend, the images
it trained on and its final model parameters.

What is checked, and why it can fail:

* both ranks ran in one process group: ranks {0, 1}, world size 2, backend gloo, two different
  process ids, and the two ranks were fed *different* images (the distributed sampler splits the
  data) -- a run that silently fell back to two independent single-process trainings reports
  rank 0 / world size 1 twice;
* the parameters changed during training and are *identical* on both ranks at the end: the ranks
  saw different batches, so their local gradients differ, and only DDP's gradient all-reduce
  keeps the replicas equal (without it, or with a wrapper that does not synchronise, they
  diverge after the first step);
* the rank-0 checkpoint ``iter_4.pth`` is intact, loads with
  :func:`mmc2f.checkpoint.load_checkpoint_file` and holds exactly those parameters.

Only parameters are compared across ranks, not buffers: on CPU, SyncBN becomes BN and DDP is
built with ``broadcast_buffers=False``, so each rank keeps the BN running statistics of its own
batches (the checkpoint has rank 0's). For the same reason a comparison with a single-process run
at twice the batch size would not be exact (BN normalises per-rank batches of 2, not one of 4).
"""
import json
import os
import os.path as osp
import re
import socket
import subprocess
import sys

import pytest
import torch

from mmc2f.checkpoint import is_intact_checkpoint, load_checkpoint_file

REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
DIST_TRAIN = osp.join(REPO, 'tools', 'dist_train.sh')

TINY_BASE = osp.join(REPO, 'tests', 'tools', 'tiny_segnext.py')
TINY = """
_base_ = [{base!r}]
data_root = {data_root!r}
train_dataloader = dict(dataset=dict(data_root=data_root))
val_dataloader = None
val_cfg = None
val_evaluator = None
train_cfg = dict(type='IterBasedTrainLoop', max_iters=4, val_interval=1000)
param_scheduler = [dict(type='ConstantLR', factor=1.0, by_epoch=False, begin=0, end=100)]
default_hooks = dict(logger=dict(interval=1), checkpoint=dict(interval=4))
randomness = dict(seed=0)
custom_imports = dict(imports=['rank_probe'], allow_failed_imports=False)
custom_hooks = [dict(type='RankProbeHook')]
"""

PROBE = '''
import json
import os
import os.path as osp

import torch
import torch.distributed as torch_dist
from mmengine.dist import get_rank, get_world_size
from mmengine.hooks import Hook
from mmengine.model import is_model_wrapper
from mmengine.registry import HOOKS


@HOOKS.register_module()
class RankProbeHook(Hook):
    """Per rank: rank, world size, backend, the images trained on and the final parameters."""

    def before_train(self, runner):
        self.images = []
        model = runner.model.module if is_model_wrapper(runner.model) else runner.model
        torch.save({k: v.detach().clone() for k, v in model.named_parameters()},
                   osp.join(runner.work_dir, f'rank{get_rank()}_init.pth'))

    def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None):
        self.images.append(sorted(osp.basename(s.img_path) for s in data_batch['data_samples']))

    def after_train(self, runner):
        rank = get_rank()
        model = runner.model.module if is_model_wrapper(runner.model) else runner.model
        info = dict(rank=rank, world_size=get_world_size(), pid=os.getpid(),
                    backend=torch_dist.get_backend() if torch_dist.is_initialized() else None,
                    wrapper=type(runner.model).__name__, images=self.images)
        with open(osp.join(runner.work_dir, f'rank{rank}.json'), 'w') as f:
            json.dump(info, f)
        params = {k: v.detach().clone() for k, v in model.named_parameters()}
        torch.save(params, osp.join(runner.work_dir, f'rank{rank}_params.pth'))
'''


def _free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_dist_train_two_ranks_gloo(tmp_path):
    from mmc2f.datasets.synthetic import make_seg_dataset
    data_root = tmp_path / 'data' / 'demo' / 'seg'
    make_seg_dataset(str(data_root), num_train=8, num_val=1, size=32, seed=0)
    (tmp_path / 'rank_probe.py').write_text(PROBE)
    config = tmp_path / 'tiny_dist.py'
    config.write_text(TINY.format(base=TINY_BASE, data_root=str(data_root)))
    work_dir = tmp_path / 'work'
    env = dict(os.environ, OMP_NUM_THREADS='1', PYTHON=sys.executable, PORT=str(_free_port()),
               NNODES='1', NODE_RANK='0', MASTER_ADDR='127.0.0.1',
               PYTHONPATH=os.pathsep.join([str(tmp_path), REPO]))
    # Force the CPU path (gloo, no device_ids) even on a machine with a GPU.
    env['CUDA_VISIBLE_DEVICES'] = ''
    proc = subprocess.run(['bash', DIST_TRAIN, str(config), '2', '--work-dir', str(work_dir)],
                          cwd=str(tmp_path), env=env, capture_output=True, text=True, timeout=300)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-5000:]
    assert 'Distributed training: True' in out, out[-3000:]
    assert re.search(r'Iter\(train\) \[4/4\]', out), out[-3000:]

    infos = {}
    for rank in (0, 1):
        with open(work_dir / f'rank{rank}.json') as f:
            infos[rank] = json.load(f)
    assert [infos[r]['rank'] for r in (0, 1)] == [0, 1]
    assert all(i['world_size'] == 2 and i['backend'] == 'gloo' for i in infos.values()), infos
    assert all(i['wrapper'] == 'MMDistributedDataParallel' for i in infos.values()), infos
    assert infos[0]['pid'] != infos[1]['pid']
    assert all(len(i['images']) == 4 for i in infos.values())
    # The sampler gave the ranks different images, so their local gradients differed.
    assert infos[0]['images'] != infos[1]['images']
    assert not set(infos[0]['images'][0]) & set(infos[1]['images'][0])

    ckpt_path = work_dir / 'iter_4.pth'
    assert is_intact_checkpoint(str(ckpt_path))
    ckpt = load_checkpoint_file(str(ckpt_path))
    assert ckpt['meta']['iter'] == 4
    p0 = load_checkpoint_file(str(work_dir / 'rank0_params.pth'))
    p1 = load_checkpoint_file(str(work_dir / 'rank1_params.pth'))
    assert set(p0) == set(p1) and len(p0) > 10
    differing = [k for k in p0 if not torch.equal(p0[k], p1[k])]
    assert not differing, f'parameters differ between ranks: {differing[:5]}'
    state = ckpt['state_dict']
    for k, v in p0.items():
        assert torch.equal(state[k], v), k
    # Training moved the weights (so equal replicas are not just two untouched initialisations).
    init = load_checkpoint_file(str(work_dir / 'rank0_init.pth'))
    assert set(init) == set(p0)
    assert sum(not torch.equal(init[k], p0[k]) for k in p0) > len(p0) // 2

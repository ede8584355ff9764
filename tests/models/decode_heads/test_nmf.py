"""NMF2D alone: NMF properties, reproducible evaluation, mixed precision, one-step gradient."""
import ast
import json
import os
import subprocess
import sys

import pytest
import torch

from mmc2f.models.decode_heads import nmf as nmf_module
from mmc2f.models.decode_heads.nmf import NMF2D, measure_backward_memory, normalize_ham_kwargs



def _x(b=2, c=32, h=8, w=8, scale=1.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(b, c, h, w, generator=g) * scale


def test_shape_and_non_negativity():
    x = _x()
    nmf = NMF2D(md_r=8)
    for train in (True, False):
        nmf.train(train)
        out = nmf(x)
        assert out.shape == x.shape and out.dtype == x.dtype
        assert (out >= 0).all() and out.sum() > 0
    bases = nmf.initial_bases(2, 32, x.device, x.dtype)
    bases, coef = nmf.decompose(x.reshape(2, 32, 64), bases)
    assert (bases >= 0).all() and (coef >= 0).all()


def test_groups_md_s():
    nmf = NMF2D(md_s=4, md_r=3).eval()
    x = _x(c=32)
    assert nmf(x).shape == x.shape
    assert nmf.initial_bases(2, 8, x.device, x.dtype).shape == (8, 8, 3)
    with pytest.raises(ValueError, match='divisible'):
        nmf(_x(c=30))


def test_reconstruction_error_falls_over_iterations():
    nmf = NMF2D(md_r=6)
    x = _x(b=1, c=32, h=12, w=12).reshape(1, 32, 144)
    torch.manual_seed(0)
    b0 = nmf.initial_bases(1, 32, x.device, x.dtype)
    errors = []
    for steps in range(0, 9):
        bases, coef = nmf.decompose(x, b0, steps=steps)
        errors.append(torch.linalg.norm(x - bases @ coef.transpose(1, 2)).item())
    # multiplicative updates never increase ||X - B C^T|| (Lee & Seung); they strictly help here
    for before, after in zip(errors, errors[1:]):
        assert after <= before * (1 + 1e-5)
    assert errors[-1] < 0.9 * errors[0]


def test_eval_uses_more_steps_than_train():
    nmf = NMF2D(md_r=4)
    calls = []
    orig = nmf.update_bases
    nmf.update_bases = lambda *a: (calls.append(1), orig(*a))[1]
    x = _x()
    nmf.train()(x)
    n_train = len(calls)
    calls.clear()
    nmf.eval()(x)
    assert (n_train, len(calls)) == (6, 7)
    nmf2 = NMF2D(md_r=4, TRAIN_STEPS=2, EVAL_STEPS=3)
    assert (nmf2.train_steps, nmf2.eval_steps) == (2, 3)


def test_ham_kwargs_aliases_and_errors():
    assert normalize_ham_kwargs(dict(MD_S=2, MD_R=16, TRAIN_STEPS=5, EVAL_STEPS=9, INV_T=10,
                                     RAND_INIT=False)) == dict(
        md_s=2, md_r=16, train_steps=5, eval_steps=9, inv_t=10, rand_init=False)
    # mmseg's config mixes MD_S/MD_R with lower-case names
    assert normalize_ham_kwargs(dict(MD_R=16, train_steps=6)) == dict(md_r=16, train_steps=6)
    with pytest.raises(TypeError, match='unknown ham_kwargs key "MD_X".*md_r'):
        normalize_ham_kwargs(dict(MD_X=1))
    with pytest.raises(TypeError, match='twice'):
        normalize_ham_kwargs(dict(MD_R=16, md_r=32))
    with pytest.raises(ValueError, match='rand_init=False needs channels'):
        NMF2D(rand_init=False)


def test_fixed_bases_buffer():
    torch.manual_seed(0)
    nmf = NMF2D(md_r=4, rand_init=False, channels=32).eval()
    assert nmf.state_dict()['bases'].shape == (1, 32, 4)
    x = _x()
    torch.manual_seed(1)
    a = nmf(x)
    torch.manual_seed(2)
    assert torch.equal(a, nmf(x))


def test_global_rng_bases_by_default():
    nmf = NMF2D(md_r=4).eval()
    x = _x()
    torch.manual_seed(0)
    a = nmf(x)
    torch.manual_seed(0)
    assert torch.equal(a, nmf(x))
    torch.manual_seed(1)
    assert not torch.allclose(a, nmf(x))  # the known "results change between runs" problem


def test_eval_seed_reproducible_in_process_and_batch_independent():
    nmf = NMF2D(md_r=4, eval_seed=123).eval()
    x = _x(b=3)
    torch.manual_seed(0)
    a = nmf(x)
    torch.manual_seed(99)
    b = nmf(x)
    assert torch.equal(a, b)
    # an image alone, inside a batch at another position, or with other images: same output
    alone = nmf(x[1:2])
    in_other_batch = nmf(torch.cat([_x(b=2, seed=5), x[1:2]]))[2:3]
    torch.testing.assert_close(alone, a[1:2], rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(in_other_batch, a[1:2], rtol=1e-6, atol=1e-6)
    # another seed gives other bases (the option is not a no-op)
    assert not torch.allclose(NMF2D(md_r=4, eval_seed=124).eval()(x), a)


def test_eval_seed_leaves_training_unchanged():
    x = _x()
    plain, seeded = NMF2D(md_r=4).train(), NMF2D(md_r=4, eval_seed=0).train()
    torch.manual_seed(3)
    a = plain(x)
    torch.manual_seed(3)
    assert torch.equal(a, seeded(x))
    torch.manual_seed(4)
    assert not torch.allclose(a, seeded(x))


_CHILD = r'''
import importlib.util, json, sys
import torch
spec = importlib.util.spec_from_file_location('nmf_under_test', sys.argv[1])
mod = importlib.util.module_from_spec(spec)
spec.loader.exec_module(mod)
torch.manual_seed(int(sys.argv[2]))
g = torch.Generator().manual_seed(0)
x = torch.rand(2, 32, 8, 8, generator=g)
out = mod.NMF2D(md_r=4, eval_seed=7).eval()(x)
print(json.dumps(out.flatten()[::7].tolist()))
'''


def test_eval_seed_reproducible_across_processes():
    """Two fresh processes with different global seeds give bit-identical outputs."""
    path = nmf_module.__file__  # load nmf.py alone: it needs only torch, so the children are fast
    env = dict(os.environ, OMP_NUM_THREADS='1')
    procs = [subprocess.Popen([sys.executable, '-c', _CHILD, path, str(seed)], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for seed in (1, 2)]
    outs = []
    for p in procs:
        stdout, stderr = p.communicate(timeout=300)
        assert p.returncode == 0, stderr
        outs.append(json.loads(stdout.strip().splitlines()[-1]))
    assert len(outs[0]) > 10 and outs[0] == outs[1]
    # and equal to this process's result
    here = NMF2D(md_r=4, eval_seed=7).eval()(_x())
    assert here.flatten()[::7].tolist() == outs[0]


def _naive_fp16(nmf, x):
    """The same algorithm computed in fp16 throughout (what plain autocast/half does)."""
    B, C, H, W = x.shape
    flat = x.half().reshape(B, C, H * W)
    torch.manual_seed(0)
    bases = nmf.initial_bases(B, C, x.device, torch.float16)
    bases, coef = nmf.decompose(flat, bases)
    return torch.bmm(bases, coef.transpose(1, 2))


@pytest.mark.parametrize('dtype', [torch.bfloat16, torch.float16])
def test_autocast_computes_in_fp32(dtype):
    x = _x(c=64, h=32, w=32, scale=50.0)  # large activations, N = 1024 pixels
    nmf = NMF2D(md_r=8).eval()
    torch.manual_seed(0)
    ref = nmf(x)
    assert torch.isfinite(ref).all()
    if dtype == torch.float16:
        assert not torch.isfinite(_naive_fp16(nmf, x)).all()  # the products overflow fp16
    with torch.autocast('cpu', dtype=dtype):
        torch.manual_seed(0)
        out = nmf(x.to(dtype))  # input as a previous autocast layer would give it
        torch.manual_seed(0)
        out32_in = nmf(x)  # fp32 input under autocast: result in the autocast dtype too
    for o in (out, out32_in):
        assert o.dtype == dtype and torch.isfinite(o).all()
    torch.testing.assert_close(out32_in.float(), ref, rtol=1e-2, atol=1e-2 * ref.abs().max().item())
    # the input itself was rounded to `dtype`, so compare with the fp32 result of that input
    torch.manual_seed(0)
    ref_rounded = nmf(x.to(dtype).float())
    torch.testing.assert_close(out.float(), ref_rounded, rtol=1e-2,
                               atol=1e-2 * ref.abs().max().item())


def test_half_input_without_autocast():
    x = _x(c=64, h=32, w=32, scale=50.0)
    nmf = NMF2D(md_r=8).eval()
    out = nmf(x.half())
    assert out.dtype == torch.float16 and torch.isfinite(out).all()


def test_one_step_grad_same_forward_and_gradients_flow():
    x = _x(c=32, h=16, w=16)
    full, one = NMF2D(md_r=8), NMF2D(md_r=8, one_step_grad=True)
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    torch.manual_seed(0)
    a = full(xa)
    torch.manual_seed(0)
    b = one(xb)
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    (a * x).sum().backward()
    (b * x).sum().backward()
    for g in (xa.grad, xb.grad):
        assert g is not None and torch.isfinite(g).all() and g.abs().sum() > 0
    assert not torch.allclose(xa.grad, xb.grad)  # it is a different (truncated) gradient


def test_one_step_grad_needs_less_backward_memory():
    x = _x(c=64, h=32, w=32).requires_grad_()
    torch.manual_seed(0)
    full = measure_backward_memory(NMF2D(md_r=16).train(), x)
    torch.manual_seed(0)
    one = measure_backward_memory(NMF2D(md_r=16, one_step_grad=True).train(), x)
    assert full['peak_bytes'] is None and one['peak_bytes'] is None  # CPU: no CUDA peak
    # the unrolled graph keeps every iterate (6 steps); the one-step graph only the last update
    assert one['saved_bytes'] > 0
    assert full['saved_bytes'] > 4 * one['saved_bytes']


def test_device_agnostic():
    tree = ast.parse(open(nmf_module.__file__).read())
    calls = {node.func.attr for node in ast.walk(tree)
             if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)}
    assert 'cuda' not in calls and 'get_device' not in calls  # no x.cuda(), no get_device()
    assert 'to' in calls  # (the check sees method calls at all)
    # 'meta' tensors: no data, no CPU assumption anywhere in the forward
    out = NMF2D(md_r=4).eval()(torch.empty(2, 32, 8, 8, device='meta'))
    assert out.device.type == 'meta' and out.shape == (2, 32, 8, 8)
    out = NMF2D(md_r=4, eval_seed=0).eval()(torch.empty(2, 32, 8, 8, device='meta'))
    assert out.device.type == 'meta'

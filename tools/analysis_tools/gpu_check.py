#!/usr/bin/env python
"""The prepared GPU check (docs/gpu_check.md); normally started by ``gpu_check.sh``.

    python tools/analysis_tools/gpu_check.py [--device cuda] [--quick] [--out DIR]
                                             [--sections a,b,c,d,e,f] [--budget SECONDS]

Sections (each in its own process, with its own time limit; a failure or crash in one does not
stop the others):

a  outputs and gradients on the device against the CPU fp32 reference (Conv2Former-T,
   Conv2FormerIsotropic-S, mmc2f SegNeXt-T = MSCAN-T + LightHamHead, and mmseg 1.2.2's SegNeXt-T
   with the same weights); the deployed (``switch_to_deploy``) eval path against the unfused one
b  bf16 autocast: finite outputs and gradients; the NMF's matrix products run in fp32
c  ``with_cp``: the same gradients as without, and fewer bytes saved for backward
d  torch.compile: no graph breaks (train, eval, deployed eval); compiled output close to eager
e  a few training iterations of the demo configs with tools/train.py (fp32 and bf16 AMP)
f  the benchmark table (tools/analysis_tools/benchmark.py, bf16 + channels_last, eager and
   compiled, train and inference, throughput and peak memory)

Every check prints ``PASS``, ``FAIL`` or ``SKIP`` with its measured value and tolerance; the
summary goes to ``<out>/gpu_check_summary.txt`` and ``.json``. Exit status 1 when a check failed.
Errors are relative to the largest value: ``max|got - ref| / max|ref|`` over a tensor.
"""
import argparse
import json
import os
import os.path as osp
import subprocess
import sys
import time

REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
BENCHMARK = osp.join(REPO, 'tools', 'analysis_tools', 'benchmark.py')
TRAIN = osp.join(REPO, 'tools', 'train.py')
SEG_DEMO = osp.join(REPO, 'configs', 'demo',
                    'segnext_mscan-t_1xb8-adamw-400iter_demo-seg-128x128.py')
CLS_DEMO = osp.join(REPO, 'configs', 'demo', 'conv2former-n_1xb16-300iter_demo-cls-64px.py')

#: section -> (title, time limit in seconds on the GPU machine; on CPU only --budget bounds them)
SECTIONS = {
    'a': ('outputs and gradients vs the CPU fp32 reference; deploy vs unfused', 100),
    'b': ('bf16 autocast: finite, NMF in fp32', 45),
    'c': ('with_cp: same gradients, less saved', 45),
    'd': ('torch.compile: no graph breaks, compiled close to eager', 220),
    'e': ('training iterations of the demo configs', 150),
    'f': ('benchmark table (bf16, channels_last, eager and compiled)', 300),
}

#: seconds kept for the benchmark (f) when the checks run first
F_RESERVE = 200

#: tolerances (relative to the largest value of the reference tensor; for gradients to at least
#: GRAD_FLOOR x the largest gradient of the model)
GRAD_FLOOR = 1e-2
TOL = dict(
    out_fp32=1e-3,     # device fp32 (TF32 off) vs CPU fp32 outputs
    grad_fp32=5e-3,    # ... gradients (longer reduction chains, BatchNorm's batch statistics)
    deploy=1e-3,       # switch_to_deploy() vs unfused, eval, same device
    with_cp=1e-4,      # with_cp vs without: the same kernels recomputed
    compiled=2e-3,     # inductor vs eager (fp32, TF32 off)
    compiled_grad=1e-2,
)


# ------------------------------------------------------------------------------------------------
# Stand-ins for modules whose wheels are too large to carry (written into the venv by
# ``--write-shims`` only where the real module is missing). Importing them works; calling into
# them raises, so nothing silently computes with them.

_STUB_BODY = '''
def __getattr__(name):
    if name.startswith('__'):
        raise AttributeError(name)
    if name.isupper():  # a constant (IMREAD_COLOR, INTER_LINEAR, ...): a distinct int
        return _CONSTANTS.setdefault(name, 1000 + len(_CONSTANTS))

    def missing(*args, **kwargs):
        raise RuntimeError(f'{__name__}.{name}: {_WHAT} is not installed here; this module is '
                           'an import stand-in written by tools/analysis_tools/gpu_check.py')

    missing.__name__ = name
    return missing
'''


def _stub(what, extra=''):
    return (f'"""Import stand-in for {what} (tools/analysis_tools/gpu_check.py --write-shims)."""\n'
            f'GPU_CHECK_SHIM = True\n_WHAT = {what!r}\n_CONSTANTS = {{}}\n{extra}{_STUB_BODY}')


SHIMS = {
    'cv2': {'cv2/__init__.py': _stub('OpenCV (cv2)', "__version__ = '0.0.0+gpu-check-shim'\n\n"
                                     'def setNumThreads(n):\n    pass\n\n\n'
                                     'def getNumThreads():\n    return 1\n')},
    'scipy': {f'scipy/{name}.py': _stub('scipy', "__version__ = '0.0.0+gpu-check-shim'\n"
                                        if name == '__init__' else '')
              for name in ('__init__', 'ndimage', 'optimize', 'interpolate')},
}
MMCV_EXT_SHIM = _stub('mmcv compiled ops (mmcv._ext; mmcv-lite has none)')


def is_shim(module_name):
    import importlib
    try:
        return bool(getattr(importlib.import_module(module_name), 'GPU_CHECK_SHIM', False))
    except ImportError:
        return True


def write_shims(site=None, force=False):
    """Write the stand-ins into ``site`` (default: this interpreter's site-packages) for every
    module that cannot be found; ``mmcv/_ext.py`` where mmcv has no compiled ``_ext``."""
    import glob
    import importlib.util
    import sysconfig
    site = site or sysconfig.get_paths()['purelib']
    written = []
    for module, files in SHIMS.items():
        if not force and importlib.util.find_spec(module) is not None:
            continue
        for rel, text in files.items():
            path = osp.join(site, rel)
            os.makedirs(osp.dirname(path), exist_ok=True)
            with open(path, 'w') as f:
                f.write(text)
            written.append(path)
    spec = importlib.util.find_spec('mmcv')
    if spec is not None and spec.submodule_search_locations:
        pkg = list(spec.submodule_search_locations)[0]
        compiled = [p for p in glob.glob(osp.join(pkg, '_ext*')) if not p.endswith('.py')]
        if not compiled:
            path = osp.join(pkg, '_ext.py')
            with open(path, 'w') as f:
                f.write(MMCV_EXT_SHIM)
            written.append(path)
    for path in written:
        print(f'[gpu_check] import stand-in written: {path}')
    if not written:
        print('[gpu_check] no import stand-ins needed')
    return written


# ------------------------------------------------------------------------------------------------
# Results

class Results:
    """PASS/FAIL/SKIP lines, printed as they come and kept for the summary."""

    def __init__(self, section):
        self.section = section
        self.items = []

    def add(self, status, name, detail=''):
        self.items.append(dict(section=self.section, status=status, name=name, detail=detail))
        print(f'{status} [{self.section}] {name}' + (f': {detail}' if detail else ''), flush=True)

    def check(self, name, ok, detail=''):
        self.add('PASS' if ok else 'FAIL', name, detail)
        return ok

    def skip(self, name, reason):
        self.add('SKIP', name, reason)

    def guard(self, name, fn, *args, **kwargs):
        """Run ``fn``; an exception is a FAIL of ``name`` (and the section goes on)."""
        try:
            return fn(*args, **kwargs)
        except Exception as e:  # noqa: BLE001  (a check that crashed is a failed check)
            import traceback
            traceback.print_exc()
            self.add('FAIL', name, f'{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ""}'
                     [:300])
            return None


# ------------------------------------------------------------------------------------------------
# Building blocks (tested on CPU by tests/tools/test_gpu_check.py)

def rel_err(got, ref, min_scale=0.0):
    """``max|got - ref| / max(max|ref|, min_scale)`` in float64 on CPU (inf when the shapes differ
    or ``got`` is not finite where ``ref`` is)."""
    import torch
    got = got.detach().double().cpu()
    ref = ref.detach().double().cpu()
    if got.shape != ref.shape:
        return float('inf')
    if not torch.isfinite(got).all() and torch.isfinite(ref).all():
        return float('inf')
    scale = max(ref.abs().max().item() if ref.numel() else 0.0, min_scale)
    diff = (got - ref).abs().max().item() if ref.numel() else 0.0
    return diff / scale if scale > 0 else diff


def compare(got, ref, floor=0.0):
    """Worst :func:`rel_err` over two equally keyed dicts of tensors: ``(err, worst key)``; a key
    missing on one side or a None gradient on one side counts as ``inf``. ``floor``: each error is
    relative to at least ``floor`` times the largest value of all ``ref`` tensors (for gradients:
    a bias followed by BatchNorm has a gradient that is zero up to rounding)."""
    present = [t for t in ref.values() if t is not None and t.numel()]
    largest = max((t.detach().abs().max().item() for t in present), default=0.0)
    worst, worst_key = 0.0, None
    for key in sorted(set(got) | set(ref)):
        a, b = got.get(key), ref.get(key)
        if a is None and b is None:
            continue
        err = float('inf') if a is None or b is None else rel_err(a, b, floor * largest)
        if err > worst or worst_key is None:
            worst, worst_key = err, key
    return worst, worst_key


def tensors(out):
    """The tensors of a model output (tensor, list/tuple, dict), in order."""
    import torch
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, (list, tuple)):
        return [t for o in out for t in tensors(o)]
    if isinstance(out, dict):
        return [t for k in sorted(out) for t in tensors(out[k])]
    return []


def projection_loss(outs):
    """``sum_i <out_i, w_i>`` with fixed pseudo-random ``w_i`` (CPU generator, seed 0): the same
    loss on every device, with gradients that do not cancel."""
    import torch
    gen = torch.Generator().manual_seed(0)
    loss = 0
    for o in outs:
        w = torch.randn(o.shape, generator=gen).to(o.device)
        loss = loss + (o.float() * w).sum() / o.numel() ** 0.5
    return loss


def run_model(model, x, train, seed=0, grads=True):
    """Forward (and backward in training) with the global RNG seeded (the NMF's bases come from
    the global CPU generator, the same on every device): ``(outputs, {name: grad})``."""
    import torch
    model.train(train)
    model.zero_grad(set_to_none=True)
    x = x.detach().clone().requires_grad_(train and grads)
    torch.manual_seed(seed)
    with torch.set_grad_enabled(train):
        outs = tensors(model(x))
    named = {}
    if train and grads:
        projection_loss(outs).backward()
        named = {n: p.grad for n, p in model.named_parameters()}
        named['<input>'] = x.grad
    return {f'out{i}': o.detach() for i, o in enumerate(outs)}, named


def count_graph_breaks(fn, *inputs):
    """``(graph breaks, graphs, reasons)`` of ``torch._dynamo.explain`` (dynamo only, no
    inductor)."""
    import torch._dynamo as dynamo
    dynamo.reset()
    explain = dynamo.explain(fn)(*inputs)
    reasons = [str(getattr(b, 'reason', b))[:200] for b in explain.break_reasons]
    return explain.graph_break_count, explain.graph_count, reasons


class MatmulDtypes:
    """A dispatch mode recording the dtypes of the matrix products run inside it."""

    OPS = ('bmm', 'mm', 'baddbmm', 'addmm', 'matmul', 'addbmm')

    def __init__(self):
        from torch.utils._python_dispatch import TorchDispatchMode

        record = self.records = []

        class Mode(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                out = func(*args, **(kwargs or {}))
                name = func.overloadpacket.__name__
                if name in MatmulDtypes.OPS:
                    record.append((name, out.dtype))
                return out

        self.mode = Mode()

    def wrap(self, module):
        """Record inside ``module``'s forward (an instance attribute shadows the method)."""
        forward = module.forward
        rec = self

        def recorded(*args, **kwargs):
            with rec.mode:
                out = forward(*args, **kwargs)
            rec.records.append(('<output>', out.dtype))
            return out

        module.forward = recorded
        return self


# ------------------------------------------------------------------------------------------------
# Models

def _register_mmseg():
    import mmseg.utils
    mmseg.utils.register_all_modules(init_default_scope=False)


class SegNeXt:
    """A backbone + decode head as one module: ``head(backbone(x))`` (the logits)."""

    @staticmethod
    def build(quick, impl='mmc2f'):
        import torch.nn as nn
        from mmengine.registry import DefaultScope
        _register_mmseg()
        if quick:
            dims, depths, ch, rank, groups = [8, 16, 24, 32], [1, 1, 1, 1], 32, 4, 8
        else:
            dims, depths, ch, rank, groups = [32, 64, 160, 256], [3, 3, 5, 2], 256, 16, 32
        backbone = dict(embed_dims=dims, depths=depths, mlp_ratios=[8, 8, 4, 4], drop_rate=0.0,
                        drop_path_rate=0.0, norm_cfg=dict(type='BN', requires_grad=True))
        head = dict(in_channels=dims[1:], in_index=[1, 2, 3], channels=ch, ham_channels=ch,
                    dropout_ratio=0.0, num_classes=4,
                    norm_cfg=dict(type='GN', num_groups=groups, requires_grad=True),
                    align_corners=False, ham_kwargs=dict(MD_S=1, MD_R=rank, train_steps=6,
                                                         eval_steps=7, inv_t=100, rand_init=True))
        if impl == 'mmc2f':
            from mmc2f.registry import MODELS
            backbone.update(type='mmc2f.MSCAN', arch=dict(embed_dims=dims, depths=depths))
            backbone.pop('embed_dims')
            backbone.pop('depths')
            head.update(type='mmc2f.LightHamHead')
        else:
            from mmseg.registry import MODELS
            backbone.update(type='MSCAN')
            head.update(type='LightHamHead')

        class Seg(nn.Module):
            def __init__(self):
                super().__init__()
                with DefaultScope.overwrite_default_scope('mmseg'):
                    self.backbone = MODELS.build(backbone)
                    self.decode_head = MODELS.build(head)

            def forward(self, x):
                return self.decode_head(self.backbone(x))

        return Seg()


def build_models(quick):
    """name -> (model factory, input shape); the full sizes are the papers' T (S for the
    isotropic model, which has no T)."""
    from mmc2f.models.backbones.conv2former import Conv2Former
    from mmc2f.models.backbones.conv2former_iso import Conv2FormerIsotropic
    if quick:
        return {
            'Conv2Former': (lambda: Conv2Former(dict(dims=[16, 32, 48, 64], depths=[1, 1, 2, 1]),
                                                kernel_size=5), (2, 3, 64, 64)),
            'Conv2FormerIsotropic': (lambda: Conv2FormerIsotropic(dict(embed_dims=16, depth=2)),
                                     (2, 3, 64, 64)),
            'SegNeXt(mmc2f)': (lambda: SegNeXt.build(True), (2, 3, 64, 64)),
        }
    return {
        'Conv2Former-T': (lambda: Conv2Former(arch='tiny'), (2, 3, 224, 224)),
        'Conv2FormerIsotropic-S': (lambda: Conv2FormerIsotropic(arch='small'), (2, 3, 224, 224)),
        'SegNeXt-T(mmc2f)': (lambda: SegNeXt.build(False), (2, 3, 256, 256)),
    }


def make_input(shape, seed=1):
    import torch
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


def deploy(model):
    """``switch_to_deploy()`` on every outermost module that offers it (as benchmark.py's
    --fuse); returns how many."""
    from mmc2f.engine.deploy_hook import fuse_outermost
    return len(fuse_outermost(model))


def setup_torch(device):
    import torch
    if device.startswith('cuda'):
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.benchmark = False


def _seeded(factory, seed=0):
    import torch
    torch.manual_seed(seed)
    return factory()


# ------------------------------------------------------------------------------------------------
# Sections

def section_a(res, args):
    """Outputs and gradients vs the CPU fp32 reference; deploy vs unfused on the device."""
    setup_torch(args.device)
    models = build_models(args.quick)
    for name, (factory, shape) in models.items():
        res.guard(name, _a_one, res, args, name, factory, shape)
    res.guard('SegNeXt mmc2f vs mmseg', _a_mmseg, res, args)


def _a_one(res, args, name, factory, shape):
    import copy
    ref = _seeded(factory)
    dev = copy.deepcopy(ref).to(args.device)
    x = make_input(shape)
    for train in (True, False):
        mode = 'train' if train else 'eval'
        r_out, r_grad = run_model(ref, x, train)
        d_out, d_grad = res.guard(f'{name} {mode} forward on {args.device}', run_model,
                                  dev, x.to(args.device), train) or (None, None)
        if d_out is None:
            continue
        err, key = compare(d_out, r_out)
        res.check(f'{name} {mode} outputs {args.device} vs cpu', err <= TOL['out_fp32'],
                  f'rel err {err:.2e} ({key}), tol {TOL["out_fp32"]:.0e}')
        if train:
            err, key = compare(d_grad, r_grad, GRAD_FLOOR)
            res.check(f'{name} gradients {args.device} vs cpu', err <= TOL['grad_fp32'],
                      f'worst rel err {err:.2e} ({key}), tol {TOL["grad_fp32"]:.0e}')
    # the deployed eval path against the unfused one, on the device
    unfused, _ = run_model(dev, x.to(args.device), False)
    n = deploy(dev.eval())
    fused, _ = run_model(dev, x.to(args.device), False)
    err, key = compare(fused, unfused)
    res.check(f'{name} switch_to_deploy vs unfused on {args.device}',
              n > 0 and err <= TOL['deploy'],
              f'{n} modules deployed, rel err {err:.2e} ({key}), tol {TOL["deploy"]:.0e}')
    del ref, dev


def _a_mmseg(res, args):
    """mmseg 1.2.2's SegNeXt with the same weights (CPU) against mmc2f's on the device."""
    ours = _seeded(lambda: SegNeXt.build(args.quick))
    theirs = SegNeXt.build(args.quick, impl='mmseg')
    missing = theirs.load_state_dict(ours.state_dict(), strict=True)
    res.check('mmseg SegNeXt loads the mmc2f state dict', not missing.missing_keys
              and not missing.unexpected_keys)
    shape = (2, 3, 64, 64) if args.quick else (2, 3, 256, 256)
    x = make_input(shape)
    dev = ours.to(args.device)
    for train in (True, False):
        mode = 'train' if train else 'eval'
        r_out, r_grad = run_model(theirs, x, train)
        d_out, d_grad = run_model(dev, x.to(args.device), train)
        err, key = compare(d_out, r_out)
        res.check(f'SegNeXt {mode} outputs: mmc2f on {args.device} vs mmseg on cpu',
                  err <= TOL['out_fp32'], f'rel err {err:.2e} ({key}), tol {TOL["out_fp32"]:.0e}')
        if train:
            err, key = compare(d_grad, r_grad, GRAD_FLOOR)
            res.check(f'SegNeXt gradients: mmc2f on {args.device} vs mmseg on cpu',
                      err <= TOL['grad_fp32'],
                      f'worst rel err {err:.2e} ({key}), tol {TOL["grad_fp32"]:.0e}')


def section_b(res, args):
    """bf16 autocast: finite outputs and gradients; the NMF's products in fp32."""
    models = build_models(args.quick)
    for name, (factory, shape) in models.items():
        res.guard(name, _b_one, res, args, name, factory, shape)


def _b_one(res, args, name, factory, shape):
    import torch
    from mmc2f.models.decode_heads.nmf import NMF2D
    device_type = args.device.split(':')[0]
    model = _seeded(factory).to(args.device).train()
    recorders = [MatmulDtypes().wrap(m) for m in model.modules() if isinstance(m, NMF2D)]
    x = make_input(shape).to(args.device)
    with torch.autocast(device_type, dtype=torch.bfloat16):
        outs = tensors(model(x))
    loss = projection_loss(outs)
    loss.backward()
    dtypes = sorted({str(o.dtype) for o in outs})
    res.check(f'{name} bf16 outputs finite', all(torch.isfinite(o).all().item() for o in outs),
              f'output dtypes {dtypes}')
    bad = [n for n, p in model.named_parameters()
           if p.requires_grad and (p.grad is None or not torch.isfinite(p.grad).all())]
    res.check(f'{name} bf16 gradients finite and present', not bad,
              f'{len(bad)} bad: {bad[:3]}' if bad else
              f'{sum(1 for _ in model.parameters())} parameters')
    for i, rec in enumerate(recorders):
        products = [d for op, d in rec.records if op != '<output>']
        out_dtypes = {d for op, d in rec.records if op == '<output>'}
        ok = bool(products) and all(d == torch.float32 for d in products) and \
            out_dtypes == {torch.bfloat16}
        res.check(f'{name} NMF #{i} computes in fp32 under bf16 autocast', ok,
                  f'{len(products)} matrix products, dtypes {sorted({str(d) for d in products})}'
                  f', output {sorted(str(d) for d in out_dtypes)} (expected float32 products, '
                  'bfloat16 output)')


def _saved_bytes(model, x):
    import torch
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen = {}

    def pack(t):
        ptr = t.untyped_storage().data_ptr()
        if ptr not in params:
            seen[ptr] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = run_model(model, x, True)
    return out, sum(seen.values())


def section_c(res, args):
    """with_cp=True: the same gradients as without; fewer bytes saved for backward."""
    setup_torch(args.device)
    models = build_models(args.quick)
    for name, (factory, shape) in models.items():
        res.guard(name, _c_one, res, args, name, factory, shape)


def _c_one(res, args, name, factory, shape):
    import copy
    plain = _seeded(factory).to(args.device)
    cp = copy.deepcopy(plain)
    switched = [m for m in cp.modules() if hasattr(m, 'with_cp')]
    for m in switched:
        m.with_cp = True
    x = make_input(shape).to(args.device)
    (o1, g1), saved1 = _saved_bytes(plain, x)
    (o2, g2), saved2 = _saved_bytes(cp, x)
    err_o, _ = compare(o2, o1)
    err_g, key = compare(g2, g1, GRAD_FLOOR)
    res.check(f'{name} with_cp outputs and gradients equal', bool(switched) and
              max(err_o, err_g) <= TOL['with_cp'],
              f'{len(switched)} modules switched, rel err outputs {err_o:.2e}, gradients '
              f'{err_g:.2e} ({key}), tol {TOL["with_cp"]:.0e}')
    res.check(f'{name} with_cp saves less for backward', saved2 < saved1,
              f'{saved1 / 2**20:.1f} MiB -> {saved2 / 2**20:.1f} MiB')


def section_d(res, args):
    """torch.compile: 0 graph breaks (train, eval, deployed eval); compiled close to eager."""
    setup_torch(args.device)
    models = build_models(args.quick)
    for name, (factory, shape) in models.items():
        model = _seeded(factory).to(args.device)
        x = make_input(shape).to(args.device)
        for mode in ('train', 'eval', 'deploy'):
            if mode == 'deploy':
                deploy(model.eval())
            else:
                model.train(mode == 'train')
            got = res.guard(f'{name} {mode} explain', count_graph_breaks, model, x)
            if got is None:
                continue
            breaks, graphs, reasons = got
            res.check(f'{name} {mode}: no graph breaks', breaks == 0 and graphs == 1,
                      f'{breaks} breaks, {graphs} graphs' + (f'; {reasons[:2]}' if reasons else ''))
        model.train()  # drops the fused weights
    if args.device == 'cpu':
        res.skip('compiled vs eager', 'not on CPU (tests/models/test_compile.py has it)')
        return
    names = list(models)
    # most telling first; each compile takes about a minute: stop at the section's deadline
    jobs = [(names[0], 'train'), (names[2], 'deploy'), (names[2], 'train'), (names[0], 'deploy')]
    for name, mode in jobs:
        left = args.section_deadline - time.time()
        if left < 75:
            res.skip(f'{name} compiled {mode} vs eager', f'time budget ({left:.0f}s left)')
            continue
        res.guard(f'{name} compiled {mode}', _compiled_vs_eager, res, name, models[name], mode,
                  args.device)


def _compiled_vs_eager(res, name, model_spec, mode, device):
    import copy

    import torch
    import torch._dynamo as dynamo
    import torch._inductor.config as inductor_config
    factory, shape = model_spec
    dynamo.reset()
    model = _seeded(factory).to(device)
    x = make_input(shape).to(device)
    if mode == 'deploy':
        deploy(model.eval())
        ref, _ = run_model(model, x, False)
        got, _ = run_model(torch.compile(model), x, False)
        err, key = compare(got, ref)
        res.check(f'{name} compiled deployed eval close to eager', err <= TOL['compiled'],
                  f'rel err {err:.2e} ({key}), tol {TOL["compiled"]:.0e}')
        return
    with inductor_config.patch(fallback_random=True):  # eager's RNG (NMF bases)
        compiled = torch.compile(copy.deepcopy(model))
        eager_out, eager_grad = run_model(model, x, True)
        c_out, c_grad = run_model(compiled, x, True)
    c_grad = {k.replace('_orig_mod.', ''): v for k, v in c_grad.items()}
    err, key = compare(c_out, eager_out)
    res.check(f'{name} compiled train outputs close to eager', err <= TOL['compiled'],
              f'rel err {err:.2e} ({key}), tol {TOL["compiled"]:.0e}')
    err, key = compare(c_grad, eager_grad, GRAD_FLOOR)
    res.check(f'{name} compiled gradients close to eager', err <= TOL['compiled_grad'],
              f'worst rel err {err:.2e} ({key}), tol {TOL["compiled_grad"]:.0e}')


# ---- e: training


def shape_mask(yy, xx, kind, cy, cx, r):
    """Pixels of a circle (0), square (1) or triangle (2) of radius ``r`` centred at (cy, cx)."""
    if kind == 0:
        return (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
    if kind == 1:
        return (abs(yy - cy) <= r) & (abs(xx - cx) <= r)
    return (yy - cy <= r) & (yy - cy >= -r) & (abs(xx - cx) <= (yy - cy + r) / 2)


def write_seg_data(root, num_train, num_val, size=128, seed=0):
    """A small set in the demo's layout (images/{training,validation}/*.jpg, annotations/.../*.png,
    labels 0..3), drawn with numpy and PIL only (for machines without OpenCV)."""
    import numpy as np
    from PIL import Image
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    for split, n in (('training', num_train), ('validation', num_val)):
        os.makedirs(osp.join(root, 'images', split), exist_ok=True)
        os.makedirs(osp.join(root, 'annotations', split), exist_ok=True)
        for i in range(n):
            label = np.zeros((size, size), np.uint8)
            for _ in range(rng.integers(1, 4)):
                cls = int(rng.integers(1, 4))
                cy, cx = rng.integers(size // 6, size - size // 6, 2)
                r = int(rng.integers(size // 10, size // 4))
                label[shape_mask(yy, xx, cls - 1, cy, cx, r)] = cls
            colours = rng.integers(0, 256, (4, 3))
            img = colours[label] + rng.normal(0, 12, (size, size, 3))
            Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(
                osp.join(root, 'images', split, f'{i:05d}.jpg'), quality=95)
            Image.fromarray(label).save(osp.join(root, 'annotations', split, f'{i:05d}.png'))


def write_cls_data(root, num_per_class, num_val, size=64, seed=0):
    """The cls demo's layout ({train,val}/<class>/*.png, meta/{train,val}.txt, classes.txt)."""
    import numpy as np
    from PIL import Image
    classes = ('circle', 'square', 'triangle')
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    os.makedirs(osp.join(root, 'meta'), exist_ok=True)
    with open(osp.join(root, 'classes.txt'), 'w') as f:
        f.write('\n'.join(classes) + '\n')
    for split, n in (('train', num_per_class), ('val', num_val)):
        lines = []
        for label, cls in enumerate(classes):
            os.makedirs(osp.join(root, split, cls), exist_ok=True)
            for i in range(n):
                cy, cx = rng.integers(size // 3, 2 * size // 3, 2)
                r = int(rng.integers(size // 8, size // 4))
                mask = shape_mask(yy, xx, label, cy, cx, r)
                img = np.where(mask[..., None], rng.integers(0, 256, 3), rng.integers(0, 256, 3))
                img = np.clip(img + rng.normal(0, 10, img.shape), 0, 255).astype(np.uint8)
                Image.fromarray(img).save(osp.join(root, split, cls, f'{i:05d}.png'))
                lines.append(f'{cls}/{i:05d}.png {label}')
        with open(osp.join(root, 'meta', f'{split}.txt'), 'w') as f:
            f.write('\n'.join(lines) + '\n')


def derived_config(path, base, data_root, task, iters, amp, workers):
    """A config file that inherits ``base`` and sets the data root, short schedule, pillow image
    decoding (no OpenCV needed) and optionally bf16 AMP."""
    lines = [f'_base_ = [{base!r}]',
             f'data_root = {data_root!r}',
             'load = dict(type="LoadImageFromFile", imdecode_backend="pillow")']
    if task == 'seg':
        lines += [
            'train_pipeline = [load, dict(type="LoadAnnotations", reduce_zero_label=False),',
            '    dict(type="RandomFlip", prob=0.5, direction="horizontal"),',
            '    dict(type="PackSegInputs")]',
            'test_pipeline = [load, dict(type="LoadAnnotations", reduce_zero_label=False),',
            '    dict(type="PackSegInputs")]']
    else:
        lines += [
            'train_pipeline = [load, dict(type="RandomResizedCrop", scale=64, backend="pillow"),',
            '    dict(type="PackInputs")]',
            'test_pipeline = [load, dict(type="PackInputs")]']
    loader = (f'num_workers={workers}, persistent_workers=False, dataset=dict(data_root=data_root, '
              'pipeline={})')
    lines += [f'train_dataloader = dict({loader.format("train_pipeline")})',
              f'val_dataloader = dict({loader.format("test_pipeline")})',
              'test_dataloader = val_dataloader',
              f'train_cfg = dict(max_iters={iters}, val_interval={iters})',
              'default_hooks = dict(logger=dict(interval=5))']
    if amp:
        lines.append('optim_wrapper = dict(type="AmpOptimWrapper", dtype="bfloat16")')
    with open(path, 'w') as f:
        f.write('\n'.join(lines) + '\n')
    return path


def read_losses(work_dir):
    """``(losses, metrics, CUDA memory logged)`` of a run's ``scalars.json`` (one JSON object per
    line)."""
    import glob
    losses, metrics, memory = [], {}, False
    for path in sorted(glob.glob(osp.join(work_dir, '*', 'vis_data', 'scalars.json'))):
        with open(path) as f:
            for line in f:
                rec = json.loads(line)
                if 'loss' in rec:
                    losses.append(float(rec['loss']))
                    memory = memory or 'memory' in rec  # MMEngine logs it for CUDA runs only
                for k in ('mIoU', 'accuracy/top1'):
                    if k in rec:
                        metrics[k] = rec[k]
    return losses, metrics, memory


def section_e(res, args):
    import math
    import tempfile
    real_cv2 = not is_shim('cv2')
    tmp = tempfile.mkdtemp(prefix='gpu_check_train_', dir=args.tmp)
    iters = 4 if args.quick else 20
    runs = [('seg', SEG_DEMO, False), ('seg', SEG_DEMO, True), ('cls', CLS_DEMO, False)]
    if args.device == 'cpu':
        runs = [r for r in runs if not r[2]]  # MMEngine's bf16 AMP wants a GPU
    data = {}
    for task in sorted({t for t, _, _ in runs}):
        root = osp.join(tmp, 'data', task)
        if real_cv2:
            cmd = [sys.executable, osp.join(REPO, 'tools', 'misc', 'make_demo_data.py'), '--out',
                   osp.join(tmp, 'data'), '--task', task, '--num-train', '16', '--num-val', '4']
            ok = subprocess.run(cmd, cwd=REPO).returncode == 0
            res.check(f'{task} demo data (make_demo_data.py)', ok)
        else:
            (write_seg_data(root, 16, 4) if task == 'seg' else write_cls_data(root, 8, 2))
            res.add('PASS', f'{task} demo data', 'written with numpy + PIL (no OpenCV here)')
        data[task] = root
    for task, base, amp in runs:
        name = f'{osp.basename(base)[:-3]} {"bf16 AMP" if amp else "fp32"}'
        work = osp.join(tmp, f'work_{task}_{"amp" if amp else "fp32"}')
        cfg = derived_config(osp.join(tmp, f'{task}_{"amp" if amp else "fp32"}.py'), base,
                             data[task], task, iters, amp, 0 if args.device == 'cpu' else 2)
        cmd = [sys.executable, TRAIN, cfg, '--work-dir', work]
        env = dict(os.environ)
        if args.device == 'cpu':
            env['CUDA_VISIBLE_DEVICES'] = ''
        left = args.section_deadline - time.time()
        if left < 30:
            res.skip(f'{name}: {iters} iterations', f'time budget ({left:.0f}s left)')
            continue
        start = time.time()
        try:
            proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True,
                                  timeout=left)
        except subprocess.TimeoutExpired:
            res.check(f'{name}: {iters} iterations', False, f'timed out after {left:.0f}s')
            continue
        took = time.time() - start
        log = proc.stdout + proc.stderr
        with open(osp.join(args.out, f'train_{task}_{"amp" if amp else "fp32"}.log'), 'w') as f:
            f.write(log)
        if proc.returncode != 0:
            tail = ' | '.join(log.strip().splitlines()[-3:])[-400:]
            res.check(f'{name}: {iters} iterations', False, f'exit {proc.returncode}: {tail}')
            continue
        losses, metrics, cuda_memory = read_losses(work)
        finite = bool(losses) and all(math.isfinite(v) for v in losses)
        on_device = args.device == 'cpu' or cuda_memory
        where = '' if args.device == 'cpu' else \
            f', CUDA memory logged: {"yes" if cuda_memory else "no (not trained on the GPU?)"}'
        res.check(f'{name}: {iters} iterations', finite and on_device,
                  f'{took:.0f}s, losses {[round(v, 3) for v in losses]}, {metrics}{where}')


# ---- f: benchmark

def bench_runs(which='all'):
    """``(preset, mode, compile)`` in the order they run: eager first, then compiled."""
    runs = []
    for compiled in {'all': (False, True), 'eager': (False, ), 'compiled': (True, )}[which]:
        for mode in ('infer', 'train'):
            for model in ('conv2former-t', 'segnext-t'):
                runs.append((model, mode, compiled))
    return runs


def bench_argv(model, mode, compiled, args):
    argv = [model, '--dtype', 'bf16', '--channels-last', '--mode', mode, '--memory',
            '--csv', osp.join(args.out, 'gpu_bench.csv'), '--device', args.device]
    if args.quick:
        argv += ['--warmup', '1', '--iters', '1', '--repeat', '2', '--batch-size', '1',
                 '--input-size', '64']
    else:
        argv += ['--warmup', '3' if compiled else '2', '--iters', '10', '--repeat', '3']
    if compiled:
        argv.append('--compile')
    return argv


def section_f(res, args):
    deadline = args.section_deadline
    for model, mode, compiled in bench_runs(args.bench):
        label = f'benchmark {model} {mode} {"compiled" if compiled else "eager"}'
        left = deadline - time.time()
        need = 25 if not compiled else 60
        if left < need:
            res.skip(label, f'time budget ({left:.0f}s left)')
            continue
        cmd = [sys.executable, BENCHMARK] + bench_argv(model, mode, compiled, args)
        print('$ ' + ' '.join(cmd), flush=True)
        try:
            proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=left - 5)
        except subprocess.TimeoutExpired:  # the budget, not the model: reported, not failed
            res.skip(label, f'stopped at the time budget after {left - 5:.0f}s')
            continue
        print(proc.stdout[-3000:], flush=True)
        if proc.returncode != 0:
            print(proc.stderr[-3000:], flush=True)
        res.check(label, proc.returncode == 0, '' if proc.returncode == 0 else
                  ' | '.join(proc.stderr.strip().splitlines()[-2:])[-400:])
    write_bench_table(osp.join(args.out, 'gpu_bench.csv'), osp.join(args.out, 'gpu_bench.md'))


def write_bench_table(csv_path, md_path):
    """The CSV rows as one markdown table (for README's GPU rows)."""
    import csv
    if not osp.exists(csv_path):
        return None
    with open(csv_path) as f:
        rows = list(csv.DictReader(f))
    head = ('| model | vs | mode | compile | img/s | ratio (median [min..max]) | peak MiB | '
            'saved MiB |\n|---|---|---|---|---:|---|---:|---:|\n')
    lines = []
    for r in rows:
        ratio = (f'{float(r["ratio_median"]):.3f}x [{float(r["ratio_min"]):.3f}..'
                 f'{float(r["ratio_max"]):.3f}]' if r.get('ratio_median') else '')
        lines.append(f'| {r["model"]} | {r["baseline"] if r["model"] != r["baseline"] else ""} | '
                     f'{r["mode"]} | {r["compile"]} | {float(r["img_per_s"]):.1f} | {ratio} | '
                     f'{r.get("memory_mib", "")} | {r.get("saved_mib", "")} |')
    device = rows[0]['device'] if rows else ''
    text = (f'{device}, bf16 autocast, channels_last, batch {rows[0]["batch"] if rows else ""}\n\n'
            + head + '\n'.join(lines) + '\n')
    with open(md_path, 'w') as f:
        f.write(text)
    print(text)
    return text


SECTION_FNS = dict(a=section_a, b=section_b, c=section_c, d=section_d, e=section_e, f=section_f)


# ------------------------------------------------------------------------------------------------
# Driver

def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--device', default='cuda')
    p.add_argument('--quick', action='store_true', help='small models and inputs')
    p.add_argument('--out', default=osp.join(REPO, 'work_dirs', 'gpu_check'))
    p.add_argument('--sections', default=','.join(SECTIONS),
                   help='comma-separated subset of ' + ','.join(SECTIONS))
    p.add_argument('--budget', type=float, default=450,
                   help='seconds for all sections together (default 450)')
    p.add_argument('--bench', choices=['all', 'eager', 'compiled'], default='all',
                   help='which benchmark runs section f makes (default: eager, then compiled)')
    p.add_argument('--jobs', type=int, default=None,
                   help='checks (a-e) run at the same time; default 1 on CPU, 5 otherwise (the '
                   'benchmark always runs alone, after them)')
    p.add_argument('--tmp', default=None, help='folder for temporary data (default: system)')
    p.add_argument('--write-shims', action='store_true',
                   help='write the import stand-ins into this interpreter and exit')
    p.add_argument('--section', help=argparse.SUPPRESS)  # run one section in this process
    p.add_argument('--section-deadline', type=float, default=None, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def run_section(args):
    """Child process: one section; its results go to ``<out>/section_<x>.json``."""
    res = Results(args.section)
    if args.section_deadline is None:
        args.section_deadline = time.time() + SECTIONS[args.section][1]
    try:
        if args.device.startswith('cuda'):
            import torch
            if not torch.cuda.is_available():
                raise RuntimeError('CUDA is not available')
        SECTION_FNS[args.section](res, args)
    except Exception as e:  # noqa: BLE001
        import traceback
        traceback.print_exc()
        res.add('FAIL', f'section {args.section}', f'{type(e).__name__}: {e}'[:300])
    with open(osp.join(args.out, f'section_{args.section}.json'), 'w') as f:
        json.dump(res.items, f, indent=1)
    return 1 if any(i['status'] == 'FAIL' for i in res.items) else 0


def main(argv=None):
    args = parse_args(argv)
    if args.write_shims:
        write_shims()
        return 0
    os.makedirs(args.out, exist_ok=True)
    if args.section:
        return run_section(args)
    start = time.time()
    end = start + args.budget
    wanted = [s.strip() for s in args.sections.split(',') if s.strip()]
    unknown = [s for s in wanted if s not in SECTIONS]
    if unknown:
        print(f'error: unknown sections {unknown}; choose from {list(SECTIONS)}')
        return 2
    jobs = args.jobs or (1 if args.device == 'cpu' else len(SECTIONS) - 1)
    checks = [s for s in wanted if s != 'f']
    items = []
    # the checks, up to ``jobs`` at a time (their timings do not matter), then the benchmark alone
    phase_end = end - (F_RESERVE if 'f' in wanted else 0)
    pending = list(checks)
    running = {}
    while pending or running:
        while pending and len(running) < jobs:
            s = pending.pop(0)
            left = phase_end - time.time()
            if left < 20:
                items.append(_skip_section(s, f'time budget ({left:.0f}s left)'))
                continue
            # the limits are sized for the GPU machine; on CPU only the budget bounds a section
            limit = left if args.device == 'cpu' else min(SECTIONS[s][1], left)
            running[s] = _start_section(s, limit, args, jobs)
        time.sleep(0.5)
        for s in list(running):
            items += _finish_section(s, running, args)
    if 'f' in wanted:
        left = end - time.time()
        if left < 30:
            items.append(_skip_section('f', f'time budget ({left:.0f}s left)'))
        else:
            running['f'] = _start_section('f', left, args, 1)
            while running:
                time.sleep(0.5)
                items += _finish_section('f', running, args)
    order = {s: i for i, s in enumerate(SECTIONS)}
    items.sort(key=lambda i: order.get(i['section'], 99))  # stable: a section's own order kept
    return summarize(items, args, time.time() - start)


def _skip_section(s, why):
    print(f'SKIP [{s}] section {s}: {why}', flush=True)
    return dict(section=s, status='SKIP', name=f'section {s}', detail=why)


def _start_section(s, limit, args, jobs):
    """Start section ``s`` in a child process; its output goes to ``<out>/section_<s>.log``."""
    result_file = osp.join(args.out, f'section_{s}.json')
    if osp.exists(result_file):
        os.remove(result_file)
    cmd = [sys.executable, osp.abspath(__file__), '--section', s, '--device', args.device,
           '--out', args.out, '--section-deadline', str(time.time() + limit - 10)]
    cmd += ['--quick'] if args.quick else []
    cmd += ['--tmp', args.tmp] if args.tmp else []
    cmd += ['--bench', args.bench]
    env = dict(os.environ)
    if jobs > 1 and 'OMP_NUM_THREADS' not in env:
        env['OMP_NUM_THREADS'] = str(max(1, (os.cpu_count() or 1) // jobs))
    log = open(osp.join(args.out, f'section_{s}.log'), 'w')
    print(f'[gpu_check] started [{s}] {SECTIONS[s][0]} (limit {limit:.0f}s)', flush=True)
    # a session of its own: a timeout ends the section's children (train.py, benchmark.py) too
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env,
                            start_new_session=True)
    return dict(proc=proc, log=log, start=time.time(), limit=limit)


def _finish_section(s, running, args):
    """If section ``s`` ended (or ran out of time: killed), print its log, return its results."""
    job = running[s]
    took = time.time() - job['start']
    rc = job['proc'].poll()
    if rc is None and took < job['limit']:
        return []
    if rc is None:
        import signal
        try:
            os.killpg(job['proc'].pid, signal.SIGKILL)
        except OSError:
            job['proc'].kill()
        job['proc'].wait()
        rc = 'timeout'
    job['log'].close()
    del running[s]
    with open(job['log'].name, errors='replace') as f:
        print(f'\n===== [{s}] {SECTIONS[s][0]} ({took:.0f}s) =====\n' + f.read(), flush=True)
    got = []
    result_file = osp.join(args.out, f'section_{s}.json')
    if osp.exists(result_file):
        with open(result_file) as f:
            got = json.load(f)
    if rc == 'timeout' or (rc != 0 and not any(i['status'] == 'FAIL' for i in got)):
        why = f'timed out after {job["limit"]:.0f}s' if rc == 'timeout' else f'exit status {rc}'
        got.append(dict(section=s, status='FAIL', name=f'section {s}', detail=why))
        print(f'FAIL [{s}] section {s}: {why}', flush=True)
    return got


def summarize(items, args, took):
    counts = {k: sum(1 for i in items if i['status'] == k) for k in ('PASS', 'FAIL', 'SKIP')}
    lines = [f'gpu_check: device {args.device}{" (quick)" if args.quick else ""}, {took:.0f}s, '
             f'{counts["PASS"]} passed, {counts["FAIL"]} failed, {counts["SKIP"]} skipped']
    lines += [f'{i["status"]} [{i["section"]}] {i["name"]}' + (f': {i["detail"]}' if i['detail']
                                                              else '') for i in items]
    text = '\n'.join(lines) + '\n'
    print('\n===== summary =====\n' + text)
    with open(osp.join(args.out, 'gpu_check_summary.txt'), 'w') as f:
        f.write(text)
    with open(osp.join(args.out, 'gpu_check_summary.json'), 'w') as f:
        json.dump(dict(device=args.device, quick=args.quick, seconds=round(took), counts=counts,
                       items=items), f, indent=1)
    return 1 if counts['FAIL'] else 0


if __name__ == '__main__':
    sys.exit(main())

#!/usr/bin/env python
"""Throughput and memory of a model against a named baseline, measured side by side in one process.

Examples::

    # Conv2Former-T vs mmpretrain's ConvNeXt-T, CPU fp32 inference, batch 8, 224x224
    python tools/analysis_tools/benchmark.py conv2former-t
    # training step, bf16 autocast, channels_last
    python tools/analysis_tools/benchmark.py conv2former-t --mode train --dtype bf16 --channels-last
    # Conv2Former-T with its inference-only fused kernels (switch_to_deploy)
    python tools/analysis_tools/benchmark.py conv2former-t --fuse
    # SegNeXt-T (mmc2f, fused) vs mmseg 1.2.2's SegNeXt-T, batch 1, at 512x512 and 1024x2048
    python tools/analysis_tools/benchmark.py segnext-t --fuse
    python tools/analysis_tools/benchmark.py segnext-t --fuse --input-size 1024 2048
    # any config's model (its ``model`` dict), against a preset
    python tools/analysis_tools/benchmark.py configs/segnext/xxx.py --baseline mmseg-segnext-t

Method: every model is built, moved to the device / memory format, and warmed up; then ``--repeat``
rounds run the models in turn (interleaved, the order reversed every other round), each timing
``--iters`` steps. Per round the candidate's throughput is divided by the baseline's; the median of
those ratios and their spread (min..max) are printed with the median throughputs. ``--csv``
appends one row per candidate. Defaults: batch 8 at 224x224, or batch 1 at 512x512 for
segmentation models (the presets with ADE20K's 150 classes, or Cityscapes' 19 from 1024x1024
pixels up; ``--num-classes`` overrides). On CPU the allocator is set to reuse freed memory and
large tensors get huge pages (:mod:`mmc2f.engine.process`), for every model in the process alike.

Memory (``--memory``), two figures per model, each of one step after the warm-up:

* ``peak``: as the process sees it. CUDA: ``torch.cuda.max_memory_allocated`` minus the memory
  allocated before the step. CPU (Linux): peak RSS minus RSS before the step; freed heap memory is
  returned to the kernel first (``malloc_trim``) and the kernel's peak-RSS mark is reset
  (``/proc/self/clear_refs``), so the figure is the step's activations, gradients and workspace;
* ``saved``: the bytes of tensors autograd saves for backward in a training step (unique storages,
  parameters excluded): the activation memory that ``with_cp`` and one-step NMF gradients reduce.
"""
import argparse
import csv
import os
import os.path as osp
import statistics
import sys
import time
from datetime import datetime

sys.path.insert(0, osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__)))))
from mmc2f.engine.process import huge_pages_environ  # noqa: E402  (imports no torch)

huge_pages_environ()  # before torch allocates (see mmc2f/engine/process.py)

import torch  # noqa: E402
import torch.nn as nn  # noqa: E402

from mmc2f.engine.deploy_hook import fuse_outermost  # noqa: E402
from mmc2f.engine.process import setup_process  # noqa: E402

SIZES = {'n': 'nano', 't': 'tiny', 's': 'small', 'b': 'base', 'l': 'large'}


class SegmentorTensor(nn.Module):
    """A segmentor's inference (``--seg-infer``): ``logits``, mmseg's ``encode_decode`` (backbone,
    decode head and the head's ``predict_by_feat``, which resizes the logits to the input size),
    or ``predict``, the segmentor's ``predict`` as ``tools/test.py`` runs it per batch
    (``encode_decode``, then mmseg's ``postprocess_result``: the argmax; returns the labels).
    In train mode (``--seg-train``): ``loss``, the sum of the
    segmentor's losses as the runner's step computes them (the decode head resizes its logits to
    the labels: fixed random labels at the input size, a quarter of the pixels ignored), or
    ``logits``, the logits of ``mode='tensor'`` resized bilinearly (PyTorch's kernel for
    every model)."""

    def __init__(self, segmentor):
        super().__init__()
        self.segmentor = segmentor
        self.train_target = 'loss'  # Runner sets --seg-train
        self.infer_target = 'logits'  # and --seg-infer
        self._samples = {}

    def data_samples(self, x):
        key = tuple(x.shape)
        if key not in self._samples:
            from mmengine.structures import PixelData
            from mmseg.structures import SegDataSample
            g = torch.Generator().manual_seed(0)
            h, w = x.shape[2:]
            samples = []
            for _ in range(x.shape[0]):
                label = torch.randint(0, self.segmentor.decode_head.num_classes, (1, h, w),
                                      generator=g)
                label[:, :h // 4] = 255
                sample = SegDataSample(gt_sem_seg=PixelData(data=label.to(x.device)))
                sample.set_metainfo(dict(img_shape=(h, w), pad_shape=(h, w), ori_shape=(h, w)))
                samples.append(sample)
            self._samples[key] = samples
        return self._samples[key]

    def forward(self, x):
        if self.training and self.train_target == 'loss':
            losses = self.segmentor(x, self.data_samples(x), mode='loss')
            return sum(v for k, v in losses.items() if 'loss' in k)
        if self.training:  # the logits resized to the labels' size, as mmseg's loss does
            logits = self.segmentor(x, mode='tensor')
            return nn.functional.interpolate(logits, size=x.shape[2:], mode='bilinear',
                                             align_corners=False)
        h, w = x.shape[2:]
        metas = [dict(img_shape=(h, w), pad_shape=(h, w), ori_shape=(h, w))] * x.shape[0]
        if self.infer_target == 'predict':  # new samples per batch, as a data loader gives
            from mmseg.structures import SegDataSample
            samples = [SegDataSample(metainfo=meta) for meta in metas]
            return torch.stack([r.pred_sem_seg.data for r in self.segmentor.predict(x, samples)])
        return self.segmentor.encode_decode(x, metas)


def _segnext(size, backbone_type, head_type, num_classes=150):
    from mmengine.config import ConfigDict
    from mmengine.registry import init_default_scope
    from mmseg.registry import MODELS
    init_default_scope('mmseg')
    arch = SIZES[size]
    dims = {'t': [32, 64, 160, 256]}.get(size, [64, 128, 320, 512])
    depths = {'t': [3, 3, 5, 2], 's': [2, 2, 4, 2], 'b': [3, 3, 12, 3], 'l': [3, 5, 27, 3]}[size]
    ham = {'t': (256, 16), 's': (256, 16), 'b': (512, 64), 'l': (1024, 64)}[size]
    norm = dict(type='BN', requires_grad=True)
    backbone = dict(type=backbone_type, embed_dims=dims, depths=depths, mlp_ratios=[8, 8, 4, 4],
                    drop_rate=0.0, drop_path_rate=0.0, norm_cfg=norm)
    head = dict(type=head_type, in_channels=dims[1:], in_index=[1, 2, 3], channels=ham[0],
                ham_channels=ham[0], dropout_ratio=0.1, num_classes=num_classes,
                norm_cfg=dict(type='GN', num_groups=32, requires_grad=True), align_corners=False,
                ham_kwargs=dict(MD_S=1, MD_R=ham[1], train_steps=6, eval_steps=7, inv_t=100,
                                rand_init=True),
                loss_decode=dict(type='CrossEntropyLoss', use_sigmoid=False, loss_weight=1.0))
    if backbone_type.startswith('mmc2f'):
        backbone.update(arch=arch)
    seg = MODELS.build(dict(type='EncoderDecoder', backbone=backbone, decode_head=head,
                            data_preprocessor=None, test_cfg=ConfigDict(mode='whole')))
    return SegmentorTensor(seg)


def build_preset(name, num_classes=None):
    """A named model: ``conv2former-{n,t,s,b,l}``, ``convnext-{t,s,b,l}``, ``segnext-{t,s,b,l}``
    and ``mscan-{t,s,b,l}`` (mmc2f; SegNeXt's backbone alone), ``mmseg-segnext-{t,s,b,l}`` and
    ``mmseg-mscan-{t,s,b,l}`` (mmseg 1.2.2). Segmentation presets have ADE20K's 150 classes unless
    ``num_classes`` says otherwise."""
    family, _, size = name.rpartition('-')
    if family in ('mscan', 'mmseg-mscan'):
        segnext = 'segnext' if family == 'mscan' else 'mmseg-segnext'
        return build_preset(f'{segnext}-{size}', num_classes).segmentor.backbone
    if size not in SIZES:
        raise ValueError(f'unknown model "{name}": expected e.g. conv2former-t, convnext-t, segnext-t, '
                         'mmseg-segnext-t, or a config file')
    if family == 'conv2former':
        from mmc2f.registry import MODELS
        return MODELS.build(dict(type='mmc2f.Conv2Former', arch=SIZES[size]))
    if family == 'convnext':
        from mmpretrain.models.backbones import ConvNeXt
        return ConvNeXt(arch=SIZES[size], out_indices=(0, 1, 2, 3), gap_before_final_norm=False)
    if family == 'segnext':
        return _segnext(size, 'mmc2f.MSCAN', 'mmc2f.LightHamHead', num_classes or 150)
    if family == 'mmseg-segnext':
        return _segnext(size, 'MSCAN', 'LightHamHead', num_classes or 150)
    raise ValueError(f'unknown model family "{family}" in "{name}"')


def build_from_config(path):
    from mmengine.config import Config
    from mmengine.registry import init_default_scope
    cfg = Config.fromfile(path)
    scope = cfg.get('default_scope', 'mmengine')
    init_default_scope(scope)
    import importlib
    registry = importlib.import_module(f'{scope}.registry')
    model_cfg = cfg.model
    model_cfg.pop('data_preprocessor', None)
    model = registry.MODELS.build(model_cfg)
    from mmengine.model import revert_sync_batchnorm
    model = revert_sync_batchnorm(model)
    if hasattr(model, 'extract_feat') and hasattr(model, 'decode_head'):
        return SegmentorTensor(model)
    return model


def build(name, num_classes=None):
    if name.endswith('.py'):
        return build_from_config(name)
    return build_preset(name, num_classes)


def default_baseline(name):
    family, _, size = name.rpartition('-')
    if family == 'conv2former':
        return f'convnext-{size}' if size != 'n' else 'convnext-t'
    if family in ('segnext', 'mscan'):
        return f'mmseg-{family}-{size}'
    return None


def _tensors(out):
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, (list, tuple)):
        return [t for o in out for t in _tensors(o)]
    if isinstance(out, dict):
        return [t for o in out.values() for t in _tensors(o)]
    return []


ORT = '@onnxruntime'
#: Families whose --fuse is mmc2f's inference path (switch_to_deploy with --deploy-backend).
MMC2F_FAMILIES = ('conv2former', 'segnext', 'mscan')


def split_backend(name):
    """``'segnext-t@onnxruntime'`` -> ``('segnext-t', 'onnxruntime')``."""
    return (name[:-len(ORT)], 'onnxruntime') if name.endswith(ORT) else (name, 'pytorch')


def is_mmc2f(name):
    return name.endswith('.py') or name.rpartition('-')[0] in MMC2F_FAMILIES


def fix_nmf_seeds(model):
    """mmc2f NMFs without an eval_seed get 0: fixed bases, as an exported graph has them."""
    for m in model.modules():
        if type(m).__module__.startswith('mmc2f') and getattr(m, 'rand_init', False) and \
                hasattr(m, 'eval_seed') and m.eval_seed is None:
            m.eval_seed = 0


class Runner:
    """One model prepared for timing: device, memory format, autocast, compile, optimizer; or
    (``NAME@onnxruntime``) its ONNX export in an ONNX Runtime session."""

    def __init__(self, name, args):
        self.name = name
        self.args = args
        self.session = None
        base, backend = split_backend(name)
        torch.manual_seed(0)  # the same network gets the same weights in every runner
        model = build(base, args.num_classes)
        if isinstance(model, SegmentorTensor):
            model.train_target = args.seg_train
            model.infer_target = args.seg_infer
        elif args.seg_infer != 'logits':
            raise ValueError(f'--seg-infer {args.seg_infer}: {name} is not a segmentor')
        fix_nmf_seeds(model)
        if backend == 'onnxruntime':
            self._init_onnxruntime(model)
            return
        if args.with_cp:
            switched = [m for m in model.modules() if hasattr(m, 'with_cp')]
            if not switched:
                raise ValueError(f'--with-cp: {name} has no module with a with_cp switch')
            for m in switched:
                m.with_cp = True
        if args.one_step_grad:
            nmfs = [m for m in model.modules() if hasattr(m, 'one_step_grad')]
            if not nmfs:
                raise ValueError(f'--one-step-grad: {name} has no NMF with a one_step_grad switch')
            for m in nmfs:
                m.one_step_grad = True
        self.deploy = []
        if args.fuse and is_mmc2f(base):  # mmc2f's inference path (tools/test.py --deploy)
            from mmc2f.engine.deploy_hook import switch_to_deploy
            target = model.segmentor if isinstance(model, SegmentorTensor) else model
            model.eval()
            self.deploy = switch_to_deploy(target, backend=args.deploy_backend,
                                           stop_spinning=not args.ort_spinning)
        elif args.fuse:  # foreign models: whatever offers an inference-only fusion
            fuse_outermost(model)
        device = torch.device(args.device)
        model = model.to(device)
        if args.channels_last:
            model = model.to(memory_format=torch.channels_last)
        self.model = model
        self.params = sum(p.numel() for p in model.parameters())
        h, w = args.input_size
        self.x = torch.randn(args.batch_size, 3, h, w, device=device)
        if args.channels_last:
            self.x = self.x.contiguous(memory_format=torch.channels_last)
        self.fn = torch.compile(model) if args.compile else model
        self.dtype = {'fp32': None, 'bf16': torch.bfloat16, 'fp16': torch.float16}[args.dtype]
        if args.mode == 'train':
            model.train()
            self.opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
        else:
            model.eval()

    def _init_onnxruntime(self, model):
        """The model (eval mode; after switch_to_deploy with --onnx-deploy) exported at the
        benchmark's static shape, run by ONNX Runtime with ``--threads`` intra-op threads."""
        import onnxruntime as ort
        from mmc2f.engine.export import export_onnx
        from mmc2f.engine.ort import session_options
        args = self.args
        if args.mode != 'infer' or not args.device.startswith('cpu') or args.dtype != 'fp32':
            raise ValueError(f'{self.name}: ONNX Runtime is measured for CPU fp32 inference only')
        if args.seg_infer != 'logits':
            raise ValueError(f'{self.name}: ONNX Runtime runs the exported encode_decode; '
                             '--seg-infer predict measures PyTorch-side models only')
        model.eval()
        if args.onnx_deploy:
            fuse_outermost(model)
        self.model = model
        self.params = sum(p.numel() for p in model.parameters())
        self.x = torch.randn(args.batch_size, 3, *args.input_size)
        with torch.no_grad():
            names = [f'out{i}' for i in range(len(_tensors(model(self.x))))]
        # mmc2f's engine's options: in one process the runners' thread pools must not spin
        # against each other between interleaved runs (--ort-spinning: ONNX Runtime's default)
        options = session_options(torch.get_num_threads(), stop_spinning=not args.ort_spinning)
        self.session = ort.InferenceSession(export_onnx(model, self.x, None, names), options,
                                            providers=['CPUExecutionProvider'])
        self.deploy = [f'ONNX Runtime {ort.__version__}, {torch.get_num_threads()} threads']

    def outputs(self, x):
        """The model's outputs for ``x`` (eval mode), as a list of tensors."""
        if self.session is not None:
            return [torch.from_numpy(o) for o in self.session.run(None, {'input': x.numpy()})]
        with torch.no_grad():
            return [t.float() for t in _tensors(self.fn(x))]

    def autocast(self):
        if self.dtype is None:
            return torch.autocast(self.args.device.split(':')[0], enabled=False)
        return torch.autocast(self.args.device.split(':')[0], dtype=self.dtype)

    def step(self):
        if self.session is not None:
            self.session.run(None, {'input': self.x.numpy()})
        elif self.args.mode == 'train':
            with self.autocast():
                outs = _tensors(self.fn(self.x))
                loss = sum(o.float().mean() for o in outs)
            loss.backward()
            self.opt.step()
            self.opt.zero_grad(set_to_none=True)
        else:
            with torch.inference_mode(), self.autocast():
                self.fn(self.x)

    def sync(self):
        if self.args.device.startswith('cuda'):
            torch.cuda.synchronize()

    def time(self, iters):
        self.sync()
        start = time.perf_counter()
        for _ in range(iters):
            self.step()
        self.sync()
        return iters * self.args.batch_size / (time.perf_counter() - start)

    def memory(self):
        """``(peak MiB, kind, saved MiB)`` of one step (see the module docstring)."""
        saved = None
        if self.args.mode == 'train' and self.session is None:
            saved = saved_activation_bytes(self.fn, self.x, self.autocast, self.model) / 2**20
        if self.args.device.startswith('cuda'):
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
            self.step()
            torch.cuda.synchronize()
            return (torch.cuda.max_memory_allocated() - base) / 2**20, 'peak allocated', saved
        peak = peak_rss_bytes(self.step)
        return (None if peak is None else peak / 2**20), 'peak RSS', saved


def _proc_status_bytes(field):
    with open('/proc/self/status') as f:
        for line in f:
            if line.startswith(field + ':'):
                return int(line.split()[1]) * 1024
    return None


def peak_rss_bytes(step):
    """Peak RSS during ``step()`` minus RSS before it (Linux; None elsewhere)."""
    import ctypes
    import ctypes.util
    import gc
    try:
        libc = ctypes.CDLL(ctypes.util.find_library('c') or 'libc.so.6')
        gc.collect()
        libc.malloc_trim(0)  # give freed heap pages back: RSS is then the live memory
        with open('/proc/self/clear_refs', 'w') as f:
            f.write('5')  # reset the peak-RSS mark (VmHWM) to the current RSS
        before = _proc_status_bytes('VmRSS')
    except (OSError, AttributeError):
        return None
    step()
    peak = _proc_status_bytes('VmHWM')
    return None if before is None or peak is None else max(peak - before, 0)


def saved_activation_bytes(fn, x, autocast, model):
    """Bytes of the unique tensor storages autograd saves for backward (parameters excluded)."""
    param_ptrs = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen = {}

    def pack(t):
        storage = t.untyped_storage()
        ptr = storage.data_ptr()
        if ptr not in param_ptrs and ptr not in seen:
            seen[ptr] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        with autocast():
            outs = _tensors(fn(x))
            loss = sum(o.float().mean() for o in outs)
    loss.backward()
    model.zero_grad(set_to_none=True)
    return sum(seen.values())


def same_network_diffs(runners, baseline, args):
    """Max |output - baseline's| / max |baseline's| for runners of the baseline's network (same
    preset, same weights: e.g. mmc2f's path vs the network in ONNX Runtime), inference only."""
    if args.mode != 'infer' or not baseline:
        return {}
    ref_runner = next(r for r in runners if r.name == baseline)
    x = torch.randn(args.batch_size, 3, *args.input_size,
                    generator=torch.Generator().manual_seed(1)).to(args.device)
    ref = ref_runner.outputs(x)
    diffs = {}
    for r in runners:
        if r is ref_runner or split_backend(r.name)[0] != split_backend(baseline)[0]:
            continue
        outs = r.outputs(x)
        diffs[r.name] = max(((a.cpu() - b.cpu()).abs().max() / b.abs().max().clamp_min(1e-30)).item()
                            for a, b in zip(outs, ref))
    return diffs


def _run_notes(args, runners):
    """The settings a run line needs beyond the common ones: segmentors' inference target, and
    ONNX Runtime's spinning where a runner uses ONNX Runtime."""
    notes = []
    if args.mode == 'infer' and args.num_classes:
        notes.append(f'seg-infer={args.seg_infer}')
    if any('ONNX Runtime' in '; '.join(getattr(r, 'deploy', []) or []) for r in runners):
        notes.append(f'ONNX Runtime workers {"spin on" if args.ort_spinning else "stop"} after '
                     'a run')
    return ''.join(f'{n} | ' for n in notes)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('models', nargs='+', help='preset names (conv2former-t, segnext-t, ...) or configs')
    p.add_argument('--baseline', help='preset/config to compare against (default: per family, '
                   'convnext-<size> for conv2former, mmseg-segnext-<size> for segnext; '
                   '"onnxruntime": the first model exported and run in ONNX Runtime; NAME@onnxruntime; '
                   '"none" to skip)')
    p.add_argument('--mode', choices=['infer', 'train'], default='infer')
    p.add_argument('--seg-train', choices=['loss', 'logits'], default='loss',
                   help="segmentors' training step: loss (default; the segmentor's losses, "
                   "including its decode head's resize to the labels) or logits (mode='tensor' "
                   'logits resized by F.interpolate, the same for every model)')
    p.add_argument('--seg-infer', choices=['logits', 'predict'], default='logits',
                   help="segmentors' inference: logits (default; encode_decode) or predict "
                   "(encode_decode + mmseg's post-processing, as tools/test.py runs per batch)")
    p.add_argument('--ort-spinning', action='store_true',
                   help="keep ONNX Runtime's default of worker threads spinning after a run "
                   "(mmc2f's engine and the onnxruntime baseline stop them)")
    p.add_argument('--batch-size', type=int, default=None,
                   help='default: 1 for segmentation models, 8 otherwise')
    p.add_argument('--input-size', type=int, nargs='+', default=None,
                   help='H [W]; default: 512 for segmentation models, 224 otherwise')
    p.add_argument('--num-classes', type=int, default=None,
                   help='classes of the segmentation presets; default: 19 (Cityscapes) for inputs '
                   'of 1024x1024 pixels or more, else 150 (ADE20K)')
    p.add_argument('--dtype', choices=['fp32', 'bf16', 'fp16'], default='fp32')
    p.add_argument('--channels-last', action='store_true')
    p.add_argument('--compile', action='store_true', help='torch.compile every model')
    p.add_argument('--fuse', action='store_true',
                   help="call switch_to_deploy() (inference-only fusions) on every module that has "
                   'one (the mmseg/mmpretrain baselines have none)')
    p.add_argument('--deploy-backend', choices=['auto', 'pytorch', 'onnxruntime'], default='auto',
                   help="with --fuse, mmc2f models take mmc2f's inference path as tools/test.py "
                   '--deploy does: auto (default) = ONNX Runtime for segmentors on CPU, else the '
                   'fused PyTorch kernels')
    p.add_argument('--backend', choices=['pytorch', 'onnxruntime'], default='pytorch',
                   help='onnxruntime: run the listed models as their ONNX export in ONNX Runtime '
                   '(same as naming them NAME@onnxruntime)')
    p.add_argument('--onnx-deploy', action='store_true',
                   help='export ONNX Runtime models after switch_to_deploy() (folded graph)')
    p.add_argument('--with-cp', action='store_true',
                   help='turn on activation checkpointing (with_cp) in every module that has it')
    p.add_argument('--one-step-grad', action='store_true',
                   help="NMF: back-propagate through the last update only (mmc2f's LightHamHead)")
    p.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    p.add_argument('--threads', type=int, default=None, help='torch intra-op threads (CPU)')
    p.add_argument('--warmup', type=int, default=2, help='untimed steps per model first')
    p.add_argument('--iters', type=int, default=3, help='steps per timed block')
    p.add_argument('--repeat', type=int, default=5, help='interleaved rounds')
    p.add_argument('--memory', action='store_true', help='also report memory (see the doc)')
    p.add_argument('--csv', help='append results to this CSV file')
    args = p.parse_args(argv)
    if args.backend == 'onnxruntime':
        args.models = [m if m.endswith(ORT) else m + ORT for m in args.models]
    seg = is_segmentation(split_backend(args.models[0])[0])
    if args.batch_size is None:
        args.batch_size = 1 if seg else 8
    if args.input_size is None:
        args.input_size = [512] if seg else [224]
    if len(args.input_size) == 1:
        args.input_size = args.input_size * 2
    if args.num_classes is None and seg:
        args.num_classes = 19 if args.input_size[0] * args.input_size[1] >= 1024 * 1024 else 150
    return args


def is_segmentation(name):
    """Whether a preset name or config file is a segmentor (for the default batch/input size)."""
    if name.endswith('.py'):
        from mmengine.config import Config
        return str(Config.fromfile(name).model.get('type', '')).endswith('EncoderDecoder')
    return name.rpartition('-')[0] in ('segnext', 'mmseg-segnext', 'mscan', 'mmseg-mscan')


def main(argv=None):
    args = parse_args(argv)
    malloc_tuned = 'cpu_allocator' in setup_process(cpu_allocator=True)  # logged; env can disable
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    names = list(args.models)
    first = split_backend(names[0])[0]
    baseline = args.baseline or default_baseline(first)
    if baseline == 'onnxruntime':  # the first model's network, exported, in ONNX Runtime
        baseline = first + ORT
    if baseline and baseline.lower() != 'none' and baseline not in names:
        names.append(baseline)
    elif baseline and baseline.lower() == 'none':
        baseline = None
    runners = [Runner(n, args) for n in names]
    diffs = same_network_diffs(runners, baseline, args)
    for r in runners:
        for _ in range(args.warmup):
            r.step()
    rounds = {r.name: [] for r in runners}
    for i in range(args.repeat):
        for r in runners if i % 2 == 0 else runners[::-1]:  # no runner always goes first
            rounds[r.name].append(r.time(args.iters))
    device = torch.cuda.get_device_name() if args.device.startswith('cuda') else \
        f'CPU x{torch.get_num_threads()} threads'
    h, w = args.input_size
    classes = f'{args.num_classes} classes | ' if args.num_classes else ''
    print(f'\n{args.mode} | {device} | {args.dtype} | batch {args.batch_size} | {h}x{w} | {classes}'
          f'channels_last={args.channels_last} compile={args.compile} fuse={args.fuse} '
          f'with_cp={args.with_cp} one_step_grad={args.one_step_grad} | '
          f'{_run_notes(args, runners)}'
          f'{args.repeat} interleaved rounds x {args.iters} steps | '
          f'malloc tuning {"on" if malloc_tuned else "off"}, huge pages '
          f'{"on" if os.environ.get("THP_MEM_ALLOC_ENABLE") == "1" else "off"} (all models)')
    header = f'{"model":<28}{"params(M)":>10}{"img/s (median)":>16}{"vs " + (baseline or "-"):>28}'
    if args.memory:
        header += f'{"peak MiB":>12}{"saved MiB":>12}'
    if diffs:
        header += f'{"rel diff":>12}'
    print(header)
    rows = []
    for r in runners:
        med = statistics.median(rounds[r.name])
        ratio_txt, ratios = '', None
        if baseline and r.name != baseline:
            ratios = [a / b for a, b in zip(rounds[r.name], rounds[baseline])]
            ratio_txt = (f'{statistics.median(ratios):.3f}x '
                         f'[{min(ratios):.3f}..{max(ratios):.3f}]')
        line = f'{r.name:<28}{r.params / 1e6:>10.2f}{med:>16.2f}{ratio_txt:>28}'
        mem, mem_kind, saved = r.memory() if args.memory else (None, None, None)
        if args.memory:
            line += ''.join(f'{v:>12.1f}' if v is not None else f'{"-":>12}' for v in (mem, saved))
        if diffs:
            line += f'{diffs[r.name]:>12.1e}' if r.name in diffs else f'{"-":>12}'
        print(line)
        rows.append(dict(time=datetime.now().isoformat(timespec='seconds'), device=device,
                         model=r.name, baseline=baseline or '', mode=args.mode, dtype=args.dtype,
                         batch=args.batch_size, height=h, width=w,
                         channels_last=args.channels_last, compile=args.compile, fuse=args.fuse,
                         with_cp=args.with_cp, one_step_grad=args.one_step_grad,
                         img_per_s=round(med, 3),
                         ratio_median=round(statistics.median(ratios), 4) if ratios else '',
                         ratio_min=round(min(ratios), 4) if ratios else '',
                         ratio_max=round(max(ratios), 4) if ratios else '',
                         memory_mib=round(mem, 2) if mem is not None else '',
                         memory_kind=mem_kind or '',
                         saved_mib=round(saved, 2) if saved is not None else '',
                         max_rel_diff=f'{diffs[r.name]:.2e}' if r.name in diffs else '',
                         path='; '.join(getattr(r, 'deploy', []) or [])))
    for r in runners:
        if getattr(r, 'deploy', None):
            print(f'{r.name}: {"; ".join(r.deploy)}')
    if diffs:
        print(f'rel diff: max |output - {baseline}\'s| / max |{baseline}\'s output|, same input '
              'and weights')
    if args.memory:
        print(f'memory: peak = {"CUDA peak allocated" if args.device.startswith("cuda") else "peak RSS"}'
              ' of one step minus before it; saved = MiB autograd saves for backward (train)')
    if args.csv:
        new = not osp.exists(args.csv)
        with open(args.csv, 'a', newline='') as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            if new:
                writer.writeheader()
            writer.writerows(rows)
        print(f'appended {len(rows)} rows to {args.csv}')
    return rows


if __name__ == '__main__':
    main()

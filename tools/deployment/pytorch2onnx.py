#!/usr/bin/env python
"""Export an mmc2f segmentor (SegNeXt) or classifier (Conv2Former) to ONNX, optionally verified.

    python tools/deployment/pytorch2onnx.py CONFIG [CHECKPOINT] --output-file X.onnx
        [--shape H [W]] [--batch N] [--dynamic-export] [--opset 17] [--verify] [--deploy]
        [--seg-output {resized,raw}] [--cls-output {scores,logits}] [--nmf-seed 0]
        [--cfg-options KEY=VALUE ...]

What the graph computes (input ``input``: a float32 ``(N, 3, H, W)`` image that is already
normalised as the config's data_preprocessor does, i.e. RGB, ``(x - mean) / std``):

* mmseg segmentors (``default_scope='mmseg'``, e.g. mmc2f.MSCAN + mmc2f.LightHamHead):
  output ``seg_logits`` ``(N, num_classes, H, W)``: the decode head's logits bilinearly resized to
  the input size (what mmseg's ``encode_decode`` returns; ``argmax(1)`` is the label map).
  ``--seg-output raw`` exports the decode head's own logits instead (``mode='tensor'``, stride 8:
  ``(N, num_classes, ceil(H/8), ceil(W/8))``).
* mmpretrain classifiers (``default_scope='mmpretrain'``): output ``scores`` ``(N, num_classes)``,
  softmax probabilities (sigmoid for multi-label heads), mmpretrain's ``pred_score``;
  ``--cls-output logits``: output ``logits``, the head's logits (mmpretrain's ``cls_score``).
  (With 1000 classes the probabilities are ~1e-3, so ``--verify`` on logits is the stricter
  check.)
* mmdet detectors are not supported (RoI ops and NMS: use mmdeploy).

Dynamic axes (``--dynamic-export``): batch, height and width of the input and of the output
(classifiers: batch only in the output). Without it every axis is fixed to ``--batch`` and
``--shape``.

SegNeXt's NMF draws random bases on every forward; an exported graph must not. Every mmc2f NMF2D is
exported with the bases of its ``eval_seed`` (forced to 0 when the config sets none, which is
reported) precomputed as a constant: the ONNX model equals the PyTorch model in eval mode with that
seed. mmseg's own ``LightHamHead`` (``type='LightHamHead'`` resolved in mmseg's registry) cannot be
exported deterministically and is refused: use ``type='mmc2f.LightHamHead'``.

The exporter is torch's TorchScript-based one (``dynamo=False``): the dynamo exporter of torch 2.x
needs the ``onnxscript`` package, and the TorchScript tracer handles these models (no data-dependent
control flow) with dynamic shapes.

``--deploy`` exports Conv2Former / MSCAN after ``switch_to_deploy()`` (folded norms / layer
scales; the exported graph uses ordinary ONNX convolutions). ``--verify`` runs the ONNX model with onnxruntime
and compares with PyTorch on random inputs at the export shape (and, with ``--dynamic-export``, at a
second batch size and spatial size); it prints the max absolute difference and fails above 1e-4.
"""
import argparse
import contextlib
import os
import os.path as osp
import sys
import warnings
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__)))))

from mmengine.config import DictAction  # noqa: E402

from mmc2f.apis import UserError, get_task, init_model, load_config  # noqa: E402

#: The largest max-abs difference --verify accepts.
TOLERANCE = 1e-4


class ExportError(UserError):
    """The model cannot be exported as asked (printed, exit status 2)."""


# ------------------------------------------------------------------------------ wrappers
class SegmentorLogits(nn.Module):
    """``(N, 3, H, W)`` -> logits ``(N, K, H, W)`` (``resize=True``) or the head's raw logits."""

    def __init__(self, segmentor: nn.Module, resize: bool = True):
        super().__init__()
        self.segmentor = segmentor
        self.resize = resize
        self.align_corners = bool(getattr(segmentor, 'align_corners', False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.segmentor._forward(x)  # extract_feat + decode_head.forward (mode='tensor')
        if not self.resize:
            return logits
        return F.interpolate(logits, size=x.shape[2:], mode='bilinear',
                             align_corners=self.align_corners)


class ClassifierScores(nn.Module):
    """``(N, 3, H, W)`` -> class scores ``(N, K)`` (softmax; sigmoid for multi-label heads), or
    the head's logits with ``logits=True``."""

    def __init__(self, classifier: nn.Module, logits: bool = False):
        super().__init__()
        self.classifier = classifier
        self.logits = logits
        self.multi_label = 'MultiLabel' in type(classifier.head).__name__

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.classifier.head(self.classifier.extract_feat(x))
        if self.logits:
            return logits
        return torch.sigmoid(logits) if self.multi_label else F.softmax(logits, dim=1)


# ------------------------------------------------------------------------------ NMF
def _nmf_modules(model: nn.Module):
    """mmc2f NMF2D modules; raises for NMF modules of other packages (not exportable)."""
    from mmc2f.models.decode_heads.nmf import NMF2D
    found = []
    for name, module in model.named_modules():
        if isinstance(module, NMF2D):
            found.append((name, module))
        elif type(module).__name__ == 'NMF2D':
            raise ExportError(
                f'{name} is {type(module).__module__}.NMF2D, whose bases are random on every '
                'forward and which calls .cuda(): it cannot be exported deterministically. Use '
                "mmc2f's head: decode_head=dict(type='mmc2f.LightHamHead', ...) (same keys).")
    return found


@contextlib.contextmanager
def constant_nmf_bases(model: nn.Module):
    """Inside the block, each mmc2f NMF2D uses its ``eval_seed`` bases as a constant tensor.

    ``NMF2D.initial_bases`` draws them with ``torch.rand(..., generator=gen)``; the TorchScript
    exporter cannot export a ``torch.Generator`` (and an unseeded ``rand`` would become an ONNX
    ``RandomUniform``, a new draw on every run). The same values, drawn once here, become an
    initializer of the graph; only their ``repeat`` over the batch stays dynamic.
    """
    patched = []
    try:
        for name, nmf in _nmf_modules(model):
            if not nmf.rand_init:
                continue  # fixed bases already live in the ``bases`` buffer
            if nmf.eval_seed is None:
                raise ExportError(f'{name}: NMF2D without eval_seed cannot be exported')
            if nmf.channels is None:
                raise ExportError(f'{name}: NMF2D does not know its channels')
            gen = torch.Generator(device='cpu')
            gen.manual_seed(nmf.eval_seed)
            fixed = nmf._draw_bases(nmf.md_s, nmf.channels // nmf.md_s, generator=gen)

            def initial_bases(batch, dim, device, dtype, _fixed=fixed):
                return _fixed.to(device=device, dtype=dtype).repeat(batch, 1, 1)

            nmf.initial_bases = initial_bases
            patched.append(nmf)
        yield len(patched)
    finally:
        for nmf in patched:
            del nmf.initial_bases  # back to the class method


# ------------------------------------------------------------------------------ export
def build_export_module(config, checkpoint: Optional[str], deploy: bool = False,
                        seg_output: str = 'resized', cfg_options: Optional[dict] = None,
                        nmf_seed: int = 0, cls_output: str = 'scores'
                        ) -> Tuple[nn.Module, str, List[str]]:
    """The wrapped model on CPU in eval mode, its task and notes to print.

    ``config``: a path or a loaded :class:`mmengine.Config`.
    """
    notes = []
    cfg = load_config(config, cfg_options)
    if get_task(cfg) == 'det':
        raise ExportError('mmdet detectors are not supported by this exporter (RoI ops, NMS and '
                          'data-dependent outputs): use mmdeploy. Supported: mmseg segmentors and '
                          'mmpretrain classifiers.')
    model = init_model(cfg, checkpoint, device='cpu', nmf_eval_seed=None)
    task = model.task
    for name, nmf in _nmf_modules(model):
        if nmf.rand_init and nmf.eval_seed is None:
            nmf.eval_seed = int(nmf_seed)
            notes.append(f'{name}: the config sets no ham_kwargs.eval_seed; exported with '
                         f'eval_seed={nmf_seed} (deterministic NMF bases)')
        elif nmf.rand_init:
            notes.append(f'{name}: NMF bases from the config\'s eval_seed={nmf.eval_seed}')
    if deploy:
        switched = [n for n, m in model.named_modules()
                    if hasattr(m, 'switch_to_deploy') and callable(m.switch_to_deploy)]
        if not switched:
            notes.append('--deploy: no module has switch_to_deploy(); exported as is')
        for name in switched:
            model.get_submodule(name).switch_to_deploy()
        if switched:
            notes.append(f'--deploy: switch_to_deploy() on {", ".join(switched)}')
    if task == 'seg':
        if not hasattr(model, '_forward') or not hasattr(model, 'decode_head'):
            raise ExportError(f'{type(model).__name__} is not an mmseg encoder-decoder segmentor')
        wrapped = SegmentorLogits(model, resize=(seg_output == 'resized'))
    else:
        if not hasattr(model, 'head') or not hasattr(model, 'extract_feat'):
            raise ExportError(f'{type(model).__name__} is not an mmpretrain ImageClassifier')
        wrapped = ClassifierScores(model, logits=(cls_output == 'logits'))
    wrapped.eval()
    return wrapped, task, notes


def default_shape(cfg, task: str) -> Tuple[int, int]:
    if task == 'seg':
        crop = cfg.get('crop_size', None)
        if isinstance(crop, (list, tuple)) and len(crop) == 2:
            return int(crop[0]), int(crop[1])
        return 512, 512
    return 224, 224


def adaptive_pools(model: nn.Module) -> List[str]:
    """Adaptive poolings to an output larger than 1x1 (e.g. UperNet's PPM, scales 1/2/3/6).

    The TorchScript exporter turns them into fixed-kernel pooling computed from the traced size,
    so their graphs are only right at that size: spatial axes cannot be dynamic.
    """
    found = []
    for name, m in model.named_modules():
        if isinstance(m, (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)):
            size = m.output_size
            size = (size, size) if isinstance(size, int) or size is None else tuple(size)
            if any(s not in (1, None) for s in size):
                found.append(f'{name} (output {m.output_size})')
    return found


def export(wrapped: nn.Module, task: str, output_file: str, shape: Tuple[int, int],
           batch: int = 1, dynamic: bool = False, opset: int = 17) -> Dict[str, object]:
    """Trace ``wrapped`` on a ``(batch, 3, H, W)`` input and write ``output_file``.

    ``dynamic``: dynamic batch, height and width; only the batch for models with
    :func:`adaptive_pools` (``info['notes']`` says so).
    """
    out_name = ('seg_logits' if task == 'seg' else
                'logits' if getattr(wrapped, 'logits', False) else 'scores')
    dynamic_axes, notes = None, []
    if dynamic:
        pools = adaptive_pools(wrapped)
        if pools:
            notes.append('the model has adaptive pooling to sizes > 1 ('
                         f'{", ".join(pools[:3])}), which the exporter fixes to the traced '
                         'size: only the batch axis is dynamic')
            dynamic_axes = {'input': {0: 'batch'}, out_name: {0: 'batch'}}
        else:
            dynamic_axes = {'input': {0: 'batch', 2: 'height', 3: 'width'}}
            dynamic_axes[out_name] = ({0: 'batch', 2: 'out_height', 3: 'out_width'}
                                      if task == 'seg' else {0: 'batch'})
    dummy = torch.randn(batch, 3, *shape)
    folder = osp.dirname(osp.abspath(output_file))
    os.makedirs(folder, exist_ok=True)
    with torch.no_grad(), constant_nmf_bases(wrapped), warnings.catch_warnings():
        warnings.filterwarnings('ignore', category=torch.jit.TracerWarning)
        warnings.filterwarnings('ignore', category=DeprecationWarning)
        warnings.filterwarnings('ignore', message='.*dynamo=False.*')
        torch.onnx.export(
            wrapped, (dummy, ), output_file, input_names=['input'], output_names=[out_name],
            dynamic_axes=dynamic_axes, opset_version=opset, do_constant_folding=True,
            dynamo=False)
    import onnx
    with torch.no_grad():
        out_shape = tuple(wrapped(dummy).shape)
    _fix_output_dims(output_file, out_shape, (dynamic_axes or {}).get(out_name, {}))
    onnx.checker.check_model(output_file)
    return dict(output=out_name, dynamic_axes=dynamic_axes, output_shape=out_shape, notes=notes)


def _fix_output_dims(output_file: str, shape: Sequence[int], dynamic: Dict[int, str]) -> None:
    """Write the output's fixed sizes (e.g. the classes, which shape inference loses after an
    ONNX ``Resize``) into the graph's output type."""
    import onnx
    model = onnx.load(output_file)
    dims = model.graph.output[0].type.tensor_type.shape.dim
    changed = False
    for i, dim in enumerate(dims):
        if i < len(shape) and i not in dynamic and dim.dim_value != shape[i]:
            dim.dim_value = int(shape[i])
            changed = True
    if changed:
        onnx.save(model, output_file)


def verification_shapes(shape: Sequence[int], batch: int,
                        dynamic_axes: Optional[Dict[str, Dict[int, str]]]
                        ) -> List[Tuple[int, ...]]:
    """The export shape and, for each dynamic input axis, another size (batch + 1; H + 32,
    W + 64)."""
    shapes = [(batch, 3, shape[0], shape[1])]
    axes = (dynamic_axes or {}).get('input', {})
    if axes:
        shapes.append((batch + 1 if 0 in axes else batch, 3,
                       shape[0] + 32 if 2 in axes else shape[0],
                       shape[1] + 64 if 3 in axes else shape[1]))
    return shapes


def verify(wrapped: nn.Module, output_file: str, shapes: Sequence[Tuple[int, ...]],
           seed: int = 0) -> List[Tuple[Tuple[int, ...], float, float]]:
    """For a random N(0, 1) input of each shape: ``(shape, max |onnxruntime - PyTorch|,
    max |PyTorch output|)``."""
    import onnxruntime as ort
    sess = ort.InferenceSession(output_file, providers=['CPUExecutionProvider'])
    in_name = sess.get_inputs()[0].name
    gen = torch.Generator().manual_seed(seed)
    results = []
    for shp in shapes:
        x = torch.randn(*shp, generator=gen)
        with torch.no_grad():
            ref = wrapped(x).numpy()  # the unpatched model: eval_seed bases, no constants
        got = sess.run(None, {in_name: x.numpy()})[0]
        if got.shape != ref.shape:
            raise AssertionError(f'input {shp}: onnxruntime output shape {got.shape} != PyTorch '
                                 f'{ref.shape}')
        results.append((tuple(shp), float(np.abs(got - ref).max()), float(np.abs(ref).max())))
    return results


def parse_args(argv=None):
    p = argparse.ArgumentParser(description='Export an mmc2f segmentor or classifier to ONNX')
    p.add_argument('config', help='mmseg or mmpretrain config file')
    p.add_argument('checkpoint', nargs='?', default=None,
                   help='checkpoint (weights_only loading); omitted: random weights')
    p.add_argument('--output-file', default=None,
                   help='ONNX file to write (default: <config name>.onnx)')
    p.add_argument('--shape', type=int, nargs='+', default=None,
                   help='input H [W] (default: the config\'s crop_size or 512 for '
                   'segmentation, 224 for classification)')
    p.add_argument('--batch', type=int, default=1, help='batch size of the traced input')
    p.add_argument('--dynamic-export', action='store_true',
                   help='dynamic batch, height and width')
    p.add_argument('--opset', type=int, default=17, help='ONNX opset (default 17)')
    p.add_argument('--verify', action='store_true',
                   help=f'compare onnxruntime with PyTorch (max abs diff <= {TOLERANCE})')
    p.add_argument('--atol', type=float, default=TOLERANCE,
                   help=f'largest max abs diff --verify accepts (default {TOLERANCE})')
    p.add_argument('--deploy', action='store_true',
                   help='call switch_to_deploy() on the backbone (Conv2Former) before export')
    p.add_argument('--seg-output', choices=['resized', 'raw'], default='resized',
                   help='segmentation: logits resized to the input (default) or the decode '
                   "head's stride-8 logits")
    p.add_argument('--cls-output', choices=['scores', 'logits'], default='scores',
                   help='classification: softmax scores (default) or the head\'s logits')
    p.add_argument('--nmf-seed', type=int, default=0,
                   help='eval_seed given to NMF heads whose config sets none (default 0)')
    p.add_argument('--cfg-options', nargs='+', action=DictAction,
                   help='override config settings, KEY=VALUE')
    args = p.parse_args(argv)
    if args.shape is not None:
        if len(args.shape) not in (1, 2):
            p.error('--shape takes H or H W')
        args.shape = args.shape * 2 if len(args.shape) == 1 else args.shape
    if args.batch < 1:
        p.error('--batch must be >= 1')
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        cfg = load_config(args.config, args.cfg_options)
        wrapped, task, notes = build_export_module(
            cfg, args.checkpoint, deploy=args.deploy, seg_output=args.seg_output,
            nmf_seed=args.nmf_seed, cls_output=args.cls_output)
    except (UserError, FileNotFoundError) as err:  # ExportError is a UserError
        print(f'error: {err}', file=sys.stderr)
        return 2
    shape = tuple(args.shape) if args.shape else default_shape(cfg, task)
    output_file = args.output_file or osp.splitext(osp.basename(args.config))[0] + '.onnx'
    for note in notes:
        print(f'note: {note}')
    try:
        info = export(wrapped, task, output_file, shape, args.batch, args.dynamic_export,
                      args.opset)
    except torch.onnx.errors.OnnxExporterError as err:
        message = str(err).strip().splitlines()[0]
        print(f'error: the exporter cannot export this model at {shape[0]} x {shape[1]}: '
              f'{message}', file=sys.stderr)
        return 2
    for note in info['notes']:
        print(f'note: {note}')
    what = ('seg_logits (N, num_classes, H, W), resized to the input' if task == 'seg'
            and args.seg_output == 'resized' else 'seg_logits (N, num_classes, ceil(H/8), '
            'ceil(W/8)), raw decode-head logits' if task == 'seg' else
            'scores (N, num_classes), class probabilities' if args.cls_output == 'scores' else
            'logits (N, num_classes)')
    print(f'exported {output_file}: input (N, 3, H, W) normalised image -> {what}; opset '
          f'{args.opset}; traced at N={args.batch}, H x W = {shape[0]} x {shape[1]}')
    print('dynamic axes: ' + (str(info['dynamic_axes']) if info['dynamic_axes'] else
                              'none (static shape)'))
    if args.verify:
        results = verify(wrapped, output_file,
                         verification_shapes(shape, args.batch, info['dynamic_axes']))
        worst = 0.0
        for shp, diff, scale in results:
            print(f'verify: input {shp}: max abs diff onnxruntime vs PyTorch = {diff:.3e} '
                  f'(max |output| {scale:.3g})')
            worst = max(worst, diff)
        if not worst <= args.atol:
            print(f'error: max abs diff {worst:.3e} exceeds {args.atol}', file=sys.stderr)
            return 1
        print(f'verify: OK (max abs diff {worst:.3e} <= {args.atol})')
    return 0


if __name__ == '__main__':
    sys.exit(main())

#!/usr/bin/env python
"""Export an mmc2f segmentor (SegNeXt) or classifier (Conv2Former) to ONNX, optionally verified.

    python tools/deployment/pytorch2onnx.py CONFIG [CHECKPOINT] --output-file X.onnx
        [--shape H [W]] [--batch N] [--dynamic-export] [--opset 17] [--verify] [--deploy]
        [--seg-output {resized,raw}] [--cls-output {scores,logits}] [--backbone] [--nmf-seed 0]
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
* ``--backbone``: the config's backbone alone (any config, detectors included): outputs
  ``feat0``..``featK``, its feature maps.
* mmdet detectors are not supported whole (RoI ops and NMS: use mmdeploy).

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
scales; the exported graph uses ordinary ONNX convolutions). ``--verify`` runs the ONNX model
with onnxruntime and compares with PyTorch on random inputs at the export shape (and, with
``--dynamic-export``, at a second batch size and spatial size); it prints the max absolute
difference and fails above ``--atol`` (1e-4) plus ``--rtol`` (1e-5) times the largest output
magnitude.
"""
import argparse
import os.path as osp
import sys
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn as nn

sys.path.insert(0, osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__)))))

from mmengine.config import DictAction  # noqa: E402

from mmc2f.apis import UserError, get_task, init_model, load_config  # noqa: E402
from mmc2f.engine.export import (BackboneFeatures, ClassifierScores, ExportError,  # noqa: E402
                                 SegmentorLogits, adaptive_pools, export_onnx, nmf_modules)

#: --verify accepts max |onnxruntime - PyTorch| <= TOLERANCE + RELATIVE_TOLERANCE * max |output|.
TOLERANCE = 1e-4
RELATIVE_TOLERANCE = 1e-5


# ------------------------------------------------------------------------------ export
def build_export_module(config, checkpoint: Optional[str], deploy: bool = False,
                        seg_output: str = 'resized', cfg_options: Optional[dict] = None,
                        nmf_seed: int = 0, cls_output: str = 'scores', backbone: bool = False
                        ) -> Tuple[nn.Module, str, List[str]]:
    """The wrapped model on CPU in eval mode, its task (``'backbone'`` with ``backbone=True``)
    and notes to print.

    ``config``: a path or a loaded :class:`mmengine.Config`.
    """
    notes = []
    cfg = load_config(config, cfg_options)
    if get_task(cfg) == 'det' and not backbone:
        raise ExportError('mmdet detectors are not supported by this exporter (RoI ops, NMS and '
                          'data-dependent outputs): use mmdeploy. Supported: mmseg segmentors and '
                          'mmpretrain classifiers, and the backbone of any config (--backbone).')
    model = init_model(cfg, checkpoint, device='cpu', nmf_eval_seed=None)
    task = model.task
    for name, nmf in nmf_modules(model):
        if nmf.rand_init and nmf.eval_seed is None:
            nmf.eval_seed = int(nmf_seed)
            notes.append(f'{name}: the config sets no ham_kwargs.eval_seed; exported with '
                         f'eval_seed={nmf_seed} (deterministic NMF bases)')
        elif nmf.rand_init:
            notes.append(f'{name}: NMF bases from the config\'s eval_seed={nmf.eval_seed}')
    if deploy:
        from mmc2f.engine.deploy_hook import fuse_outermost
        switched = fuse_outermost(model)  # a backbone folds its blocks itself (MSCAN's streams)
        notes.append(f'--deploy: switch_to_deploy() on {", ".join(switched)}' if switched else
                     '--deploy: no module has switch_to_deploy(); exported as is')
    if backbone:
        if not isinstance(getattr(model, 'backbone', None), nn.Module):
            raise ExportError(f'{type(model).__name__} has no backbone')
        wrapped, task = BackboneFeatures(model.backbone), 'backbone'
    elif task == 'seg':
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


def export(wrapped: nn.Module, task: str, output_file: str, shape: Tuple[int, int],
           batch: int = 1, dynamic: bool = False, opset: int = 17) -> Dict[str, object]:
    """Trace ``wrapped`` on a ``(batch, 3, H, W)`` input and write ``output_file``.

    ``dynamic``: dynamic batch, height and width; only the batch for models with
    :func:`adaptive_pools` (``info['notes']`` says so).
    """
    dummy = torch.randn(batch, 3, *shape)
    with torch.no_grad():
        out_shapes = [tuple(t.shape) for t in _as_tuple(wrapped(dummy))]
    out_names = ([f'feat{i}' for i in range(len(out_shapes))] if task == 'backbone' else
                 ['seg_logits' if task == 'seg' else
                  'logits' if getattr(wrapped, 'logits', False) else 'scores'])
    spatial = task in ('seg', 'backbone')
    dynamic_axes, notes = None, []
    if dynamic:
        pools = adaptive_pools(wrapped)
        if pools:
            notes.append('the model has adaptive pooling to sizes > 1 ('
                         f'{", ".join(pools[:3])}), which the exporter fixes to the traced '
                         'size: only the batch axis is dynamic')
            dynamic_axes = {'input': {0: 'batch'}}
            dynamic_axes.update({n: {0: 'batch'} for n in out_names})
        else:
            dynamic_axes = {'input': {0: 'batch', 2: 'height', 3: 'width'}}
            dynamic_axes.update({n: ({0: 'batch', 2: f'{n}_height', 3: f'{n}_width'}
                                     if spatial else {0: 'batch'}) for n in out_names})
    export_onnx(wrapped, dummy, output_file, out_names, dynamic_axes, opset)
    import onnx
    for i, (name, out_shape) in enumerate(zip(out_names, out_shapes)):
        _fix_output_dims(output_file, i, out_shape, (dynamic_axes or {}).get(name, {}))
    onnx.checker.check_model(output_file)
    return dict(output=', '.join(out_names), dynamic_axes=dynamic_axes,
                output_shape=out_shapes[0], notes=notes)


def _as_tuple(out) -> Tuple[torch.Tensor, ...]:
    return tuple(out) if isinstance(out, (list, tuple)) else (out, )


def _fix_output_dims(output_file: str, index: int, shape: Sequence[int],
                     dynamic: Dict[int, str]) -> None:
    """Write the output's fixed sizes (e.g. the classes, which shape inference loses after an
    ONNX ``Resize``) into the graph's output type."""
    import onnx
    model = onnx.load(output_file)
    dims = model.graph.output[index].type.tensor_type.shape.dim
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
    max |PyTorch output|)`` over all outputs."""
    import onnxruntime as ort
    sess = ort.InferenceSession(output_file, providers=['CPUExecutionProvider'])
    in_name = sess.get_inputs()[0].name
    gen = torch.Generator().manual_seed(seed)
    results = []
    for shp in shapes:
        x = torch.randn(*shp, generator=gen)
        with torch.no_grad():  # the unpatched model: eval_seed bases, no constants
            refs = [t.numpy() for t in _as_tuple(wrapped(x))]
        gots = sess.run(None, {in_name: x.numpy()})
        diff = scale = 0.0
        for got, ref in zip(gots, refs):
            if got.shape != ref.shape:
                raise AssertionError(f'input {shp}: onnxruntime output shape {got.shape} != '
                                     f'PyTorch {ref.shape}')
            diff = max(diff, float(np.abs(got - ref).max()))
            scale = max(scale, float(np.abs(ref).max()))
        results.append((tuple(shp), diff, scale))
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
                   help=f'--verify accepts max abs diff <= atol + rtol * max |output| '
                   f'(default {TOLERANCE})')
    p.add_argument('--rtol', type=float, default=RELATIVE_TOLERANCE,
                   help=f'see --atol (default {RELATIVE_TOLERANCE})')
    p.add_argument('--backbone', action='store_true',
                   help="export the config's backbone alone: outputs feat0..featK, its feature "
                   'maps (any config, detectors included)')
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
            nmf_seed=args.nmf_seed, cls_output=args.cls_output, backbone=args.backbone)
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
    what = (f'{info["output"]}, the backbone\'s feature maps' if task == 'backbone' else
            'seg_logits (N, num_classes, H, W), resized to the input' if task == 'seg'
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
        worst, allowed = 0.0, float('inf')
        for shp, diff, scale in results:
            print(f'verify: input {shp}: max abs diff onnxruntime vs PyTorch = {diff:.3e} '
                  f'(max |output| {scale:.3g})')
            worst = max(worst, diff)
            allowed = min(allowed, args.atol + args.rtol * scale)
        if not worst <= allowed:
            print(f'error: max abs diff {worst:.3e} exceeds {allowed:.3e} (--atol {args.atol} + '
                  f'--rtol {args.rtol} x max |output|)', file=sys.stderr)
            return 1
        print(f'verify: OK (max abs diff {worst:.3e} <= {allowed:.3e})')
    return 0


if __name__ == '__main__':
    sys.exit(main())

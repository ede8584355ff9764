"""mmc2f's CPU inference engine for segmentors: the network on ONNX Runtime, the logits' resize
in mmc2f.

:func:`run_on_onnxruntime` exports an mmseg encoder-decoder's ``_forward`` (backbone and decode
head, stride-8 logits; dynamic batch, height and width) once, in memory, and replaces the
instance's ``encode_decode`` with: ONNX Runtime for the network, then the decode head's own
``predict_by_feat`` (mmc2f's :func:`~mmc2f.ops.resize_bilinear` for mmc2f heads). Whole and
sliding-window inference both go through ``encode_decode``. On CPU this beats both PyTorch's
kernels and ONNX Runtime on the whole exported network (which spends a fifth of its time resizing
the logits in its blocked layout and reordering them back; README, Performance).

The engine watches the parameters' and buffers' version counters: weights changed in place (an
optimizer step, ``load_state_dict``) make it export again before the next call, so it never runs
stale weights. ``train()`` mode or a non-CPU input falls back to the PyTorch path.
"""
import logging
import types
from typing import List, Optional, Tuple

import torch
import torch.nn as nn
from mmengine.logging import print_log

from .export import SegmentorLogits, export_onnx, nmf_modules

__all__ = ['onnxruntime_available', 'OnnxRuntimeForward', 'run_on_onnxruntime',
           'is_segmentor', 'restore_pytorch', 'ONNXRUNTIME_FASTER']

#: Networks that ONNX Runtime runs faster than mmc2f's fused PyTorch kernels on CPU (measured,
#: README's Performance): mmseg segmentors and bare MSCAN backbones. Conv2Former's fused kernels
#: are faster than ONNX Runtime, so it stays on PyTorch.
ONNXRUNTIME_FASTER = ('MSCAN', )

_ATTR = '_mmc2f_onnxruntime'


def onnxruntime_available() -> bool:
    import importlib.util
    return importlib.util.find_spec('onnxruntime') is not None


def is_segmentor(model: nn.Module) -> bool:
    return all(callable(getattr(model, a, None)) for a in ('_forward', 'encode_decode')) and \
        isinstance(getattr(model, 'decode_head', None), nn.Module)


def _versions(module: nn.Module) -> Tuple[int, ...]:
    return tuple(t._version for t in list(module.parameters()) + list(module.buffers()))


class OnnxRuntimeForward:
    """A module's eval forward as an ONNX Runtime session: ``(N, 3, H, W)`` float32 CPU tensor
    -> list of output tensors. Exported with dynamic batch, height and width."""

    def __init__(self, module: nn.Module, threads: Optional[int] = None,
                 example_size: Tuple[int, int] = (64, 64)):
        import onnxruntime as ort
        self.module = module
        self.threads = threads or torch.get_num_threads()
        self.example_size = example_size
        self._ort = ort
        self.exports = 0
        self._export()

    def _export(self) -> None:
        # export() restores the training flag it found, recursively: keep the module in eval
        self.module.eval()
        with torch.no_grad():
            example = torch.zeros(1, 3, *self.example_size)
            n_out = len(self._outputs(self.module(example)))
        names = [f'out{i}' for i in range(n_out)]
        axes = {'input': {0: 'batch', 2: 'height', 3: 'width'}}
        axes.update({n: {0: 'batch', 2: f'{n}_height', 3: f'{n}_width'} for n in names})
        onnx_bytes = export_onnx(self.module, example, None, names, axes)
        options = self._ort.SessionOptions()
        options.intra_op_num_threads = self.threads
        options.inter_op_num_threads = 1
        self.session = self._ort.InferenceSession(onnx_bytes, options,
                                                  providers=['CPUExecutionProvider'])
        self.versions = _versions(self.module)
        self.exports += 1

    @staticmethod
    def _outputs(out) -> List[torch.Tensor]:
        return list(out) if isinstance(out, (list, tuple)) else [out]

    def __call__(self, x: torch.Tensor) -> List[torch.Tensor]:
        if _versions(self.module) != self.versions:  # weights changed since the export
            print_log('mmc2f ONNX Runtime engine: the weights changed; exporting again',
                      logger='current', level=logging.INFO)
            self._export()
        x = x.detach().to(torch.float32).contiguous()
        outs = self.session.run(None, {'input': x.numpy()})
        return [torch.from_numpy(o) for o in outs]


def _use_pytorch(module: nn.Module, x: torch.Tensor) -> bool:
    return module.training or x.device.type != 'cpu' or torch.is_grad_enabled() and (
        x.requires_grad or any(p.requires_grad for p in module.parameters()))


def _forward(self, x: torch.Tensor):
    if _use_pytorch(self, x):
        return type(self).forward(self, x)
    return tuple(getattr(self, _ATTR)(x))


def _encode_decode(self, inputs: torch.Tensor, batch_img_metas: List[dict]) -> torch.Tensor:
    if _use_pytorch(self, inputs):
        return type(self).encode_decode(self, inputs, batch_img_metas)
    logits = getattr(self, _ATTR)(inputs)[0]
    return self.decode_head.predict_by_feat(logits, batch_img_metas)


def run_on_onnxruntime(segmentor: nn.Module, threads: Optional[int] = None) -> str:
    """Make ``segmentor.encode_decode`` run the network on ONNX Runtime (see the module doc), or
    a backbone's ``forward`` (a tuple of feature maps); returns a line to log. mmc2f NMF heads
    without an ``eval_seed`` get ``eval_seed=0`` (an exported graph needs fixed bases)."""
    if not is_segmentor(segmentor):
        engine = OnnxRuntimeForward(segmentor, threads)
        setattr(segmentor, _ATTR, engine)
        segmentor.forward = types.MethodType(_forward, segmentor)
        return f'ONNX Runtime ({engine.threads} threads) runs {type(segmentor).__name__}'
    notes = []
    for name, nmf in nmf_modules(segmentor):
        if nmf.rand_init and nmf.eval_seed is None:
            nmf.eval_seed = 0
            notes.append(f'{name}.eval_seed=0 (fixed NMF bases; the config sets none)')
    was_training = segmentor.training
    engine = OnnxRuntimeForward(SegmentorLogits(segmentor, resize=False), threads)
    segmentor.train(was_training)
    setattr(segmentor, _ATTR, engine)
    segmentor.encode_decode = types.MethodType(_encode_decode, segmentor)
    return (f'ONNX Runtime ({engine.threads} threads) runs {type(segmentor).__name__}\'s backbone '
            'and decode head; the logits are resized by the decode head' +
            (f'; {"; ".join(notes)}' if notes else ''))


def restore_pytorch(segmentor: nn.Module) -> None:
    """Undo :func:`run_on_onnxruntime`."""
    if hasattr(segmentor, _ATTR):
        delattr(segmentor, _ATTR)
        for name in ('encode_decode', 'forward'):
            if name in vars(segmentor):
                delattr(segmentor, name)

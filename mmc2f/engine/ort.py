"""mmc2f's CPU inference engine for segmentors (and bare MSCAN backbones): the network on ONNX
Runtime, inside mmc2f's tools.

:func:`run_on_onnxruntime` exports an mmseg encoder-decoder's network up to the decode head's
logits (backbone and decode head; dynamic batch, height and width) once, in memory, and replaces
the instance's ``encode_decode`` with an ONNX Runtime session followed by the logits' bilinear
resize to the input in mmc2f (:class:`SegmentorOnnxRuntime`). Whole and sliding-window inference
both go through ``encode_decode``; a resize target other than the input size takes the PyTorch
path. On CPU ONNX Runtime runs MSCAN's depthwise strip convolutions about twice as fast as
PyTorch's oneDNN kernels (README, Performance); the resize is faster outside it: ONNX Runtime
upsamples in its blocked layout and reorders 157 MB of ADE20K logits to NCHW afterwards (two
passes), and its resize for non-integer factors is a slow generic kernel. mmc2f writes the
logits once, channels_last (NHWC memory behind an NCHW-shaped tensor: the argmax over classes
that follows in mmseg reads contiguous classes), into buffers it reuses (:class:`OutputPool`).

The engine watches the parameters and buffers and their version counters: weights changed in
place (an optimizer step, ``load_state_dict``) or replaced make it export again before the next
call, so it never runs stale weights. ``train()`` mode or a non-CPU input falls back to the
PyTorch path.

Every session stops its worker threads' spinning when a run returns (:func:`session_options`):
left spinning, they hold the cores while PyTorch post-processes the logits (mmseg's argmax) and
while another of the engine's sessions (another input shape) runs.
"""
import itertools
import logging
import math
import operator
import threading
import types
import weakref
from typing import Dict, List, Optional, Tuple

import numpy as np
import torch
import torch.nn as nn
from mmengine.logging import print_log

from mmc2f.ops.resize import resize_bilinear

from .export import SegmentorLogits, export_onnx, nmf_modules

__all__ = ['onnxruntime_available', 'OnnxRuntimeForward', 'OutputPool', 'SegmentorOnnxRuntime',
           'run_on_onnxruntime', 'is_segmentor', 'restore_pytorch', 'session_options',
           'ONNXRUNTIME_FASTER']

#: Networks that ONNX Runtime runs faster than mmc2f's fused PyTorch kernels on CPU (measured,
#: README's Performance): mmseg segmentors and bare MSCAN backbones. Conv2Former's fused kernels
#: are faster than ONNX Runtime, so it stays on PyTorch.
ONNXRUNTIME_FASTER = ('MSCAN', )

_ATTR = '_mmc2f_onnxruntime'


def onnxruntime_available() -> bool:
    import importlib.util
    return importlib.util.find_spec('onnxruntime') is not None


def session_options(threads: int, stop_spinning: bool = True):
    """ONNX Runtime CPU session options: ``threads`` intra-op threads, one inter-op thread and,
    with ``stop_spinning``, ``session.force_spinning_stop`` (the workers spin while a run lasts,
    as by default, and stop when it returns)."""
    import onnxruntime as ort
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    if stop_spinning:
        options.add_session_config_entry('session.force_spinning_stop', '1')
    return options


def is_segmentor(model: nn.Module) -> bool:
    return all(callable(getattr(model, a, None)) for a in ('_forward', 'encode_decode')) and \
        isinstance(getattr(model, 'decode_head', None), nn.Module)


def _fused(buffers: dict) -> bool:
    # FusedInference's folded copies: refolded from the parameters at each export, or unused
    return all(name.startswith('fused_') for name in buffers)


class _WeightWatch:
    """Whether ``module``'s parameters, buffers and submodules are the objects they were and no
    tensor among them changed in place (version counters) since :meth:`reset`.

    :meth:`changed` compares flat lists built in C loops over the non-empty dictionaries found at
    :meth:`reset` (a replaced submodule changes its parent's ``_modules``; folded ``fused_*``
    buffers are left out). Deployed MSCAN-T: 860 entries, 537 tensors: 0.1 ms with warm caches,
    0.5 ms right after an ONNX Runtime run (0.8% of the 60-80 ms forward; the recursive walk
    before it: 0.3 ms warm, ~1.3% in a run)."""

    _version = operator.attrgetter('_version')

    def __init__(self, module: nn.Module):
        self.module = module
        self.reset()

    def _entries(self) -> list:
        return list(itertools.chain.from_iterable(map(dict.values, self.dicts)))

    def reset(self) -> None:
        self.dicts = [d for m in self.module.modules()
                      for d in (m._parameters, m._buffers, m._modules) if d and not _fused(d)]
        self.entries = self._entries()
        self.tensors = [t for t in self.entries if isinstance(t, torch.Tensor)]
        self.versions = list(map(self._version, self.tensors))

    def changed(self) -> bool:
        entries = self._entries()
        return not (len(entries) == len(self.entries) and all(map(operator.is_, entries,
                                                                  self.entries))
                    and list(map(self._version, self.tensors)) == self.versions)


class OnnxRuntimeForward:
    """A module's eval forward as ONNX Runtime sessions: ``(N, 3, H, W)`` float32 CPU tensor
    -> list of output tensors.

    The first ``static_shapes`` input shapes get a graph exported at that shape (ONNX Runtime
    plans static graphs better: measured 5-15% faster); further shapes share one graph with
    dynamic batch, height and width. Changed weights drop every graph."""

    def __init__(self, module: nn.Module, threads: Optional[int] = None,
                 static_shapes: int = 4, stop_spinning: bool = True):
        import onnxruntime as ort
        self.module = module
        self.threads = threads or torch.get_num_threads()
        self.static_shapes = static_shapes
        self.stop_spinning = stop_spinning
        self._ort = ort
        self.exports = 0
        self.sessions: Dict[object, object] = {}
        self.weights = _WeightWatch(module)

    def _export(self, shape: Tuple[int, ...], dynamic: bool):
        # The plain forward, except for modules whose folded graph ONNX Runtime runs faster
        # (MSCAN and its blocks: BN1, BN2, the layer scales and all but one shortcut product per
        # stage folded away; 3.4% faster on MSCAN-T, docs/deployment.md). ONNX Runtime folds a
        # BatchNorm into the conv before it, not into the one after it.
        from mmc2f.models.fusion import onnxruntime_forward
        with onnxruntime_forward(self.module):
            return self._export_graph(shape, dynamic)

    def _export_graph(self, shape: Tuple[int, ...], dynamic: bool):
        # export() restores the training flag it found, recursively: keep the module in eval
        self.module.eval()
        example = torch.zeros(*shape)
        with torch.no_grad():
            n_out = len(self._outputs(self.module(example)))
        names = [f'out{i}' for i in range(n_out)]
        axes = None
        if dynamic:
            axes = {'input': {0: 'batch', 2: 'height', 3: 'width'}}
            axes.update({n: {0: 'batch', 2: f'{n}_height', 3: f'{n}_width'} for n in names})
        onnx_bytes = export_onnx(self.module, example, None, names, axes)
        self.exports += 1
        return self._ort.InferenceSession(onnx_bytes,
                                          session_options(self.threads, self.stop_spinning),
                                          providers=['CPUExecutionProvider'])

    def session(self, shape: Tuple[int, ...]):
        """The session for inputs of ``shape`` (exported on first use)."""
        if self.weights.changed():  # weights changed or replaced since the export
            print_log('mmc2f ONNX Runtime engine: the weights changed; exporting again',
                      logger='current', level=logging.INFO)
            self.sessions.clear()
            self.weights.reset()
        key = shape if shape in self.sessions or len(self.sessions) < self.static_shapes \
            else 'dynamic'
        if key not in self.sessions:
            self.sessions[key] = self._export(shape, dynamic=key == 'dynamic')
            self.weights.reset()  # the export folded the fused modules again (new buffers)
        return self.sessions[key]

    @staticmethod
    def _outputs(out) -> List[torch.Tensor]:
        return list(out) if isinstance(out, (list, tuple)) else [out]

    def __call__(self, x: torch.Tensor) -> List[torch.Tensor]:
        x = x.detach().to(torch.float32).contiguous()
        outs = self.session(tuple(x.shape)).run(None, {'input': x.numpy()})
        return [torch.from_numpy(o) for o in outs]


class OutputPool:
    """Float32 CPU buffers for large outputs, each handed out again only once nothing references
    the tensor made from it (nor any view of it): a result a caller keeps is never overwritten.

    Fresh memory costs page faults and zeroing on first write (157 MB of ADE20K logits: ~19 ms,
    about as long as the resize that fills them); ONNX Runtime's own arena avoids that the same
    way. ``size`` buffers at most (2: the result being made and the previous one, which
    mmengine's test loop still holds); when all are in use a fresh tensor is returned. A buffer
    grows to the largest request and is kept until the pool is dropped."""

    def __init__(self, size: int = 2):
        self.arrays: List[Optional[np.ndarray]] = [None] * size
        self.busy = [False] * size
        self.lock = threading.Lock()

    def _release(self, i: int) -> None:
        self.busy[i] = False

    def _take(self, n: int) -> Optional[np.ndarray]:
        with self.lock:
            i = next((i for i, busy in enumerate(self.busy) if not busy), None)
            if i is None:
                return None
            self.busy[i] = True
        if self.arrays[i] is None or self.arrays[i].size < n:
            self.arrays[i] = np.empty(n, np.float32)
        view = self.arrays[i][:n]  # its own ndarray: collected with the last tensor on it
        weakref.finalize(view, self._release, i)
        return view

    def empty(self, *shape: int) -> torch.Tensor:
        """An uninitialised contiguous float32 tensor of ``shape``."""
        view = self._take(math.prod(shape))
        return torch.empty(shape) if view is None else torch.from_numpy(view).view(shape)


class SegmentorOnnxRuntime(OnnxRuntimeForward):
    """``encode_decode`` of an mmseg encoder-decoder: the decode head's logits from ONNX Runtime,
    resized to the input by :func:`~mmc2f.ops.resize_bilinear` into an :class:`OutputPool`
    buffer: ``(N, 3, H, W)`` -> ``(N, K, H, W)`` in channels_last memory (mmseg's resize, to
    float rounding: integer factors take the phase-wise path, others PyTorch's kernel)."""

    def __init__(self, segmentor: nn.Module, threads: Optional[int] = None,
                 static_shapes: int = 4, stop_spinning: bool = True, pool_size: int = 2):
        super().__init__(SegmentorLogits(segmentor, resize=False), threads, static_shapes,
                         stop_spinning)
        self.pool = OutputPool(pool_size)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        raw = self(x)[0]
        (n, k), size = raw.shape[:2], tuple(x.shape[2:])
        out = self.pool.empty(n, *size, k).permute(0, 3, 1, 2)
        return resize_bilinear(raw, size, self.module.align_corners, out=out)


class _ClassForward(nn.Module):
    """``module``'s class ``forward``, whatever its instance ``forward`` has become."""

    def __init__(self, module: nn.Module):
        super().__init__()
        self.module = module

    def forward(self, x: torch.Tensor):
        return type(self.module).forward(self.module, x)


def _use_pytorch(module: nn.Module, x: torch.Tensor) -> bool:
    return module.training or x.device.type != 'cpu' or torch.is_grad_enabled() and (
        x.requires_grad or any(p.requires_grad for p in module.parameters()))


def _forward(self, x: torch.Tensor):
    if _use_pytorch(self, x):
        return type(self).forward(self, x)
    return tuple(getattr(self, _ATTR)(x))


def _encode_decode(self, inputs: torch.Tensor, batch_img_metas: List[dict]) -> torch.Tensor:
    meta = batch_img_metas[0]  # the resize target, as mmseg's predict_by_feat picks it
    size = meta['img_shape'] if isinstance(meta['img_shape'], torch.Size) else \
        meta.get('pad_shape', meta['img_shape'])
    if _use_pytorch(self, inputs) or tuple(size[:2]) != tuple(inputs.shape[2:]):
        return type(self).encode_decode(self, inputs, batch_img_metas)
    return getattr(self, _ATTR).logits(inputs)


def run_on_onnxruntime(segmentor: nn.Module, threads: Optional[int] = None,
                       stop_spinning: bool = True) -> str:
    """Make ``segmentor.encode_decode`` run the network on ONNX Runtime (see the module doc), or
    a backbone's ``forward`` (a tuple of feature maps); returns a line to log. mmc2f NMF heads
    without an ``eval_seed`` get ``eval_seed=0`` (an exported graph needs fixed bases).
    ``stop_spinning=False`` keeps ONNX Runtime's default (workers spin on after a run)."""
    if not is_segmentor(segmentor):
        engine = OnnxRuntimeForward(_ClassForward(segmentor), threads, stop_spinning=stop_spinning)
        setattr(segmentor, _ATTR, engine)
        segmentor.forward = types.MethodType(_forward, segmentor)
        return f'ONNX Runtime ({engine.threads} threads) runs {type(segmentor).__name__}'
    notes = []
    for name, nmf in nmf_modules(segmentor):
        if nmf.rand_init and nmf.eval_seed is None:
            nmf.eval_seed = 0
            notes.append(f'{name}.eval_seed=0 (fixed NMF bases; the config sets none)')
    was_training = segmentor.training
    engine = SegmentorOnnxRuntime(segmentor, threads, stop_spinning=stop_spinning)
    segmentor.train(was_training)
    setattr(segmentor, _ATTR, engine)
    segmentor.encode_decode = types.MethodType(_encode_decode, segmentor)
    return (f'ONNX Runtime ({engine.threads} threads) runs {type(segmentor).__name__}\'s '
            'encode_decode (backbone, decode head; mmc2f resizes the logits)' +
            (f'; {"; ".join(notes)}' if notes else ''))


def restore_pytorch(segmentor: nn.Module) -> None:
    """Undo :func:`run_on_onnxruntime`."""
    if hasattr(segmentor, _ATTR):
        delattr(segmentor, _ATTR)
        for name in ('encode_decode', 'forward'):
            if name in vars(segmentor):
                delattr(segmentor, name)

"""ONNX export of mmseg segmentors, mmpretrain classifiers and bare backbones (TorchScript tracer).

Used by ``tools/deployment/pytorch2onnx.py``, by the ONNX Runtime engine (:mod:`.ort`) and by
``tools/analysis_tools/benchmark.py``. The graph's input is ``input``, a float32 ``(N, 3, H, W)``
normalised image; mmc2f's NMF heads are exported with their ``eval_seed`` bases as a constant.
"""
import contextlib
import io
import os
import os.path as osp
import warnings
from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F

from mmc2f.errors import UserError

__all__ = [
    'ExportError', 'SegmentorLogits', 'ClassifierScores', 'BackboneFeatures', 'nmf_modules', 'constant_nmf_bases',
    'adaptive_pools', 'export_onnx'
]


class ExportError(UserError):
    """The model cannot be exported as asked (printed, exit status 2)."""


class SegmentorLogits(nn.Module):
    """``(N, 3, H, W)`` -> logits ``(N, K, H, W)`` (``resize=True``) or the head's raw logits
    ``(N, K, ceil(H/8), ceil(W/8))`` (mmseg's ``_forward``)."""

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


class BackboneFeatures(nn.Module):
    """``(N, 3, H, W)`` -> the backbone's feature maps (a tuple, one per ``out_indices``)."""

    def __init__(self, backbone: nn.Module):
        super().__init__()
        self.backbone = backbone

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, ...]:
        out = self.backbone(x)
        return tuple(out) if isinstance(out, (list, tuple)) else (out, )


def nmf_modules(model: nn.Module) -> List[Tuple[str, nn.Module]]:
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

    The tracer cannot export a ``torch.Generator`` (and an unseeded ``rand`` would become an ONNX
    ``RandomUniform``, a new draw on every run): the seeded bases, drawn once here, become an
    initializer of the graph; only their ``repeat`` over the batch stays dynamic.
    """
    patched = []
    try:
        for name, nmf in nmf_modules(model):
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


def adaptive_pools(model: nn.Module) -> List[str]:
    """Adaptive poolings to an output larger than 1x1 (e.g. UperNet's PPM, scales 1/2/3/6).

    The tracer turns them into fixed-kernel pooling computed from the traced size, so their
    graphs are only right at that size: spatial axes cannot be dynamic.
    """
    found = []
    for name, m in model.named_modules():
        if isinstance(m, (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)):
            size = m.output_size
            size = (size, size) if isinstance(size, int) or size is None else tuple(size)
            if any(s not in (1, None) for s in size):
                found.append(f'{name} (output {m.output_size})')
    return found


def export_onnx(module: nn.Module, example: torch.Tensor,
                output_file: Optional[str] = None, output_names: Sequence[str] = ('output', ),
                dynamic_axes: Optional[Dict[str, Dict[int, str]]] = None,
                opset: int = 17) -> Union[str, bytes]:
    """Trace ``module`` (eval mode, constant NMF bases) on ``example`` and write ONNX to
    ``output_file``; without a file, return the serialized model."""
    target = io.BytesIO() if output_file is None else output_file
    if output_file is not None:
        os.makedirs(osp.dirname(osp.abspath(output_file)), exist_ok=True)
    with torch.no_grad(), constant_nmf_bases(module), warnings.catch_warnings():
        warnings.filterwarnings('ignore', category=torch.jit.TracerWarning)
        warnings.filterwarnings('ignore', category=DeprecationWarning)
        warnings.filterwarnings('ignore', message='.*dynamo=False.*')
        torch.onnx.export(
            module, (example, ), target, input_names=['input'], output_names=list(output_names),
            dynamic_axes=dynamic_axes, opset_version=opset, do_constant_folding=True,
            dynamo=False)
    return output_file if output_file is not None else target.getvalue()

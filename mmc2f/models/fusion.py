"""Inference-only fusion: weight folding algebra and the deploy/revert bookkeeping.

Folding (exact in eval mode):

* a per-input-channel affine ``s * x + t`` (LayerNorm/BatchNorm) into the unpadded conv that reads
  it: ``conv(W, s x + t) = conv(W s, x) + sum(W t)`` (:func:`fold_channel_affine`);
* a per-output-channel scale and shift (layer scale, a BatchNorm after the conv):
  ``g (W x + b) + t = (g W) x + (g b + t)`` (:func:`fold_output_scale`).

:class:`FusedInference` keeps the folded tensors as non-persistent buffers (never in the state
dict, moved by ``.to()``), switches eval-mode forwards to them and drops them again on
``train()``; :func:`plain_forward` runs the unfused forwards for a while (e.g. an ONNX export),
:func:`onnxruntime_forward` the forwards whose graphs ONNX Runtime runs fastest.
"""
import contextlib
from typing import Dict, List, Optional

import torch
import torch.nn as nn
from torch.nn.modules.batchnorm import _BatchNorm

__all__ = ['FusedInference', 'plain_forward', 'onnxruntime_forward', 'bn_affine',
           'fold_channel_affine', 'fold_output_scale']


@torch.no_grad()
def fold_channel_affine(weight: torch.Tensor, bias: Optional[torch.Tensor], scale: torch.Tensor,
                        shift: torch.Tensor):
    """Fold ``y = scale * x + shift`` (per input channel) into the conv that consumes ``y``.

    Exact for convolutions without padding (1x1, or k x k stride k). Returns ``(W', b')``.
    """
    w = weight * scale.view(1, -1, 1, 1)
    b = (weight * shift.view(1, -1, 1, 1)).sum(dim=(1, 2, 3))
    if bias is not None:
        b = b + bias
    return w.contiguous(), b


@torch.no_grad()
def fold_output_scale(weight: torch.Tensor, bias: Optional[torch.Tensor], gamma: torch.Tensor,
                      shift: Optional[torch.Tensor] = None):
    """Fold ``gamma * conv(x) (+ shift)`` per output channel into the conv. Returns ``(W', b')``
    (``b'`` is ``None`` only when there is neither a bias nor a shift)."""
    w = weight * gamma.view(-1, 1, 1, 1)
    b = None if bias is None else bias * gamma
    if shift is not None:
        b = shift.clone() if b is None else b + shift
    return w.contiguous(), b


@torch.no_grad()
def bn_affine(bn: nn.Module):
    """An eval-mode BatchNorm as ``scale * x + shift``: returns ``(scale, shift)``."""
    if not isinstance(bn, _BatchNorm):
        raise TypeError(f'expected a BatchNorm layer to fold, got {type(bn).__name__}')
    if bn.running_mean is None or bn.running_var is None:
        raise ValueError(f'{type(bn).__name__} has no running statistics '
                         '(track_running_stats=False): it cannot be folded for inference')
    scale = torch.rsqrt(bn.running_var + bn.eps)
    if bn.weight is not None:
        scale = scale * bn.weight
    shift = -bn.running_mean * scale
    if bn.bias is not None:
        shift = shift + bn.bias
    return scale, shift


class FusedInference:
    """Mixin for modules with an inference-only fused forward.

    A subclass implements :meth:`fused_weights` (name -> tensor, or a plain value such as an
    activation name) and, in ``forward``, runs its fused path when :attr:`fused` is true. Tensors
    become non-persistent buffers ``fused_<name>``, other values attributes of that name.
    """

    #: whether fused weights are in place (set by :meth:`switch_to_deploy`).
    deployed = False
    #: whether ONNX Runtime runs the traced fused forward faster than the plain one (measured per
    #: module type; mmc2f's ONNX Runtime engine exports it then: :func:`onnxruntime_forward`).
    onnxruntime_fused = False

    def fused_weights(self) -> Dict[str, object]:
        """The fused tensors of this module alone (its submodules fuse themselves)."""
        return {}

    @property
    def fused(self) -> bool:
        """Run the fused forward: deployed and in eval mode."""
        return self.deployed and not self.training

    @torch.no_grad()
    def switch_to_deploy(self):
        """Fold this module and every :class:`FusedInference` submodule for inference.

        Parameters, state dict and the train-mode graph are unchanged; eval-mode outputs equal the
        unfused ones up to float rounding. Reversible: ``train()`` drops the fused weights (they
        would go stale as the parameters change), so after it ``eval()`` runs the original
        modules until this is called again. Call it after loading weights. Returns ``self``.
        """
        for module in self.modules():
            if isinstance(module, FusedInference):
                module.set_fused(module.fused_weights())
        return self

    def set_fused(self, values: Dict[str, object]) -> None:
        """Install ``values`` (as :meth:`fused_weights` returns them); the module is deployed."""
        self._drop_fused()
        for name, value in values.items():
            if isinstance(value, torch.Tensor):
                self.register_buffer(f'fused_{name}', value.detach().clone(), persistent=False)
            else:
                setattr(self, f'fused_{name}', value)
        self._fused_names = list(values)
        self.deployed = True

    def _drop_fused(self) -> None:
        for name in self.__dict__.get('_fused_names', ()):
            delattr(self, f'fused_{name}')
        self._fused_names = []
        self.deployed = False

    def train(self, mode: bool = True):
        super().train(mode)
        if mode and self.deployed:
            self._drop_fused()
        return self


@contextlib.contextmanager
def plain_forward(module: nn.Module):
    """Inside the block, every deployed :class:`FusedInference` in ``module`` runs its unfused
    forward; its fused weights stay in place and are used again afterwards."""
    with _unfused([m for m in module.modules() if isinstance(m, FusedInference) and m.deployed]):
        yield


@contextlib.contextmanager
def onnxruntime_forward(module: nn.Module):
    """Inside the block, ``module`` runs the forward to export for ONNX Runtime: deployed modules
    with :attr:`~FusedInference.onnxruntime_fused` their fused forward, folded again from the
    current weights (so an export never carries stale folds; the outermost such modules, whose
    ``switch_to_deploy`` may fold across their submodules), other deployed modules their plain
    forward."""
    deployed = [m for m in module.modules() if isinstance(m, FusedInference) and m.deployed]
    refolded: List[nn.Module] = []
    for m in deployed:  # parents before children
        if m.onnxruntime_fused and not any(m in r.modules() for r in refolded):
            m.switch_to_deploy()
            refolded.append(m)
    with _unfused([m for m in deployed if not m.onnxruntime_fused]):
        yield


@contextlib.contextmanager
def _unfused(modules: List[FusedInference]):
    for m in modules:
        m.deployed = False
    try:
        yield
    finally:
        for m in modules:
            m.deployed = True

"""Cross-entropy of logits upsampled to the labels, without keeping the upsampled logits.

A segmentation head's loss resizes its stride-8 logits ``z`` (``(B, K, h, w)``) to the labels
(``(B, H, W)``, ``H = s h``) and takes the per-pixel cross-entropy::

    Z = up(z),   l(p) = logsumexp_k Z[k, p] - Z[y(p), p]   (0 where y(p) is ignored)

Autograd keeps ``Z`` and its log-softmax (two ``B K H W`` tensors: 315 MB each at 150 x 512 x 512,
batch 2) and back-propagates through PyTorch's upsampling kernel. :func:`resized_cross_entropy`
saves ``z``, the labels and the per-pixel ``logsumexp`` only, and in backward recomputes ``Z``
(:func:`~mmc2f.ops.resize.resize_bilinear`'s phase-wise path) and applies the resize's adjoint to

    dl/dZ[k, p] = g(p) (softmax(Z)[k, p] - [k = y(p)])

It also returns the per-pixel argmax of ``Z`` (for the head's accuracy). CPU, eager only (the
callers check :func:`applies`); elsewhere they take the plain ops.
"""
from typing import Tuple

import torch
from torch.autograd.function import once_differentiable

from .mode import eager
from .resize import _adjoint_dim, _upsample

__all__ = ['resized_cross_entropy', 'applies']


def applies(logits: torch.Tensor, size) -> bool:
    """Whether :func:`resized_cross_entropy` runs for these logits and label size."""
    h, w = logits.shape[-2:]
    return (logits.dim() == 4 and logits.device.type == 'cpu' and logits.dtype == torch.float32
            and not torch.is_autocast_enabled('cpu') and eager() and h > 0 and w > 0
            and size[0] % h == 0 and size[1] % w == 0)


def resized_cross_entropy(logits: torch.Tensor, label: torch.Tensor, ignore_index: int = 255
                          ) -> Tuple[torch.Tensor, torch.Tensor]:
    """``(B, K, h, w)`` logits, ``(B, H, W)`` integer labels (``H, W`` integer multiples of
    ``h, w``) -> (the sum over pixels of the cross-entropy of the bilinearly upsampled logits
    (``align_corners=False``), ignored pixels 0; the ``(B, H, W)`` argmax of the upsampled
    logits). Equal to ``F.cross_entropy(F.interpolate(...), label, reduction='sum')`` up to
    float rounding."""
    return _ResizedCrossEntropy.apply(logits, label, ignore_index)


class _ResizedCrossEntropy(torch.autograd.Function):

    @staticmethod
    def forward(ctx, logits, label, ignore_index):
        out_h, out_w = label.shape[-2:]
        up = _upsample(logits, out_h, out_w)
        valid = label != ignore_index
        target = label.masked_fill(~valid, 0).unsqueeze(1)
        top, pred = up.max(1)
        picked = up.gather(1, target).squeeze(1)
        lse = up.sub_(top.unsqueeze(1)).exp_().sum(1).log_().add_(top)
        del up
        loss = (lse - picked).masked_fill_(~valid, 0).sum()
        ctx.save_for_backward(logits, target, valid, lse)
        ctx.mark_non_differentiable(pred)
        return loss, pred

    @staticmethod
    @once_differentiable
    def backward(ctx, grad, _):
        logits, target, valid, lse = ctx.saved_tensors
        h, w = logits.shape[-2:]
        weight = valid.to(logits.dtype).mul_(grad).unsqueeze(1)  # (B, 1, H, W)
        g = _upsample(logits, *lse.shape[-2:])
        g.sub_(lse.unsqueeze(1)).exp_().mul_(weight)  # g * softmax
        g.scatter_add_(1, target, -weight)  # - g * onehot
        g = _adjoint_dim(g, g.shape[2] // h, dim=2)
        return _adjoint_dim(g, g.shape[3] // w, dim=3), None, None

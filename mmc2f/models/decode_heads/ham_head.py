# SegNeXt's light Hamburger head, after the authors' code: https://github.com/Visual-Attention-Network/SegNeXt
# (Guo et al., NeurIPS 2022) and mmsegmentation 1.x.
"""SegNeXt's light Hamburger decode head (the only mmc2f module built on mmseg's BaseDecodeHead).

    inputs[in_index] (strides 8/16/32) --resize to the first--> concat      (B, sum C_i, H, W)
    -> squeeze: Conv1x1 + GN + ReLU                                          (B, ham_channels, H, W)
    -> Hamburger: relu(x + ham_out(NMF2D(relu(ham_in(x)))))                 (B, ham_channels, H, W)
    -> align: Conv1x1 + GN + ReLU -> dropout -> Conv1x1 classifier          (B, num_classes, H, W)

Keywords and state-dict keys are those of mmseg 1.2.2's ``LightHamHead``; ``ham_kwargs`` also takes
the authors' upper-case names and mmc2f's extra NMF options (see :class:`NMF2D`):
``eval_seed`` (reproducible evaluation) and ``one_step_grad``.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F
from mmcv.cnn import ConvModule
from mmseg.models.decode_heads.decode_head import BaseDecodeHead
from mmseg.models.losses import CrossEntropyLoss, accuracy
from mmseg.models.utils import resize

from mmc2f.ops import resize_bilinear, resized_cross_entropy
from mmc2f.ops.seg_loss import applies as seg_logits_ok
from mmc2f.registry import MODELS
from .nmf import NMF_KWARGS, NMF2D, normalize_ham_kwargs

__all__ = ['Hamburger', 'LightHamHead']


class Hamburger(nn.Module):
    """One "ham" (NMF) between two "breads" (1x1 convolutions), with a residual::

        y = ReLU(x + ham_out(NMF2D(ReLU(ham_in(x)))))

    ``ham_in`` is a 1x1 convolution with bias and no norm; ``ham_out`` a 1x1 convolution followed by
    ``norm_cfg`` (no bias when a norm is given). Shapes: ``(B, C, H, W) -> (B, C, H, W)``.

    Args:
        ham_channels (int): ``C``. Default 512.
        ham_kwargs (dict): options of :class:`NMF2D` (lower-case or the authors' upper-case names).
        norm_cfg (dict, optional): norm of ``ham_out``.
        **kwargs: ignored (mmseg passes the head's keywords through).
    """

    def __init__(self, ham_channels: int = 512, ham_kwargs: dict = dict(), norm_cfg=None,
                 **kwargs):
        super().__init__()
        self.ham_in = ConvModule(ham_channels, ham_channels, 1, norm_cfg=None, act_cfg=None)
        self.ham = NMF2D(channels=ham_channels, **normalize_ham_kwargs(ham_kwargs))
        self.ham_out = ConvModule(ham_channels, ham_channels, 1, norm_cfg=norm_cfg, act_cfg=None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.ham_in(x), inplace=True)
        y = self.ham_out(self.ham(y))
        return F.relu(x + y, inplace=True)


@MODELS.register_module()
class LightHamHead(BaseDecodeHead):
    """SegNeXt decode head (mmc2f's ``LightHamHead``; mmseg's has the same name in its registry).

    Args:
        ham_channels (int): channels of the Hamburger. Default 512.
        ham_kwargs (dict): :class:`NMF2D` options: ``md_s``/``MD_S``, ``md_r``/``MD_R``,
            ``train_steps``/``TRAIN_STEPS``, ``eval_steps``/``EVAL_STEPS``, ``inv_t``/``INV_T``
            (ignored, temperature 1), ``rand_init``/``RAND_INIT``, and mmc2f's
            ``eval_seed`` (int: eval-time bases from a private generator, so predictions are
            reproducible; default ``None`` = mmseg's behaviour), ``one_step_grad`` (default False),
            ``eps``.
        **kwargs: :class:`BaseDecodeHead` keywords (``in_channels``, ``in_index``, ``channels``,
            ``num_classes``, ``norm_cfg``, ...). ``input_transform`` is always
            ``'multiple_select'``.
    """

    #: ``ham_kwargs`` keys that only mmc2f's NMF2D takes (mmseg's ignores them).
    mmc2f_only_options = {'ham_kwargs': NMF_KWARGS}

    def __init__(self, ham_channels: int = 512, ham_kwargs: dict = dict(), **kwargs):
        transform = kwargs.pop('input_transform', 'multiple_select')
        if transform != 'multiple_select':
            raise ValueError('LightHamHead always uses input_transform="multiple_select", got '
                             f'"{transform}"')
        super().__init__(input_transform='multiple_select', **kwargs)
        self.ham_channels = ham_channels
        self.squeeze = ConvModule(sum(self.in_channels), ham_channels, 1, conv_cfg=self.conv_cfg,
                                  norm_cfg=self.norm_cfg, act_cfg=self.act_cfg)
        self.hamburger = Hamburger(ham_channels, ham_kwargs, norm_cfg=self.norm_cfg)
        self.align = ConvModule(ham_channels, self.channels, 1, conv_cfg=self.conv_cfg,
                                norm_cfg=self.norm_cfg, act_cfg=self.act_cfg)

    def forward(self, inputs):
        """``inputs``: the backbone's feature list -> logits ``(B, num_classes, H_0, W_0)``."""
        feats = self._transform_inputs(inputs)
        size = feats[0].shape[2:]
        feats = [resize(f, size=size, mode='bilinear', align_corners=self.align_corners)
                 for f in feats]
        x = self.squeeze(torch.cat(feats, dim=1))
        x = self.hamburger(x)
        return self.cls_seg(self.align(x))

    def loss_by_feat(self, seg_logits: torch.Tensor, batch_data_samples) -> dict:
        """mmseg's loss (every ``loss_decode`` on the logits resized to the labels, with the
        sampler's weights, and ``acc_seg``). The resize is :func:`resize_bilinear` (on CPU its
        backward is the resize's adjoint); a plain cross-entropy on CPU takes
        :func:`resized_cross_entropy`, which keeps no full-size logits. Equal losses, accuracy and
        gradients (tests)."""
        label = self._stack_batch_gt(batch_data_samples)
        if self._plain_cross_entropy() and seg_logits_ok(seg_logits, label.shape[2:]):
            return self._resized_cross_entropy(seg_logits, label.squeeze(1))
        seg_logits = resize_bilinear(seg_logits, label.shape[2:], align_corners=self.align_corners)
        weight = None if self.sampler is None else self.sampler.sample(seg_logits, label)
        label = label.squeeze(1)
        losses: dict = {}
        decoders = self.loss_decode if isinstance(self.loss_decode, nn.ModuleList) else \
            [self.loss_decode]
        for loss_decode in decoders:
            value = loss_decode(seg_logits, label, weight=weight, ignore_index=self.ignore_index)
            name = loss_decode.loss_name
            losses[name] = losses[name] + value if name in losses else value
        losses['acc_seg'] = accuracy(seg_logits, label, ignore_index=self.ignore_index)
        return losses

    def _plain_cross_entropy(self) -> bool:
        ce = self.loss_decode
        return (isinstance(ce, CrossEntropyLoss) and self.sampler is None
                and not self.align_corners and not ce.use_sigmoid and not ce.use_mask
                and ce.class_weight is None and ce.reduction == 'mean')

    def _resized_cross_entropy(self, seg_logits: torch.Tensor, label: torch.Tensor) -> dict:
        """mmseg's ``CrossEntropyLoss`` (mean over all pixels, or over the non-ignored ones with
        ``avg_non_ignore``) and ``accuracy`` from :func:`resized_cross_entropy`."""
        ce, eps = self.loss_decode, torch.finfo(torch.float32).eps
        total, pred = resized_cross_entropy(seg_logits, label, self.ignore_index)
        valid = label != self.ignore_index
        count = int(valid.sum())
        avg_factor = count if ce.avg_non_ignore else label.numel()
        correct = (pred == label)[valid].float().sum(0, keepdim=True) + eps
        return {ce.loss_name: ce.loss_weight * (total / (avg_factor + eps)),
                'acc_seg': correct.mul_(100.0 / (count + eps))}

    def predict_by_feat(self, seg_logits: torch.Tensor, batch_img_metas) -> torch.Tensor:
        """The logits resized to the (padded) input size, as mmseg's ``predict_by_feat``; integer
        factors (stride 8 to the input) take :func:`resize_bilinear`'s faster path (same values
        up to float rounding)."""
        meta = batch_img_metas[0]
        if isinstance(meta['img_shape'], torch.Size):  # slide inference
            size = meta['img_shape']
        elif 'pad_shape' in meta:
            size = meta['pad_shape'][:2]
        else:
            size = meta['img_shape']
        return resize_bilinear(seg_logits, size, align_corners=self.align_corners)

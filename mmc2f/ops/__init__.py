"""Kernels that know no model: each has a fast CPU path and a portable ATen path.

* :mod:`.mode`: whether the fast paths may run (not under tracing, scripting, ONNX export or
  ``torch.compile``);
* :mod:`.depthwise`: large-kernel depthwise convolution with a batched-GEMM weight gradient, and
  1x1 convolutions on NHWC tensors;
* :mod:`.fused`: convolutions with their activation / residual add / product in one oneDNN
  kernel;
* :mod:`.native`: C++ kernels, compiled at first use, for depthwise convolutions with their
  product / GELU and residual, and for LayerNorm over channels;
* :mod:`.resize`: bilinear upsampling of logits by an integer factor;
* :mod:`.seg_loss`: cross-entropy of upsampled logits that keeps only the small ones.
"""
from .depthwise import depthwise_conv, depthwise_weight_grad, pointwise_conv
from .fused import (ACTIVATIONS, activation_name, channel_norm, dwconv_gelu, fused_conv,
                    fused_conv_add, fused_conv_binary, fused_conv_mul, onednn_available)
from .mode import eager
from .recompute import (dwconv_mlp_residual, gated_dwconv_residual, layer_norm_linear,
                        recompute_enabled)
from .resize import resize_bilinear
from .seg_loss import resized_cross_entropy

__all__ = [
    'eager', 'depthwise_conv', 'depthwise_weight_grad', 'pointwise_conv', 'ACTIVATIONS',
    'activation_name', 'channel_norm', 'fused_conv', 'fused_conv_add', 'fused_conv_binary',
    'fused_conv_mul', 'dwconv_gelu', 'onednn_available', 'resize_bilinear'
]
__all__ += ['recompute_enabled', 'layer_norm_linear', 'gated_dwconv_residual',
            'dwconv_mlp_residual', 'resized_cross_entropy']

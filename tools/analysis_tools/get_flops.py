#!/usr/bin/env python
"""FLOPs and parameters of mmc2f models, in two stated conventions.

Examples::

    python tools/analysis_tools/get_flops.py conv2former-t                 # 224x224
    python tools/analysis_tools/get_flops.py segnext-t --shape 512 512
    python tools/analysis_tools/get_flops.py segnext-t --shape 1024 2048
    python tools/analysis_tools/get_flops.py configs/segnext/<config>.py --shape 512 512
    python tools/analysis_tools/get_flops.py --paper                       # the table vs the paper

Conventions (always printed with the numbers):

* ``MACs``: MMEngine's ``FlopAnalyzer`` (traced with ``torch.jit``): one multiply-add counts as one
  FLOP for convolutions, linear layers and matrix products (``bmm``/``matmul``: the NMF's products),
  norms count as MMEngine counts them; elementwise products are ignored.
Segmentors are counted as mmseg's ``encode_decode``: backbone, decode head and the bilinear resize
of the logits to the input size (4 FLOPs per output element and class, MMEngine's rule for
``upsample_bilinear2d``).

* ``MACs + elementwise``: the same plus one FLOP per output element of every elementwise product or
  quotient (``aten::mul``/``div``): Conv2Former's ``A * V`` and layer scale, MSCAN's ``attn * u`` and
  layer scale, the NMF's multiplicative updates. The SegNeXt authors counted with a tool that includes
  elementwise multiplies.
"""
import argparse
import os.path as osp
import sys
from functools import reduce
from operator import mul

import torch

sys.path.insert(0, osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__)))))

# The papers' figures (Conv2Former and SegNeXt): GFLOPs. SegNeXt's 512x512 figures are for
# ADE20K (150 classes), its 2048x1024 ones for Cityscapes (19 classes): --paper counts them so.
PAPER_CLASSES = {(512, 512): 150, (1024, 2048): 19}
PAPER = {
    ('conv2former-n', (224, 224)): 2.2, ('conv2former-t', (224, 224)): 4.4,
    ('conv2former-s', (224, 224)): 8.7, ('conv2former-b', (224, 224)): 15.9,
    ('conv2former-l', (224, 224)): 36.0,
    ('segnext-t', (512, 512)): 6.6, ('segnext-s', (512, 512)): 15.9,
    ('segnext-b', (512, 512)): 34.9, ('segnext-l', (512, 512)): 70.0,
    ('segnext-t', (1024, 2048)): 50.5, ('segnext-s', (1024, 2048)): 124.6,
    ('segnext-b', (1024, 2048)): 275.7, ('segnext-l', (1024, 2048)): 577.5,
}


def _numel(value):
    shape = value.type().sizes() if hasattr(value.type(), 'sizes') else None
    return reduce(mul, shape, 1) if shape else 0


def _elementwise(inputs, outputs):
    return _numel(outputs[0])


def count(model, shape, batch=1):
    """Returns ``(params, macs, macs_plus_elementwise)`` for one input of ``shape`` (H, W)."""
    from mmengine.analysis import FlopAnalyzer
    model.eval()
    x = torch.randn(batch, 3, *shape)
    with torch.no_grad():
        plain = FlopAnalyzer(model, (x, ))
        plain.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
        macs = plain.total()
        full = FlopAnalyzer(model, (x, ))
        full.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
        full.set_op_handle(**{op: _elementwise for op in
                              ('aten::mul', 'aten::mul_', 'aten::div', 'aten::div_')})
        with_elem = full.total()
    params = sum(p.numel() for p in model.parameters())
    return params, macs, with_elem


def describe(name, model, shape):
    params, macs, with_elem = count(model, shape)
    paper = PAPER.get((name, tuple(shape)))
    line = (f'{name:<22}{shape[0]:>5}x{shape[1]:<5}{params / 1e6:>10.2f}{macs / 1e9:>12.2f}'
            f'{with_elem / 1e9:>16.2f}')
    line += f'{paper:>10.1f}' if paper is not None else f'{"-":>10}'
    return line


HEADER = (f'{"model":<22}{"input":>11}{"params(M)":>10}{"GMACs":>12}{"GMACs+elemwise":>16}'
          f'{"paper":>10}')


def main(argv=None):
    from benchmark import build  # same presets and config handling as the benchmark tool
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('models', nargs='*', help='presets (conv2former-t, segnext-t, ...) or configs')
    p.add_argument('--shape', type=int, nargs='+', default=None, help='H [W] (default 224, '
                   'segmentation presets 512)')
    p.add_argument('--paper', action='store_true', help="every preset at the paper's input sizes")
    p.add_argument('--num-classes', type=int, default=None,
                   help='classes of segmentation presets (default 150, ADE20K)')
    args = p.parse_args(argv)
    jobs = []
    if args.paper:
        jobs = [(name, shape, PAPER_CLASSES.get(shape)) for (name, shape) in PAPER]
    for name in args.models:
        shape = args.shape or ([512, 512] if 'segnext' in name or name.endswith('.py') else [224])
        shape = shape * 2 if len(shape) == 1 else shape
        jobs.append((name, tuple(shape), args.num_classes))
    if not jobs:
        p.error('name a model or pass --paper')
    print('GMACs: MMEngine FlopAnalyzer, one multiply-add = one FLOP, elementwise products ignored; '
          'GMACs+elemwise: plus one per output element of aten::mul/div. Batch 1.')
    print(HEADER)
    for name, shape, num_classes in jobs:
        print(describe(name, build(name, num_classes), shape), flush=True)


if __name__ == '__main__':
    sys.path.insert(0, osp.dirname(osp.abspath(__file__)))
    main()

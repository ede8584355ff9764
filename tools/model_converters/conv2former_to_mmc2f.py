#!/usr/bin/env python
"""Convert the authors' Conv2Former ImageNet checkpoint to an mmpretrain ImageClassifier checkpoint.

    python tools/model_converters/conv2former_to_mmc2f.py SRC DST [--ema]

* reads SRC with ``weights_only=True`` (mmc2f's allow-list; the ``args`` Namespace is allowed);
* ``--ema`` converts ``state_dict_ema`` instead of ``state_dict``;
* accepts the released ``attn.att.*`` and the earlier ``attn.a.*`` names;
* detects the size (nano/tiny/small/base/large or custom) and the kernel size from the weights and
  refuses if any key is unknown or missing for that size (:mod:`mmc2f.apis.convert`);
* writes ``{'state_dict': {name: tensor}, 'meta': {...}}`` (tensors, strings and ints only)
  atomically to DST (mode 0666 & ~umask); refuses a DST that is SRC or a directory, and reports
  a full disk; user errors print one ``error:`` line and exit with status 2.

Use DST as ``load_from`` for ``ImageClassifier(backbone=dict(type='mmc2f.Conv2Former', arch=...,
out_indices=(3,)), neck=dict(type='mmc2f.Conv2FormerNeck', in_channels=C3),
head=dict(type='LinearClsHead', in_channels=1280, ...))``, or as a backbone initialisation for
detection / segmentation: ``init_cfg=dict(type='Pretrained', checkpoint=DST, prefix='backbone.')``.
"""
import argparse
import os.path as osp
import sys

try:
    import mmc2f  # noqa: F401
except ImportError:  # running from a checkout without installing
    sys.path.insert(0, osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__)))))

from mmc2f import __version__  # noqa: E402
from mmc2f.apis.convert import convert_conv2former, describe_conv2former  # noqa: E402
from mmc2f.checkpoint import (check_output_path, load_checkpoint,  # noqa: E402
                              save_checkpoint_atomic)
from mmc2f.errors import UserError  # noqa: E402


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description="Convert the authors' Conv2Former checkpoint to an mmpretrain "
        'ImageClassifier checkpoint (backbone/neck/head) for mmc2f.')
    parser.add_argument('src', help="the authors' checkpoint (.pth / .pth.tar)")
    parser.add_argument('dst', help='where to write the converted checkpoint')
    parser.add_argument('--ema', action='store_true',
                        help='convert the EMA weights (state_dict_ema) instead of state_dict')
    return parser.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    check_output_path(args.src, args.dst)  # not the input, not a directory
    checkpoint = load_checkpoint(args.src, map_location='cpu')  # weights_only; paths or URLs
    info = describe_conv2former(checkpoint, use_ema=args.ema)
    state_dict = convert_conv2former(checkpoint, use_ema=args.ema)
    meta = info.meta()
    meta.update(converted_from=osp.basename(args.src), converter='conv2former_to_mmc2f',
                mmc2f_version=__version__)
    save_checkpoint_atomic({'state_dict': state_dict, 'meta': meta}, args.dst)
    print(f'detected Conv2Former-{info.arch or "custom"}: dims={info.dims}, '
          f'depths={info.depths}, kernel_size={info.kernel_size}, '
          f'num_classes={info.num_classes}, naming=attn.{info.naming}, weights={info.weights}')
    print(f'wrote {len(state_dict)} tensors to {args.dst}')
    return meta


if __name__ == '__main__':
    try:
        main()
    except (UserError, FileNotFoundError) as err:  # main() raises for in-process callers
        print(f'{osp.basename(sys.argv[0])}: error: {err}', file=sys.stderr)
        sys.exit(2)

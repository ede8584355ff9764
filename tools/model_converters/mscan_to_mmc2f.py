#!/usr/bin/env python
"""Convert the SegNeXt authors' MSCAN ImageNet checkpoint to mmc2f's (= mmseg's) backbone layout.

    python tools/model_converters/mscan_to_mmc2f.py SRC DST [--ema]

* reads SRC with ``weights_only=True`` (mmc2f's allow-list); the weights may be bare or under
  ``state_dict`` / ``model`` (``--ema``: ``state_dict_ema``), with or without ``module.``;
* renames ``block{s}.{j}.mlp.dwconv.dwconv.*`` -> ``block{s}.{j}.mlp.dwconv.*``;
* drops the ImageNet classifier ``head.*`` (mmc2f has no MSCAN classifier);
* detects the size (tiny/small/base/large or custom) from the weights and checks that the result
  has exactly the keys and shapes of that ``mmc2f.MSCAN``;
* writes ``{'state_dict': {name: tensor}}`` (tensors only) atomically to DST (mode
  0666 & ~umask); refuses a DST that is SRC or a directory, and reports a full disk; user errors
  print one ``error:`` line and exit with status 2.

Use the result with ``backbone=dict(type='mmc2f.MSCAN', arch=..., init_cfg=dict(type='Pretrained',
checkpoint=DST))``. mmseg's own ``mscan_*.pth`` files are already in this layout and need no
conversion.
"""
import argparse
import os.path as osp
import sys

try:
    import mmc2f  # noqa: F401
except ImportError:  # running from a checkout without installing
    sys.path.insert(0, osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__)))))

from mmc2f.apis.convert import convert_mscan_checkpoint  # noqa: E402
from mmc2f.checkpoint import (check_output_path, load_checkpoint,  # noqa: E402
                              save_checkpoint_atomic)
from mmc2f.errors import UserError  # noqa: E402


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description="Convert the SegNeXt authors' MSCAN checkpoint to mmc2f's layout.")
    parser.add_argument('src', help="the authors' checkpoint (.pth / .pth.tar)")
    parser.add_argument('dst', help='where to write the converted checkpoint')
    parser.add_argument('--ema', action='store_true',
                        help='convert the EMA weights (state_dict_ema) instead of state_dict')
    return parser.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    check_output_path(args.src, args.dst)  # not the input, not a directory
    checkpoint = load_checkpoint(args.src, map_location='cpu')  # weights_only; paths or URLs
    state_dict, info = convert_mscan_checkpoint(checkpoint, prefer_ema=args.ema)
    save_checkpoint_atomic({'state_dict': state_dict}, args.dst)
    arch = info['arch'] or 'custom'
    print(f'MSCAN-{arch} (embed_dims={info["embed_dims"]}, depths={info["depths"]}, '
          f'mlp_ratios={info["mlp_ratios"]}): wrote {info["num_keys"]} tensors to {args.dst}; '
          f'dropped {len(info["dropped"])} classifier key(s)')
    return info


if __name__ == '__main__':
    try:
        main()
    except (UserError, FileNotFoundError) as err:  # main() raises for in-process callers
        print(f'{osp.basename(sys.argv[0])}: error: {err}', file=sys.stderr)
        sys.exit(2)

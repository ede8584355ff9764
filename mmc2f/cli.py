"""``mmc2f``: the console command of an installed mmc2f (``pip install mmc2f`` or a wheel).

The configs, tools and demo ship inside the package under ``mmc2f/.mim/`` (copied into wheels,
linked into the clone by editable installs; see ``setup.py``). Every sub-command runs the shipped
script with :mod:`runpy`, after turning a config *name* into the shipped file's path::

    mmc2f list-configs [PATTERN ...] [--path]      # shipped configs (names or absolute paths)
    mmc2f train  segnext_b_ade20k [--work-dir D] [train.py options]
    mmc2f test   segnext/segnext_mscan-b_1xb16-adamw-160k_ade20k-512x512 CKPT [test.py options]
    mmc2f new-config segnext_b_ade20k my_segnext.py # a config of yours that inherits a shipped one
    mmc2f benchmark | flops | convert-conv2former | convert-mscan | export-onnx | demo |
          analyze-logs | make-demo-data | browse-dataset  ARGS...

A config argument may be a file path, a path relative to the shipped ``configs/`` folder (with or
without ``.py``), or a bare config name (``segnext_b_ade20k``) when exactly one shipped config has
it. Everything after the sub-command goes to the script unchanged (``mmc2f train -h``).

This module imports nothing heavy at import time (no torch, no mm* packages).
"""
import argparse
import inspect
import os
import os.path as osp
import runpy
import sys
from typing import Dict, List, Optional, Sequence, Tuple

from .shipped import configs_root, get_config_path, get_tool_path, list_configs, mim_root

__all__ = ['TOOLS', 'write_derived_config', 'run_tool', 'main']

#: sub-command -> (script under the .mim root, which positional arguments are configs:
#: a tuple of leading-positional indices, ``'any'`` for every config-like positional, or None).
TOOLS: Dict[str, Tuple[str, object, str]] = {
    'train': ('tools/train.py', (0, ), 'train a config (tools/train.py)'),
    'test': ('tools/test.py', (0, ), 'evaluate a checkpoint (tools/test.py)'),
    'benchmark': ('tools/analysis_tools/benchmark.py', 'any',
                  'throughput / memory vs a baseline (tools/analysis_tools/benchmark.py)'),
    'flops': ('tools/analysis_tools/get_flops.py', 'any',
              'FLOPs and parameters (tools/analysis_tools/get_flops.py)'),
    'analyze-logs': ('tools/analysis_tools/analyze_logs.py', None,
                     'plot loss / lr / metrics of runs (tools/analysis_tools/analyze_logs.py)'),
    'convert-conv2former': ('tools/model_converters/conv2former_to_mmc2f.py', None,
                            "authors' Conv2Former checkpoint -> mmc2f layout"),
    'convert-mscan': ('tools/model_converters/mscan_to_mmc2f.py', None,
                      "authors' MSCAN checkpoint -> mmc2f / mmseg layout"),
    'export-onnx': ('tools/deployment/pytorch2onnx.py', (0, ),
                    'ONNX export (tools/deployment/pytorch2onnx.py)'),
    'demo': ('demo/image_demo.py', (1, ), 'predict one image (demo/image_demo.py IMG CONFIG CKPT)'),
    'make-demo-data': ('tools/misc/make_demo_data.py', None,
                       'write the synthetic demo datasets (tools/misc/make_demo_data.py)'),
}

#: Upstream browse_dataset scripts, relative to each package's ``.mim`` (or clone) root.
BROWSE_TOOLS = {
    'mmseg': 'tools/analysis_tools/browse_dataset.py',
    'mmdet': 'tools/analysis_tools/browse_dataset.py',
    'mmpretrain': 'tools/visualization/browse_dataset.py',
}


def write_derived_config(name: str, out: str, force: bool = False) -> str:
    """Write ``out``: a config of the user's that inherits the shipped config ``name``.

    MMEngine 0.10.7 reads ``_base_`` with :mod:`ast` before anything is imported, so it must be a
    literal path (``mmc2f::`` prefixes are not possible: MMEngine's package list is fixed). The
    file therefore names the shipped config by its absolute path; re-run this after installing
    mmc2f somewhere else.

    Returns:
        str: the absolute path of the inherited config.
    """
    base = get_config_path(name)
    if osp.exists(out) and not force:
        raise FileExistsError(f'{out} exists (use --force to overwrite)')
    from .version import __version__
    text = (
        f'# Inherits mmc2f {__version__}\'s config {osp.relpath(base, configs_root())}\n'
        '# (written by `mmc2f new-config`; the path is absolute: re-run that command after\n'
        '# installing mmc2f elsewhere). Add your changes below, e.g.\n'
        '#   train_dataloader = dict(batch_size=8)\n'
        '#   model = dict(backbone=dict(init_cfg=None))\n'
        f'_base_ = [{base!r}]\n')
    os.makedirs(osp.dirname(osp.abspath(out)), exist_ok=True)
    with open(out, 'w') as f:
        f.write(text)
    return base


# ------------------------------------------------------------------------------ running tools
def _looks_like_config(token: str) -> bool:
    return token.endswith('.py') or '/' in token or '_' in token


def resolve_config_args(argv: List[str], which) -> List[str]:
    """Replace the config arguments of ``argv`` by absolute paths (see :data:`TOOLS`)."""
    argv = list(argv)
    if which is None:
        return argv
    if which == 'any':
        for i, tok in enumerate(argv):
            if tok.startswith('-') or osp.exists(tok) or not _looks_like_config(tok):
                continue
            try:
                argv[i] = get_config_path(tok)
            except FileNotFoundError:
                pass
        return argv
    # leading positionals only (before the first option)
    positions = []
    for i, tok in enumerate(argv):
        if tok.startswith('-'):
            break
        positions.append(i)
    for k in which:
        if k < len(positions):
            argv[positions[k]] = get_config_path(argv[positions[k]])
    return argv


def run_tool(rel: str, argv: Sequence[str]) -> None:
    """Run a shipped script as ``__main__`` with ``argv`` (as ``python <script> argv...``)."""
    path = get_tool_path(rel)
    old = sys.argv
    sys.argv = [path] + list(argv)
    try:
        runpy.run_path(path, run_name='__main__')
    finally:
        sys.argv = old


def _package_tool(package: str, rel: str) -> str:
    """An upstream package's shipped script (its ``.mim`` folder, or its clone)."""
    import importlib
    pkg_dir = osp.dirname(importlib.import_module(package).__file__)
    for root in (osp.join(pkg_dir, '.mim'), osp.dirname(pkg_dir)):
        if osp.isfile(osp.join(root, rel)):
            return osp.join(root, rel)
    raise FileNotFoundError(f'{package} ships no {rel}')


def _fix_mmseg_browse() -> None:
    """mmseg 1.2.2's browse_dataset hands its visualizer a non-contiguous image, which
    ``cv2.rectangle`` refuses with every OpenCV 4.x/5.x (open-mmlab/mmsegmentation#3405): give
    ``add_datasample`` a contiguous copy (this process only)."""
    import numpy as np
    from mmseg.visualization import SegLocalVisualizer

    original = SegLocalVisualizer.add_datasample
    if getattr(original, '_mmc2f_contiguous', False):
        return

    def add_datasample(self, name, image, *args, **kwargs):
        return original(self, name, np.ascontiguousarray(image), *args, **kwargs)

    add_datasample._mmc2f_contiguous = True
    SegLocalVisualizer.add_datasample = add_datasample


def _fix_mmpretrain_browse() -> None:
    """mmpretrain 1.2's browse_dataset (this process only):

    * it passes ``cfg.visualizer`` as keyword arguments, including the ``_scope_`` key MMEngine
      adds to dicts inherited from ``mmpretrain::`` bases: drop it;
    * it calls ``matplotlib._tight_bbox.adjust_bbox(fig, bbox)``, whose ``renderer`` argument
      newer matplotlib (3.11) requires: pass the figure's own.
    """
    import matplotlib._tight_bbox as tight_bbox
    from mmpretrain.visualization import UniversalVisualizer

    adjust = tight_bbox.adjust_bbox
    params = inspect.signature(adjust).parameters
    if 'renderer' in params and params['renderer'].default is inspect.Parameter.empty:

        def adjust_bbox(fig, bbox_inches, renderer=None, fixed_dpi=None):
            return adjust(fig, bbox_inches, renderer or fig.canvas.get_renderer(), fixed_dpi)

        tight_bbox.adjust_bbox = adjust_bbox

    original = UniversalVisualizer.__init__
    if getattr(original, '_mmc2f_no_scope', False):
        return

    def __init__(self, *args, **kwargs):
        kwargs.pop('_scope_', None)
        original(self, *args, **kwargs)

    __init__._mmc2f_no_scope = True
    UniversalVisualizer.__init__ = __init__


def browse_dataset(argv: List[str]) -> None:
    """Run the upstream ``browse_dataset`` of the config's ``default_scope``, with the fixes of
    :func:`_fix_mmseg_browse` and :func:`_fix_mmpretrain_browse`."""
    if not argv or argv[0].startswith('-'):
        print('usage: mmc2f browse-dataset CONFIG [browse_dataset.py options]', file=sys.stderr)
        sys.exit(2)
    from mmengine.config import Config
    argv = resolve_config_args(argv, (0, ))
    scope = Config.fromfile(argv[0]).get('default_scope')
    if scope not in BROWSE_TOOLS:
        print(f'mmc2f browse-dataset: default_scope {scope!r} is not one of '
              f'{sorted(BROWSE_TOOLS)}', file=sys.stderr)
        sys.exit(2)
    path = _package_tool(scope, BROWSE_TOOLS[scope])
    if scope == 'mmseg':
        _fix_mmseg_browse()
    elif scope == 'mmpretrain':
        _fix_mmpretrain_browse()
    old = sys.argv
    sys.argv = [path] + argv
    try:
        runpy.run_path(path, run_name='__main__')
    finally:
        sys.argv = old


# ---------------------------------------------------------------------------------- main
def _build_parser() -> argparse.ArgumentParser:
    from .version import __version__
    p = argparse.ArgumentParser(
        prog='mmc2f', formatter_class=argparse.RawDescriptionHelpFormatter,
        description='Run the configs and tools that ship with mmc2f.',
        epilog='CONFIG may be a path, a shipped name relative to configs/ '
        '(segnext/segnext_mscan-b_1xb16-adamw-160k_ade20k-512x512) or a bare name '
        '(segnext_b_ade20k). Arguments after the sub-command go to the script.')
    p.add_argument('--version', action='version', version=f'mmc2f {__version__}')
    sub = p.add_subparsers(dest='command', metavar='COMMAND')
    lc = sub.add_parser('list-configs', help='list shipped configs (or print their paths)')
    lc.add_argument('patterns', nargs='*', help='shell patterns or substrings of config names')
    lc.add_argument('--path', action='store_true', help='print absolute paths')
    nc = sub.add_parser('new-config', help='write a config that inherits a shipped one')
    nc.add_argument('name', help='shipped config name or path')
    nc.add_argument('out', help='the file to write')
    nc.add_argument('--force', action='store_true', help='overwrite OUT')
    sub.add_parser('where', help='print the folder holding the shipped configs and tools')
    sub.add_parser('browse-dataset', add_help=False,
                   help="upstream browse_dataset of the config's package")
    for name, (_, _, text) in TOOLS.items():
        sub.add_parser(name, add_help=False, help=text)
    return p


def main(argv: Optional[Sequence[str]] = None) -> None:
    """Entry point of the ``mmc2f`` console command."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = _build_parser()
    if not argv or argv[0] in ('-h', '--help', '--version'):
        parser.parse_args(argv)
        parser.print_help()
        return
    command, rest = argv[0], argv[1:]
    try:
        if command in TOOLS:
            rel, which, _ = TOOLS[command]
            run_tool(rel, resolve_config_args(rest, which))
        elif command == 'browse-dataset':
            browse_dataset(rest)
        else:
            args = parser.parse_args(argv)
            if args.command == 'where':
                print(mim_root())
            elif args.command == 'new-config':
                base = write_derived_config(args.name, args.out, args.force)
                print(f'wrote {args.out} (inherits {base})')
            elif args.command == 'list-configs':
                if args.path and len(args.patterns) == 1:
                    try:  # an exact name: just its path
                        print(get_config_path(args.patterns[0]))
                        return
                    except FileNotFoundError:
                        pass
                names = list_configs(args.patterns)
                if not names:
                    hints = []
                    for pattern in args.patterns:
                        try:
                            get_config_path(pattern)
                        except FileNotFoundError as err:
                            hints += [str(err).split('Close names: ')[1].rstrip('.')] \
                                if 'Close names: ' in str(err) else []
                    hint = f' (close names: {", ".join(hints)})' if hints else ''
                    print(f'no shipped config matches {args.patterns}{hint}', file=sys.stderr)
                    sys.exit(1)
                root = configs_root()
                for n in names:
                    print(osp.join(root, n + '.py') if args.path else n)
    except (FileNotFoundError, FileExistsError) as err:
        print(f'mmc2f {command}: error: {err}', file=sys.stderr)
        sys.exit(2)


if __name__ == '__main__':
    main()

"""Where an installed mmc2f keeps its configs, tools and demo (``mmc2f/.mim/``), and how a config
name becomes a path. Imports nothing heavy (used by the ``mmc2f`` command and by the APIs)."""
import difflib
import fnmatch
import os
import os.path as osp
from typing import List, Sequence

__all__ = ['MIM_ITEMS', 'mim_root', 'configs_root', 'list_configs', 'get_config_path',
           'get_tool_path']

#: What a wheel carries under ``mmc2f/.mim/`` (``setup.py`` copies exactly these).
MIM_ITEMS = ('configs', 'tools', 'demo', 'model-index.yml')

def _package_dir() -> str:
    return osp.dirname(osp.abspath(__file__))


def mim_root() -> str:
    """The folder holding ``configs/``, ``tools/``, ``demo/`` and ``model-index.yml``.

    ``mmc2f/.mim`` when it has configs (a wheel, or an editable install), else the clone the
    package is imported from (``<repo>/mmc2f`` -> ``<repo>``).

    Raises:
        FileNotFoundError: neither exists (a broken install).
    """
    pkg = _package_dir()
    for root in (osp.join(pkg, '.mim'), osp.dirname(pkg)):
        if osp.isdir(osp.join(root, 'configs')) and osp.isdir(osp.join(root, 'tools')):
            return root
    raise FileNotFoundError(
        f'mmc2f at {pkg} ships no configs/tools (no {osp.join(pkg, ".mim")}); reinstall it from '
        'a wheel or the repository (pip install <wheel> / pip install -e <clone>).')


def configs_root() -> str:
    """``<mim root>/configs``."""
    return osp.join(mim_root(), 'configs')


def list_configs(patterns: Sequence[str] = ()) -> List[str]:
    """Shipped config names (``folder/stem``, ``_base_`` excluded), sorted.

    Args:
        patterns: shell-style patterns matched against ``folder/stem`` and against ``stem``; a
            pattern without a wildcard matches as a substring. Empty: every config.
    """
    root = configs_root()
    names = []
    for dirpath, dirs, files in os.walk(root, followlinks=True):
        dirs[:] = sorted(d for d in dirs if d != '_base_' and not d.startswith(('.', '__')))
        for f in files:
            if f.endswith('.py'):
                names.append(osp.relpath(osp.join(dirpath, f), root)[:-3].replace(os.sep, '/'))
    names.sort()
    if not patterns:
        return names
    pats = [p if any(c in p for c in '*?[') else f'*{p}*' for p in patterns]
    return [n for n in names
            if any(fnmatch.fnmatch(n, p) or fnmatch.fnmatch(n.split('/')[-1], p) for p in pats)]


def get_config_path(name: str) -> str:
    """The absolute path of a config given as a path or a shipped name.

    Accepted: an existing file; ``configs/segnext/x.py``, ``segnext/x.py`` or ``segnext/x``
    (relative to the shipped configs); a bare name such as ``segnext_b_ade20k`` when exactly one
    shipped config has that stem.

    Raises:
        FileNotFoundError: no such config (the message lists close names).
    """
    name = os.fspath(name)
    if osp.isfile(name):
        return osp.abspath(name)
    root = configs_root()
    rel = name.replace('\\', '/')
    if rel.startswith('configs/'):
        rel = rel[len('configs/'):]
    if not rel.endswith('.py'):
        rel += '.py'
    candidate = osp.join(root, rel)
    if osp.isfile(candidate):
        return osp.abspath(candidate)
    stem = osp.basename(rel)[:-3]
    names = list_configs()
    hits = [n for n in names if n.split('/')[-1] == stem]
    if len(hits) == 1:
        return osp.abspath(osp.join(root, hits[0] + '.py'))
    if len(hits) > 1:
        raise FileNotFoundError(f'config name {name!r} is ambiguous: {hits}; give the folder too')
    close = difflib.get_close_matches(stem, [n.split('/')[-1] for n in names], n=5, cutoff=0.6)
    hint = f' Close names: {close}.' if close else ''
    raise FileNotFoundError(f'no config {name!r}: not a file, and not a config shipped under '
                            f'{root} (mmc2f list-configs shows them).{hint}')


def get_tool_path(rel: str) -> str:
    """Absolute path of a shipped script, e.g. ``tools/train.py``."""
    path = osp.join(mim_root(), rel)
    if not osp.isfile(path):
        raise FileNotFoundError(f'mmc2f ships no {rel} (looked in {mim_root()})')
    return path

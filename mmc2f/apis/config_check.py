"""Early, explained errors for configs that name mmc2f modules without the ``mmc2f.`` scope.

In an mmdet/mmseg/mmpretrain config, ``type='Conv2Former'`` is looked up in that package's registry
and fails deep inside model building with "Conv2Former is not in the mmdet::model registry". The
tools call :func:`check_mmc2f_types` first, which names the config key and suggests the scoped name.
"""
import importlib
from typing import Any, Iterator, List, Tuple

from mmc2f.errors import UnscopedTypeError

__all__ = ['UnscopedTypeError', 'check_mmc2f_types']

#: mmc2f registry -> the attribute of ``<scope>.registry`` it parallels.
_KINDS = ('MODELS', 'OPTIM_WRAPPER_CONSTRUCTORS', 'HOOKS')


def _walk(node: Any, path: str) -> Iterator[Tuple[str, str]]:
    if isinstance(node, dict):
        for field in ('type', 'constructor'):  # optim_wrapper names its builder 'constructor'
            kind = node.get(field)
            if isinstance(kind, str):
                yield f'{path}.{field}' if path else field, kind
        for key, value in node.items():
            yield from _walk(value, f'{path}.{key}' if path else str(key))
    elif isinstance(node, (list, tuple)):
        for i, value in enumerate(node):
            yield from _walk(value, f'{path}[{i}]')


def check_mmc2f_types(cfg, scope: str = None) -> List[str]:
    """Raise :class:`UnscopedTypeError` if ``cfg`` uses an mmc2f type without its scope.

    A ``type`` without a ``.`` that the config's scope (``default_scope``) cannot resolve but an
    mmc2f registry holds is an error; the message names the key (e.g. ``model.backbone.type``) and
    the fix (``type='mmc2f.Conv2Former'``). Returns the keys checked (for tests).
    """
    from mmengine.registry import DefaultScope

    from mmc2f import registry as ours
    scope = scope or cfg.get('default_scope') or 'mmengine'
    try:
        theirs = importlib.import_module(f'{scope}.registry')
    except ImportError:
        theirs = importlib.import_module('mmengine.registry')
    checked = []
    with DefaultScope.overwrite_default_scope(scope):
        for key, name in _walk(dict(cfg), ''):
            if '.' in name or name.startswith('mmc2f'):
                continue
            checked.append(key)
            for kind in _KINDS:
                mine = getattr(ours, kind)
                if name not in mine.module_dict:
                    mine.import_from_location()
                if name not in mine.module_dict:
                    continue
                upstream = getattr(theirs, kind, None)
                if upstream is not None and upstream.get(name) is not None:
                    continue  # resolvable as written (e.g. mmseg's own MSCAN)
                field = key.rsplit('.', 1)[-1]
                raise UnscopedTypeError(
                    f'{key} = "{name}" is not registered in {scope}, but mmc2f registers it: '
                    f'write {field}="mmc2f.{name}" (mmc2f modules need their scope in {scope} '
                    'configs)')
    return checked

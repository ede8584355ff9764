"""Early, explained errors for configs that name mmc2f modules without the ``mmc2f.`` scope.

In an mmdet/mmseg/mmpretrain config, ``type='Conv2Former'`` is looked up in that package's registry
and fails deep inside model building with "Conv2Former is not in the mmdet::model registry". The
tools call :func:`check_mmc2f_types` first, which names the config key and suggests the scoped name.
"""
import importlib
import inspect
from typing import Any, Iterator, List, Optional, Set, Tuple

from mmc2f.errors import UnscopedTypeError

__all__ = ['UnscopedTypeError', 'check_mmc2f_types']

#: mmc2f registry -> the attribute of ``<scope>.registry`` it parallels.
_KINDS = ('MODELS', 'OPTIM_WRAPPER_CONSTRUCTORS', 'HOOKS')


def _walk(node: Any, path: str) -> Iterator[Tuple[str, str, dict]]:
    if isinstance(node, dict):
        for field in ('type', 'constructor'):  # optim_wrapper names its builder 'constructor'
            kind = node.get(field)
            if isinstance(kind, str):
                yield f'{path}.{field}' if path else field, kind, node
        for key, value in node.items():
            yield from _walk(value, f'{path}.{key}' if path else str(key))
    elif isinstance(node, (list, tuple)):
        for i, value in enumerate(node):
            yield from _walk(value, f'{path}[{i}]')


def _accepted(cls) -> Optional[Set[str]]:
    """Keywords ``cls(...)`` accepts, following ``**kwargs`` up the MRO; None: any."""
    names: Set[str] = set()
    for klass in cls.__mro__:
        init = klass.__dict__.get('__init__')
        if init is None:
            continue
        params = inspect.signature(init).parameters.values()
        names |= {p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
        if not any(p.kind == p.VAR_KEYWORD for p in params):
            return names - {'self'}
    return None


def mmc2f_only_options(node: dict, ours, theirs) -> List[str]:
    """The options of a config node that mmc2f's class takes and the upstream class of the same
    name does not (its keywords, and ``mmc2f_only_options`` such as ``ham_kwargs.eval_seed``)."""
    given = set(node) - {'type', '_scope_'}
    own, up = _accepted(ours), _accepted(theirs)
    found = sorted(k for k in given if up is not None and k not in up and (own is None or k in own))
    for key, names in getattr(ours, 'mmc2f_only_options', {}).items():
        if isinstance(node.get(key), dict):
            found += [f'{key}.{n}' for n in node[key] if n in names]
    return found


def check_mmc2f_types(cfg, scope: str = None) -> List[str]:
    """Raise :class:`UnscopedTypeError` if ``cfg`` uses an mmc2f type without its scope.

    A ``type`` without a ``.`` that the config's scope (``default_scope``) cannot resolve but an
    mmc2f registry holds is an error; the message names the key (e.g. ``model.backbone.type``) and
    the fix (``type='mmc2f.Conv2Former'``). A ``type`` that resolves upstream to a class of the
    same name as an mmc2f one (mmseg's ``MSCAN``, ``LightHamHead``) but is given options only
    mmc2f's class takes (``arch``, ``ham_kwargs.eval_seed``, ...) is an error too. Returns the
    keys checked (for tests).
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
        for key, name, node in _walk(dict(cfg), ''):
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
                field = key.rsplit('.', 1)[-1]
                their_cls = upstream.get(name) if upstream is not None else None
                if their_cls is not None:  # resolvable as written (e.g. mmseg's own MSCAN)
                    extra = mmc2f_only_options(node, mine.module_dict[name], their_cls)
                    if extra:
                        raise UnscopedTypeError(
                            f'{key} = "{name}" builds {their_cls.__module__}.{name}, which does '
                            f'not take {", ".join(extra)} (options of mmc2f\'s {name}): write '
                            f'{field}="mmc2f.{name}"')
                    continue
                raise UnscopedTypeError(
                    f'{key} = "{name}" is not registered in {scope}, but mmc2f registers it: '
                    f'write {field}="mmc2f.{name}" (mmc2f modules need their scope in {scope} '
                    'configs)')
    return checked

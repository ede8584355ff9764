"""Loading a config file, with errors that name the file, the line and the fix."""
import ast
import copy
import os
import os.path as osp
from typing import List, Optional, Union

from mmengine.config import Config

from mmc2f.errors import ConfigError

__all__ = ['load_config']


def _base_files(path: str) -> List[str]:
    """The local ``_base_`` files a config names (``pkg::`` bases are the packages' own)."""
    try:
        tree = ast.parse(open(path, encoding='utf-8').read(), filename=path)
    except (SyntaxError, OSError, UnicodeDecodeError):
        return []
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(
                isinstance(t, ast.Name) and t.id == '_base_' for t in node.targets):
            try:
                value = ast.literal_eval(node.value)
            except ValueError:
                return []
            names = [value] if isinstance(value, str) else list(value)
            return [osp.normpath(osp.join(osp.dirname(path), n)) for n in names
                    if isinstance(n, str) and '::' not in n]
    return []


def _find_syntax_error(path: str, seen=None) -> Optional[SyntaxError]:
    """The first syntax error in ``path`` or its local bases, with its real file name."""
    seen = set() if seen is None else seen
    if path in seen or not osp.isfile(path):
        return None
    seen.add(path)
    try:
        ast.parse(open(path, encoding='utf-8').read(), filename=path)
    except SyntaxError as err:
        return err
    for base in _base_files(path):
        err = _find_syntax_error(base, seen)
        if err is not None:
            return err
    return None


def load_config(config: Union[str, os.PathLike, Config],
                cfg_options: Optional[dict] = None) -> Config:
    """A :class:`Config` from a path (or a copy of a given config), with ``cfg_options`` merged.

    Raises:
        ConfigError: the file does not exist, has a syntax error (named with its file and line,
            also in a ``_base_`` file), or cannot be loaded for another reason.
    """
    if isinstance(config, Config):
        cfg = copy.deepcopy(config)
    elif isinstance(config, (str, os.PathLike)):
        path = os.fspath(config)
        if not osp.isfile(path):
            hint = ''
            if not path.endswith('.py'):
                hint = ' (config files are Python files ending in .py)'
            raise ConfigError(f'config file "{path}" does not exist{hint}; check the path, '
                              'relative to the current directory ' + os.getcwd())
        try:
            cfg = Config.fromfile(path)
        except SyntaxError as err:
            real = _find_syntax_error(path) or err
            where = f'{real.filename}, line {real.lineno}' if real.filename else path
            line = (real.text or '').strip()
            raise ConfigError(f'syntax error in config {where}: {real.msg}'
                              + (f': {line}' if line else '')) from None
        except Exception as err:  # noqa: BLE001  (inheritance, missing base, bad value ...)
            raise ConfigError(f'cannot load config "{path}": {type(err).__name__}: {err}'
                              ) from err
    else:
        raise TypeError(f'config must be a path or an mmengine Config, got {type(config).__name__}')
    if cfg_options:
        try:
            cfg.merge_from_dict(cfg_options)
        except Exception as err:  # noqa: BLE001
            raise ConfigError(f'--cfg-options {cfg_options} cannot be merged into the config: '
                              f'{type(err).__name__}: {err}') from err
    return cfg

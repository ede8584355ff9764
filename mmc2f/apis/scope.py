"""The one table of OpenMMLab packages mmc2f works with, and how a config selects one."""
import importlib

from mmengine.config import Config

from mmc2f.errors import ConfigError

__all__ = ['SCOPE_TASKS', 'get_task', 'init_scope']

#: default_scope -> task name (``<scope>.utils.register_all_modules`` fills that package's registries).
SCOPE_TASKS = {'mmseg': 'seg', 'mmdet': 'det', 'mmpretrain': 'cls'}


def get_task(cfg: Config, config_path: str = 'the config') -> str:
    """``'seg'``, ``'det'`` or ``'cls'`` from the config's ``default_scope``.

    Raises:
        ConfigError: ``default_scope`` is missing or not one of mmseg, mmdet, mmpretrain.
    """
    scope = cfg.get('default_scope', None)
    supported = ', '.join(SCOPE_TASKS)
    if scope is None:
        raise ConfigError(
            f'{config_path} sets no default_scope, so mmc2f cannot tell which OpenMMLab package '
            f'it is for. Add default_scope = one of {supported} (or inherit a base runtime config '
            "such as 'mmseg::_base_/default_runtime.py').")
    if scope not in SCOPE_TASKS:
        raise ConfigError(f'{config_path} has default_scope={scope!r}, which mmc2f does not '
                          f'support; supported scopes: {supported}.')
    return SCOPE_TASKS[scope]


def init_scope(cfg: Config, config_path: str = 'the config') -> str:
    """Register the modules of the config's package (``default_scope``), make it the default
    scope and check that mmc2f types carry their ``mmc2f.`` prefix. Returns the scope."""
    get_task(cfg, config_path)
    scope = cfg.default_scope
    # The runner creates its own DefaultScope from cfg.default_scope; registering is what we need.
    importlib.import_module(f'{scope}.utils').register_all_modules(init_default_scope=False)
    import mmc2f.registry  # noqa: F401  ('mmc2f.' types; process setup)
    from mmengine.registry import init_default_scope
    init_default_scope(scope)
    from .config_check import check_mmc2f_types
    try:
        check_mmc2f_types(cfg, scope)
    except ConfigError as err:
        raise type(err)(f'{config_path}: {err}') from None
    return scope

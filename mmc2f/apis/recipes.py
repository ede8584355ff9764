"""mmc2f inside the stock OpenMMLab recipes and name-based model lookups.

* :func:`check_stock_recipe`: a config check, run before anything is built, for the places where a
  stock mmseg / mmdet / mmpretrain component cannot work with an mmc2f backbone. The stock
  layer-decay constructors raise a bare ``NotImplementedError`` for any backbone whose class name
  lacks "ConvNeXt" (or BEiT/MAE); this check names the replacement,
  ``mmc2f.LayerDecayOptimWrapperConstructor``, and the other pieces of the delta
  (``docs/recipes.md``): leftover ConvNeXt keywords, too small ``num_layers``, a classifier
  without a neck.
* :func:`register_model_index`: adds mmc2f's ``model-index.yml`` to mmpretrain's ``ModelHub``, so
  that ``mmpretrain.list_models('*conv2former*')`` and ``mmpretrain.get_model(name)`` know
  mmc2f's classifiers (and every other model of the index, by name).
* :func:`get_model_info`: config path and weights of a model-index name, e.g. to give mmseg's or
  mmdet's inferencers a path (their own name lookup only reads the index of the package whose
  scope they run in, see ``docs/model_index.md``).

Importing this module imports neither torch nor an OpenMMLab package; the functions import what
they need.
"""
import inspect
import os.path as osp
from typing import Dict, List, Optional

from mmc2f.errors import ConfigError
from mmc2f.shipped import configs_root, get_config_path, list_configs, mim_root

__all__ = [
    'StockRecipeError', 'STOCK_LAYER_DECAY_CONSTRUCTORS', 'MMC2F_LAYER_DECAY', 'check_stock_recipe',
    'model_index_path', 'load_model_index', 'register_model_index', 'get_model_info',
    'get_config_path', 'list_configs', 'configs_root', 'mim_root'
]

#: Layer-decay constructors of mmdet / mmseg / mmpretrain that accept only their own backbones.
STOCK_LAYER_DECAY_CONSTRUCTORS = (
    'LearningRateDecayOptimizerConstructor',  # mmdet, mmseg: class name must contain "ConvNeXt"
    'LayerDecayOptimizerConstructor',  # mmseg: BEiT / MAE only
    'LearningRateDecayOptimWrapperConstructor',  # mmpretrain: backbone.get_layer_depth
)
#: mmc2f's replacement (same ``paramwise_cfg`` keys: decay_rate, decay_type, num_layers).
MMC2F_LAYER_DECAY = 'mmc2f.LayerDecayOptimWrapperConstructor'


class StockRecipeError(ConfigError, ValueError):
    """A config combines a stock component with an mmc2f model in a way that cannot work."""


# ----------------------------------------------------------------------------- recipe check
def _get(d, key, default=None):
    """``d.get(key, default)`` for dicts, ConfigDicts and Configs; ``default`` for anything else."""
    return d.get(key, default) if hasattr(d, 'get') and not isinstance(d, str) else default


def _mmc2f_name(cfg_dict) -> Optional[str]:
    """``'Conv2Former'`` for ``type='mmc2f.Conv2Former'`` (or ``_scope_='mmc2f'``), else None."""
    type_ = _get(cfg_dict, 'type')
    if not isinstance(type_, str):
        return None
    if type_.startswith('mmc2f.'):
        return type_.split('.', 1)[1]
    if _get(cfg_dict, '_scope_') == 'mmc2f':
        return type_
    return None


def _mmc2f_class(name: str):
    """The registered mmc2f model class, or None when it cannot be resolved here."""
    try:
        from mmengine.registry import MODELS
        return MODELS.get(f'mmc2f.{name}')
    except Exception:  # an unregistered name fails later, with the registry's own message
        return None


def _init_keywords(cls) -> Optional[set]:
    """Keyword names of ``cls.__init__``; None when it takes ``**kwargs``."""
    params = inspect.signature(cls.__init__).parameters
    if any(p.kind == p.VAR_KEYWORD for p in params.values()):
        return None
    return {n for n in params if n != 'self'}


def _min_layer_wise_layers(cls, arch) -> Optional[int]:
    """Smallest ``num_layers`` of the ConvNeXt ``layer_wise`` rule for a Conv2Former arch."""
    depths = None
    if isinstance(arch, dict):
        depths = arch.get('depths')
    elif isinstance(arch, str):
        settings = getattr(cls, 'arch_settings', {}) or {}
        arch = (getattr(cls, 'arch_aliases', {}) or {}).get(arch, arch)
        depths = (settings.get(arch) or {}).get('depths')
    if not depths or len(depths) != 4:
        return None
    return 4 + (int(depths[2]) - 1) // 3


def check_stock_recipe(cfg) -> None:
    """Check a loaded config (``mmengine.Config`` or dict) that puts an mmc2f backbone into a
    stock recipe; raise one error that lists every problem and its fix.

    Call it after ``Config.fromfile`` and any ``--cfg-options``, before building the runner (the
    ``mmc2f train`` command does).

    Raises:
        StockRecipeError: the optimizer-wrapper constructor is a stock layer-decay constructor
            (it would raise a bare ``NotImplementedError`` for the mmc2f backbone); the backbone
            dict keeps keywords of the base config's backbone that the mmc2f class does not take
            (``_delete_=True`` missing); mmc2f's constructor is given a ``num_layers`` below the
            backbone's minimum; an mmpretrain classifier with a Conv2Former backbone has no neck.
    """
    model = _get(cfg, 'model') or {}
    backbone = _get(model, 'backbone')
    name = _mmc2f_name(backbone)
    if name is None:
        return
    problems: List[str] = []
    ow = _get(cfg, 'optim_wrapper') or {}
    ctor = _get(ow, 'constructor')
    ctor_name = ctor.split('.')[-1] if isinstance(ctor, str) else None
    pw = _get(ow, 'paramwise_cfg') or {}

    if ctor_name in STOCK_LAYER_DECAY_CONSTRUCTORS and ctor != MMC2F_LAYER_DECAY:
        problems.append(
            f'optim_wrapper.constructor={ctor!r} is the stock layer-decay constructor: it accepts '
            f'only its own backbones (class names containing "ConvNeXt", BEiT/MAE, or with '
            f'get_layer_depth) and raises NotImplementedError for mmc2f.{name}. Use '
            f"optim_wrapper=dict(constructor='{MMC2F_LAYER_DECAY}') instead: same paramwise_cfg "
            '(decay_rate, decay_type, num_layers), same grouping for ConvNeXt-style stages.')

    cls = _mmc2f_class(name)
    if cls is not None:
        allowed = _init_keywords(cls)
        if allowed is not None:
            extra = sorted(k for k in backbone
                           if k not in allowed and k not in ('type', '_scope_', '_delete_'))
            if extra:
                problems.append(
                    f'model.backbone keeps keyword(s) {extra} that mmc2f.{name} does not take '
                    "(inherited from the base config's backbone): add _delete_=True to your "
                    'backbone dict so that only its own keys remain.')
        uses_mmc2f_decay = ctor == MMC2F_LAYER_DECAY or ctor_name in STOCK_LAYER_DECAY_CONSTRUCTORS
        if uses_mmc2f_decay and _get(pw, 'decay_type', 'layer_wise') == 'layer_wise':
            need = _min_layer_wise_layers(cls, _get(backbone, 'arch', 'tiny'))
            have = _get(pw, 'num_layers')
            if need is not None and isinstance(have, int) and have < need:
                problems.append(
                    f'optim_wrapper.paramwise_cfg.num_layers={have} is below the minimum {need} '
                    f'of mmc2f.{name} arch={_get(backbone, "arch")!r} (layer_wise: stage 3 has '
                    f'{3 * (need - 4) + 1}+ blocks, 3 per layer id); set num_layers={need}.')

    scope = _get(cfg, 'default_scope')
    if (scope == 'mmpretrain' and name == 'Conv2Former' and _get(model, 'neck') is None
            and _get(model, 'head') is not None):
        problems.append(
            'an mmpretrain classifier with mmc2f.Conv2Former needs a neck (the backbone returns '
            "feature maps): neck=dict(type='mmc2f.Conv2FormerNeck', in_channels=<last stage "
            "width>, out_channels=1280) with head=dict(in_channels=1280) (the authors' head), or "
            "neck=dict(type='GlobalAveragePooling') with head.in_channels=<last stage width>.")

    if problems:
        raise StockRecipeError(
            f'the config uses mmc2f.{name} in a stock recipe that needs changes '
            '(docs/recipes.md):\n' + '\n'.join(f'  - {p}' for p in problems))


# ------------------------------------------------------------------------------ model index
def model_index_path() -> str:
    """``model-index.yml`` next to the shipped configs."""
    path = osp.join(mim_root(), 'model-index.yml')
    if not osp.isfile(path):
        raise FileNotFoundError(f'mmc2f ships no model-index.yml (looked in {mim_root()})')
    return path


def load_model_index() -> Dict[str, dict]:
    """``{lower-case name: model entry}`` of every model in the index (plain YAML, no mm*)."""
    import yaml
    root = mim_root()
    with open(model_index_path()) as f:
        index = yaml.safe_load(f)
    models = {}
    for rel in index.get('Import', []):
        with open(osp.join(root, rel)) as f:
            meta = yaml.safe_load(f) or {}
        for m in meta.get('Models', []):
            models[m['Name'].lower()] = m
    return models


def register_model_index() -> List[str]:
    """Register mmc2f's models with mmpretrain's ``ModelHub`` (idempotent).

    Afterwards ``mmpretrain.list_models('*conv2former*')`` lists them and
    ``mmpretrain.get_model('conv2former-t_8xb128_in1k')`` builds one (its ``pretrained=True``
    loads the converted checkpoint named under ``Weights``, relative to the working directory).

    Returns:
        list[str]: the names mmpretrain now knows from mmc2f's index.
    """
    from mmpretrain.apis.model import ModelHub

    ModelHub._register_mmpretrain_models()  # mmpretrain's own first, as its lookups do
    names = sorted(load_model_index())
    if not all(ModelHub.has(n) for n in names):
        ModelHub.register_model_index(model_index_path(), config_prefix=mim_root())
    return names


def get_model_info(name: str) -> Dict[str, Optional[str]]:
    """``{'config': absolute path, 'weights': path or None, 'task': ...}`` of a model-index name
    or alias (``segnext_b_ade20k``).

    Use it where a name lookup is limited to the upstream package's own index, e.g.
    ``MMSegInferencer(model=info['config'], weights=info['weights'])``.
    """
    models = load_model_index()
    entry = models.get(name.lower())
    if entry is None:  # a short name (the index's ``Alias``)
        entry = next((m for m in models.values()
                      if name.lower() in [a.lower() for a in m.get('Alias') or []]), None)
    if entry is None:
        raise KeyError(f'{name!r} is not in mmc2f\'s model index; known: {sorted(models)}')
    results = entry.get('Results') or [{}]
    return dict(
        config=get_config_path(osp.join(mim_root(), entry['Config'])),
        weights=entry.get('Weights'),
        task=results[0].get('Task'))

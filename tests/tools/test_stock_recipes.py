"""The deltas of docs/recipes.md, applied to the stock ConvNeXt recipes of the installed packages.

Each ```python block of docs/recipes.md whose ``_base_`` is a ``<package>::convnext/...`` config is
written to a file as it stands and loaded with MMEngine (which resolves the base from the installed
mmseg / mmdet / mmpretrain). Then, test-only: a small Conv2Former (``arch`` dict) with the matching
neck / head widths, CPU conversions (AmpOptimWrapper -> OptimWrapper, SyncBN -> BN, no Pretrained
loading, smaller detector proposal budgets; ``tests/_config_utils.py``). Each recipe builds, its
optimizer wrapper builds through the recipe's constructor, and it runs one training step and one
prediction on a synthetic batch.

The same stock configs with only the backbone swapped show why the delta is needed: the stock
layer-decay constructors raise a bare ``NotImplementedError``, and
:func:`mmc2f.apis.recipes.check_stock_recipe` names ``mmc2f.LayerDecayOptimWrapperConstructor``.
"""
import copy
import os
import os.path as osp
import re

import pytest
import torch

from _config_utils import (CLS_SIZE, DENSE_SIZE, REPO_ROOT, build_model, build_optim_wrapper,
                           finite, make_batch, model_task)

DOC = osp.join(REPO_ROOT, 'docs', 'recipes.md')
STOCK = {  # the stock configs docs/recipes.md must cover
    'mmseg': 'mmseg::convnext/convnext-tiny_upernet_8xb2-amp-160k_ade20k-512x512.py',
    'mmdet-mask': 'mmdet::convnext/mask-rcnn_convnext-t-p4-w7_fpn_amp-ms-crop-3x_coco.py',
    'mmdet-cascade': 'mmdet::convnext/cascade-mask-rcnn_convnext-t-p4-w7_fpn_4conv1fc-giou_amp-'
                     'ms-crop-3x_coco.py',
    'mmpretrain': 'mmpretrain::convnext/convnext-tiny_32xb128_in1k.py',
}
#: test-only size: dims and depths of a small Conv2Former (layer_wise minimum num_layers: 4)
TINY = dict(dims=[16, 32, 64, 128], depths=[1, 1, 3, 1], kernel_size=7)


def _doc_blocks():
    """``{stock base: code}`` of the recipe blocks in docs/recipes.md."""
    with open(DOC) as f:
        text = f.read()
    blocks = {}
    for code in re.findall(r'```python\n(.*?)```', text, flags=re.S):
        m = re.match(r"_base_ = '([a-z]+::convnext/[^']+)'", code)
        if m:
            blocks[m.group(1)] = code
    return blocks


BLOCKS = _doc_blocks()


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _load(code, tmp_path, name='recipe.py'):
    from mmengine.config import Config
    path = tmp_path / name
    path.write_text(code)
    return Config.fromfile(str(path))


def _shrink(cfg):
    """Test-only: a small Conv2Former and the neck / head widths that go with it."""
    cfg = copy.deepcopy(cfg)
    dims = TINY['dims']
    cfg.model.backbone.arch = dict(TINY)
    task = model_task(cfg)
    if task == 'seg':
        cfg.model.decode_head.in_channels = dims
        cfg.model.decode_head.channels = 32
        cfg.model.auxiliary_head.in_channels = dims[2]
        cfg.model.auxiliary_head.channels = 32
    elif task == 'det':
        cfg.model.neck.in_channels = dims
    else:
        cfg.model.neck.in_channels = dims[-1]
        cfg.model.neck.out_channels = 64
        cfg.model.head.in_channels = 64
    return cfg


def test_docs_cover_every_stock_recipe():
    assert sorted(BLOCKS) == sorted(STOCK.values())


@pytest.mark.parametrize('key', sorted(STOCK))
def test_delta_trains_and_predicts(key, tmp_path):
    from mmc2f.apis.recipes import check_stock_recipe

    cfg = _load(BLOCKS[STOCK[key]], tmp_path)
    # the delta as written: the recipe check passes, the backbone is mmc2f's
    check_stock_recipe(cfg)
    assert cfg.model.backbone.type == 'mmc2f.Conv2Former'
    assert 'gap_before_final_norm' not in cfg.model.backbone
    if key != 'mmpretrain':
        assert cfg.optim_wrapper.constructor == 'mmc2f.LayerDecayOptimWrapperConstructor'

    cfg = _shrink(cfg)
    task = model_task(cfg)
    torch.manual_seed(0)
    model = build_model(cfg, CLS_SIZE if task == 'cls' else DENSE_SIZE)
    model.init_weights()
    optim_wrapper = build_optim_wrapper(model, cfg)  # the recipe's constructor
    if key != 'mmpretrain':
        lrs = {g['lr'] for g in optim_wrapper.optimizer.param_groups}
        assert len(lrs) > 2, 'layer-wise decay gave no per-layer learning rates'

    model.train()
    log_vars = model.train_step(make_batch(task, cfg), optim_wrapper)
    assert 'loss' in log_vars and finite(log_vars['loss'])

    model.eval()
    batch = make_batch(task, cfg)
    with torch.no_grad():
        outputs = model.val_step(batch)
    assert len(outputs) == len(batch['inputs'])
    if task == 'seg':
        assert tuple(outputs[0].pred_sem_seg.data.shape) == (1, DENSE_SIZE, DENSE_SIZE)
    elif task == 'det':
        assert outputs[0].pred_instances.bboxes.shape[-1] == 4
    else:
        assert tuple(outputs[0].pred_score.shape) == (1000, )


NAIVE = """_base_ = {base!r}
model = dict(backbone=dict(_delete_=True, type='mmc2f.Conv2Former', arch={arch!r}))
"""


@pytest.mark.parametrize('key', ['mmseg', 'mmdet-mask'])
def test_stock_layer_decay_is_named(key, tmp_path):
    """Only the backbone swapped: the stock constructor fails bare; the check names the fix."""
    from mmc2f.apis.recipes import StockRecipeError, check_stock_recipe

    cfg = _load(NAIVE.format(base=STOCK[key], arch=TINY), tmp_path)
    with pytest.raises(StockRecipeError) as err:
        check_stock_recipe(cfg)
    msg = str(err.value)
    assert 'mmc2f.LayerDecayOptimWrapperConstructor' in msg
    assert 'LearningRateDecayOptimizerConstructor' in msg

    model = build_model(cfg, DENSE_SIZE)
    with pytest.raises(NotImplementedError):  # what a user meets without the check
        build_optim_wrapper(model, cfg)


def test_check_names_every_missing_piece(tmp_path):
    """No _delete_ (ConvNeXt keywords stay), mmdet's num_layers=6 for T, a classifier without
    a neck: each is reported with its fix."""
    from mmc2f.apis.recipes import StockRecipeError, check_stock_recipe

    det = _load(f"_base_ = {STOCK['mmdet-mask']!r}\n"
                "model = dict(backbone=dict(type='mmc2f.Conv2Former', arch='tiny'))\n"
                "optim_wrapper = dict(constructor='mmc2f.LayerDecayOptimWrapperConstructor')\n",
                tmp_path, 'det.py')
    with pytest.raises(StockRecipeError) as err:
        check_stock_recipe(det)
    msg = str(err.value)
    assert '_delete_=True' in msg and 'gap_before_final_norm' in msg
    assert 'num_layers=6' in msg and 'minimum 7' in msg
    assert 'stock layer-decay' not in msg

    cls = _load(f"_base_ = {STOCK['mmpretrain']!r}\n"
                "model = dict(backbone=dict(_delete_=True, type='mmc2f.Conv2Former'))\n",
                tmp_path, 'cls.py')
    with pytest.raises(StockRecipeError, match='Conv2FormerNeck'):
        check_stock_recipe(cls)

    # configs without an mmc2f backbone are not its business
    check_stock_recipe(_load(f"_base_ = {STOCK['mmdet-mask']!r}\n", tmp_path, 'stock.py'))


def test_shipped_recipes_pass_the_check():
    """mmc2f's own UperNet / Mask R-CNN / Cascade / ImageNet configs are already complete."""
    from mmengine.config import Config

    from mmc2f.apis.recipes import check_stock_recipe
    for rel in ('upernet/upernet_conv2former-t_8xb2-amp-160k_ade20k-512x512.py',
                'mask_rcnn/mask-rcnn_conv2former-t_fpn_amp-ms-crop-3x_coco.py',
                'cascade_rcnn/cascade-mask-rcnn_conv2former-s_fpn_4conv1fc-giou_amp-ms-crop-3x_'
                'coco.py', 'conv2former/conv2former-t_8xb128_in1k.py'):
        check_stock_recipe(Config.fromfile(os.path.join(REPO_ROOT, 'configs', rel)))

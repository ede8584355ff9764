"""Every config under ``configs/`` (``_base_`` excepted) loads, builds and runs.

Parametrized over the files found at collection time, so configs added later are covered without
editing this file. For each config:

* ``test_config_static`` (cheap, no model): the config loads; ``default_scope`` names the task;
  the datasets are registered types and, for a known dataset token in the name (``ade20k``,
  ``cityscapes``, ``coco-stuff164k``, ``voc12aug``, ``pascal-context-59``, ``isaid``, ``coco``,
  ``in1k``, ...), point at the upstream type and ``data_root`` and every ``num_classes`` of the
  model matches; the crop in the name (``-512x512``, ``-384px``) is the pipeline's crop, the
  segmentation preprocessor's pad size and the sliding-window size; the iterations / batch in the
  name match ``train_cfg`` / ``train_dataloader``; pretrained weights are local files (nothing is
  downloadable here) and ``load_from`` names a local file.
* ``test_config_model``: the real model (real arch and widths; nothing shrunk except the input)
  is built through the config's scope with every ``Pretrained`` init dropped (the checkpoints are
  not on a test machine) and SyncBN reverted to BN; the optimizer wrapper is built from
  ``cfg.optim_wrapper`` through ``mmengine.optim.build_optim_wrapper`` (AmpOptimWrapper -> plain
  OptimWrapper, it needs a GPU), which runs the paramwise rules and mmc2f's layer-decay
  constructor, and every trainable parameter must land in exactly one parameter group; then one
  prediction (``val_step``) on a synthetic batch of 2 images (64x64 for segmentation and
  detection, 32x32 for classification) whose outputs must have the right types and shapes.
  A model class that does not exist makes this test fail, not skip.

Time budget (2 CPU cores): a full training step of the big models (Conv2Former-L is 196M
parameters; Cascade Mask R-CNN) costs tens of seconds, and most configs differ from a sibling only
by dataset, number of classes or schedule. So ``model.train_step`` (forward, loss, backward,
optimizer step, checked finite and checked to move the weights) plus ``init_weights`` run for one
config per group -- same folder and same backbone-and-size token of the name (``segnext`` /
``mscan-l``, ``upernet`` / ``conv2former-t``, ...), the first by sorted name -- and the other
configs of the group get the build + optimizer + prediction checks only. Selecting a single config
with ``-k`` still runs its full step when it is its group's first. Detectors keep their model but
get smaller proposal / RoI budgets (``DET_LIMITS`` in ``_config_utils``: a Cascade step with COCO's
1000 proposals and 512 RoIs per image took ~45 s). Torch runs on one thread here: on a shared
2-core machine two intra-op threads made these small steps 5-10x slower. Config loading caches
MMEngine's per-``pkg::``-base metafile parsing (``_speed_up_package_bases``). Measured: the whole
file in about 2.5-3 minutes on the shared 2-core machine.

Short names (``configs/segnext/segnext_b_ade20k.py`` ...) are one-line aliases of a long-name
config in the same folder (``_config_utils.alias_target``). They are not built again: the alias
tests check that each required short name exists, that it is exactly one ``_base_`` line naming a
real recipe, and that it loads to the very same config (so every check above applies to it); the
tools name their work_dir after the file given (``work_dirs/segnext_b_ade20k``).
"""
import logging
import math
import os

import pytest
import torch

from _config_utils import (CLS_SIZE, DENSE_SIZE, KNOWN_DATASETS, REPO_ROOT,  # noqa: E402
                           alias_target, build_model,
                           build_optim_wrapper, config_paths, config_stem, dataset_token,
                           finite, has_mask_head, head_num_classes, iter_datasets,
                           iter_transforms, load_config, make_batch, model_task, name_batch,
                           name_crop, name_iters, num_classes_values, pretrained_checkpoints,
                           representatives)

CONFIGS = config_paths()
ALIASES = config_paths(aliases=True)
FULL_STEP = representatives(CONFIGS)


def _ids(paths):
    return [os.path.relpath(p, 'configs') for p in paths]


@pytest.fixture(autouse=True, scope='module')
def _one_thread_quiet_logs():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    from mmengine.logging import MMLogger
    loggers = [MMLogger.get_instance('mmengine')] + list(MMLogger._instance_dict.values())
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.WARNING)
    yield
    for lg, lv in zip(loggers, levels):
        lg.setLevel(lv)
    torch.set_num_threads(threads)


def test_configs_found():
    assert len(CONFIGS) > 0
    assert not any('_base_' in p.split(os.sep) for p in CONFIGS)


# ----------------------------------------------------------------------------------- static
def _dataloader_datasets(cfg, split):
    dl = cfg.get(f'{split}_dataloader')
    return list(iter_datasets(dl.get('dataset'))) if dl else []


def _crop_of(pipeline):
    for t in iter_transforms(pipeline):
        if t.get('type') == 'RandomCrop':
            return tuple(t['crop_size'])
        if t.get('type') in ('RandomResizedCrop', 'mmpretrain.RandomResizedCrop'):
            s = t['scale']
            return (s, s) if isinstance(s, int) else tuple(s)
    return None


@pytest.mark.parametrize('path', CONFIGS, ids=_ids(CONFIGS))
def test_config_static(path):
    from mmengine.registry import DATASETS, init_default_scope

    cfg = load_config(path)
    task = model_task(cfg)
    init_default_scope(cfg.default_scope)

    # datasets: registered; known ones point at upstream's type and folder
    token = dataset_token(path)
    for split in ('train', 'val', 'test'):
        for ds in _dataloader_datasets(cfg, split):
            scope = ds.get('_scope_', cfg.default_scope)
            with DATASETS.switch_scope_and_registry(scope) as reg:
                assert reg.get(ds['type']) is not None, f'{split}: unknown dataset {ds["type"]}'
            if token in KNOWN_DATASETS:
                ds_type, root, _ = KNOWN_DATASETS[token]
                assert ds['type'] == ds_type, f'{split} dataset of a {token} config'
                assert ds['data_root'] == root, f'{split} data_root of a {token} config'
    if token in KNOWN_DATASETS:
        assert _dataloader_datasets(cfg, 'train'), 'no training dataset'
        n = KNOWN_DATASETS[token][2]
        values = num_classes_values(cfg.model)
        if cfg.get('data_preprocessor') is not None:
            values.update({'data_preprocessor': cfg.data_preprocessor.get('num_classes', n)})
        assert values and set(values.values()) == {n}, f'num_classes for {token}: {values}'

    # the crop in the name
    crop = name_crop(path)
    if crop is not None:
        train_crops = {_crop_of(ds.get('pipeline')) for ds in _dataloader_datasets(cfg, 'train')}
        # a pipeline without a crop (data already at that size) is checked through the
        # segmentation preprocessor's pad size below
        assert train_crops - {None} <= {crop}, f'train crop {train_crops} vs name {crop}'
        assert train_crops != {None} or task == 'seg', 'no crop in the train pipeline'
        if task == 'seg':
            assert tuple(cfg.model.data_preprocessor['size']) == crop
            test_cfg = cfg.model.get('test_cfg') or {}
            if test_cfg.get('mode') == 'slide':
                assert tuple(test_cfg['crop_size']) == crop
    elif task == 'cls':
        # mmpretrain names state the resolution only when it is not 224
        train_crops = {_crop_of(ds.get('pipeline')) for ds in _dataloader_datasets(cfg, 'train')}
        assert train_crops - {None} <= {(224, 224)}, f'train crop {train_crops}: name says 224'

    # schedule and batch in the name
    iters = name_iters(path)
    if iters is not None and cfg.train_cfg.get('type') == 'IterBasedTrainLoop':
        assert cfg.train_cfg.max_iters == iters
    batch = name_batch(path)
    if batch is not None:
        assert cfg.train_dataloader.batch_size == batch[1]

    # weights: local files only (the authors' releases must be converted, nothing downloads)
    for ckpt in pretrained_checkpoints(cfg.model):
        assert ckpt and '://' not in ckpt, f'pretrained checkpoint {ckpt!r} is not a local path'
    if cfg.get('load_from'):
        assert '://' not in cfg.load_from


# ----------------------------------------------------------------------------------- model
def _check_param_groups(model, optim_wrapper):
    seen = {}
    for gi, group in enumerate(optim_wrapper.optimizer.param_groups):
        for p in group['params']:
            assert id(p) not in seen, 'a parameter is in two parameter groups'
            seen[id(p)] = gi
    trainable = {id(p): n for n, p in model.named_parameters() if p.requires_grad}
    missing = [n for i, n in trainable.items() if i not in seen]
    assert not missing, f'trainable parameters outside the optimizer: {missing[:5]}'
    lrs = [g['lr'] for g in optim_wrapper.optimizer.param_groups]
    assert all(lr > 0 and math.isfinite(lr) for lr in lrs)
    return lrs


def _check_predictions(task, cfg, outputs, batch):
    n = head_num_classes(cfg)
    assert len(outputs) == len(batch['inputs'])
    if task == 'seg':
        from mmseg.structures import SegDataSample
        for out in outputs:
            assert isinstance(out, SegDataSample)
            assert tuple(out.pred_sem_seg.data.shape) == (1, DENSE_SIZE, DENSE_SIZE)
            assert out.seg_logits.data.shape[0] == n
            assert int(out.pred_sem_seg.data.max()) < n
    elif task == 'det':
        from mmdet.structures import DetDataSample
        for out in outputs:
            assert isinstance(out, DetDataSample)
            pred = out.pred_instances
            k = len(pred)
            assert tuple(pred.bboxes.shape) == (k, 4) and tuple(pred.scores.shape) == (k,)
            assert k == 0 or int(pred.labels.max()) < n
            if has_mask_head(cfg):
                assert tuple(pred.masks.shape) == (k, DENSE_SIZE, DENSE_SIZE)
    else:
        from mmpretrain.structures import DataSample
        for out in outputs:
            assert isinstance(out, DataSample)
            assert tuple(out.pred_score.shape) == (n,)
            assert finite(out.pred_score)


@pytest.mark.parametrize('path', CONFIGS, ids=_ids(CONFIGS))
def test_config_model(path):
    cfg = load_config(path)
    task = model_task(cfg)
    full = path in FULL_STEP
    size = CLS_SIZE if task == 'cls' else DENSE_SIZE

    torch.manual_seed(0)
    model = build_model(cfg, size)
    if full:
        model.init_weights()
    optim_wrapper = build_optim_wrapper(model, cfg)
    _check_param_groups(model, optim_wrapper)

    batch = make_batch(task, cfg)
    if full:
        model.train()
        probe_name, probe = next((n, p) for n, p in model.named_parameters() if p.requires_grad)
        before = probe.detach().clone()
        log_vars = model.train_step(batch, optim_wrapper)
        assert 'loss' in log_vars, f'no total loss: {sorted(log_vars)}'
        bad = {k: v for k, v in log_vars.items() if not finite(v)}
        assert not bad, f'non-finite losses: {bad}'
        assert not torch.equal(before, probe.detach()), f'{probe_name} did not change'
        batch = make_batch(task, cfg)  # train_step moved the tensors in place

    model.eval()
    with torch.no_grad():
        outputs = model.val_step(batch)
    _check_predictions(task, cfg, outputs, batch)


# ------------------------------------------------------------------ SegNeXt / UperNet recipes
# The values below restate docs/reference.md (SegNeXt table, section 2; UperNet, section 1) so a
# config edit that drifts from the published recipe fails here, without building anything.
SEGNEXT_SIZES = {  # arch, drop path, decoder in_channels, channels = ham_channels, NMF rank
    't': ('tiny', 0.1, [64, 160, 256], 256, 16),
    's': ('small', 0.1, [128, 320, 512], 256, 16),
    'b': ('base', 0.1, [128, 320, 512], 512, 64),
    'l': ('large', 0.3, [128, 320, 512], 1024, 64),
}
SEGNEXT_DATASETS = {  # name suffix -> (iterations, batch, test mode, slide crop, slide stride)
    'ade20k-512x512': (160000, 16, 'whole', None, None),
    'cityscapes-1024x1024': (160000, 8, 'slide', (1024, 1024), (768, 768)),
    'coco-stuff164k-512x512': (80000, 16, 'whole', None, None),
    'voc12aug-512x512': (80000, 16, 'whole', None, None),
    'voc12trainval-512x512': (80000, 16, 'whole', None, None),
    'pascal-context-59-480x480': (80000, 16, 'slide', (480, 480), (320, 320)),
    'isaid-896x896': (160000, 16, 'whole', None, None),
}
SEGNEXT_DIR = os.path.join('configs', 'segnext')
SEGNEXT = [p for p in CONFIGS if os.path.dirname(p) == SEGNEXT_DIR]
UPERNET_DIR = os.path.join('configs', 'upernet')
UPERNET = [p for p in CONFIGS if os.path.dirname(p) == UPERNET_DIR]
UPERNET_SIZES = {  # arch, drop path, widths, crop, stride, num_layers, checkpoint
    't': ('tiny', 0.2, [72, 144, 288, 576], 512, 341, 6,
          'checkpoints/conv2former-t_in1k_mmc2f.pth'),
    's': ('small', 0.3, [72, 144, 288, 576], 512, 341, 6,
          'checkpoints/conv2former-s_in1k_mmc2f.pth'),
    'b': ('base', 0.5, [96, 192, 384, 768], 512, 341, 6,
          'checkpoints/conv2former-b_in1k_mmc2f.pth'),
    'l': ('large', 0.4, [128, 256, 512, 1024], 640, 426, 12,
          'checkpoints/conv2former-l_in21k-pre_in1k_mmc2f.pth'),
}


def _segnext_name(size, dataset):
    iters, batch = SEGNEXT_DATASETS[dataset][:2]
    return f'segnext_mscan-{size}_1xb{batch}-adamw-{iters // 1000}k_{dataset}.py'


def _base_line(path):
    with open(os.path.join(REPO_ROOT, path)) as f:
        for line in f:
            if line.startswith('_base_'):
                return line
    return ''


def test_segnext_matrix_complete():
    expected = {os.path.join(SEGNEXT_DIR, _segnext_name(s, d))
                for s in SEGNEXT_SIZES for d in SEGNEXT_DATASETS}
    assert sorted(expected - set(SEGNEXT)) == []
    assert sorted(set(SEGNEXT) - expected) == []


@pytest.mark.parametrize('path', SEGNEXT, ids=_ids(SEGNEXT))
def test_segnext_recipe(path):
    stem = config_stem(path)
    size = stem.split('_')[1].split('-')[1]
    dataset = stem.split('_')[-1]
    arch, dpr, in_channels, channels, rank = SEGNEXT_SIZES[size]
    iters, batch, mode, crop, stride = SEGNEXT_DATASETS[dataset]
    cfg = load_config(path)

    # S/B/L state only their deltas on top of the same dataset's T config
    if size != 't':
        t_name = _segnext_name('t', dataset)
        assert _base_line(path).strip() == f"_base_ = './{t_name}'"

    assert cfg.default_scope == 'mmseg'
    bb, head = cfg.model.backbone, cfg.model.decode_head
    assert cfg.model.type == 'EncoderDecoder'
    assert bb.type == 'mmc2f.MSCAN' and bb.arch == arch and bb.drop_path_rate == dpr
    assert bb.norm_cfg == dict(type='BN', requires_grad=True)
    assert head.type == 'mmc2f.LightHamHead'
    assert head.in_channels == in_channels and head.in_index == [1, 2, 3]
    assert head.channels == channels and head.ham_channels == channels
    assert head.ham_kwargs.MD_R == rank and head.ham_kwargs.MD_S == 1
    assert head.ham_kwargs.train_steps == 6 and head.ham_kwargs.eval_steps == 7
    assert head.ham_kwargs.get('eval_seed') is not None, 'reproducible NMF evaluation is off'
    assert head.norm_cfg == dict(type='GN', num_groups=32, requires_grad=True)
    assert head.dropout_ratio == 0.1
    test_cfg = cfg.model.test_cfg
    assert test_cfg.mode == mode
    if mode == 'slide':
        assert tuple(test_cfg.crop_size) == crop and tuple(test_cfg.stride) == stride

    if dataset == 'voc12trainval-512x512':
        stage1 = _segnext_name(size, 'voc12aug-512x512')
        assert os.path.join(SEGNEXT_DIR, stage1) in SEGNEXT
        assert cfg.load_from == f'work_dirs/{stage1[:-3]}/iter_80000.pth'
        assert bb.init_cfg is None
        train = list(iter_datasets(cfg.train_dataloader.dataset))
        assert [d.ann_file for d in train] == ['ImageSets/Segmentation/trainval.txt']
        assert cfg.test_dataloader.dataset.ann_file == 'ImageSets/Segmentation/test.txt'
        assert cfg.test_evaluator.format_only and size in cfg.test_evaluator.output_dir
    else:
        assert cfg.get('load_from') is None
        assert bb.init_cfg == dict(type='Pretrained',
                                   checkpoint=f'checkpoints/mscan_{size}_mmc2f.pth')
    if dataset == 'voc12aug-512x512':
        anns = sorted(d.ann_file for d in iter_datasets(cfg.train_dataloader.dataset))
        assert anns == ['ImageSets/Segmentation/aug.txt', 'ImageSets/Segmentation/train.txt']

    # optimisation: AdamW 6e-5, (0.9, 0.999), wd 0.01; head lr x10; no decay on norms/pos_block
    ow = cfg.optim_wrapper
    assert ow.type == 'OptimWrapper' and 'constructor' not in ow
    assert ow.optimizer == dict(type='AdamW', lr=6e-5, betas=(0.9, 0.999), weight_decay=0.01)
    assert ow.paramwise_cfg.custom_keys == {
        'pos_block': dict(decay_mult=0.), 'norm': dict(decay_mult=0.), 'head': dict(lr_mult=10.)}
    warmup, poly = cfg.param_scheduler
    assert warmup.type == 'LinearLR' and (warmup.begin, warmup.end) == (0, 1500)
    assert not warmup.by_epoch
    assert poly.type == 'PolyLR' and poly.power == 1.0 and poly.eta_min == 0
    assert (poly.begin, poly.end) == (1500, iters) and not poly.by_epoch
    assert cfg.train_cfg.type == 'IterBasedTrainLoop' and cfg.train_cfg.max_iters == iters
    assert cfg.train_dataloader.batch_size == batch


@pytest.mark.parametrize('path', UPERNET, ids=_ids(UPERNET))
def test_upernet_recipe(path):
    stem = config_stem(path)
    size = stem.split('_')[1].split('-')[1]
    arch, dpr, widths, crop, stride, num_layers, ckpt = UPERNET_SIZES[size]
    assert stem == f'upernet_conv2former-{size}_8xb2-amp-160k_ade20k-{crop}x{crop}'
    cfg = load_config(path)
    if size in 'sb':
        assert _base_line(path).strip() == \
            "_base_ = './upernet_conv2former-t_8xb2-amp-160k_ade20k-512x512.py'"

    bb = cfg.model.backbone
    assert bb.type == 'mmc2f.Conv2Former' and bb.arch == arch and bb.drop_path_rate == dpr
    assert tuple(bb.out_indices) == (0, 1, 2, 3) and bb.layer_scale_init_value == 1e-6
    assert bb.init_cfg == dict(type='Pretrained', checkpoint=ckpt, prefix='backbone.')
    dh, aux = cfg.model.decode_head, cfg.model.auxiliary_head
    assert dh.type == 'UPerHead' and dh.in_channels == widths and dh.channels == 512
    assert dh.num_classes == 150 and aux.num_classes == 150
    assert aux.type == 'FCNHead' and aux.in_index == 2 and aux.in_channels == widths[2]
    assert aux.loss_decode.loss_weight == 0.4
    assert cfg.model.test_cfg == dict(mode='slide', crop_size=(crop, crop), stride=(stride, stride))

    ow = cfg.optim_wrapper
    assert ow.type == 'AmpOptimWrapper' and ow.loss_scale == 'dynamic'
    assert ow.constructor == 'mmc2f.LayerDecayOptimWrapperConstructor'
    assert ow.optimizer == dict(type='AdamW', lr=1e-4, betas=(0.9, 0.999), weight_decay=0.05)
    assert ow.paramwise_cfg == dict(decay_rate=0.9, decay_type='stage_wise', num_layers=num_layers)
    warmup, poly = cfg.param_scheduler
    assert warmup.type == 'LinearLR' and (warmup.begin, warmup.end) == (0, 1500)
    assert poly.type == 'PolyLR' and poly.power == 1.0 and (poly.begin, poly.end) == (1500, 160000)
    assert cfg.train_cfg.max_iters == 160000 and cfg.train_dataloader.batch_size == 2


def test_upernet_layer_decay_groups():
    """Stage-wise decay on Conv2Former-T: stem < stage 1 < ... < stage 4 < heads (lr x1)."""
    cfg = load_config(os.path.join(UPERNET_DIR,
                                   'upernet_conv2former-t_8xb2-amp-160k_ade20k-512x512.py'))
    model = build_model(cfg, DENSE_SIZE)
    ow = build_optim_wrapper(model, cfg)
    lr_of = {}
    for g in ow.optimizer.param_groups:
        for p in g['params']:
            lr_of[id(p)] = g['lr']
    named = dict(model.named_parameters())
    base = cfg.optim_wrapper.optimizer.lr

    def lr(name):
        return lr_of[id(named[name])]

    stem = lr('backbone.downsample_layers.0.0.weight')
    stages = [lr(f'backbone.stages.{i}.0.mlp.fc1.weight') for i in range(4)]
    head = lr('decode_head.conv_seg.weight')
    assert stem < stages[0] < stages[1] < stages[2] < stages[3] < head
    assert head == pytest.approx(base)
    assert stages[3] == pytest.approx(base * 0.9 ** 3)  # num_layers 6: stage 4 -> id 4 of 7
    assert stem == pytest.approx(base * 0.9 ** 7)


@pytest.mark.parametrize('folder', ['segnext', 'upernet'])
def test_readme_lists_every_config(folder):
    with open(os.path.join(REPO_ROOT, 'configs', folder, 'README.md')) as f:
        text = f.read()
    paths = SEGNEXT if folder == 'segnext' else UPERNET
    missing = [config_stem(p) for p in paths if os.path.basename(p) not in text]
    assert not missing, f'configs/{folder}/README.md does not list {missing}'


# ------------------------------------------------------------------------------- short names
def _required_short_names():
    names = [f'segnext/segnext_{s}_{d}' for s in 'tsbl' for d in (
        'ade20k', 'cityscapes', 'voc12aug', 'pascal-context-59', 'coco-stuff164k', 'isaid')]
    names += [f'upernet/upernet_conv2former-{s}_ade20k' for s in 'tsbl']
    names += ['mask_rcnn/mask-rcnn_conv2former-t_coco']
    names += [f'cascade_rcnn/cascade-mask-rcnn_conv2former-{s}_coco' for s in 'tsb']
    names += [f'conv2former/conv2former-{s}_in1k' for s in ('n', 't', 's', 'b', 'l', 'is', 'ib',
                                                           'is-3conv', 'ib-3conv')]
    names += [f'conv2former/conv2former-{s}_in21k' for s in 'sbl']
    names += [f'conv2former/conv2former-{s}_in21k-pre_in1k' for s in 'sbl']
    names += [f'conv2former/conv2former-{s}_in21k-pre_in1k-384px' for s in 'bl']
    names += [f'mscan/mscan-{s}_in1k' for s in 'tsbl']
    return sorted(os.path.join('configs', *n.split('/')) + '.py' for n in names)


def test_short_names_complete():
    assert sorted(set(_required_short_names()) - set(ALIASES)) == []
    # one alias per recipe at most, and no alias of an alias
    targets = [alias_target(p) for p in ALIASES]
    assert len(set(targets)) == len(targets)
    assert all(t in CONFIGS for t in targets), 'an alias names a missing or alias config'


@pytest.mark.parametrize('path', ALIASES, ids=_ids(ALIASES))
def test_short_name(path):
    target = alias_target(path)
    with open(os.path.join(REPO_ROOT, path)) as f:
        assert len(f.read().strip().splitlines()) == 1, 'an alias is one _base_ line'
    stem, long = config_stem(path), config_stem(target)
    # the name's tokens agree with the target's: backbone/size and dataset
    assert stem.split('_')[0] == long.split('_')[0]
    if stem.startswith('segnext_'):  # segnext_b_* -> segnext_mscan-b_*
        assert long.split('_')[1] == f"mscan-{stem.split('_')[1]}"
    assert dataset_token(path) == dataset_token(target)
    assert name_crop(path) in (None, name_crop(target))
    cfg, ref = load_config(path), load_config(target)
    assert cfg.to_dict() == ref.to_dict(), 'an alias must load to its target config'
    assert cfg.get('work_dir') is None  # tools: ./work_dirs/<short name>

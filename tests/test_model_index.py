"""model-index.yml + configs/*/metafile.yml, and the upstream name lookups that read them."""
import os
import os.path as osp
import re

import pytest
import torch
import yaml

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
FOLDERS = ('conv2former', 'mscan', 'segnext', 'upernet', 'mask_rcnn', 'cascade_rcnn')
from _config_utils import alias_target, config_paths  # noqa: E402


def _models():
    with open(osp.join(REPO, 'model-index.yml')) as f:
        index = yaml.safe_load(f)
    assert index['Import'] == [f'configs/{d}/metafile.yml' for d in FOLDERS]
    models, collections = {}, {}
    for rel in index['Import']:
        with open(osp.join(REPO, rel)) as f:
            meta = yaml.safe_load(f)
        for c in meta['Collections']:
            collections[c['Name']] = c
        for m in meta['Models']:
            assert m['Name'] not in models, f'duplicate name {m["Name"]}'
            models[m['Name']] = m
    return models, collections


MODELS, COLLECTIONS = _models()


def test_every_recipe_is_indexed():
    recipes = {osp.splitext(osp.basename(p))[0]: p for p in config_paths()
               if p.split(os.sep)[1] in FOLDERS}
    assert sorted(set(recipes) - set(MODELS)) == []
    for name, m in MODELS.items():
        assert m['Config'] == recipes[name].replace(os.sep, '/'), name
        assert m['In Collection'] in COLLECTIONS
    for c in COLLECTIONS.values():
        assert c['Paper']['Title'] and osp.isfile(osp.join(REPO, c['README']))


def test_aliases_are_the_short_names():
    shorts = {alias_target(p): osp.splitext(osp.basename(p))[0]
              for p in config_paths(aliases=True)}
    for name, m in MODELS.items():
        short = shorts.get(m['Config'].replace('/', os.sep))
        assert m.get('Alias', []) == ([short] if short else []), name


@pytest.mark.parametrize('name, task, metric, value', [
    ('conv2former-t_8xb128_in1k', 'Image Classification', 'Top 1 Accuracy', 83.2),
    ('conv2former-l_in21k-pre_8xb64_in1k-384px', 'Image Classification', 'Top 1 Accuracy', 87.7),
    ('conv2former-ib-3conv_8xb128_in1k', 'Image Classification', 'Top 1 Accuracy', 83.0),
    ('mscan-l_8xb128_in1k', 'Image Classification', 'Top 1 Accuracy', 83.9),
    ('segnext_mscan-b_1xb16-adamw-160k_ade20k-512x512', 'Semantic Segmentation', 'mIoU', 48.5),
    ('segnext_mscan-l_1xb8-adamw-160k_cityscapes-1024x1024', 'Semantic Segmentation', 'mIoU',
     83.2),
    ('segnext_mscan-s_1xb16-adamw-160k_isaid-896x896', 'Semantic Segmentation', 'mIoU', 68.8),
    ('segnext_mscan-t_1xb16-adamw-80k_voc12trainval-512x512', 'Semantic Segmentation', 'mIoU',
     82.7),
    ('upernet_conv2former-l_8xb2-amp-160k_ade20k-640x640', 'Semantic Segmentation', 'mIoU', 54.3),
    ('mask-rcnn_conv2former-t_fpn_amp-ms-crop-3x_coco', 'Object Detection', 'box AP', 48.0),
    ('cascade-mask-rcnn_conv2former-s_fpn_4conv1fc-giou_amp-ms-crop-3x_coco',
     'Instance Segmentation', 'mask AP', 45.7),
])
def test_paper_metrics(name, task, metric, value):
    """Spot checks against the papers' reported numbers."""
    results = {r['Task']: r['Metrics'] for r in MODELS[name]['Results']}
    assert results[task][metric] == value


def test_weights_say_where_they_come_from():
    """Weights are local converted checkpoints (nothing downloadable is claimed); the entry says
    the authors host the release on a file-sharing service and names the converter."""
    with_weights = [m for m in MODELS.values() if m.get('Weights')]
    assert {m['Name'] for m in with_weights} >= {
        'conv2former-t_8xb128_in1k', 'conv2former-l_in21k-pre_8xb64_in1k-384px'}
    for m in MODELS.values():
        text = yaml.safe_dump(m)
        assert 'http' not in text.replace(m.get('Paper', {}).get('URL', '') or '', ''), m['Name']
        for key in ('Converted From', 'Pretrained Backbone', 'Backbone Weights'):
            info = m.get(key)
            if m.get('Weights') and key == 'Converted From':
                assert info, m['Name']
            if not info:
                continue
            converter = info.get('Converter', '')
            if converter:
                script = converter.split()[1]
                assert osp.isfile(osp.join(REPO, script)), converter
                assert re.search(r'checkpoints/\S+_mmc2f\.pth$', converter)
            described = str(info.get('Weights', '')) + str(info.get('Converted From', ''))
            assert 'file-sharing service' in described or info['Weights'].startswith(
                'work_dirs/'), m['Name']
        if m.get('Weights'):
            assert m['Weights'].startswith('checkpoints/')
            assert m['Converted From']['Converter'].endswith(m['Weights'])


def test_modelindex_parses():
    from modelindex.load_model_index import load
    index = load(osp.join(REPO, 'model-index.yml'))
    index.build_models_with_collections()
    assert len(index.models) == len(MODELS)
    # modelindex resolves README paths against the metafile's folder; OpenMMLab's (and ours)
    # are relative to the repository root (checked above)
    errors = [e for e in index.check(silent=True) if 'README' not in e]
    assert errors == []


# ------------------------------------------------------------------------- upstream lookups
@pytest.fixture(scope='module')
def registered():
    from mmc2f.apis.recipes import register_model_index
    names = register_model_index()
    assert register_model_index() == names  # idempotent
    return names


def test_mmpretrain_list_models(registered):
    import mmpretrain
    found = mmpretrain.list_models('*conv2former*')
    assert 'conv2former-t_8xb128_in1k' in found
    assert 'upernet_conv2former-t_8xb2-amp-160k_ade20k-512x512' in found
    assert {n for n in MODELS if 'conv2former' in n} <= set(found)
    assert 'convnext-tiny_32xb128_in1k' in mmpretrain.list_models('convnext-tiny*')  # theirs too
    seg = mmpretrain.list_models('segnext*', task='Semantic Segmentation')
    assert len(seg) == 24  # 28 configs; the 4 voc12aug (VOC stage 1) have no reported number


def test_mmpretrain_get_model(registered):
    import mmpretrain
    torch.manual_seed(0)
    model = mmpretrain.get_model('conv2former-t_8xb128_in1k')
    assert type(model).__name__ == 'ImageClassifier'
    assert type(model.backbone).__name__ == 'Conv2Former'
    params = sum(p.numel() for p in model.parameters())
    assert abs(params - 26.70e6) < 0.01e6  # the paper's 26.7M
    with torch.no_grad():
        scores = model(torch.rand(1, 3, 64, 64), mode='tensor')
    assert tuple(scores.shape) == (1, 1000)


def test_inferencer_with_indexed_config(registered, tmp_path):
    """mmseg's inferencer looks names up only in mmseg's own index (scope 'mmseg'), so mmc2f's
    names go through :func:`get_model_info` as a config path."""
    import numpy as np
    from mmseg.apis import MMSegInferencer

    from mmc2f.apis.recipes import get_model_info
    info = get_model_info('segnext_t_ade20k')
    assert info['config'].endswith('segnext_mscan-t_1xb16-adamw-160k_ade20k-512x512.py')
    assert info['task'] == 'Semantic Segmentation' and info['weights'] is None
    torch.manual_seed(0)
    inferencer = MMSegInferencer(model=info['config'], weights=info['weights'], device='cpu')
    img = (np.random.RandomState(0).rand(64, 96, 3) * 255).astype(np.uint8)
    result = inferencer(img, return_datasamples=True)
    assert tuple(result.pred_sem_seg.shape) == (64, 96)
    assert get_model_info('conv2former-t_in1k')['weights'] == \
        'checkpoints/conv2former-t_in1k_mmc2f.pth'

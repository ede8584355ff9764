"""Weights inside checkpoints: container layouts, prefixes, checked loading."""
import pytest
import torch
import torch.nn as nn

from mmc2f.checkpoint import (CheckpointFormatError, extract_state_dict, find_state_dict,
                              load_state_dict_checked)


def test_extract_state_dict_variants():
    sd = {'a': torch.zeros(1)}
    assert extract_state_dict(sd) is sd
    assert extract_state_dict({'state_dict': sd, 'meta': {}}) is sd
    assert extract_state_dict({'model': sd}) is sd
    ema = {'a': torch.ones(1)}
    assert extract_state_dict({'state_dict': sd, 'state_dict_ema': ema}, prefer_ema=True) is ema
    with pytest.raises(CheckpointFormatError, match='EMA'):
        extract_state_dict({'state_dict': sd}, prefer_ema=True)
    with pytest.raises(CheckpointFormatError, match='cannot find the weights'):
        extract_state_dict({'optimizer': {}, 'epoch': 3})


def test_load_state_dict_checked_names_keys():
    model = nn.Sequential(nn.Linear(2, 3), nn.Linear(3, 1))
    good = {k: v.clone() + 1 for k, v in model.state_dict().items()}
    load_state_dict_checked(model, good)
    assert torch.equal(model[0].weight, good['0.weight'])
    bad = dict(good)
    bad['extra.weight'] = bad.pop('1.bias')
    with pytest.raises(CheckpointFormatError) as info:
        load_state_dict_checked(model, bad, hint='run tools/model_converters/x.py first')
    msg = str(info.value)
    assert 'missing keys: 1.bias' in msg and 'unexpected keys: extra.weight' in msg
    assert 'tools/model_converters/x.py' in msg
    shape = dict(good)
    shape['0.weight'] = torch.zeros(4, 2)
    with pytest.raises(CheckpointFormatError, match=r'0\.weight: checkpoint \(4, 2\) vs model \(3, 2\)'):
        load_state_dict_checked(model, shape)


def test_one_list_of_container_layouts():
    w = {'a': torch.zeros(1)}
    for key in ('state_dict', 'model'):
        assert find_state_dict({key: w, 'meta': {}}) == (w, key)
    for key in ('state_dict_ema', 'model_ema', 'ema_state_dict'):
        assert find_state_dict({'state_dict': {}, key: w}, prefer_ema=True) == (w, key)
    ddp, where = find_state_dict({'state_dict': {'module.a': torch.ones(1)}})
    assert list(ddp) == ['a'] and where == 'state_dict'
    with pytest.raises(CheckpointFormatError, match='EMA weights were requested'):
        find_state_dict({'state_dict': w}, prefer_ema=True)

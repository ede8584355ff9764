"""LightHamHead / Hamburger against mmseg 1.2.2's, plus mmc2f's NMF options inside the head."""
import pytest
import torch
from mmseg.models.decode_heads import LightHamHead as MMSegLightHamHead
from mmseg.models.decode_heads.ham_head import NMF2D as MMSegNMF2D

from mmc2f.models.decode_heads.ham_head import Hamburger, LightHamHead
from mmc2f.models.decode_heads.nmf import NMF2D

pytestmark = [pytest.mark.filterwarnings('ignore:``build_loss`` would be deprecated'),
              pytest.mark.filterwarnings('ignore:Default ``avg_non_ignore``'),
              pytest.mark.filterwarnings('ignore:``build_pixel_sampler`` would be deprecated')]

GN = dict(type='GN', num_groups=32, requires_grad=True)
# SegNeXt-T's head as in mmseg's config
HEAD = dict(in_channels=[64, 160, 256], in_index=[1, 2, 3], channels=256, ham_channels=256,
            dropout_ratio=0.1, num_classes=19, norm_cfg=GN, align_corners=False,
            ham_kwargs=dict(MD_S=1, MD_R=16, train_steps=6, eval_steps=7, inv_t=100,
                            rand_init=True))



def _feats(b=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(b, c, s, s + 2, generator=g)
            for c, s in zip([32, 64, 160, 256], [32, 16, 8, 4])]


def _pair(**overrides):
    cfg = dict(HEAD, **overrides)
    torch.manual_seed(0)
    ours = LightHamHead(**cfg)
    with torch.no_grad():  # non-trivial GN affine parameters
        for name, p in ours.named_parameters():
            if '.gn.' in name:
                p.add_(torch.randn_like(p) * 0.1)
    ref_cfg = dict(cfg, ham_kwargs={k: v for k, v in cfg['ham_kwargs'].items()
                                    if k not in ('eval_seed', 'one_step_grad')})
    ref = MMSegLightHamHead(**ref_cfg)
    ref.load_state_dict(ours.state_dict())
    return ours, ref


def test_keys_equal_mmseg():
    ours, ref = _pair()
    assert [(k, v.shape) for k, v in ours.state_dict().items()] == \
        [(k, v.shape) for k, v in ref.state_dict().items()]
    assert 'hamburger.ham_out.gn.weight' in ours.state_dict()
    # defaults (no norm_cfg): ham_out keeps its bias, as in mmseg
    plain = LightHamHead(in_channels=[8, 8], in_index=[0, 1], channels=8, num_classes=3,
                         ham_channels=8, ham_kwargs=dict(MD_R=2))
    ref_plain = MMSegLightHamHead(in_channels=[8, 8], in_index=[0, 1], channels=8, num_classes=3,
                                  ham_channels=8, ham_kwargs=dict(MD_R=2))
    assert list(plain.state_dict()) == list(ref_plain.state_dict())


@pytest.mark.parametrize('train', [True, False])
@pytest.mark.parametrize('ham_kwargs', [None, dict()], ids=['segnext_t_cfg', 'defaults'])
def test_output_equals_mmseg(train, ham_kwargs):
    ours, ref = _pair(**({} if ham_kwargs is None else dict(ham_kwargs=ham_kwargs)))
    ours.train(train)
    ref.train(train)
    feats = _feats()
    torch.manual_seed(1)
    out = ours(feats)
    torch.manual_seed(1)
    exp = ref(feats)
    assert out.shape == (2, 19, 16, 18)
    torch.testing.assert_close(out, exp, atol=1e-5, rtol=0)
    # the comparison can fail: other RNG state -> other bases -> other output
    torch.manual_seed(2)
    assert (ours(feats) - exp).abs().max() > 1e-4


def test_upper_case_kwargs_equal_lower_case():
    up = LightHamHead(**dict(HEAD, ham_kwargs=dict(MD_S=1, MD_R=8, TRAIN_STEPS=3, EVAL_STEPS=4,
                                                   INV_T=100, RAND_INIT=True)))
    low = LightHamHead(**dict(HEAD, ham_kwargs=dict(md_s=1, md_r=8, train_steps=3, eval_steps=4,
                                                    inv_t=100, rand_init=True)))
    nmf = up.hamburger.ham
    assert (nmf.md_r, nmf.train_steps, nmf.eval_steps) == (8, 3, 4)
    low.load_state_dict(up.state_dict())
    feats = _feats()
    torch.manual_seed(0)
    a = up.eval()(feats)
    torch.manual_seed(0)
    torch.testing.assert_close(low.eval()(feats), a, rtol=0, atol=0)
    with pytest.raises(TypeError, match='unknown ham_kwargs key "ETA"'):
        LightHamHead(**dict(HEAD, ham_kwargs=dict(ETA=0.9)))


def test_registry_no_clash_with_mmseg():
    from mmseg.registry import MODELS as MMSEG_MODELS

    from mmc2f.registry import MODELS
    assert MODELS.get('LightHamHead') is LightHamHead
    assert MMSEG_MODELS.get('LightHamHead') is MMSegLightHamHead
    from mmengine.registry import DefaultScope
    with DefaultScope.overwrite_default_scope('mmseg'):  # as in an mmseg config
        built = MMSEG_MODELS.build(dict(type='mmc2f.LightHamHead', **HEAD))
        assert isinstance(built, LightHamHead)
        assert isinstance(MMSEG_MODELS.build(dict(type='LightHamHead', **HEAD)),
                          MMSegLightHamHead)


def test_input_transform_fixed():
    with pytest.raises(ValueError, match='multiple_select'):
        LightHamHead(input_transform='resize_concat', **HEAD)
    assert LightHamHead(input_transform='multiple_select', **HEAD).input_transform == \
        'multiple_select'


def test_eval_seed_reproducible_and_batch_independent():
    head, _ = _pair(ham_kwargs=dict(HEAD['ham_kwargs'], eval_seed=0))
    head.eval()
    feats = _feats(b=3)
    torch.manual_seed(0)
    a = head(feats)
    torch.manual_seed(1234)
    b = head(feats)
    assert torch.equal(a, b)
    alone = head([f[2:3] for f in feats])
    other = _feats(b=1, seed=9)
    mixed = head([torch.cat([o, f[2:3]]) for o, f in zip(other, feats)])[1:2]
    torch.testing.assert_close(alone, a[2:3], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(mixed, a[2:3], rtol=1e-5, atol=1e-5)


def test_eval_seed_does_not_change_training():
    head, ref = _pair(ham_kwargs=dict(HEAD['ham_kwargs'], eval_seed=0))
    head.train()
    ref.train()
    feats = _feats()
    torch.manual_seed(5)
    out = head(feats)
    torch.manual_seed(5)
    torch.testing.assert_close(out, ref(feats), atol=1e-5, rtol=0)


def test_one_step_grad_in_head():
    full, _ = _pair()
    one, _ = _pair(ham_kwargs=dict(HEAD['ham_kwargs'], one_step_grad=True))
    one.load_state_dict(full.state_dict())
    feats = [f.requires_grad_() for f in _feats()]
    torch.manual_seed(0)
    a = full.train()(feats)
    torch.manual_seed(0)
    b = one.train()(feats)
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    b.square().mean().backward()
    assert all(f.grad is not None and f.grad.abs().sum() > 0 for f in feats[1:])
    assert feats[0].grad is None  # in_index skips stage 1
    for name in ('squeeze.conv.weight', 'hamburger.ham_in.conv.weight', 'conv_seg.weight'):
        assert dict(one.named_parameters())[name].grad.abs().sum() > 0, name


def test_mmseg_nmf_overflows_in_fp16_ours_does_not():
    x = torch.rand(2, 64, 32, 32, generator=torch.Generator().manual_seed(0)) * 50
    ours, ref = NMF2D(MD_R=8).eval(), MMSegNMF2D(dict(MD_R=8)).eval()
    torch.manual_seed(0)
    exp = ours(x)
    with torch.autocast('cpu', dtype=torch.float16):
        torch.manual_seed(0)
        naive = ref(x.half())
        torch.manual_seed(0)
        out = ours(x.half())
    assert not torch.isfinite(naive).all()
    assert out.dtype == torch.float16 and torch.isfinite(out).all()
    torch.testing.assert_close(out.float(), exp, rtol=1e-2, atol=0.5)
    # and in fp32 the two NMF modules agree exactly given the same RNG state
    torch.manual_seed(0)
    torch.testing.assert_close(ref(x), exp, rtol=0, atol=1e-5)


def test_hamburger_shapes():
    ham = Hamburger(64, dict(MD_R=4), norm_cfg=dict(type='GN', num_groups=32))
    x = torch.randn(1, 64, 5, 7)
    y = ham.eval()(x)
    assert y.shape == x.shape and (y >= 0).all()


@pytest.mark.parametrize('meta', ['pad_shape', 'img_shape', 'slide'])
def test_predict_equals_mmseg(meta):
    """predict (forward + predict_by_feat's resize to the input) as mmseg's, for its three ways of
    giving the size; the resize takes mmc2f's integer-factor path."""
    ours, ref = _pair()
    ours.eval(), ref.eval()
    feats = _feats(b=2)
    size = (8 * feats[1].shape[2], 8 * feats[1].shape[3])  # stride 8 of the input
    metas = {'pad_shape': dict(img_shape=(1, 1), pad_shape=size + (3, )),
             'img_shape': dict(img_shape=size),
             'slide': dict(img_shape=torch.Size(size))}[meta]
    results = []
    for head in (ours, ref):
        torch.manual_seed(0)  # the same NMF bases
        with torch.no_grad():
            results.append(head.predict(feats, [metas] * 2, test_cfg=dict()))
    assert results[0].shape == (2, 19) + size
    torch.testing.assert_close(results[0], results[1], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('ham_kwargs', [None, dict(MD_R=4, train_steps=3)],
                         ids=['segnext_t_cfg', 'short'])
def test_training_gradients_equal_mmseg(ham_kwargs):
    """Every parameter's and input's gradient equals mmseg's (same weights, input, RNG state),
    relative to the largest, 1e-3; the default NMF back-propagates through all iterations."""
    ours, ref = _pair(**({} if ham_kwargs is None else dict(ham_kwargs=ham_kwargs)))
    results = []
    for model in (ours, ref):
        feats = [f.requires_grad_() for f in _feats()]
        torch.manual_seed(3)  # the same bases and dropout mask
        out = model.train()(feats)
        (out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum().backward()
        grads = {n: p.grad for n, p in model.named_parameters()}
        grads.update({f'input{i}': f.grad for i, f in enumerate(feats) if f.grad is not None})
        results.append(grads)
    got, exp = results
    assert list(got) == list(exp)
    largest = max(g.abs().max() for g in exp.values())
    for name, g in exp.items():
        assert ((got[name] - g).abs().max() / largest).item() < 1e-3, name


def _seg_samples(b, size, num_classes, seed=0):
    from mmengine.structures import PixelData
    from mmseg.structures import SegDataSample
    g = torch.Generator().manual_seed(seed)
    samples = []
    for _ in range(b):
        label = torch.randint(0, num_classes, (1, ) + size, generator=g)
        label[:, :size[0] // 4] = 255  # ignored pixels
        sample = SegDataSample(gt_sem_seg=PixelData(data=label))
        sample.set_metainfo(dict(img_shape=size, pad_shape=size))
        samples.append(sample)
    return samples


@pytest.mark.parametrize('overrides,fused', [
    (dict(), True),
    (dict(loss_decode=dict(type='CrossEntropyLoss', loss_weight=0.4, avg_non_ignore=True)), True),
    (dict(loss_decode=[dict(type='CrossEntropyLoss', loss_weight=1.0, avg_non_ignore=True),
                       dict(type='DiceLoss', loss_weight=0.5)]), False),
    (dict(sampler=dict(type='OHEMPixelSampler', thresh=0.7, min_kept=100)), False),
    (dict(align_corners=True), False),
], ids=['ce', 'ce_avg_non_ignore', 'ce_and_dice', 'ohem', 'align_corners'])
def test_loss_equals_mmseg(overrides, fused):
    """loss (forward + loss_by_feat: the resize to the labels, the losses, acc_seg) and every
    gradient equal mmseg's, with ignored pixels; a plain cross-entropy takes
    resized_cross_entropy, the others the resize with the adjoint backward."""
    from unittest import mock

    from mmc2f.models.decode_heads import ham_head
    ours, ref = _pair(**overrides)
    feats = _feats(b=2)
    size = (8 * feats[1].shape[2], 8 * feats[1].shape[3])
    results = []
    spy = mock.patch.object(ham_head, 'resized_cross_entropy',
                            wraps=ham_head.resized_cross_entropy)
    for head in (ours, ref):
        inputs = [f.clone().requires_grad_() for f in feats]
        torch.manual_seed(3)
        with spy as called:
            losses = head.train().loss(inputs, _seg_samples(2, size, 19), train_cfg=dict())
        assert called.call_count == (fused and head is ours)
        total = sum(v for k, v in losses.items() if k.startswith('loss'))
        total.backward()
        grads = {n: p.grad for n, p in head.named_parameters()}
        grads.update({f'input{i}': f.grad for i, f in enumerate(inputs) if f.grad is not None})
        results.append((losses, grads))
    (got_l, got_g), (exp_l, exp_g) = results
    assert sorted(got_l) == sorted(exp_l) and len(exp_l) >= 2
    for k in exp_l:
        torch.testing.assert_close(got_l[k].detach(), exp_l[k].detach(), rtol=1e-5, atol=1e-6)
    largest = max(g.abs().max() for g in exp_g.values())
    assert largest > 0 and list(got_g) == list(exp_g)
    for name, g in exp_g.items():
        assert ((got_g[name] - g).abs().max() / largest).item() < 1e-5, name


def test_loss_portable_path_under_dynamo():
    """Under dynamo (torch.compile's tracer) the loss takes the plain ops: no graph break beyond
    mmseg's own loss (its accuracy's boolean indexing), and the same values as eager."""
    import torch._dynamo

    from mmc2f.models.decode_heads import ham_head
    ours, ref = _pair()
    logits = torch.randn(2, 19, 8, 10)
    samples = _seg_samples(2, (64, 80), 19)
    eager = ours.loss_by_feat(logits, samples)
    breaks = []
    for head in (ours, ref):
        torch._dynamo.reset()
        breaks.append(torch._dynamo.explain(head.loss_by_feat)(logits, samples).break_reasons)
    assert len(breaks[0]) <= len(breaks[1])
    assert all('mmseg/models/losses' in str(r) for r in breaks[0]), breaks[0]
    assert ham_head.seg_logits_ok(logits, (64, 80))  # eager took the fused loss
    compiled = torch.compile(ours.loss_by_feat, backend='eager')(logits, samples)
    for k in eager:
        torch.testing.assert_close(compiled[k], eager[k], rtol=1e-5, atol=1e-6)

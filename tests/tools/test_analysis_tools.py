"""tools/analysis_tools: the benchmark and FLOP counter run and report what they claim."""
import csv
import importlib.util
import os.path as osp

import pytest
import torch

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))


def _load(name):
    path = osp.join(ROOT, 'tools', 'analysis_tools', f'{name}.py')
    spec = importlib.util.spec_from_file_location(f'mmc2f_tool_{name}', path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope='module')
def benchmark():
    return _load('benchmark')


def test_benchmark_interleaves_against_baseline_and_appends_csv(benchmark, tmp_path,
                                                                monkeypatch):
    out = tmp_path / 'bench.csv'
    args = ['conv2former-t', '--batch-size', '1', '--input-size', '64', '--repeat', '3',
            '--iters', '1', '--warmup', '0', '--threads', '1', '--csv', str(out)]
    timed, time = [], benchmark.Runner.time

    def spy(runner, iters):
        timed.append(runner.name)
        return time(runner, iters)

    monkeypatch.setattr(benchmark.Runner, 'time', spy)
    rows = benchmark.main(args)
    assert [r['model'] for r in rows] == ['conv2former-t', 'convnext-t']  # the default baseline
    # interleaved rounds, the order reversed every other round
    assert timed == ['conv2former-t', 'convnext-t', 'convnext-t', 'conv2former-t',
                     'conv2former-t', 'convnext-t']
    cand = rows[0]
    assert cand['img_per_s'] > 0 and cand['baseline'] == 'convnext-t'
    assert cand['ratio_min'] <= cand['ratio_median'] <= cand['ratio_max']
    benchmark.main(args)  # appends, header once
    lines = list(csv.DictReader(open(out)))
    assert len(lines) == 4 and lines[2]['model'] == 'conv2former-t'


def test_benchmark_train_memory_shows_with_cp_saving(benchmark):
    common = ['conv2former-t', '--baseline', 'none', '--mode', 'train', '--batch-size', '1',
              '--input-size', '64', '--repeat', '1', '--iters', '1', '--warmup', '0', '--memory',
              '--threads', '1']
    plain = benchmark.main(common)[0]
    with_cp = benchmark.main(common + ['--with-cp'])[0]
    assert 0 < with_cp['saved_mib'] < 0.5 * plain['saved_mib']
    # the process's own view: peak RSS of the step over RSS before it (gradients included)
    assert plain['memory_kind'] == 'peak RSS' and plain['memory_mib'] > plain['saved_mib']


def test_benchmark_rejects_unknown_model(benchmark):
    with pytest.raises(ValueError, match='unknown model'):
        benchmark.build('resnet-t')


def test_segnext_presets_build_both_implementations(benchmark):
    ours = benchmark.build('segnext-t')
    theirs = benchmark.build('mmseg-segnext-t')
    assert type(ours.segmentor.backbone).__module__.startswith('mmc2f')
    assert type(theirs.segmentor.backbone).__module__.startswith('mmseg')
    assert sum(p.numel() for p in ours.parameters()) == sum(p.numel() for p in theirs.parameters())
    x = torch.randn(1, 3, 64, 64)
    assert ours.eval()(x).shape == theirs.eval()(x).shape == (1, 150, 64, 64)


def test_segnext_train_step_is_the_loss_of_both_implementations(benchmark):
    """--mode train for segmentors: the segmentor's own loss (its head resizes the logits to the
    labels); both implementations give the same loss for the same weights; 'logits' keeps the
    F.interpolate step."""
    x = torch.randn(1, 3, 64, 64)
    losses = []
    for name in ('segnext-t', 'mmseg-segnext-t'):
        torch.manual_seed(0)
        model = benchmark.build(name).train()
        assert model.train_target == 'loss'
        torch.manual_seed(1)
        losses.append(model(x))
    assert losses[0].dim() == 0 and losses[0].item() > 0
    torch.testing.assert_close(losses[0], losses[1], rtol=1e-5, atol=1e-6)
    model.train_target = 'logits'
    assert model(x).shape == (1, 150, 64, 64)
    row = benchmark.main(['segnext-t', '--mode', 'train', '--batch-size', '1', '--input-size',
                          '64', '--repeat', '1', '--iters', '1', '--warmup', '0',
                          '--threads', '1'])[0]
    assert row['baseline'] == 'mmseg-segnext-t' and row['img_per_s'] > 0


def test_flops_conventions():
    flops = _load('get_flops')
    benchmark = _load('benchmark')
    model = benchmark.build('conv2former-t')
    params, macs, with_elem = flops.count(model, (64, 64))
    # Conv2Former-T: 4.4 GFLOPs at 224 (paper, multiply-adds); FLOPs scale with pixels.
    assert abs(macs * (224 / 64)**2 / 1e9 - 4.4) < 0.15
    # The elementwise products (A*V, layer scale) add exactly one per output element.
    dims, depths = [72, 144, 288, 576], [3, 3, 12, 3]
    per_block = [3 * d * (64 // s)**2 for d, s in zip(dims, (4, 8, 16, 32))]
    assert with_elem - macs == sum(n * b for n, b in zip(depths, per_block))
    assert params == sum(p.numel() for p in model.parameters())


def test_benchmark_shows_nmf_one_step_grad_memory_saving(benchmark):
    common = ['segnext-t', '--baseline', 'none', '--mode', 'train', '--batch-size', '1',
              '--input-size', '128', '--repeat', '1', '--iters', '1', '--warmup', '0', '--memory',
              '--threads', '1']
    full = benchmark.main(common)[0]
    one_step = benchmark.main(common + ['--one-step-grad'])[0]
    assert one_step['one_step_grad'] is True
    assert 0 < one_step['saved_mib'] < full['saved_mib']
    with pytest.raises(ValueError, match='no NMF'):
        benchmark.main(['convnext-t', '--baseline', 'none', '--one-step-grad', '--repeat', '1'])


def test_benchmark_defaults_per_family(benchmark):
    cls = benchmark.parse_args(['conv2former-t'])
    assert (cls.batch_size, cls.input_size, cls.num_classes) == (8, [224, 224], None)
    seg = benchmark.parse_args(['segnext-t'])
    assert (seg.batch_size, seg.input_size, seg.num_classes) == (1, [512, 512], 150)
    city = benchmark.parse_args(['segnext-t', '--input-size', '1024', '2048'])
    assert city.num_classes == 19  # Cityscapes-sized inputs
    explicit = benchmark.parse_args(['segnext-t', '--batch-size', '2', '--num-classes', '4'])
    assert (explicit.batch_size, explicit.num_classes) == (2, 4)
    config = osp.join(ROOT, 'configs', 'segnext',
                      'segnext_mscan-t_1xb16-adamw-160k_ade20k-512x512.py')
    assert benchmark.is_segmentation(config) and not benchmark.is_segmentation('convnext-t')


_TINY = ['--input-size', '64', '--repeat', '1', '--iters', '1', '--warmup', '0', '--threads', '1']


def test_benchmark_onnxruntime_baseline_runs_the_same_network(benchmark):
    pytest.importorskip('onnxruntime')
    rows = benchmark.main(['mscan-t', '--fuse', '--baseline', 'onnxruntime'] + _TINY)
    assert [r['model'] for r in rows] == ['mscan-t', 'mscan-t@onnxruntime']
    ours, ort_row = rows
    assert 'ONNX Runtime' in ours['path'] and 'ONNX Runtime' in ort_row['path']
    assert float(ours['max_rel_diff']) < 1e-5 and ours['baseline'] == 'mscan-t@onnxruntime'
    # both runners' sessions stop spinning after a run (--ort-spinning keeps the default)
    for flags, stop in (([], '1'), (['--ort-spinning'], None)):
        runner = benchmark.Runner('mscan-t@onnxruntime',
                                  benchmark.parse_args(['mscan-t'] + flags + _TINY))
        options = runner.session.get_session_options()
        if stop is None:
            with pytest.raises(RuntimeError):
                options.get_session_config_entry('session.force_spinning_stop')
        else:
            assert options.get_session_config_entry('session.force_spinning_stop') == stop


def test_benchmark_seg_infer_predict_is_the_argmax_of_the_logits(benchmark):
    runner = benchmark.Runner('segnext-t', benchmark.parse_args(
        ['segnext-t', '--seg-infer', 'predict'] + _TINY))
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    labels = runner.outputs(x)[0]
    runner.model.infer_target = 'logits'
    logits = runner.outputs(x)[0]
    assert labels.shape == (2, 1, 64, 64)
    assert torch.equal(labels, logits.argmax(1, keepdim=True).float())
    for name in ('conv2former-t', 'mscan-t@onnxruntime'):
        with pytest.raises(ValueError, match='--seg-infer'):
            benchmark.Runner(name, benchmark.parse_args(['segnext-t', '--seg-infer', 'predict']
                                                        + _TINY))


def test_benchmark_onnx_deploy_exports_the_folded_network(benchmark):
    pytest.importorskip('onnxruntime')
    folded = benchmark.Runner('mscan-t@onnxruntime',
                              benchmark.parse_args(['mscan-t', '--onnx-deploy'] + _TINY))
    plain = benchmark.Runner('mscan-t', benchmark.parse_args(['mscan-t'] + _TINY))
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        for got, want in zip(folded.outputs(x), plain.outputs(x)):
            assert ((got - want).abs().max() / want.abs().max()).item() < 1e-5
    assert folded.model.block1[0].deployed  # MSCAN folded across its blocks, then exported

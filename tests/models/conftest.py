"""Fixtures shared by the model tests: checking inference-only fused paths against the originals."""
import pytest
import torch


def _randomise(model, seed=0):
    """Non-trivial BatchNorm statistics, norm affines and layer scales, so that every fold of a
    ``switch_to_deploy()`` is exercised (fresh models have identity norms and tiny layer scales)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for mod in model.modules():
            if isinstance(mod, (torch.nn.modules.batchnorm._BatchNorm, torch.nn.LayerNorm)):
                mod.weight.copy_(torch.rand(mod.weight.shape, generator=g) + 0.5)
                mod.bias.copy_(torch.rand(mod.bias.shape, generator=g) - 0.5)
            if isinstance(mod, torch.nn.modules.batchnorm._BatchNorm):
                mod.running_mean.copy_(torch.rand(mod.running_mean.shape, generator=g) - 0.5)
                mod.running_var.copy_(torch.rand(mod.running_var.shape, generator=g) + 0.5)
        for name, p in model.named_parameters():
            if 'layer_scale' in name:
                p.copy_(torch.rand(p.shape, generator=g) * 0.9 + 0.1)
    return model


@pytest.fixture
def randomised():
    return _randomise


@pytest.fixture
def count_aten_convs(monkeypatch):
    """``start = count_aten_convs; calls = start()``: from then on ``calls`` collects the weight
    shape of every ``torch.nn.functional.conv2d`` call (the unfused ATen path)."""

    def start():
        calls, conv2d = [], torch.nn.functional.conv2d

        def counting(x, weight, *args, **kwargs):
            calls.append(tuple(weight.shape))
            return conv2d(x, weight, *args, **kwargs)

        monkeypatch.setattr(torch.nn.functional, 'conv2d', counting)
        return calls

    return start


def _check_train_mode_unchanged(model, x):
    """After ``switch_to_deploy()`` a copy of ``model`` trains exactly like the original: same
    outputs, parameter gradients and BatchNorm statistics, bit for bit (train mode runs the
    original modules)."""
    import copy
    fused = copy.deepcopy(model).switch_to_deploy()
    model.train(), fused.train()
    ref, out = model(x), fused(x)
    for r, o in zip(ref, out):
        assert torch.equal(r, o)
    sum(o.sum() for o in ref).backward()
    sum(o.sum() for o in out).backward()
    for (name, p), q in zip(model.named_parameters(), fused.parameters()):
        assert torch.equal(p.grad, q.grad), name
    fused_buffers = dict(fused.named_buffers())  # plus the non-persistent fused weights
    for name, b in model.named_buffers():
        assert torch.equal(b, fused_buffers[name]), name


@pytest.fixture
def check_train_mode_unchanged():
    return _check_train_mode_unchanged


@pytest.fixture
def run_deployed(monkeypatch, count_aten_convs):
    """``fused, outs = run_deployed(model, x, onednn)``: a deployed copy of the eval-mode
    ``model`` and its outputs under ``no_grad``. With ``onednn`` every convolution must run as a
    oneDNN kernel or :mod:`mmc2f.ops.native`'s (no ATen ``conv2d`` call); without, the portable
    ATen path (used on CUDA, in half precision and in ONNX export) is forced. The fused weights
    stay out of the state dict."""

    def run(model, x, onednn):
        import copy

        from mmc2f.ops import fused as fused_ops
        from mmc2f.ops import native
        if not onednn:
            monkeypatch.setattr(fused_ops, '_POINTWISE', None)
            monkeypatch.setitem(native._state, 'lib', None)
        fused = copy.deepcopy(model).switch_to_deploy().eval()
        with torch.no_grad():
            aten_convs = count_aten_convs()
            outs = fused(x)
        if onednn:
            assert fused_ops._POINTWISE is not None, 'this torch build has oneDNN: the op must load'
            assert aten_convs == [], aten_convs
        else:
            assert len(aten_convs) > 0
        assert list(fused.state_dict()) == list(model.state_dict())
        return fused, outs

    return run

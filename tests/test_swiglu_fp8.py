"""The fused fp8 SwiGLU (cs336_basics/precision/swiglu_fp8.py): the PyTorch references its Triton kernels are
checked against on the GPU (benchmarks/kernel_swiglu_fp8.py; the kernels in Triton's CPU interpreter are in
test_fp8_cast.py), the run-time kernel check, and Float8DelayedSwiGLU against the three float8 layers it replaces
(the CPU path runs the references)."""

import pytest
import torch
import torch.nn.functional as F

from cs336_basics.precision.float8 import E4M3_MAX, E5M2, E5M2_MAX
from cs336_basics.precision.swiglu_fp8 import (swiglu_backward, swiglu_backward_fp8, swiglu_backward_fp8_reference,
                                               swiglu_forward_fp8, swiglu_forward_fp8_reference)
from conftest import broken_swiglu_kernels


def test_swiglu_backward_is_autograds():
    torch.manual_seed(0)
    h1, h3 = (torch.randn(8, 24, dtype=torch.float64, requires_grad=True) for _ in range(2))
    dg = torch.randn(8, 24, dtype=torch.float64)
    (F.silu(h1) * h3).backward(dg)
    dh1, dh3 = swiglu_backward(dg, h1.detach(), h3.detach())
    torch.testing.assert_close(dh1.double(), h1.grad, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(dh3.double(), h3.grad, rtol=1e-6, atol=1e-7)


def test_reference_casts_both_layouts_saturates_and_keeps_the_unscaled_amax():
    torch.manual_seed(1)
    dg, h1, h3 = ((torch.randn(32, 48) * s).bfloat16() for s in (1e-3, 2.0, 2.0))
    dh1, dh3 = swiglu_backward(dg, h1, h3)
    assert dh1.dtype == torch.bfloat16
    amax1, amax3 = float(dh1.float().abs().max()), float(dh3.float().abs().max())
    s1, s3 = torch.tensor(E5M2_MAX / amax1), torch.tensor(4 * E5M2_MAX / amax3)  # dh3: a quarter of its range saturates
    d1, d1t, d3, d3t, amax = swiglu_backward_fp8_reference(dg, h1, h3, s1, s3)
    assert d1.dtype == d3.dtype == E5M2 and d1.shape == (32, 48) and d1t.shape == (48, 32) and d1t.is_contiguous()
    assert torch.equal(d1t.float(), d1.float().t()) and torch.equal(d3t.float(), d3.float().t())
    assert amax.tolist() == [amax1, amax3]  # of the gradients, not of their scaled copies
    assert torch.isfinite(d3.float()).all() and float(d3.float().abs().max()) == E5M2_MAX
    torch.testing.assert_close(d1.float() / s1, dh1.float(), rtol=0.13, atol=0)  # e5m2: 2 mantissa bits
    assert (dh3.float().abs() * s3 > E5M2_MAX).float().mean() > 0.01


def test_forward_reference_is_silu_times_up_in_e4m3_both_layouts():
    torch.manual_seed(2)
    h1, h3 = ((torch.randn(24, 40) * 3).bfloat16() for _ in range(2))
    g = (F.silu(h1.float()) * h3.float()).bfloat16()
    scale = torch.tensor(2 * E4M3_MAX / float(g.float().abs().max()))  # half of the range saturates at the top
    g8, g8t, amax = swiglu_forward_fp8_reference(h1, h3, scale)
    assert g8.dtype == torch.float8_e4m3fn and g8t.shape == (40, 24) and torch.equal(g8t.float(), g8.float().t())
    assert float(amax) == float(g.float().abs().max()) and float(g8.float().abs().max()) == E4M3_MAX
    inside = g.float().abs() * scale < E4M3_MAX
    torch.testing.assert_close((g8.float() / scale)[inside], g.float()[inside], rtol=0.07, atol=2.0**-9 / float(scale))


def test_off_cuda_the_reference_runs():
    dg, h1, h3 = (torch.randn(4, 8).bfloat16() for _ in range(3))
    s = torch.tensor(1e4)
    for got, want in zip(swiglu_backward_fp8(dg, h1, h3, s, s), swiglu_backward_fp8_reference(dg, h1, h3, s, s)):
        assert torch.equal(got.float(), want.float())
    for got, want in zip(swiglu_forward_fp8(h1, h3, s), swiglu_forward_fp8_reference(h1, h3, s)):
        assert torch.equal(got.float(), want.float())


def test_kernel_check_passes_the_references_and_names_a_wrong_kernel(monkeypatch):
    """check_kernels (what a run calls before it trains): on a CPU both sides are the references, so nothing is
    wrong; a kernel whose transposed copy is wrong or whose values are off is named."""
    from cs336_basics.precision import swiglu_fp8 as S

    assert S.check_kernels(64, 48, torch.device("cpu")) == []
    assert S.check_kernels(64, 48, torch.device("cpu"), merged=True) == []
    for kernel, broken, what in broken_swiglu_kernels():
        with monkeypatch.context() as m:
            m.setattr(S, kernel, broken)
            assert any(p.startswith(what) for p in S.check_kernels(64, 48, torch.device("cpu")))


def _delayed_ffn(seed: int):
    from cs336_basics.model.transformer import FeedForward, ModelConfig
    from cs336_basics.precision.fp8_delayed import Float8DelayedLinear

    torch.manual_seed(seed)
    ffn = FeedForward(ModelConfig(dim=32, intermediate_size=80))
    for name in ("w1", "w3", "w2"):
        layer = Float8DelayedLinear(getattr(ffn, name), emulate=True)
        layer.x_scale.fill_(E4M3_MAX / 4.0)
        layer.g_scale.fill_(E5M2_MAX / 1e-2)
        setattr(ffn, name, layer)
    return ffn


def test_fused_swiglu_computes_what_the_three_layers_compute():
    """The fused module (one autograd function, our backward) against the unfused Float8DelayedLinear layers
    with the same scales: output, every gradient, the amaxes recorded for the history."""
    import copy

    from cs336_basics.precision.swiglu_fp8 import Float8DelayedSwiGLU

    ffn = _delayed_ffn(0)
    fused_ffn = copy.deepcopy(ffn)
    fused = Float8DelayedSwiGLU(fused_ffn.w1, fused_ffn.w3, fused_ffn.w2)
    assert list(fused.state_dict()) == list(ffn.state_dict())  # the same keys, in the same order
    x = torch.randn(2, 12, 32)
    dy = torch.randn(2, 12, 32) * 1e-3
    results = []
    for module in (ffn, fused):
        xi = x.clone().requires_grad_()
        module(xi).backward(dy)
        layers = (module.w1, module.w3, module.w2)
        results.append(dict(y=module(x.clone()).detach(), dx=xi.grad, **{f"dw{i}": m.weight.grad for i, m in enumerate(layers)},
                            sinks=torch.stack([m.g_amax_sink.grad for m in layers]),
                            x_amax=torch.stack([m.x_amax for m in layers])))
    plain, ours = results
    assert float(plain["sinks"].min()) > 0 and float(plain["x_amax"].min()) > 0
    for key in plain:
        torch.testing.assert_close(ours[key], plain[key], rtol=1e-5, atol=1e-9, msg=lambda m: f"{key}: {m}")


@pytest.mark.parametrize("cached", [False, True], ids=["cast-in-forward", "cast-once-per-step"])
def test_merged_w13_computes_the_two_products_under_their_shared_scales(cached):
    """--fp8_merge_w13: w1 and w3 as one product each way compute what the two products compute when those use
    the scales the merged ones share: the weights' (one for [w1; w3]; made equal here by giving both weights
    the same amax) and the output gradients' (the smaller of w1's and w3's, which differ here); with the weights
    cast in the forward or once per step (DelayedScaling's buffers: [w1; w3]'s on the fused module, none on w1
    or w3)."""
    import copy

    from cs336_basics.precision.fp8_delayed import DelayedScaling
    from cs336_basics.precision.swiglu_fp8 import Float8DelayedSwiGLU

    ffn = _delayed_ffn(0)
    with torch.no_grad():
        ffn.w3.weight.mul_(ffn.w1.weight.abs().max() / ffn.w3.weight.abs().max())
    ffn.w3.g_scale.fill_(E5M2_MAX / 3e-2)  # below w1's, not by a power of two: the merged products use it for both
    two, one = copy.deepcopy(ffn), copy.deepcopy(ffn)
    two.w1.g_scale.copy_(ffn.w3.g_scale)
    modules = (Float8DelayedSwiGLU(two.w1, two.w3, two.w2), Float8DelayedSwiGLU(one.w1, one.w3, one.w2, merge_w13=True))
    assert list(modules[1].state_dict()) == list(modules[0].state_dict())
    if cached:
        for module in modules:
            DelayedScaling(module, cache_weights=True).cast_weights()
        assert not hasattr(one.w1, "w8") and not hasattr(one.w3, "w8") and hasattr(one.w2, "w8")
        assert modules[1].w13_8.shape == (160, 32) and modules[1].w13_columns.stride() == (1, 160)
    x = torch.randn(2, 12, 32)
    dy = torch.randn(2, 12, 32) * 1e-3
    results = []
    for module in modules:
        xi = x.clone().requires_grad_()
        y = module(xi)
        y.backward(dy)
        layers = (module.w1, module.w3, module.w2)
        results.append(dict(y=y.detach(), dx=xi.grad, **{f"dw{i}": m.weight.grad for i, m in enumerate(layers)},
                            sinks=torch.stack([m.g_amax_sink.grad for m in layers]),
                            x_amax=torch.stack([m.x_amax for m in layers])))
    separate, merged = results
    assert float(separate["dw0"].abs().max()) > 0 and float(separate["sinks"].min()) > 0
    for key in separate:
        torch.testing.assert_close(merged[key], separate[key], rtol=1e-5, atol=1e-9, msg=lambda m: f"{key}: {m}")

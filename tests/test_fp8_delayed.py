"""Float8 linear layers with delayed scaling (precision/fp8_delayed.py) on CPU: numerics against the plain
model (emulated fp8 and the real `torch._scaled_mm` CPU kernel), the scale history, saturation, the
calibration step, the compiled graph and fast accumulation."""

import copy

import pytest
import torch
import torch.nn as nn

from cs336_basics.model.transformer import ModelConfig, Transformer
from cs336_basics.precision.float8 import E4M3_MAX, E5M2_MAX
from cs336_basics.precision.fp8 import convert_model_to_fp8
from cs336_basics.precision.fp8_delayed import DelayedScaling, Float8DelayedLinear

CFG = ModelConfig(vocab_size=512, context_length=32, dim=64, n_layers=2, n_heads=4, intermediate_size=128)


def sqnr_db(ref: torch.Tensor, test: torch.Tensor) -> float:
    return float(10 * torch.log10(ref.pow(2).sum() / (ref - test).pow(2).sum()))


def batch(seed: int = 0, b: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return tuple(torch.randint(0, CFG.vocab_size, (b, CFG.context_length), generator=g) for _ in range(2))


def delayed_copy(model: Transformer, emulate: bool) -> tuple[Transformer, DelayedScaling]:
    model = copy.deepcopy(model)
    report = convert_model_to_fp8(model, "delayed", emulate=emulate)
    assert len(report.converted) == 5 * CFG.n_layers and report.layer == "Float8DelayedLinear"
    return model, DelayedScaling(model)


def grads(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in model.named_parameters()}


def compile_model(model: Transformer) -> None:
    """torch.compile per block and of the output head + loss, in place, as training compiles a model."""
    for block in model.layers:
        block.compile(fullgraph=True)
    model.output.compile(fullgraph=True)


@pytest.mark.parametrize("emulate", [True, False])  # False: the real torch._scaled_mm kernel, on CPU
def test_loss_and_gradients_match_the_plain_model_after_calibration(emulate):
    torch.manual_seed(0)
    plain = Transformer(CFG)
    model, scales = delayed_copy(plain, emulate)
    x, y = batch()
    scales.calibrate(lambda: model(x, y).backward(), list(model.parameters()))
    assert all(p.grad is None for p in model.parameters())  # the calibration's gradients are thrown away
    loss = model(x, y)
    loss.backward()
    ref = plain(x, y)
    ref.backward()
    assert abs(loss.item() - ref.item()) / ref.item() < 1e-2
    ours, theirs = grads(model), grads(plain)
    assert ours.keys() == theirs.keys()  # the same parameter names: checkpoints are the plain model's
    whole = sqnr_db(torch.cat([g.flatten() for g in theirs.values()]), torch.cat([g.flatten() for g in ours.values()]))
    assert whole > 15 and min(sqnr_db(theirs[n], ours[n]) for n in ours) > 10  # the thresholds verify uses
    assert all(torch.isfinite(g).all() for g in ours.values())


def test_scales_follow_the_amax_history_and_saturate_above_it():
    torch.manual_seed(0)
    layer = Float8DelayedLinear(nn.Linear(32, 16, bias=False), emulate=True)
    scales = DelayedScaling(nn.Sequential(layer), history=4)

    def forward_backward(x_amax: float, g_amax: float) -> torch.Tensor:
        x = (torch.rand(8, 32) * 2 - 1) * x_amax / 2
        x[0, 0] = x_amax
        out = layer(x)
        g = (torch.rand_like(out) * 2 - 1) * g_amax / 2
        g[3, 2] = g_amax
        out.backward(g)
        return out

    def step(x_amax: float, g_amax: float) -> torch.Tensor:
        out = forward_backward(x_amax, g_amax)
        scales.update()
        return out

    scales.calibrate(lambda: forward_backward(2.0, 0.5), [layer.weight])
    assert layer.x_scale.item() == pytest.approx(E4M3_MAX / 2.0) and layer.g_scale.item() == pytest.approx(E5M2_MAX / 0.5)
    step(1.0, 0.25)  # smaller amaxes: the history's max still rules
    assert layer.x_scale.item() == pytest.approx(E4M3_MAX / 2.0) and layer.g_scale.item() == pytest.approx(E5M2_MAX / 0.5)
    for _ in range(3):  # the calibration's amaxes leave the 4-step history
        step(1.0, 0.25)
    assert layer.x_scale.item() == pytest.approx(E4M3_MAX) and layer.g_scale.item() == pytest.approx(E5M2_MAX / 0.25)
    assert scales.take_saturation()[0] == 0  # nothing grew past its range yet
    out = step(1e4, 0.25)  # far above the history: saturates instead of overflowing
    assert torch.isfinite(out).all() and torch.isfinite(layer.weight.grad).all()
    assert layer.x_scale.item() == pytest.approx(E4M3_MAX / 1e4)  # and the next step's scale has learned it
    count, ratio, name = scales.take_saturation()  # and the clipped cast was counted
    assert (count, name) == (1, "0 input") and ratio == pytest.approx(1e4)
    assert scales.take_saturation() == (0, 0.0, "0 input")  # counting starts afresh
    step(1e4, 0.5)  # the gradient doubled: its cast clipped at half its amax
    count, ratio, name = scales.take_saturation()
    assert (count, name) == (1, "0 gradient") and ratio == pytest.approx(2.0)


def test_margin_leaves_headroom_and_counts_only_what_still_clips():
    torch.manual_seed(0)
    layer = Float8DelayedLinear(nn.Linear(32, 16, bias=False), emulate=True)
    scales = DelayedScaling(nn.Sequential(layer), history=4, margin=2)

    def step(x_amax: float) -> None:
        x = torch.zeros(8, 32)
        x[0, 0] = x_amax
        layer(x).backward(torch.ones(8, 16))
        scales.update()

    scales.calibrated = True  # the history starts at zero: scale from the steps below
    step(1.0)
    scales.take_saturation()
    assert layer.x_scale.item() == pytest.approx(E4M3_MAX / 4.0)  # 2^2 above the history's max
    assert layer.g_scale.item() == pytest.approx(E5M2_MAX / 4.0)  # the gradients' too (their amax: 1)
    step(3.0)  # 3x the history's max: inside the headroom
    assert scales.take_saturation()[0] == 0
    step(13.0)  # 13 / (3 x 4) > 1: clipped, and counted
    count, ratio, _ = scales.take_saturation()
    assert count == 1 and ratio == pytest.approx(13 / 12)
    with pytest.raises(ValueError, match="margin must be >= 0"):
        DelayedScaling(nn.Sequential(layer), margin=-1)


def test_amax_history_round_trips_and_refuses_other_layers():
    torch.manual_seed(0)
    model, scales = delayed_copy(Transformer(CFG), emulate=True)
    x, y = batch()
    scales.calibrate(lambda: model(x, y).backward(), list(model.parameters()))
    model(*batch(1)).backward()
    scales.update()
    state = scales.state_dict()
    fresh, fresh_scales = delayed_copy(Transformer(CFG), emulate=True)
    assert not fresh_scales.calibrated
    fresh_scales.load_state_dict(state)
    assert fresh_scales.calibrated and torch.equal(fresh_scales.scales(), scales.scales())
    assert torch.equal(fresh_scales.history, scales.history)
    one_layer = DelayedScaling(nn.Sequential(Float8DelayedLinear(nn.Linear(64, 64, bias=False), emulate=True)))
    with pytest.raises(ValueError, match="float8 layers differ"):
        one_layer.load_state_dict(state)


@pytest.mark.parametrize("order", [(3.0, 1.0), (1.0, 3.0)])
def test_micro_batches_keep_the_max_of_their_amaxes(order):
    layer = Float8DelayedLinear(nn.Linear(32, 16, bias=False), emulate=True)
    scales = DelayedScaling(nn.Sequential(layer))
    for i, amax in enumerate(order):
        x = torch.zeros(4, 32)
        x[1, 1] = amax
        g = torch.zeros(4, 16)
        g[2, 2] = amax / 10
        layer(x).backward(g)
        if i < len(order) - 1:
            scales.after_backward()  # what the Trainer does between micro-batches
    assert layer.x_amax.item() == 3.0
    scales.update()
    assert layer.x_amax.item() == 0.0 and layer.g_amax_sink.grad.item() == 0.0
    # the max (0.3) of the two gradient amaxes, not their sum (0.4)
    assert layer.x_scale.item() == pytest.approx(E4M3_MAX / 3.0) and layer.g_scale.item() == pytest.approx(E5M2_MAX / 0.3)


def test_compiled_model_computes_what_the_eager_one_does():
    torch.manual_seed(0)
    model, scales = delayed_copy(Transformer(CFG), emulate=False)
    x, y = batch()
    scales.calibrate(lambda: model(x, y).backward(), list(model.parameters()))
    eager = copy.deepcopy(model)
    eager_scales = DelayedScaling(eager)
    compile_model(model)
    for _ in range(2):  # the second step runs on scales the first one's update set
        losses = []
        for m, s in ((eager, eager_scales), (model, scales)):
            loss = m(x, y)
            loss.backward()
            s.update()
            losses.append(loss.item())
        torch.testing.assert_close(losses[0], losses[1], rtol=1e-4, atol=0)
        torch.testing.assert_close(scales.scales(), eager_scales.scales(), rtol=1e-5, atol=0)
        torch.testing.assert_close(grads(model), grads(eager), rtol=1e-3, atol=1e-6)
        for m in (model, eager):
            m.zero_grad()


def test_compiled_graph_hands_scaled_mm_scales_that_cublaslt_takes(monkeypatch):
    """On Hopper, cuBLASLt refused a scale that the compiled graph passed as a 0-dim view at a 4-byte offset,
    and inductor's CUDA lowering asserts on (1,)-shaped scales; the CPU kernel accepts both. So every scale
    reaching torch._scaled_mm from the compiled graph must be 0-dim at offset 0."""
    from torch._inductor.select_algorithm import extern_kernels

    seen = []
    real = extern_kernels._scaled_mm

    def checked(a, b, scale_a, scale_b, *args, **kwargs):
        seen.extend((s.dim(), s.storage_offset()) for s in (scale_a, scale_b))
        return real(a, b, scale_a, scale_b, *args, **kwargs)

    monkeypatch.setattr(extern_kernels, "_scaled_mm", checked)
    torch._dynamo.reset()  # no cached graph from another test: this one must be generated here
    torch.manual_seed(0)
    model, scales = delayed_copy(Transformer(CFG), emulate=False)
    x, y = batch()
    scales.calibrate(lambda: model(x, y).backward(), list(model.parameters()))
    compile_model(model)
    model(x, y).backward()
    assert len(seen) >= 2 * 3 * 5 * CFG.n_layers  # three products per layer ran through the compiled graph
    assert set(seen) == {(0, 0)}, sorted(set(seen))


def _record_scaled_mm(monkeypatch) -> list[bool]:
    """Each torch._scaled_mm call's use_fast_accum, in call order (the real CPU kernel still computes)."""
    seen, real = [], torch._scaled_mm

    def recording(a, b, **kwargs):
        seen.append(kwargs.get("use_fast_accum", False))
        return real(a, b, **kwargs)

    monkeypatch.setattr(torch, "_scaled_mm", recording)
    return seen


@pytest.mark.parametrize("fast_accum", [False, True])
def test_fast_accumulation_reaches_the_forward_products_only(monkeypatch, fast_accum):
    """--fp8_fast_accum: the forward products (one a layer, three in the fused SwiGLU) ask cuBLAS for fast
    accumulation, as TorchAO's Float8Linear does; every gradient product keeps the promoted accumulation."""
    from cs336_basics.model.transformer import FeedForward
    from cs336_basics.precision.fp8_delayed import convert_to_delayed_float8
    from cs336_basics.precision.swiglu_fp8 import fuse_float8_swiglu

    seen = _record_scaled_mm(monkeypatch)
    layer = Float8DelayedLinear(nn.Linear(32, 48, bias=False), emulate=False)
    layer.fast_accum = fast_accum
    x = torch.randn(16, 32).bfloat16().requires_grad_()
    layer(x).float().sum().backward()
    assert seen == [fast_accum, False, False]  # y; grad_x, grad_w

    seen.clear()
    ffn = nn.Sequential(FeedForward(ModelConfig(dim=32, intermediate_size=64)))
    convert_to_delayed_float8(ffn, {"0.w1", "0.w3", "0.w2"}, emulate=False)
    for m in ffn.modules():
        if isinstance(m, Float8DelayedLinear):
            m.fast_accum = fast_accum
    assert fuse_float8_swiglu(ffn) == 1
    ffn(x).float().sum().backward()
    assert seen[:3] == [fast_accum] * 3 and seen[3:] == [False] * 6  # h1, h3, y; dg, grad_w2, grad_x (2), grad_w1, grad_w3

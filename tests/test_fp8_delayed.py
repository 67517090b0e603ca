"""Float8 linear layers with delayed scaling (precision/fp8_delayed.py) on CPU: numerics against the plain
model (emulated fp8 and the real `torch._scaled_mm` CPU kernel), the scale history, saturation, the
calibration step, the compiled graph, and training through the CLI."""

import copy

import numpy as np
import pytest
import torch
import torch.nn as nn

from cs336_basics.data.batches import RandomWindows
from cs336_basics.errors import UserError
from cs336_basics.model.transformer import ModelConfig, Transformer
from cs336_basics.precision.fp8 import convert_model_to_fp8
from cs336_basics.precision.fp8_delayed import DelayedScaling, Float8DelayedLinear
from cs336_basics.precision.fp8_head import E4M3_MAX, E5M2_MAX
from cs336_basics.training.setup import Fp8Options, build_model
from cs336_basics.training.trainer import TrainConfig, Trainer
from cs336_basics.training.transforms import compile_model

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
    step(3.0)  # 3x the history's max: inside the headroom
    assert scales.take_saturation()[0] == 0
    step(13.0)  # 13 / (3 x 4) > 1: clipped, and counted
    count, ratio, _ = scales.take_saturation()
    assert count == 1 and ratio == pytest.approx(13 / 12)
    with pytest.raises(ValueError, match="margin must be >= 0"):
        DelayedScaling(nn.Sequential(layer), margin=-1)
    with pytest.raises(ValueError, match="margin must be >= 0"):
        DelayedScaling(nn.Sequential(layer), grad_margin=-1)


def test_gradients_take_their_own_margin():
    """grad_margin: headroom for the e5m2 gradient scales alone; the inputs keep margin's (0 here)."""
    torch.manual_seed(0)
    layer = Float8DelayedLinear(nn.Linear(32, 16, bias=False), emulate=True)
    scales = DelayedScaling(nn.Sequential(layer), history=4, grad_margin=3)
    assert (scales.margin, scales.grad_margin) == (0, 3)
    scales.calibrated = True
    x = torch.zeros(8, 32)
    x[0, 0] = 2.0
    layer(x).backward(torch.full((8, 16), 0.5))
    scales.update()
    g_amax = scales.history[0, 1, 0].item()
    assert g_amax > 0
    assert layer.x_scale.item() == pytest.approx(E4M3_MAX / 2.0)
    assert layer.g_scale.item() == pytest.approx(E5M2_MAX / (8 * g_amax))
    assert DelayedScaling(nn.Sequential(layer), margin=2).grad_margin == 2  # unset: as margin


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


def test_trainer_folds_gradient_amaxes_between_micro_batches(tmp_path, monkeypatch):
    torch.manual_seed(0)
    model, _ = build_model(CFG, torch.device("cpu"), Fp8Options(recipe="delayed", emulate=True))
    tokens = np.random.default_rng(0).integers(0, CFG.vocab_size, 4096).astype(np.uint32)
    trainer = Trainer(model, TrainConfig(batch_size=2, gradient_accumulation_steps=3, max_steps=1, warmup_steps=0),
                      RandomWindows(tokens, 2, CFG.context_length, seed=0), tokens[:512], torch.device("cpu"), tmp_path,
                      log=lambda s: None)
    trainer._calibrate_fp8_scales()
    calls = []
    monkeypatch.setattr(trainer.fp8_scales, "after_backward", lambda: calls.append(1))
    trainer.train_step(1e-3)
    assert len(calls) == 3  # between the three micro-batches (2), then update() folds the last one


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


def test_trainer_calibrates_on_the_first_batch_without_moving_the_data_stream(tmp_path):
    torch.manual_seed(0)
    model, _ = build_model(CFG, torch.device("cpu"), Fp8Options(recipe="delayed", emulate=True))
    tokens = np.random.default_rng(0).integers(0, CFG.vocab_size, 4096).astype(np.uint32)
    data = RandomWindows(tokens, 4, CFG.context_length, seed=0)
    trainer = Trainer(model, TrainConfig(batch_size=4, max_steps=3, warmup_steps=1, eval_interval=3, eval_steps=1,
                                         checkpoint_interval=3), data, tokens[:512], torch.device("cpu"), tmp_path,
                      log=lambda s: None)
    assert trainer.fp8_scales is not None and not trainer.fp8_scales.calibrated
    before = RandomWindows(tokens, 4, CFG.context_length, seed=0).next_batch(torch.device("cpu"))
    trainer._calibrate_fp8_scales()
    assert trainer.fp8_scales.calibrated and all(p.grad is None for p in model.parameters())
    after = data.next_batch(torch.device("cpu"))
    assert all(torch.equal(a, b) for a, b in zip(before, after))  # the first step still draws the first batch
    assert (trainer.fp8_scales.scales() != 1).all()  # every layer learned its scales


def test_delayed_recipe_refuses_the_auto_filter():
    with pytest.raises(UserError, match="--fp8_filter auto times TorchAO's layers"):
        build_model(CFG, torch.device("cpu"), Fp8Options(recipe="delayed", filter="auto", emulate=True))


def test_verify_check_fails_on_wrong_gradients_and_reports_a_compile_error(tmp_path, monkeypatch):
    from cs336_basics.precision import verify

    torch.manual_seed(0)
    plain = Transformer(CFG)
    x, y = batch()
    _, ref_grads = verify.loss_and_grads(plain, x, y, torch.device("cpu"))
    tokens = np.random.default_rng(0).integers(0, CFG.vocab_size, 8192).astype(np.uint32)
    monkeypatch.setattr(verify, "short_compiled_training", lambda *a: [5.0] * 5 + [3.0] * 5)  # skip compiling here
    args = (x, y, ref_grads, tokens, CFG, torch.device("cpu"), True, tmp_path)
    assert verify.check_delayed_scaling(plain, *args).passed
    wrong = {n: -g for n, g in ref_grads.items()}  # as a transposed operand or a sign error would give
    check = verify.check_delayed_scaling(plain, x, y, wrong, *args[3:])
    assert check.passed is False and "dB against bf16" in check.figure

    def broken(*a):
        raise RuntimeError("CUDA error: CUBLAS_STATUS_NOT_SUPPORTED when calling cublasLtMatmul")

    monkeypatch.setattr(verify, "short_compiled_training", broken)
    check = verify.check_delayed_scaling(plain, *args)
    assert check.passed is False and "CUBLAS_STATUS_NOT_SUPPORTED" in check.figure


def test_compiled_graph_hands_scaled_mm_scales_that_cublaslt_takes(monkeypatch):
    """On Hopper, cuBLASLt refused a scale that the compiled graph passed as a 0-dim view at a 4-byte offset
    (call 20), and inductor's CUDA lowering asserts on (1,)-shaped scales (call 21); the CPU kernel accepts
    both. So every scale reaching torch._scaled_mm from the compiled graph must be 0-dim at offset 0."""
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


@pytest.mark.parametrize("fused, compiled, checkpointing", [(False, False, False), (None, False, False),
                                                            (None, True, False), (None, True, True)],
                         ids=["layers-eager", "fused-swiglu-eager", "fused-swiglu-compiled", "compiled-checkpointed"])
def test_weights_cast_once_per_step_train_as_the_per_micro_batch_casts_do(tmp_path, fused, compiled, checkpointing):
    """--fp8_weight_cache: the weights cast once per optimizer step (DelayedScaling.cast_weights) and read by
    every micro-batch give the losses and weights of casting them in each forward, over steps whose optimizer
    changes the weights (so a stale cast would show), with gradient accumulation, in the layers one by one and
    the fused SwiGLU, eager and compiled, and with activation checkpointing (on for a new run unless
    --no_gradient_checkpointing), whose recomputed forward reads the cast again."""
    tokens = (np.arange(16384) * 7 % 509).astype(np.uint16)
    results = {}
    for cache in (False, True):
        torch.manual_seed(0)
        model, _ = build_model(CFG, torch.device("cpu"), Fp8Options(recipe="delayed", emulate=True, fused_swiglu=fused),
                               log=lambda s: None)
        trainer = Trainer(model, TrainConfig(batch_size=2, gradient_accumulation_steps=2, max_steps=3, warmup_steps=0,
                                             compile_model=compiled, gradient_checkpointing=checkpointing,
                                             fp8_weight_cache=cache),
                          RandomWindows(tokens, 2, CFG.context_length, 0), tokens[:256], torch.device("cpu"),
                          tmp_path / str(cache), log=lambda s: None)
        assert trainer.fp8_scales.cache_weights == cache
        losses = [float(trainer.train_step(3e-3)[0]) for _ in range(3)]
        results[cache] = losses, {n: p.detach().clone() for n, p in model.named_parameters()}
        if cache:  # column-major buffers, not saved in checkpoints (they follow from the weights)
            layer = trainer.fp8_scales.layers[0]
            assert layer.w8_columns.stride() == (1, layer.out_features)
            assert not any(key.endswith(("w8", "w8_columns", "inv_w")) for key in model.state_dict())
    (plain_losses, plain_weights), (cached_losses, cached_weights) = results[False], results[True]
    assert cached_losses == pytest.approx(plain_losses, rel=1e-6, abs=0)
    for name, weight in plain_weights.items():
        torch.testing.assert_close(cached_weights[name], weight, rtol=1e-6, atol=0, msg=lambda m: f"{name}: {m}")


def test_weight_cache_default_follows_the_recipe_and_asking_for_it_needs_the_delayed_layers(tmp_path):
    """Unset (None): on with the delayed recipe's layers, off with TorchAO's or in bf16, and the Trainer's config
    records what it resolved; asked for by name without delayed layers: an error; --no-fp8_weight_cache: off."""
    tokens = np.arange(4096, dtype=np.uint16) % 509

    def trainer(fp8: Fp8Options | None, cache: bool | None) -> Trainer:
        model, _ = build_model(CFG, torch.device("cpu"), fp8, log=lambda s: None)
        return Trainer(model, TrainConfig(batch_size=2, max_steps=1, fp8_weight_cache=cache),
                       RandomWindows(tokens, 2, CFG.context_length, 0), tokens, torch.device("cpu"), tmp_path,
                       log=lambda s: None)

    delayed, tensorwise = Fp8Options(recipe="delayed", emulate=True), Fp8Options(recipe="tensorwise", emulate=True)
    on = trainer(delayed, None)
    assert on.cfg.fp8_weight_cache is True and on.fp8_scales.cache_weights
    off = trainer(delayed, False)
    assert off.cfg.fp8_weight_cache is False and not off.fp8_scales.cache_weights
    assert trainer(tensorwise, None).cfg.fp8_weight_cache is False
    assert trainer(None, None).cfg.fp8_weight_cache is False
    with pytest.raises(UserError, match="--fp8_weight_cache casts the weights of the delayed recipe's layers"):
        trainer(tensorwise, True)


def test_trainer_logs_fp8_saturation_and_refuses_a_margin_without_delayed_layers(tmp_path):
    """Each log record of a delayed-fp8 run counts its clipped casts (metrics.jsonl, summary); --fp8_margin reaches
    the scales, and is an error for TorchAO's recipes or a negative number."""
    import json

    tokens = np.arange(4096, dtype=np.uint16) % 509

    def trainer(fp8: Fp8Options, **cfg) -> Trainer:
        model, _ = build_model(CFG, torch.device("cpu"), fp8, log=lambda s: None)
        return Trainer(model, TrainConfig(batch_size=2, max_steps=4, log_interval=2, eval_interval=4, eval_steps=1,
                                          **cfg),
                       RandomWindows(tokens, 2, CFG.context_length, 0), tokens, torch.device("cpu"), tmp_path,
                       log=lambda s: None)

    delayed = Fp8Options(recipe="delayed", emulate=True)
    run = trainer(delayed, fp8_margin=1)
    assert run.fp8_scales.margin == 1
    summary = run.train()
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    logged = [r for r in records if "loss" in r]
    assert [r["step"] for r in logged] == [2, 4]
    assert all(isinstance(r["fp8_saturated"], int) and r["fp8_overflow"] >= 0 for r in logged)
    assert summary["fp8_saturated"] == sum(r["fp8_saturated"] for r in logged)
    with pytest.raises(UserError, match="--fp8_margin sets the headroom of the delayed recipe's scales"):
        trainer(Fp8Options(recipe="tensorwise", emulate=True), fp8_margin=1)
    with pytest.raises(UserError, match="--fp8_margin must be >= 0"):
        trainer(delayed, fp8_margin=-1)
    assert trainer(delayed, fp8_grad_margin=3).fp8_scales.grad_margin == 3
    with pytest.raises(UserError, match="--fp8_grad_margin sets the headroom of the delayed recipe's gradient scales"):
        trainer(Fp8Options(recipe="tensorwise", emulate=True), fp8_grad_margin=3)
    with pytest.raises(UserError, match="--fp8_grad_margin sets"):  # 0 is a margin too, not the unset default
        trainer(Fp8Options(recipe="tensorwise", emulate=True), fp8_grad_margin=0)
    trainer(Fp8Options(recipe="tensorwise", emulate=True), fp8_margin=0, fp8_weight_cache=False)  # defaults: fine
    with pytest.raises(UserError, match="--fp8_grad_margin must be >= 0"):
        trainer(delayed, fp8_grad_margin=-1)


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


def test_fast_accumulation_option_is_set_reported_and_refused_for_other_recipes():
    from cs336_basics.perf.matrix import parse_mode

    seen = []
    model, report = build_model(CFG, torch.device("cpu"), Fp8Options(recipe="delayed", emulate=True, fast_accum=True),
                                log=seen.append)
    assert any("emulated float8 products compute in float32, so it changes nothing" in line for line in seen)
    layers = [m for m in model.modules() if isinstance(m, Float8DelayedLinear)]
    assert layers and all(m.fast_accum for m in layers) and report.fast_accum
    assert "fast accumulation on a GPU, as TorchAO's (--fp8_fast_accum)" in report.summary()
    seen.clear()  # unset: on with the delayed recipe, without the line for asking for it under emulation
    model, default = build_model(CFG, torch.device("cpu"), Fp8Options(recipe="delayed", emulate=True), log=seen.append)
    assert default.fast_accum and all(m.fast_accum for m in model.modules() if isinstance(m, Float8DelayedLinear))
    assert not any("changes nothing" in line for line in seen)
    _, plain = build_model(CFG, torch.device("cpu"), Fp8Options(recipe="delayed", emulate=True, fast_accum=False),
                           log=lambda s: None)
    assert not plain.fast_accum and "fast accumulation" not in plain.summary()
    _, torchao = build_model(CFG, torch.device("cpu"), Fp8Options(recipe="tensorwise", emulate=True), log=lambda s: None)
    assert not torchao.fast_accum  # TorchAO's layers choose their own (fast in the forward)
    with pytest.raises(UserError, match="use --fp8_recipe delayed"):
        build_model(CFG, torch.device("cpu"), Fp8Options(recipe="tensorwise", emulate=True, fast_accum=True))
    assert parse_mode("fp8-delayed-compile-fastacc")["fp8_fast_accum"] is True
    assert parse_mode("fp8-delayed-compile-nofastacc")["fp8_fast_accum"] is False
    assert parse_mode("fp8-delayed-compile")["fp8_fast_accum"] is None
    with pytest.raises(UserError, match="fp8-delayed only"):
        parse_mode("fp8-tensorwise-compile-fastacc")
    with pytest.raises(UserError, match="contradict each other"):
        parse_mode("fp8-delayed-compile-fastacc-nofastacc")


def test_fast_accumulation_and_weight_cache_flags_default_recorded_kept_on_resume_and_refused_without_fp8(tmp_path, capsys, tiny_cli):
    import json

    train, base = tiny_cli

    assert train(base + ["--out_dir", tmp_path / "run", "--max_steps", 2, "--use_fp8", "--fp8_emulate"]) == 0
    out = capsys.readouterr().out
    assert "(--fp8_fast_accum)" in out and "once per optimizer step (--fp8_weight_cache)" in out  # the defaults
    run = json.loads((tmp_path / "run" / "run.json").read_text())
    assert run["fp8_fast_accum"] is True and run["train_config"]["fp8_weight_cache"] is True
    assert train(base + ["--out_dir", tmp_path / "off", "--max_steps", 2, "--use_fp8", "--fp8_emulate",
                         "--no-fp8_fast_accum", "--no-fp8_weight_cache"]) == 0
    assert "(--fp8_fast_accum)" not in capsys.readouterr().out
    run = json.loads((tmp_path / "off" / "run.json").read_text())
    assert run["fp8_fast_accum"] is False and run["train_config"]["fp8_weight_cache"] is False
    assert train(["--resume", tmp_path / "off", "--max_steps", 3, "--fp8_emulate", "--cache_dir", tmp_path / "cache",
                  "--sample_tokens", 0]) == 0
    out = capsys.readouterr().out  # the checkpoint's choices, not the defaults
    assert "(--fp8_fast_accum)" not in out and "(--fp8_weight_cache)" not in out
    assert train(base + ["--out_dir", tmp_path / "bf16", "--max_steps", 1]) == 0
    assert json.loads((tmp_path / "bf16" / "run.json").read_text())["train_config"]["fp8_weight_cache"] is False
    assert train(base + ["--out_dir", tmp_path / "b", "--max_steps", 1, "--fp8_fast_accum"]) == 2
    assert "--fp8_fast_accum / --no-fp8_fast_accum only apply with --use_fp8" in capsys.readouterr().err
    assert train(base + ["--out_dir", tmp_path / "c", "--max_steps", 1, "--use_fp8", "--fp8_emulate", "--fp8_recipe",
                         "tensorwise", "--fp8_fast_accum"]) == 2
    assert "--fp8_fast_accum sets the delayed recipe's layers" in capsys.readouterr().err


def test_blocks_kept_in_bf16_stay_plain_and_the_rest_converts(tmp_path, capsys, tiny_cli):
    """--fp8_bf16_blocks: the named blocks' layers stay nn.Linear (not fused, no delayed scales) and say why in
    the summary; -1 is the last block; out of range, malformed, or without --use_fp8: a one-line error."""
    import json

    from cs336_basics.perf.measured import _experiment
    from cs336_basics.precision.swiglu_fp8 import Float8DelayedSwiGLU
    from cs336_basics.training.setup import resolve_bf16_blocks

    model, report = build_model(CFG, torch.device("cpu"), Fp8Options(recipe="delayed", emulate=True, bf16_blocks=(-1,)),
                                log=lambda s: None)
    assert all(type(m) is nn.Linear for m in model.layers[1].modules() if isinstance(m, nn.Linear))
    assert isinstance(model.layers[0].ffn, Float8DelayedSwiGLU) and not isinstance(model.layers[1].ffn, Float8DelayedSwiGLU)
    assert len(DelayedScaling(model).layers) == 5 and report.fused_swiglu == 1
    assert "kept in bf16 (--fp8_bf16_blocks): layers.1.attn.qkv" in report.summary()
    assert resolve_bf16_blocks((0, -1), 24) == {0, 23}
    with pytest.raises(UserError, match="--fp8_bf16_blocks 24: the model has 24 blocks"):
        resolve_bf16_blocks((0, 24), 24)
    assert _experiment({"fp8_bf16_blocks": [0]}) and not _experiment({"fp8_bf16_blocks": []})
    assert _experiment({"fp8_start_step": 10}) and not _experiment({"fp8_start_step": 0})
    assert all(_experiment(s) for s in ({"fp8_grad_margin": 3}, {"fp8_grad_margin": 0}, {"fp8_margin": 1}))
    assert not _experiment({"fp8_grad_margin": None, "fp8_margin": 0})
    train, base = tiny_cli
    fp8 = ["--use_fp8", "--fp8_emulate", "--max_steps", 2]
    assert train(base + fp8 + ["--out_dir", tmp_path / "run", "--fp8_bf16_blocks", "0"]) == 0
    assert json.loads((tmp_path / "run" / "run.json").read_text())["fp8_bf16_blocks"] == [0]
    capsys.readouterr()
    assert train(base + fp8 + ["--out_dir", tmp_path / "far", "--fp8_bf16_blocks", "9"]) == 2
    assert "--fp8_bf16_blocks 9: the model has" in capsys.readouterr().err
    assert train(base + ["--out_dir", tmp_path / "bf16", "--max_steps", 1, "--fp8_bf16_blocks", "0"]) == 2
    assert "--fp8_bf16_blocks only applies with --use_fp8" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        train(base + fp8 + ["--out_dir", tmp_path / "bad", "--fp8_bf16_blocks", "first"])


@pytest.mark.parametrize("compiled", [False, True], ids=["eager", "compiled"])
def test_fp8_start_step_trains_the_first_steps_as_the_plain_model(tmp_path, compiled):
    """--fp8_start_step 2: steps 1-2 compute as the plain model (the same losses as a bf16 run; float32 on CPU),
    step 3 switches to float8 (the scales calibrated then; a compiled model recompiles once), and the losses go on
    close to the plain run's. Asked for without delayed layers: an error."""
    tokens = np.arange(4096, dtype=np.uint16) % 509

    def losses(fp8: Fp8Options | None, **cfg) -> tuple[list[float], Trainer]:
        torch.manual_seed(0)
        model, _ = build_model(CFG, torch.device("cpu"), fp8, log=lambda s: None)
        trainer = Trainer(model, TrainConfig(batch_size=2, max_steps=4, compile_model=compiled, gradient_checkpointing=False,
                                             **cfg),
                          RandomWindows(tokens, 2, CFG.context_length, 0), tokens, torch.device("cpu"), tmp_path,
                          log=lambda s: None)
        out = []
        for _ in range(4):
            out.append(float(trainer.train_step(1e-3)[0]))
            trainer.step += 1
        return out, trainer

    delayed = Fp8Options(recipe="delayed", emulate=True)
    plain, _ = losses(None)
    late, trainer = losses(delayed, fp8_start_step=2)
    assert late[:2] == pytest.approx(plain[:2], rel=1e-6, abs=0)  # the plain layers' numbers
    assert late[2:] != pytest.approx(plain[2:], rel=1e-6, abs=0)  # float8's from step 3
    assert late[2:] == pytest.approx(plain[2:], rel=2e-2)
    assert trainer.fp8_scales.calibrated and not any(getattr(m, "high_precision", False) for m in trainer.model.modules())
    early, _ = losses(delayed)
    assert early[0] != pytest.approx(plain[0], rel=1e-6, abs=0)  # float8 from the first step by default
    with pytest.raises(UserError, match="--fp8_start_step switches the delayed recipe's layers"):
        losses(Fp8Options(recipe="tensorwise", emulate=True), fp8_start_step=2)


def test_margin_flags_reach_the_run_and_are_refused_without_the_delayed_recipe(tmp_path, capsys, tiny_cli):
    """--fp8_margin / --fp8_grad_margin from the command line: recorded in run.json's train config; without
    --use_fp8 (no delayed layers) a one-line error."""
    import json

    train, base = tiny_cli
    assert train(base + ["--out_dir", tmp_path / "run", "--max_steps", 2, "--use_fp8", "--fp8_emulate",
                         "--fp8_margin", 1, "--fp8_grad_margin", 3]) == 0
    config = json.loads((tmp_path / "run" / "run.json").read_text())["train_config"]
    assert (config["fp8_margin"], config["fp8_grad_margin"]) == (1, 3)
    capsys.readouterr()
    assert train(base + ["--out_dir", tmp_path / "bf16", "--max_steps", 1, "--fp8_grad_margin", 3]) == 2
    err = capsys.readouterr().err.strip()
    assert "--fp8_grad_margin sets the headroom" in err and len(err.splitlines()) == 1

"""The fused fp8 SwiGLU (cs336_basics/precision/swiglu_fp8.py): the PyTorch references its Triton kernels are
checked against on the GPU (benchmarks/kernel_swiglu_fp8.py), the kernels in Triton's CPU interpreter where
Triton is installed, and Float8DelayedSwiGLU against the three float8 layers it replaces, alone and in
compiled training (the CPU path runs the references)."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from cs336_basics.precision.fp8_head import E4M3_MAX, E5M2, E5M2_MAX
from cs336_basics.precision.swiglu_fp8 import (swiglu_backward, swiglu_backward_fp8, swiglu_backward_fp8_reference,
                                               swiglu_forward_fp8, swiglu_forward_fp8_reference)

ROOT = Path(__file__).resolve().parents[1]


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


def test_kernel_bench_without_a_gpu_is_a_one_line_error():
    if torch.cuda.is_available():
        return
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "kernel_swiglu_fp8.py")], capture_output=True,
                         text=True, cwd=ROOT)
    assert out.returncode == 2 and out.stderr.strip() == "error: kernel_swiglu_fp8.py times a Triton kernel: it needs a CUDA GPU"


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


@pytest.mark.parametrize("checkpointing", [False, True], ids=["kept", "recomputed"])
def test_fused_swiglu_compiles_and_calibrates_through_the_layers(tmp_path, checkpointing):
    import numpy as np

    from cs336_basics.data.batches import RandomWindows
    from cs336_basics.model.transformer import ModelConfig
    from cs336_basics.precision.swiglu_fp8 import Float8DelayedSwiGLU
    from cs336_basics.training.setup import Fp8Options, build_model
    from cs336_basics.training.trainer import TrainConfig, Trainer

    cfg = ModelConfig(vocab_size=256, context_length=16, dim=32, n_layers=2, n_heads=2, intermediate_size=64)
    tokens = (np.arange(8192) * 7 % 251).astype(np.uint16)
    losses = {}
    for fused in (False, None):  # None: the default, fused with the delayed recipe
        torch.manual_seed(0)  # w1 and w3 as two products: the same numbers as the layers (merged: test_merged_w13_...)
        model, report = build_model(cfg, torch.device("cpu"), Fp8Options(recipe="delayed", emulate=True, fused_swiglu=fused,
                                                                          merge_w13=False), log=lambda s: None)
        kernel = fused is None
        assert sum(isinstance(m, Float8DelayedSwiGLU) for m in model.modules()) == report.fused_swiglu == 2 * kernel
        assert ("2 SwiGLU blocks: one function each" in report.summary()) == kernel
        trainer = Trainer(model, TrainConfig(batch_size=2, max_steps=4, compile_model=True, gradient_checkpointing=checkpointing),
                          RandomWindows(tokens, 2, 16, 0), tokens[:200], torch.device("cpu"), tmp_path / str(kernel),
                          log=lambda s: None)
        losses[kernel] = [float(trainer.train_step(1e-3)[0]) for _ in range(4)]
    assert losses[True] == pytest.approx(losses[False], rel=1e-4)


def test_a_run_checks_the_kernels_at_its_shape_and_refuses_wrong_ones(monkeypatch):
    """build_model checks the fused SwiGLU's kernels at the run's shape (micro-batch tokens x SwiGLU width) before
    training; a kernel whose transposed copy is wrong (as the device's Triton made one of ours, NOTES 42) or
    whose values are off is refused with a one-line error saying how to train without it."""
    from cs336_basics.errors import UserError
    from cs336_basics.model.transformer import ModelConfig
    from cs336_basics.precision import swiglu_fp8 as S
    from cs336_basics.training.setup import Fp8Options, build_model

    assert S.check_kernels(64, 48, torch.device("cpu")) == []  # on a CPU both sides are the references
    cfg = ModelConfig(vocab_size=256, context_length=16, dim=32, n_layers=2, n_heads=2, intermediate_size=64)
    seen = []
    model, report = build_model(cfg, torch.device("cpu"), Fp8Options(recipe="delayed", emulate=True), 2 * 16, log=seen.append)
    assert "fused SwiGLU kernels checked at 32 tokens x 64" in " ".join(seen)
    assert report.kernels_checked == "32 tokens x 64"  # what a bench row records
    right_forward, right_backward = S.swiglu_forward_fp8, S.swiglu_backward_fp8

    def transposed_wrong(h1, h3, scale, config=None):
        g8, g8t, amax = right_forward(h1, h3, scale)
        return g8, g8t.flip(0).contiguous(), amax

    def values_wrong(dg, h1, h3, s1, s3, config=None):
        d1, d1t, d3, d3t, amax = right_backward(dg * 2, h1, h3, s1, s3)
        return d1, d1t, d3, d3t, amax / 2

    for broken, what in ((transposed_wrong, "forward output 0: the transposed copy differs"),
                         (values_wrong, "backward output 0: values more than one float8 step")):
        with monkeypatch.context() as m:
            m.setattr(S, "swiglu_forward_fp8" if broken is transposed_wrong else "swiglu_backward_fp8", broken)
            assert any(p.startswith(what) for p in S.check_kernels(64, 48, torch.device("cpu")))
            with pytest.raises(UserError, match=f"wrong results on this machine at 32 x 64 .*{what}.*train with "
                               r"--no-fp8_merge_w13 \(or --no-fp8_fused_swiglu\)"):  # the default merges w1 | w3
                build_model(cfg, torch.device("cpu"), Fp8Options(recipe="delayed", emulate=True), 2 * 16, log=lambda s: None)


def test_fused_swiglu_needs_the_delayed_recipe():
    from cs336_basics.errors import UserError
    from cs336_basics.model.transformer import ModelConfig
    from cs336_basics.perf.matrix import parse_mode
    from cs336_basics.precision.swiglu_fp8 import Float8DelayedSwiGLU
    from cs336_basics.training.setup import Fp8Options, build_model

    assert parse_mode("fp8-delayed-compile-unfused")["fp8_fused_swiglu"] is False
    assert parse_mode("fp8-delayed-compile")["fp8_fused_swiglu"] is None
    with pytest.raises(UserError, match="fp8-delayed only"):
        parse_mode("fp8-tensorwise-compile-unfused")
    cfg = ModelConfig(vocab_size=256, context_length=16, dim=32, n_layers=1, n_heads=2, intermediate_size=64)
    model, report = build_model(cfg, torch.device("cpu"), Fp8Options(recipe="tensorwise", emulate=True), log=lambda s: None)
    assert report.fused_swiglu == 0 and not any(isinstance(m, Float8DelayedSwiGLU) for m in model.modules())
    with pytest.raises(UserError, match="fuses the delayed recipe's layers"):
        build_model(cfg, torch.device("cpu"), Fp8Options(recipe="tensorwise", emulate=True, fused_swiglu=True))


def test_verify_check_of_the_fused_swiglu_catches_a_broken_kernel(monkeypatch):
    import cs336_basics.precision.swiglu_fp8 as swiglu_fp8
    from cs336_basics.precision.verify import check_swiglu_kernels

    assert check_swiglu_kernels(torch.device("cpu")).passed
    real = swiglu_fp8.swiglu_backward_fp8

    def swapped(dg, h1, h3, scale1, scale3, *args):  # the two gradients exchanged
        d1, d1t, d3, d3t, amax = real(dg, h1, h3, scale1, scale3, *args)
        return d3, d3t, d1, d1t, amax

    monkeypatch.setattr(swiglu_fp8, "swiglu_backward_fp8", swapped)
    broken = check_swiglu_kernels(torch.device("cpu"))
    assert broken.passed is False and "relative error" in broken.figure
    monkeypatch.undo()
    real_merged = swiglu_fp8.swiglu_backward_fp8_merged

    def halves_swapped(dg, h13, scale, *args):  # the merged layout's two halves exchanged
        d13, d13t, amax = real_merged(dg, h13, scale, *args)
        n = d13.shape[1] // 2
        return torch.cat([d13[:, n:], d13[:, :n]], 1), torch.cat([d13t[n:], d13t[:n]]), amax

    monkeypatch.setattr(swiglu_fp8, "swiglu_backward_fp8_merged", halves_swapped)
    broken = check_swiglu_kernels(torch.device("cpu"))
    assert broken.passed is False and broken.figure.endswith("(over its bounds)")


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


def test_merged_w13_trains_compiled_and_is_recorded(tmp_path):
    """build_model with merge_w13: the fused SwiGLUs run w1 and w3 as one product, the report says so and its
    kernel check covers that layout; compiled training with the weights cast once per step follows the
    separate products' losses (the shared scales round a little differently) and keeps the state-dict keys."""
    import numpy as np

    from cs336_basics.data.batches import RandomWindows
    from cs336_basics.model.transformer import ModelConfig
    from cs336_basics.precision.swiglu_fp8 import Float8DelayedSwiGLU
    from cs336_basics.training.setup import Fp8Options, build_model
    from cs336_basics.training.trainer import TrainConfig, Trainer

    cfg = ModelConfig(vocab_size=256, context_length=16, dim=32, n_layers=2, n_heads=2, intermediate_size=64)
    tokens = (np.arange(8192) * 7 % 251).astype(np.uint16)
    losses, keys = {}, {}
    for merge in (False, True):
        torch.manual_seed(0)
        seen = []
        model, report = build_model(cfg, torch.device("cpu"), Fp8Options(recipe="delayed", emulate=True, merge_w13=merge),
                                    2 * 16, log=seen.append)
        assert report.merge_w13 == merge and ("one float8 product each way" in report.summary()) == merge
        assert all(m.merge_w13 == merge for m in model.modules() if isinstance(m, Float8DelayedSwiGLU))
        keys[merge] = list(model.state_dict())
        trainer = Trainer(model, TrainConfig(batch_size=2, gradient_accumulation_steps=2, max_steps=6, compile_model=True,
                                             fp8_weight_cache=True), RandomWindows(tokens, 2, 16, 0), tokens[:200],
                          torch.device("cpu"), tmp_path / str(merge), log=lambda s: None)
        losses[merge] = [float(trainer.train_step(1e-3)[0]) for _ in range(6)]
    assert keys[True] == keys[False]
    assert losses[True] == pytest.approx(losses[False], rel=2e-2) and losses[True][-1] < losses[True][0]


def test_merged_w13_is_the_fused_swiglus_default_and_needs_it(tmp_path, capsys, tiny_cli):
    """w1 | w3 as one product: on by default wherever the fused SwiGLU runs, off without it (no error); asked for by
    name without the fused SwiGLU, with another recipe or without --use_fp8: refused (one line); a run says it,
    records it in run.json, and a resume keeps it (--no-fp8_merge_w13 too)."""
    import json

    from cs336_basics.errors import UserError
    from cs336_basics.model.transformer import ModelConfig
    from cs336_basics.perf.matrix import parse_mode
    from cs336_basics.training.setup import Fp8Options, build_model

    assert parse_mode("fp8-delayed-compile-w13")["fp8_merge_w13"] is True
    assert parse_mode("fp8-delayed-compile-now13")["fp8_merge_w13"] is False
    assert parse_mode("fp8-delayed-compile")["fp8_merge_w13"] is None
    for mode, message in (("fp8-tensorwise-compile-w13", "fp8-delayed only"), ("fp8-delayed-compile-w13-now13", "contradict")):
        with pytest.raises(UserError, match=message):
            parse_mode(mode)
    cfg = ModelConfig(vocab_size=256, context_length=16, dim=32, n_layers=1, n_heads=2, intermediate_size=64)
    for options in (Fp8Options(recipe="delayed", emulate=True, fused_swiglu=False, merge_w13=True),
                    Fp8Options(recipe="tensorwise", emulate=True, merge_w13=True)):
        with pytest.raises(UserError, match="--fp8_merge_w13 runs the fused SwiGLU's w1 and w3 as one product"):
            build_model(cfg, torch.device("cpu"), options)
    for options, merged in ((Fp8Options(recipe="delayed", emulate=True), True),
                            (Fp8Options(recipe="delayed", emulate=True, fused_swiglu=False), False),
                            (Fp8Options(recipe="tensorwise", emulate=True), False),
                            (Fp8Options(recipe="delayed", emulate=True, merge_w13=False), False)):
        assert build_model(cfg, torch.device("cpu"), options)[1].merge_w13 is merged, options
    train, base = tiny_cli
    said = "one float8 product each way, one weight scale and one gradient scale for both"
    for name, flags, merged in (("default", [], True), ("off", ["--no-fp8_merge_w13"], False)):
        assert train(base + ["--out_dir", tmp_path / name, "--max_steps", 2, "--use_fp8", "--fp8_emulate", *flags]) == 0
        assert (said in capsys.readouterr().out) is merged
        assert json.loads((tmp_path / name / "run.json").read_text())["fp8_merge_w13"] is merged
        assert train(["--resume", tmp_path / name, "--max_steps", 3, "--fp8_emulate", "--cache_dir", tmp_path / "cache",
                      "--sample_tokens", 0]) == 0
        assert (said in capsys.readouterr().out) is merged
    assert train(base + ["--out_dir", tmp_path / "unfused", "--max_steps", 1, "--use_fp8", "--fp8_emulate",
                         "--no-fp8_fused_swiglu"]) == 0
    assert said not in capsys.readouterr().out
    for extra, message in ((["--use_fp8", "--fp8_emulate", "--no-fp8_fused_swiglu"], "needs --fp8_recipe delayed"),
                           ([], "--fp8_merge_w13 / --no-fp8_merge_w13 only apply with --use_fp8")):
        assert train(base + ["--out_dir", tmp_path / "refused", "--max_steps", 1, "--fp8_merge_w13", *extra]) == 2
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1

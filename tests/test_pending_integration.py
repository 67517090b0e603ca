"""Tests of the float8 and bf16 layers through the training and benchmark entry points (training.setup's
build_model and Fp8Options, the Trainer, the bench modes' parser, the train CLI, the verify checks), moved out of
the precision tests (test_fp8_cast.py, test_fp8_head.py, test_swiglu_fp8.py, test_fp8_delayed.py,
test_bf16_cache.py) so that those import only the model and precision packages. They still call the training,
benchmark and CLI interfaces as they were, and are to be ported to those interfaces as they are now; the tests
of removed features (the float8 head's logit-gradient kernel, --fp8_start_step, --fp8_grad_margin) are gone."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn

from cs336_basics.data.batches import RandomWindows
from cs336_basics.errors import UserError
from cs336_basics.model.transformer import ModelConfig, OutputHead, Transformer
from cs336_basics.precision.bf16_cache import Bf16WeightCache
from cs336_basics.precision.fp8_delayed import DelayedScaling, Float8DelayedLinear
from cs336_basics.precision.fp8_head import Float8OutputHead
from cs336_basics.training.setup import Fp8Options, build_model
from cs336_basics.training.trainer import TrainConfig, Trainer, resolve_bf16_weight_cache

ROOT = Path(__file__).resolve().parents[1]
CFG = ModelConfig(vocab_size=512, context_length=32, dim=64, n_layers=2, n_heads=4, intermediate_size=128)


def batch(seed: int = 0, b: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return tuple(torch.randint(0, CFG.vocab_size, (b, CFG.context_length), generator=g) for _ in range(2))


# from test_fp8_cast.py
def test_a_run_checks_the_cast_kernel_at_its_shapes_and_refuses_a_wrong_one(monkeypatch):
    """With kernel casts, build_model checks the cast at every (tokens x width, format) the layers will cast before
    training, and refuses a kernel whose transposed copy is wrong (as ours once was on the GPU)."""
    from cs336_basics.errors import UserError
    from cs336_basics.model.transformer import ModelConfig
    from cs336_basics.precision import fp8_cast
    from cs336_basics.training.setup import Fp8Options, build_model

    cfg = ModelConfig(vocab_size=256, context_length=16, dim=32, n_layers=2, n_heads=2, intermediate_size=64)
    seen = []
    build_model(cfg, torch.device("cpu"), Fp8Options(recipe="delayed", emulate=True, kernel_casts="inputs"), 32, log=seen.append)
    assert "fp8 cast kernel checked at 32 tokens x 32 (e4m3), 64 (e4m3): both layouts" in " ".join(seen)
    seen.clear()
    build_model(cfg, torch.device("cpu"), Fp8Options(recipe="delayed", emulate=True, kernel_casts="all"), 32, log=seen.append)
    assert "x 32 (e4m3), 32 (e5m2), 64 (e4m3), 64 (e5m2), 96 (e5m2)" in " ".join(seen)  # qkv's output is 3 x 32 wide
    right = fp8_cast.cast_both

    def transposed_wrong(x, scale, e5m2, config=None):
        q, qt, amax = right(x, scale, e5m2)
        return q, qt.view(torch.uint8).flip(1).view(qt.dtype), amax

    monkeypatch.setattr(fp8_cast, "cast_both", transposed_wrong)
    with pytest.raises(UserError, match=r"cast kernel computed wrong results .*cast e4m3 32 x 32 output 0: the transposed"):
        build_model(cfg, torch.device("cpu"), Fp8Options(recipe="delayed", emulate=True, kernel_casts="all"), 32,
                    log=lambda s: None)


def test_kernel_casts_option_trains_compiled_as_without(tmp_path):
    import numpy as np

    from cs336_basics.data.batches import RandomWindows
    from cs336_basics.errors import UserError
    from cs336_basics.model.transformer import ModelConfig
    from cs336_basics.perf.matrix import parse_mode
    from cs336_basics.precision.fp8_delayed import Float8DelayedLinear
    from cs336_basics.training.setup import Fp8Options, build_model
    from cs336_basics.training.trainer import TrainConfig, Trainer

    suffixes = ("", "-castnone", "-castinputs", "-castgrads", "-castall")
    assert [parse_mode(f"fp8-delayed-compile{s}")["fp8_kernel_casts"] for s in suffixes] == [
        "auto", "none", "inputs", "grads", "all"]
    with pytest.raises(UserError, match="fp8-delayed only"):
        parse_mode("fp8-tensorwise-compile-castall")
    with pytest.raises(UserError, match="name one of"):
        parse_mode("fp8-delayed-compile-castnone-castall")
    with pytest.raises(ValueError, match="kernel_casts must be one of"):
        Float8DelayedLinear(torch.nn.Linear(16, 16, bias=False), emulate=True, kernel_casts="some")
    cfg = ModelConfig(vocab_size=256, context_length=16, dim=32, n_layers=2, n_heads=2, intermediate_size=64)
    with pytest.raises(UserError, match="delayed recipe's layers"):
        build_model(cfg, torch.device("cpu"), Fp8Options(recipe="tensorwise", emulate=True, kernel_casts="all"))
    with pytest.raises(UserError, match="expected auto or one of none, inputs, grads, all"):
        build_model(cfg, torch.device("cpu"), Fp8Options(recipe="delayed", emulate=True, kernel_casts="x"))
    tokens = (np.arange(8192) * 7 % 251).astype(np.uint16)
    losses = {}
    for kernel_casts in ("none", "inputs", "grads", "all"):
        torch.manual_seed(0)
        model, _ = build_model(cfg, torch.device("cpu"), Fp8Options(recipe="delayed", emulate=True, kernel_casts=kernel_casts),
                               log=lambda s: None)
        assert all(m.kernel_casts == kernel_casts for m in model.modules() if isinstance(m, Float8DelayedLinear))
        trainer = Trainer(model, TrainConfig(batch_size=2, max_steps=4, compile_model=True, gradient_checkpointing=False),
                          RandomWindows(tokens, 2, 16, 0), tokens[:200], torch.device("cpu"), tmp_path / kernel_casts,
                          log=lambda s: None)
        losses[kernel_casts] = [float(trainer.train_step(1e-3)[0]) for _ in range(4)]
    for kernel_casts in ("inputs", "grads", "all"):
        assert losses[kernel_casts] == pytest.approx(losses["none"], rel=1e-4), kernel_casts


def test_auto_casts_through_our_kernel_with_the_delayed_recipe_only():
    """The default (auto): every delayed layer's casts through our kernel (the fastest measured), none
    with TorchAO's recipes, whose layers cast themselves; the report names what ran."""
    from cs336_basics.model.transformer import ModelConfig
    from cs336_basics.precision.fp8_cast import resolve_kernel_casts
    from cs336_basics.precision.fp8_delayed import Float8DelayedLinear
    from cs336_basics.training.setup import Fp8Options, build_model

    assert Fp8Options().kernel_casts == "auto"
    assert [resolve_kernel_casts("auto", r) for r in ("delayed", "tensorwise", "rowwise")] == ["all", "none", "none"]
    assert resolve_kernel_casts("grads", "delayed") == "grads"
    with pytest.raises(ValueError, match="must be auto or one of"):
        resolve_kernel_casts("most", "delayed")
    cfg = ModelConfig(vocab_size=256, context_length=16, dim=32, n_layers=2, n_heads=2, intermediate_size=64)
    model, report = build_model(cfg, torch.device("cpu"), Fp8Options(recipe="delayed", emulate=True), log=lambda s: None)
    layers = [m for m in model.modules() if isinstance(m, Float8DelayedLinear)]
    assert layers and all(m.kernel_casts == "all" for m in layers) and report.kernel_casts == "all"
    _, report = build_model(cfg, torch.device("cpu"), Fp8Options(recipe="tensorwise", emulate=True), log=lambda s: None)
    assert report.kernel_casts == "none"


def test_trainer_flag_runs_recorded_and_kept_on_resume(tmp_path, capsys, tiny_cli):
    """--fp8_kernel_casts: the configuration summary says it, run.json records it, --resume keeps it; refused
    without --use_fp8 and with a recipe other than delayed."""
    import json

    train, base = tiny_cli

    assert train(base + ["--out_dir", tmp_path / "run", "--max_steps", 2, "--use_fp8", "--fp8_emulate",
                         "--fp8_kernel_casts", "inputs"]) == 0
    assert "fp8 casts of the layers' inputs: our Triton kernel" in capsys.readouterr().out
    assert json.loads((tmp_path / "run" / "run.json").read_text())["fp8_kernel_casts"] == "inputs"
    assert train(["--resume", tmp_path / "run", "--max_steps", 3, "--fp8_emulate", "--cache_dir", tmp_path / "cache",
                  "--sample_tokens", 0]) == 0
    assert "(--fp8_kernel_casts inputs)" in capsys.readouterr().out
    assert train(base + ["--out_dir", tmp_path / "default", "--max_steps", 1, "--use_fp8", "--fp8_emulate"]) == 0
    assert "fp8 casts of inputs and output gradients: our Triton kernel" in capsys.readouterr().out
    assert json.loads((tmp_path / "default" / "run.json").read_text())["fp8_kernel_casts"] == "all"
    assert train(base + ["--out_dir", tmp_path / "bf16", "--max_steps", 1, "--fp8_kernel_casts", "all"]) == 2
    assert "--fp8_kernel_casts only applies with --use_fp8" in capsys.readouterr().err
    assert train(base + ["--out_dir", tmp_path / "tw", "--max_steps", 1, "--use_fp8", "--fp8_emulate", "--fp8_recipe",
                         "tensorwise", "--fp8_kernel_casts", "all"]) == 2
    assert "casts the delayed recipe's layers: use --fp8_recipe delayed" in capsys.readouterr().err


# from test_fp8_head.py
def test_build_model_swaps_the_head_and_keeps_state_dict_keys():
    model, report = build_model(CFG, torch.device("cpu"), Fp8Options(emulate=True))
    assert isinstance(model.output, Float8OutputHead) and report.fp8_head
    assert "output.proj" not in report.skipped and report.total == 11
    assert "cross-entropy: float8" in report.summary()
    assert model.state_dict().keys() == Transformer(CFG).state_dict().keys()
    plain_model = Transformer(CFG)
    plain_model.load_state_dict(model.state_dict())
    h = torch.randn(2, 16, CFG.dim)
    torch.testing.assert_close(model.output(h), plain_model.output(h))  # no targets: the plain projection's logits
    kept, report = build_model(CFG, torch.device("cpu"), Fp8Options(emulate=True, head=False))
    assert type(kept.output) is OutputHead and report.skipped["output.proj"] == "output head"


def test_head_with_a_vocabulary_not_divisible_by_16_stays_in_bf16():
    from dataclasses import replace

    model, report = build_model(replace(CFG, vocab_size=500), torch.device("cpu"), Fp8Options(emulate=True))
    assert type(model.output) is OutputHead and not report.fp8_head
    assert report.skipped == {"output.proj": "dimension not divisible by 16"}


# from test_swiglu_fp8.py
def test_kernel_bench_without_a_gpu_is_a_one_line_error():
    if torch.cuda.is_available():
        return
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "kernel_swiglu_fp8.py")], capture_output=True,
                         text=True, cwd=ROOT)
    assert out.returncode == 2 and out.stderr.strip() == "error: kernel_swiglu_fp8.py times a Triton kernel: it needs a CUDA GPU"


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
    training; a kernel whose transposed copy is wrong (as the GPU's Triton once made one of ours) or
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


# from test_fp8_delayed.py
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
    trainer(Fp8Options(recipe="tensorwise", emulate=True), fp8_margin=0, fp8_weight_cache=False)  # defaults: fine


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


def test_margin_flag_reaches_the_run_and_is_refused_without_the_delayed_recipe(tmp_path, capsys, tiny_cli):
    """--fp8_margin from the command line: recorded in run.json's train config; without --use_fp8 (no delayed
    layers) a one-line error."""
    import json

    train, base = tiny_cli
    assert train(base + ["--out_dir", tmp_path / "run", "--max_steps", 2, "--use_fp8", "--fp8_emulate",
                         "--fp8_margin", 1]) == 0
    config = json.loads((tmp_path / "run" / "run.json").read_text())["train_config"]
    assert config["fp8_margin"] == 1
    capsys.readouterr()
    assert train(base + ["--out_dir", tmp_path / "bf16", "--max_steps", 1, "--fp8_margin", 1]) == 2
    err = capsys.readouterr().err.strip()
    assert "--fp8_margin sets the headroom" in err and len(err.splitlines()) == 1


# from test_bf16_cache.py
def test_bf16_cache_is_on_where_it_applies_and_refused_elsewhere(tmp_path, capsys, tiny_cli):
    """Unset: on for bf16 on one GPU, off for float8, CPU (float32, no autocast) and torchrun; --no-bf16_weight_cache:
    off; asked for where it does not apply: a one-line error, not ignored. A bf16 run with it is a baseline the
    gains pair with (recorded in the entry)."""
    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    assert resolve_bf16_weight_cache(None, fp8=False, device=cuda, distributed=False)
    assert not resolve_bf16_weight_cache(False, fp8=False, device=cuda, distributed=False)
    assert resolve_bf16_weight_cache(True, fp8=False, device=cuda, distributed=False)
    for fp8, device, distributed in ((True, cuda, False), (False, cpu, False), (False, cuda, True)):
        assert not resolve_bf16_weight_cache(None, fp8, device, distributed)
        with pytest.raises(UserError, match="--bf16_weight_cache applies to bf16 training under autocast on one GPU"):
            resolve_bf16_weight_cache(True, fp8, device, distributed)
    train, base = tiny_cli
    assert train(base + ["--out_dir", tmp_path / "run", "--max_steps", 1, "--bf16_weight_cache"]) == 2
    assert "--bf16_weight_cache applies to bf16 training under autocast on one GPU" in capsys.readouterr().err
    with pytest.raises(ValueError, match="no CachedCastLinear"):
        Bf16WeightCache(Transformer(CFG))

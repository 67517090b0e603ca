import json

import pytest
import torch

from cs336_basics.model.transformer import ModelConfig, Transformer
from cs336_basics.errors import UserError
from cs336_basics.precision.fp8 import (check_fp8_device, convert_model_to_fp8, float8_config, is_float8_model,
                                        linear_shapes)
from cs336_basics.training.setup import Fp8Options, build_model
from cs336_basics.training.summary import RunShape, format_summary, verdict
from cs336_basics.training.trainer import FP8_MODE_MESSAGE, TrainConfig, Trainer
from cs336_basics.data.batches import RandomWindows

CFG = ModelConfig(vocab_size=512, context_length=32, dim=64, n_layers=2, n_heads=4, intermediate_size=128)


def float8_fqns(model):
    return {n for n, m in model.named_modules() if type(m).__name__ == "Float8Linear"}


def test_conversion_counts_and_skips_head():
    model = Transformer(CFG)
    report = convert_model_to_fp8(model, emulate=True)
    assert report.total == 11 and len(report.converted) == 10
    assert report.skipped == {"output.proj": "output head"}
    assert float8_fqns(model) == set(report.converted)
    assert "converted 10 of 11 linear layers" in report.summary() and "output.proj" in report.summary()


def test_dimensions_not_divisible_by_16_are_kept():
    cfg = ModelConfig(vocab_size=512, context_length=32, dim=64, n_layers=2, n_heads=4, intermediate_size=136)
    model = Transformer(cfg)
    report = convert_model_to_fp8(model, emulate=True)
    kept = {f for f, why in report.skipped.items() if why == "dimension not divisible by 16"}
    assert kept == {f"layers.{i}.ffn.{w}" for i in range(2) for w in ("w1", "w3", "w2")}  # 136 % 16 = 8
    assert len(report.converted) == 4  # qkv and out of each block


def test_auto_filter_keeps_layers_measured_slower():
    model = Transformer(CFG)
    shapes = linear_shapes(model)
    assert shapes == [(64, 64), (64, 128), (64, 192), (128, 64)]
    speedups = {(64, 64): 0.7, (64, 128): 1.3, (64, 192): 1.0, (128, 64): 1.2}
    report = convert_model_to_fp8(model, emulate=True, fp8_speedup=speedups)
    assert sorted(report.converted) == sorted(f"layers.{i}.ffn.{w}" for i in range(2) for w in ("w1", "w3", "w2"))
    assert sum(why == "measured slower in fp8" for why in report.skipped.values()) == 4  # qkv (1.0x) and out


@pytest.mark.parametrize("recipe", ["tensorwise", "rowwise", "rowwise_with_gw_hp"])
def test_recipes(recipe):
    config = float8_config(recipe, emulate=True)
    assert config.emulate
    model = Transformer(CFG)
    convert_model_to_fp8(model, recipe, emulate=True)
    idx = torch.randint(0, CFG.vocab_size, (2, 16))
    loss = model(idx, idx)
    loss.backward()
    assert torch.isfinite(loss) and model.layers[0].attn.qkv.weight.grad is not None


def test_unknown_recipe_and_devices_without_fp8():
    with pytest.raises(UserError, match="not one of"):
        float8_config("blockwise", emulate=True)
    with pytest.raises(UserError, match="compute capability >= 8.9"):
        check_fp8_device(torch.device("cpu"), emulate=False)
    check_fp8_device(torch.device("cpu"), emulate=True)  # emulation works anywhere


def make_trainer(model, tmp_path, **overrides) -> Trainer:
    tokens = torch.randint(0, CFG.vocab_size, (4096,)).numpy().astype("uint16")
    cfg = TrainConfig(**{**dict(batch_size=4, max_steps=10, warmup_steps=1, gradient_checkpointing=False,
                                eval_steps=1, lr=3e-3), **overrides})
    logs = []
    trainer = Trainer(model, cfg, RandomWindows(tokens, 4, CFG.context_length, 0), tokens, torch.device("cpu"),
                      tmp_path, log=logs.append)
    return trainer, logs


def test_trainer_detects_float8_then_checkpoints_then_compiles(tmp_path, monkeypatch):
    order = []
    import cs336_basics.training.trainer as trainer_module

    def spy(name, fn):
        def wrapped(model, *args):
            order.append((name, is_float8_model(model)))
            return fn(model, *args)
        monkeypatch.setattr(trainer_module, name, wrapped)

    spy("apply_activation_checkpointing", trainer_module.apply_activation_checkpointing)
    spy("compile_model", trainer_module.compile_model)
    model, report = build_model(CFG, torch.device("cpu"), Fp8Options(emulate=True))
    assert not any(hasattr(b, "_compiled_call_impl") and b._compiled_call_impl for b in model.layers)  # not compiled yet
    trainer, logs = make_trainer(model, tmp_path, compile_model=True, gradient_checkpointing=True)
    assert logs == [FP8_MODE_MESSAGE]
    # conversion happened before both transformations, and the eval model (bf16 view) is compiled after them
    assert order[:2] == [("apply_activation_checkpointing", True), ("compile_model", True)]
    assert is_float8_model(trainer.model) and not is_float8_model(trainer.eval_model)
    assert all(block._compiled_call_impl is not None for block in model.layers)


def test_emulated_fp8_training_lowers_loss(tmp_path):
    torch.manual_seed(0)
    model, _ = build_model(CFG, torch.device("cpu"), Fp8Options(emulate=True))
    tokens = (torch.arange(8192) % 61).numpy().astype("uint16")  # a learnable periodic sequence
    trainer = Trainer(model, TrainConfig(batch_size=8, max_steps=40, warmup_steps=2, lr=3e-3, gradient_checkpointing=False),
                      RandomWindows(tokens, 8, CFG.context_length, 0), tokens, torch.device("cpu"), tmp_path, log=lambda s: None)
    losses = [trainer.train_step(3e-3)[0].item() for _ in range(40)]
    assert losses[-1] < losses[0] - 2.0


def test_fp8_and_bf16_checkpoints_load_into_each_other(tmp_path):
    torch.manual_seed(0)
    fp8_model, _ = build_model(CFG, torch.device("cpu"), Fp8Options(emulate=True))
    state = fp8_model.state_dict()
    assert all(type(t) is torch.Tensor for t in state.values())  # plain tensors, no float8 subclasses
    plain = Transformer(CFG)
    plain.load_state_dict(state)
    idx = torch.randint(0, CFG.vocab_size, (2, 16))
    back, _ = build_model(CFG, torch.device("cpu"), Fp8Options(emulate=True))
    back.load_state_dict(plain.state_dict())
    for name, tensor in back.state_dict().items():
        torch.testing.assert_close(tensor, state[name])
    # and the fp8 model computes nearly what the bf16 model computes from the same weights
    rel = (back(idx, idx) - plain(idx, idx)).abs() / plain(idx, idx)
    assert rel < 0.02


def gpu_run(**kw) -> RunShape:
    base = dict(device=torch.device("cuda"), fp8=True, fp8_recipe="tensorwise", fp8_emulate=False, compiled=True,
                compile_mode="default", attention_backend="FLASH_ATTENTION", gradient_checkpointing=False,
                batch_size=16, accumulation=8, context_length=1024)
    return RunShape(**{**base, **kw})


def test_verdicts(monkeypatch):
    monkeypatch.setattr("cs336_basics.training.summary.supports_fp8", lambda device: True)
    assert verdict(gpu_run()) == ("OPTIMAL CONFIGURATION: FP8 + Compilation", [])
    head, reasons = verdict(gpu_run(compiled=False))
    assert head == "SUBOPTIMAL CONFIGURATION"
    assert any("FP8 without --compile_model runs SLOWER than BF16" in r and "x (fp8 eager" in r for r in reasons)
    head, reasons = verdict(gpu_run(gradient_checkpointing=True))
    assert any("gradient checkpointing" in r and "measured: 0." in r for r in reasons)
    head, reasons = verdict(gpu_run(fp8=False))
    assert any("add --use_fp8" in r for r in reasons)
    head, reasons = verdict(gpu_run(attention_backend="MATH"))
    assert any("--use_flash_attn" in r for r in reasons)
    assert verdict(gpu_run(device=torch.device("cpu")))[0] == "CPU RUN"


def test_loud_warnings_quote_committed_measurements():
    from cs336_basics.training.summary import warnings_for

    eager = warnings_for(gpu_run(compiled=False))
    assert len(eager) == 1 and eager[0].startswith("WARNING: FP8 without --compile_model runs SLOWER than BF16")
    assert "0.28x (fp8 eager tokens/s vs bf16 + compile; NVIDIA H200" in eager[0]
    delayed = warnings_for(gpu_run(compiled=False, fp8_recipe="delayed"))  # the default recipe was not measured eager
    assert "with TorchAO tensorwise; delayed not measured eager" in delayed[0]
    checkpointing = warnings_for(gpu_run(gradient_checkpointing=True))
    assert len(checkpointing) == 1 and "0.89x (fp8 + compile tokens/s with vs without checkpointing" in checkpointing[0]
    assert warnings_for(gpu_run()) == [] and warnings_for(gpu_run(fp8=False, compiled=False)) == []


def gains_file(tmp_path, monkeypatch, *entries) -> None:
    """Committed fp8 gains replaced by `entries`: (dim, kind, ratio[, compile mode[, micro-batch]]) of the delayed recipe."""
    path = tmp_path / "fp8_gains.json"
    path.write_text(json.dumps([dict(dim=e[0], n_layers=24, batch_size=e[4] if len(e) > 4 else 16, context_length=1024,
                                     kind=e[1], recipe="delayed",
                                     compile_mode=e[3] if len(e) > 3 else "default", ratio=e[2], gpu="NVIDIA H200",
                                     source="x") for e in entries]))
    monkeypatch.setattr("cs336_basics.perf.measured.GAINS_FILE", path)


def test_fp8_measured_slower_in_training_near_this_width_is_said(tmp_path, monkeypatch):
    from cs336_basics.training.summary import warnings_for

    monkeypatch.setattr("cs336_basics.training.summary.supports_fp8", lambda device: True)
    gains_file(tmp_path, monkeypatch, (896, "training", 0.92), (896, "training", 0.96), (896, "bench", 1.05))
    delayed = dict(fp8_recipe="delayed", accumulation=1)
    head, reasons = verdict(gpu_run(**delayed), dim=1024)  # 896 is the nearest measured width
    assert head == "SUBOPTIMAL CONFIGURATION" and any("FP8 measured SLOWER than BF16 in training" in r for r in reasons)
    (warning,) = warnings_for(gpu_run(**delayed), dim=896)
    assert "training runs 0.92x-0.96x; bench 1.05x" in warning and "dim 896, 24 layers" in warning
    # a bf16 run there is not told to add --use_fp8
    assert verdict(gpu_run(fp8=False, **delayed), dim=896) == ("OPTIMAL CONFIGURATION: BF16 + Compilation", [])
    # nothing measured within a factor 1.5 of the width, or eager: no claim either way
    assert verdict(gpu_run(**delayed), dim=2048) == ("OPTIMAL CONFIGURATION: FP8 + Compilation", [])
    assert not any("in training" in r for r in verdict(gpu_run(compiled=False, **delayed), dim=896)[1])
    # where fp8 paid in training, nothing is said against it and bf16 runs are told to use it
    gains_file(tmp_path, monkeypatch, (2048, "training", 1.25))
    assert verdict(gpu_run(**delayed), dim=2048) == ("OPTIMAL CONFIGURATION: FP8 + Compilation", [])
    assert any("add --use_fp8" in r for r in verdict(gpu_run(fp8=False, **delayed), dim=2048)[1])
    assert warnings_for(gpu_run(**delayed), dim=2048) == []


def test_summary_has_tokens_per_step_and_roofline(tmp_path, monkeypatch):
    from cs336_basics.perf.hardware import lookup_peaks

    gains_file(tmp_path, monkeypatch, (896, "bench", 1.07))
    monkeypatch.setattr("cs336_basics.training.summary.supports_fp8", lambda device: True)
    monkeypatch.setattr("torch.cuda.get_device_name", lambda device=None: "NVIDIA H100 80GB HBM3")
    seed = ModelConfig()
    text = format_summary(seed, 398_492_544, 353_420_160, gpu_run(), lookup_peaks("NVIDIA H100 80GB HBM3"))
    assert "16 micro-batch x 8 accumulation x 1024 context = 131,072" in text
    assert "OPTIMAL CONFIGURATION: FP8 + Compilation" in text
    assert "fp8 vs bf16       fp8 tensorwise" not in text  # only delayed measurements in this file
    text = format_summary(seed, 398_492_544, 353_420_160, gpu_run(fp8_recipe="delayed"), lookup_peaks("NVIDIA H200"))
    assert "fp8 vs bf16       fp8 delayed / bf16 tokens/s measured at dim 896" in text and "bench 1.07x" in text
    assert "Expected: at most" in text and "upper bound" in text
    assert "residual stream   fp32\n" in text  # gpu_run()'s; a bf16 stream says evaluation keeps float32:
    text = format_summary(seed, 398_492_544, 353_420_160, gpu_run(residual_dtype="bf16"), lookup_peaks("NVIDIA H200"))
    assert "residual stream   bf16 while training (evaluation float32)" in text


def test_gains_are_those_of_the_compile_mode_fp8_runs_with(tmp_path, monkeypatch):
    from cs336_basics.training.summary import warnings_for

    monkeypatch.setattr("cs336_basics.training.summary.supports_fp8", lambda device: True)
    monkeypatch.setattr("torch.cuda.get_device_name", lambda device=None: "NVIDIA H200")
    gains_file(tmp_path, monkeypatch, (896, "training", 0.92), (896, "training", 1.17, "reduce-overhead"),
               (896, "bench", 1.15, "reduce-overhead"))
    plain = gpu_run(fp8_recipe="delayed", accumulation=1)
    graphs = gpu_run(fp8_recipe="delayed", accumulation=1, compile_mode="reduce-overhead", fp8_compile_mode="reduce-overhead")
    (warning,) = warnings_for(plain, dim=896)  # measured slower without CUDA graphs: said, and CUDA graphs suggested
    assert "training runs 0.92x" in warning and "--compile_mode auto or reduce-overhead" in warning
    assert warnings_for(graphs, dim=896) == []
    text = format_summary(ModelConfig(), 398_492_544, 353_420_160, graphs, None)
    assert "fp8 delayed with CUDA graphs / bf16 tokens/s measured at dim 896" in text
    assert "training runs 1.17x; bench 1.15x" in text and "reduce-overhead (per block + loss, replayed as CUDA graphs)" in text
    # a bf16 run whose fp8 variant would use CUDA graphs is told to add --use_fp8
    bf16 = gpu_run(fp8=False, fp8_recipe="delayed", accumulation=1, fp8_compile_mode="reduce-overhead")
    assert any("add --use_fp8" in r for r in verdict(bf16, dim=896)[1])


def test_gains_of_the_same_micro_batch_are_preferred(tmp_path, monkeypatch):
    from cs336_basics.perf.measured import fp8_gain_note

    gains_file(tmp_path, monkeypatch, (896, "training", 0.92), (896, "training", 1.17, "default", 32))
    text, slower = fp8_gain_note(896, "delayed", batch_size=16)
    assert "micro-batch 16 x 1024" in text and text.endswith(": training runs 0.92x") and slower
    text, slower = fp8_gain_note(896, "delayed", batch_size=32)
    assert "micro-batch 32 x 1024" in text and "training runs 1.17x" in text and not slower
    text, slower = fp8_gain_note(896, "delayed", batch_size=8)  # not measured: every batch at that width
    assert "micro-batch 16/32 x 1024" in text and "training runs 0.92x-1.17x" in text and not slower


def test_gains_of_tuned_kernels_are_quoted_only_for_tuned_runs(tmp_path, monkeypatch):
    from cs336_basics.perf.measured import fp8_gain_note

    gains_file(tmp_path, monkeypatch, (896, "training", 1.14, "reduce-overhead"), (896, "bench", 1.18, "reduce-overhead"))
    entries = json.loads((tmp_path / "fp8_gains.json").read_text())
    entries[1]["tune_kernels"] = True
    (tmp_path / "fp8_gains.json").write_text(json.dumps(entries))
    text, _ = fp8_gain_note(896, "delayed", "reduce-overhead", 16)
    assert text.endswith(": training runs 1.14x") and "tuned" not in text
    text, _ = fp8_gain_note(896, "delayed", "reduce-overhead", 16, tune_kernels=True)
    assert "with CUDA graphs and tuned kernels" in text and text.endswith(": bench 1.18x")
    # the configuration summary of a tuned run says so and quotes the tuned figure
    monkeypatch.setattr("torch.cuda.get_device_name", lambda device=None: "NVIDIA H200")
    run = gpu_run(fp8_recipe="delayed", compile_mode="reduce-overhead", fp8_compile_mode="reduce-overhead", tune_kernels=True)
    summary = format_summary(ModelConfig(), 398_492_544, 353_420_160, run, None)
    assert "reduce-overhead (per block + loss, replayed as CUDA graphs, kernels tuned" in summary and "bench 1.18x" in summary


def test_a_run_is_quoted_the_gains_of_its_own_swiglu_setting(tmp_path, monkeypatch):
    """Measurements with and without the fused SwiGLU are kept apart: each run hears of its own setting's."""
    from cs336_basics.perf.measured import fp8_gain_note

    path = tmp_path / "fp8_gains.json"
    entry = dict(dim=896, n_layers=24, batch_size=16, context_length=1024, kind="training", recipe="delayed",
                 compile_mode="reduce-overhead", gpu="NVIDIA H200", source="x")
    path.write_text(json.dumps([{**entry, "ratio": 1.16}, {**entry, "ratio": 1.21, "fused_swiglu": True}]))
    monkeypatch.setattr("cs336_basics.perf.measured.GAINS_FILE", path)
    fused = fp8_gain_note(896, "delayed", "reduce-overhead", 16, fused_swiglu=True)
    unfused = fp8_gain_note(896, "delayed", "reduce-overhead", 16)
    assert "training runs 1.21x" in fused[0] and "and the fused SwiGLU" in fused[0]
    assert "training runs 1.16x" in unfused[0] and "fused" not in unfused[0]


def test_a_run_is_quoted_the_gains_of_its_own_residual_stream(tmp_path, monkeypatch):
    """Gains measured with the bf16 residual stream (fp8 and bf16 both with it) are quoted to such runs only."""
    from cs336_basics.perf.measured import fp8_gain_note

    path = tmp_path / "fp8_gains.json"
    entry = dict(dim=896, n_layers=24, batch_size=16, context_length=1024, kind="bench", recipe="delayed",
                 compile_mode="reduce-overhead", fused_swiglu=True, gpu="NVIDIA H200", source="x")
    path.write_text(json.dumps([{**entry, "ratio": 1.218}, {**entry, "ratio": 1.233, "residual_dtype": "bf16"}]))
    monkeypatch.setattr("cs336_basics.perf.measured.GAINS_FILE", path)
    bf16_stream = fp8_gain_note(896, "delayed", "reduce-overhead", 16, fused_swiglu=True, residual_dtype="bf16")
    fp32_stream = fp8_gain_note(896, "delayed", "reduce-overhead", 16, fused_swiglu=True)
    assert "bench 1.23x" in bf16_stream[0] and "/ bf16 (both with the bf16 residual stream)" in bf16_stream[0]
    assert "bench 1.22x" in fp32_stream[0] and "residual" not in fp32_stream[0]


def test_fp8_quality_near_this_width_by_warm_up_and_a_warning_for_short_ones(tmp_path, monkeypatch):
    from cs336_basics.training.summary import fp8_quality, warnings_for

    path = tmp_path / "fp8_gains.json"
    entry = dict(dim=896, n_layers=24, batch_size=16, context_length=1024, kind="training", recipe="delayed",
                 compile_mode="default", ratio=1.3, gpu="NVIDIA H200", source="x")
    changes = [(10, 0.007), (10, 0.019), (10, -0.004), (30, -0.012), (30, -0.004)]
    path.write_text(json.dumps([{**entry, "warmup_steps": w, "val_loss_change": c} for w, c in changes]
                               + [{**entry, "warmup_steps": 10}, {**entry, "kind": "bench"}]))  # no losses: not counted
    monkeypatch.setattr("cs336_basics.perf.measured.GAINS_FILE", path)
    delayed = dict(fp8_recipe="delayed", accumulation=8)
    text, worse = fp8_quality(gpu_run(**delayed, warmup_steps=10), 896)
    assert worse and text.endswith("5 measured training pairs at dim 896 (fp8_gains.json): warm-up 10: -0.40% to "
                                   "+1.90% (3 pairs, 1 over +1%); warm-up 30: -1.20% to -0.40% (2 pairs)")
    (warning,) = warnings_for(gpu_run(**delayed, warmup_steps=10), dim=896)
    assert warning.startswith("WARNING: FP8 with a 10-step warm-up") and "A longer --warmup_steps" in warning
    # a warm-up longer than every one that missed, or nothing measured near: no warning
    assert not fp8_quality(gpu_run(**delayed, warmup_steps=30), 896)[1]
    assert warnings_for(gpu_run(**delayed, warmup_steps=100), dim=896) == []
    assert fp8_quality(gpu_run(**delayed, warmup_steps=10), 2048) is None
    assert fp8_quality(gpu_run(**delayed, warmup_steps=10, compiled=False), 896) is None
    monkeypatch.setattr("torch.cuda.get_device_name", lambda device=None: "NVIDIA H200")
    summary = format_summary(ModelConfig(dim=896, n_layers=24), 1, 1, gpu_run(**delayed, warmup_steps=10), None)
    assert "  fp8 quality       fp8 / bf16 final validation loss in 5 measured" in summary

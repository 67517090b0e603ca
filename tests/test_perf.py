import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from cs336_basics.cli import bench
from cs336_basics.cli.bench import all_modes, format_table, main as bench_main, parse_inductor, parse_mode, row_spec
from cs336_basics.cli.bench_run import BenchSpec, run
from cs336_basics.config import Config, load_recipe, with_overrides
from cs336_basics.errors import UserError
from cs336_basics.model.transformer import Transformer
from cs336_basics.perf.flops import mfu, optimizer_step_seconds, roofline_tokens_per_second, token_flops
from cs336_basics.perf.hardware import lookup_peaks
from cs336_basics.training.trainer import Trainer
from conftest import ROOT

H200 = lookup_peaks("NVIDIA H200")
CPU = torch.device("cpu")
SEED = load_recipe("seed")[0].model
ONE_B = load_recipe("1b")[0].model
# The matrix's CPU shape, eager, on the CPU: what a bench_run test trains in about a second.
TINY = with_overrides(Config(), {**bench.CPU_TEST_SHAPE, "train.batch_size": 2, "train.gradient_accumulation_steps": 1,
                                 "run.device": "cpu", "fp8.emulate": True})


def n_params(cfg) -> int:
    with torch.device("meta"):
        return Transformer(cfg).num_params()


def test_seed_flops_by_hand():
    f = token_flops(SEED)
    # 6 * 24 layers * (4 * 896^2 + 3 * 896 * 3584) = 1,849,688,064
    assert f.blocks_linear == 1_849_688_064
    assert f.head == 6 * 896 * 50304 == 270_434_304
    assert f.attention_full == 12 * 24 * 896 * 1024 == 264_241_152
    assert f.model == 2_384_363_520


def test_seed_bf16_roofline_by_hand():
    # parameters: 2 x 50304 x 896 (embedding, head) + 24 x (4 x 896^2 + 3 x 896 x 3584 + 2 x 896) + 896 = 398,470,016
    # compute: (1,849,688,064 + 270,434,304 + 264,241,152 / 2) / 989.4e12 s per token, 16,384 tokens per step;
    # optimizer: 28 bytes x 398,470,016 parameters / 4.8e12 B/s
    params = n_params(SEED)
    assert params == 398_470_016
    step = 16384 * 2_252_242_944 / 989.4e12 + 28 * 398_470_016 / 4.8e12
    assert roofline_tokens_per_second(SEED, H200, False, 16384, params) == pytest.approx(16384 / step)
    assert 16384 / step == pytest.approx(413_523, rel=1e-5)
    assert optimizer_step_seconds(params, H200) == pytest.approx(2.32441e-3, rel=1e-4)


def test_1b_fp8_roofline_by_hand():
    cfg = ONE_B
    f = token_flops(cfg)
    assert f.blocks_linear == 6 * 16 * (4 * 2048**2 + 3 * 2048 * 5632) == 4_932_501_504
    assert f.head == 618_135_552 and f.attention_full == 805_306_368
    per_token = 4_932_501_504 / 1978.9e12 + (618_135_552 + 402_653_184) / 989.4e12  # fp8 blocks, bf16 head + attention
    params = n_params(cfg)
    step = 16384 * per_token + 28 * params / 4.8e12
    assert roofline_tokens_per_second(cfg, H200, True, 16384, params) == pytest.approx(16384 / step)
    # with the float8 head, its 618 MFLOP/token move to the fp8 peak too
    per_token_head = (4_932_501_504 + 618_135_552) / 1978.9e12 + 402_653_184 / 989.4e12
    assert roofline_tokens_per_second(cfg, H200, True, 16384, params, fp8_head=True) == pytest.approx(
        16384 / (16384 * per_token_head + 28 * params / 4.8e12))
    # MFU is always against the bf16 peak: 100k tokens/s of the 1B model
    assert mfu(100_000, cfg, H200) == pytest.approx(100_000 * 6_355_943_424 / 989.4e12)


def test_peak_lookup():
    assert lookup_peaks("NVIDIA H100 80GB HBM3").bf16_tflops == pytest.approx(989.4)
    assert lookup_peaks("NVIDIA H100 PCIe").memory_tbps == 2.0
    assert lookup_peaks("NVIDIA A100-SXM4-80GB").fp8_tflops is None
    assert lookup_peaks("Some Future GPU") is None


def test_a_mode_is_config_overrides():
    # precision, eager/compile, attention and checkpointing always; the rest only where a suffix names it
    assert parse_mode("fp8-rowwise_with_gw_hp-compile-cudnn-ac") == {
        "fp8.enabled": True, "fp8.recipe": "rowwise_with_gw_hp", "train.compile_model": True,
        "train.use_flash_attn": True, "train.fused_attention": "cudnn", "train.gradient_checkpointing": True}
    assert parse_mode("bf16-eager") == {"fp8.enabled": False, "train.compile_model": False,
                                        "train.use_flash_attn": True, "train.gradient_checkpointing": False}
    assert parse_mode("bf16-eager-math")["train.use_flash_attn"] is False
    assert parse_mode("bf16-compile-flash")["train.fused_attention"] == "flash"
    assert parse_mode("fp8-tensorwise-compile-bf16head")["fp8.head"] is False  # the head kept in bf16
    assert parse_mode("bf16-compile-bf16res")["train.residual_dtype"] == "bf16"
    assert parse_mode("fp8-delayed-compile-fp32res")["train.residual_dtype"] == "fp32"
    delayed = parse_mode("fp8-delayed-compile-unfused-castgrads-nowcache-nofastacc-now13")
    assert {k: v for k, v in delayed.items() if k.startswith("fp8.")} == {
        "fp8.enabled": True, "fp8.recipe": "delayed", "fp8.fused_swiglu": False, "fp8.kernel_casts": "grads",
        "fp8.weight_cache": False, "fp8.fast_accum": False, "fp8.merge_w13": False}
    assert parse_mode("fp8-delayed-compile-wcache-fastacc-w13-castall")["fp8.kernel_casts"] == "all"
    assert "fp8.weight_cache" not in parse_mode("fp8-delayed-compile")  # not named: the recipe's
    assert len(all_modes()) == 5 * 2 * 4 * 2
    for bad, message in (("fp16-eager", "must start with"), ("bf16-fast", "expected"), ("bf16-compile-turbo", "expected"),
                         ("fp8-delayed-compile-headkernel", "expected"), ("fp8-tensorwise-compile-wcache", "fp8-delayed only"),
                         ("bf16-compile-bf16head", "an fp8 mode only"), ("bf16-compile-bf16res-fp32res", "contradict"),
                         ("bf16-compile-math-flash", "contradict"), ("fp8-delayed-compile-castnone-castall", "contradict"),
                         ("fp8-delayed-compile-w13-now13", "contradict"), ("bf16-compile-ac-ac", "twice")):
        with pytest.raises(UserError, match=message):
            parse_mode(bad)


def test_a_row_is_the_config_training_would_resolve():
    base = with_overrides(load_recipe("seed")[0], {"run.device": "cpu", "fp8.emulate": True})
    spec = row_spec(base, "fp8-tensorwise-eager", steps=2, device=CPU)
    config = Config.from_dict(spec.config)
    assert (spec.name, spec.steps, spec.inductor) == ("fp8-tensorwise-eager", 2, {})
    assert config.fp8.recipe == "tensorwise" and config.fp8.emulate and not config.train.compile_model
    assert not config.fp8.fused_swiglu and config.fp8.kernel_casts == "none"  # the delayed-only settings resolved off
    assert config.model == base.model and config.train.batch_size == 16
    delayed = Config.from_dict(row_spec(base, "fp8-delayed-compile-unfused", 2, CPU).config).fp8
    assert not delayed.fused_swiglu and not delayed.merge_w13  # merge_w13 needs the fused SwiGLU: resolved off
    assert not Config.from_dict(row_spec(base, "bf16-compile", 2, CPU).config).fp8.enabled
    # what cannot run here is an error naming the mode, before anything runs
    with pytest.raises(UserError, match="mode bf16-compile-bf16res: .*needs bf16 autocast"):
        row_spec(base, "bf16-compile-bf16res", 2, CPU)
    with pytest.raises(UserError, match="mode fp8-tensorwise-compile: .*tune_kernels .*CUDA"):
        row_spec(base, "fp8-tensorwise-compile", 2, CPU, tune_kernels=True)
    tuned_eager = Config.from_dict(row_spec(base, "bf16-eager", 2, CPU, tune_kernels=True).config)
    assert not tuned_eager.train.tune_kernels  # tuned kernels are compiled ones: eager rows run without


def test_bench_starts_from_the_recipe_one_micro_batch_a_step(monkeypatch, tmp_path):
    seen = []
    monkeypatch.setattr(bench, "run_child", lambda module, payload, timeout: seen.append(payload) or {"error": "skipped"})
    bench_main(["--config", "tiny", "--dim", "64", "--batch_size", "3", "--modes", "fp8-delayed-eager", "--steps", "1",
                "--out", str(tmp_path)])
    (payload,) = seen
    config = Config.from_dict(payload["config"])
    tiny = load_recipe("tiny")[0]
    assert config.model == with_overrides(tiny, {"model.dim": 64}).model
    assert (config.train.batch_size, config.train.gradient_accumulation_steps, config.train.lr) == (3, 1, tiny.train.lr)
    assert config.fp8.emulate and config.run.device == "cpu"  # no GPU: float8 emulated
    saved = json.loads((tmp_path / "matrix.json").read_text())
    assert saved["recipe"] == "tiny" and saved["rows"][0]["config"] == payload["config"]
    assert not (tmp_path / "measured_factors.json").exists()


def test_matrix_on_cpu_writes_every_output_survives_a_failing_configuration_and_runs_the_yardstick(tmp_path, capsys,
                                                                                                   monkeypatch):
    real_child = bench.run_child

    def one_broken(module, payload, timeout):  # bf16-eager-ac's process dies on a model it cannot build
        if payload["name"] == "bf16-eager-ac":
            payload = {**payload, "config": {**payload["config"], "model": {**payload["config"]["model"], "n_heads": 3}}}
        return real_child(module, payload, timeout)

    monkeypatch.setattr(bench, "run_child", one_broken)
    rc = bench_main(["--modes", "bf16-eager,bf16-eager-ac,fp8-tensorwise-eager", "--steps", "2", "--compare-reference",
                     "--out", str(tmp_path)])
    out = capsys.readouterr().out
    assert rc == 0
    result = json.loads((tmp_path / "matrix.json").read_text())
    assert result["complete"] is True and "measured_factors" not in result
    rows = {r["name"]: r for r in result["rows"]}
    assert rows["bf16-eager"]["tokens_per_second"] > 0 and rows["fp8-tensorwise-eager"]["fp8_layers"] == 10
    assert rows["fp8-tensorwise-eager"]["fp8_head"] and rows["fp8-tensorwise-eager"]["precision"] == "fp8-tensorwise"
    assert "not divisible by --n_heads 3" in rows["bf16-eager-ac"]["error"] and rows["bf16-eager-ac"]["stderr_tail"]
    assert result["environment"]["torch"] == torch.__version__ and result["environment"]["torchao"]
    # the yardstick ran at the same shape on the CPU: its bf16-eager and fp8-eager against ours
    reference = {r["mode"]: r for r in result["reference"]}
    assert set(reference) == {"bf16-eager", "fp8-eager"} and reference["bf16-eager"]["shape"]["dim"] == 32
    assert "--device cpu" in (tmp_path / "reference_command.txt").read_text()
    md = (tmp_path / "matrix.md").read_text()
    assert "FAILED" in md and "CPU timings" in md and "Command:" in md
    assert f"| {reference['bf16-eager']['tok_s']:,} |" in md
    assert (tmp_path / "tokens_per_second.png").stat().st_size > 1000
    assert "CPU timings" in out


def test_a_missing_yardstick_is_an_error_before_the_matrix_runs(tmp_path, monkeypatch):
    assert bench.REFERENCE_SCRIPT == ROOT / "cs336_basics" / "perf" / "stock_torchao.py"  # in every install
    monkeypatch.setattr(bench, "REFERENCE_SCRIPT", tmp_path / "benchmarks" / "stock_torchao.py")
    monkeypatch.setattr(bench, "run_child", lambda *a: pytest.fail("a configuration ran"))
    with pytest.raises(UserError, match="stock_torchao.py, which is missing"):
        bench_main(["--modes", "bf16-eager", "--compare-reference", "--out", str(tmp_path / "out")])
    assert not (tmp_path / "out").exists()
    assert bench.build_parser().get_default("out").as_posix() == "bench_results/latest"


def test_interrupted_matrix_keeps_the_configurations_it_measured(tmp_path, monkeypatch):
    calls = []

    def fake_child(module, payload, timeout):
        calls.append(payload["name"])
        if len(calls) == 2:
            raise KeyboardInterrupt  # a Ctrl-C or a time limit, during the second configuration
        return {"name": payload["name"], "tokens_per_second": 1234}

    monkeypatch.setattr(bench, "run_child", fake_child)
    with pytest.raises(KeyboardInterrupt):
        bench_main(["--modes", "bf16-eager,fp8-tensorwise-eager", "--out", str(tmp_path)])
    saved = json.loads((tmp_path / "matrix.json").read_text())
    assert saved["complete"] is False and [r["name"] for r in saved["rows"]] == ["bf16-eager"]
    assert saved["rows"][0]["tokens_per_second"] == 1234


def test_optimize_performance_script_reports_bad_mode():
    proc = subprocess.run([sys.executable, "optimize_performance.py", "--modes", "int4-eager"], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and proc.stderr.strip().startswith("error: mode 'int4-eager'")
    proc = subprocess.run([sys.executable, "optimize_performance.py", "--help"], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0 and "--config RECIPE" in proc.stdout and "--preset" not in proc.stdout


def test_verify_fp8_compilation_on_cpu():
    proc = subprocess.run([sys.executable, "verify_fp8_compilation.py", "--device", "cpu"], cwd=ROOT,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "11 passed, 0 failed, 1 skipped" in proc.stdout
    assert "[PASS] bf16 weight gradient in float32 vs reference" in proc.stdout
    assert "[PASS] fused fp8 SwiGLU vs the three layers" in proc.stdout
    assert "[PASS] delayed float8 layer: kernels vs reference" in proc.stdout
    assert "[PASS] float8 head: kernels vs reference" in proc.stdout
    assert "[PASS] torch.compile after FP8 conversion" in proc.stdout
    assert "[PASS] delayed scaling (default recipe): gradients, compiled training" in proc.stdout
    assert "[SKIP] FP8+compile faster than FP8 eager: skipped: emulated float8" in proc.stdout


@pytest.mark.parametrize("check_name", ["check_fp8_head", "check_delayed_layer"])
def test_verify_kernel_checks_catch_a_broken_kernel(monkeypatch, check_name):
    from cs336_basics.cli import verify

    check = getattr(verify, check_name)
    assert check(CPU).passed
    real = torch._scaled_mm
    monkeypatch.setattr(torch, "_scaled_mm", lambda a, b, scale_a, scale_b, **kwargs: real(
        a, b, scale_a=scale_a, scale_b=torch.ones_like(scale_b), **kwargs))  # one scale dropped
    broken = check(CPU)
    assert broken.passed is False and "relative error" in broken.figure


def test_verify_delayed_layer_check_runs_our_cast_kernel(monkeypatch):
    """The delayed layer's check runs the default path, casts through our kernel: a kernel writing a wrong
    transposed copy fails it through the weight gradient."""
    from cs336_basics.cli import verify
    from cs336_basics.precision import fp8_cast

    right = fp8_cast.cast_both

    def transposed_wrong(x, scale, e5m2, config=None):
        q, qt, amax = right(x, scale, e5m2)
        return q, qt.view(torch.uint8).flip(0).view(qt.dtype), amax  # the features' order reversed

    monkeypatch.setattr(fp8_cast, "cast_both", transposed_wrong)
    broken = verify.check_delayed_layer(CPU)
    assert broken.passed is False and "casts by our kernel" in broken.figure


def test_verify_check_of_the_fused_swiglu_catches_a_broken_kernel(monkeypatch):
    import cs336_basics.precision.swiglu_fp8 as swiglu_fp8
    from cs336_basics.cli.verify import check_swiglu_kernels

    assert check_swiglu_kernels(CPU).passed
    real = swiglu_fp8.swiglu_backward_fp8

    def swapped(dg, h1, h3, scale1, scale3, *args):  # the two gradients exchanged
        d1, d1t, d3, d3t, amax = real(dg, h1, h3, scale1, scale3, *args)
        return d3, d3t, d1, d1t, amax

    monkeypatch.setattr(swiglu_fp8, "swiglu_backward_fp8", swapped)
    broken = check_swiglu_kernels(CPU)
    assert broken.passed is False and "relative error" in broken.figure
    monkeypatch.undo()
    real_merged = swiglu_fp8.swiglu_backward_fp8_merged

    def halves_swapped(dg, h13, scale, *args):  # the merged layout's two halves exchanged
        d13, d13t, amax = real_merged(dg, h13, scale, *args)
        n = d13.shape[1] // 2
        return torch.cat([d13[:, n:], d13[:, :n]], 1), torch.cat([d13t[n:], d13t[:n]]), amax

    monkeypatch.setattr(swiglu_fp8, "swiglu_backward_fp8_merged", halves_swapped)
    broken = check_swiglu_kernels(CPU)
    assert broken.passed is False and broken.figure.endswith("(over its bounds)")


def test_verify_check_fails_on_wrong_gradients_and_reports_a_compile_error(tmp_path, monkeypatch):
    from cs336_basics.cli import verify

    config = verify.check_config(CPU, verify.delayed_fp8(emulate=True))
    torch.manual_seed(0)
    plain = Transformer(config.model)
    g = torch.Generator().manual_seed(0)
    x, y = (torch.randint(0, config.model.vocab_size, (4, config.model.context_length), generator=g) for _ in range(2))
    _, ref_grads = verify.loss_and_grads(plain, x, y, CPU)
    tokens = np.random.default_rng(0).integers(0, config.model.vocab_size, 8192).astype(np.uint32)
    monkeypatch.setattr(verify, "short_compiled_training", lambda *a: (None, [5.0] * 5 + [3.0] * 5))  # no compiling
    args = (x, y, ref_grads, tokens, config, CPU, tmp_path)
    assert verify.check_delayed_scaling(plain, *args).passed
    wrong = {n: -g for n, g in ref_grads.items()}  # as a transposed operand or a sign error would give
    check = verify.check_delayed_scaling(plain, x, y, wrong, *args[3:])
    assert check.passed is False and "dB against bf16" in check.figure

    def broken(*a):
        raise RuntimeError("CUDA error: CUBLAS_STATUS_NOT_SUPPORTED when calling cublasLtMatmul")

    monkeypatch.setattr(verify, "short_compiled_training", broken)
    check = verify.check_delayed_scaling(plain, *args)
    assert check.passed is False and "CUBLAS_STATUS_NOT_SUPPORTED" in check.figure


def test_verify_trains_through_prepare_model_with_the_delayed_settings_it_names():
    from cs336_basics.cli import verify

    config = verify.check_config(CPU, verify.delayed_fp8(emulate=True))
    fp8 = config.fp8
    assert (fp8.recipe, fp8.fused_swiglu, fp8.merge_w13, fp8.kernel_casts, fp8.fast_accum, fp8.weight_cache) == (
        "delayed", False, False, "none", False, True)
    assert config.train.compile_model and config.train.max_steps == verify.TRAIN_STEPS
    tensorwise = verify.check_config(CPU, verify.tensorwise_fp8(emulate=True)).fp8
    assert tensorwise.recipe == "tensorwise" and tensorwise.head and not tensorwise.weight_cache


def test_attention_kernel_names_name_the_backend_that_ran():
    from cs336_basics.training.attention import attention_kernels

    cudnn = ["cudnn_generated_fort_native_sdpa_sm90_flash_fprop_wgmma_f16_knob_7",
             "cudnn_generated_fort_native_sdpa_sm90_flash_bprop_wgmma_f16_knob_26",
             "void cudnn::fusion::compute_dot_do_o_specialized<true, 64>"]
    flash = ["void pytorch_flash::flash_fwd_kernel<Flash_fwd_kernel_traits<64, 128>>",
             "void pytorch_flash::flash_bwd_dq_dk_dv_loop_seqk_parallel_kernel<>"]
    gemm = ["nvjet_sm90_tst_320x128_64x3_1x2_h_bz_coopB_NNT", "triton_poi_fused_add_0"]
    assert attention_kernels(cudnn + gemm) == ["CUDNN_ATTENTION"]  # not FLASH, though the names say flash
    assert attention_kernels(flash + gemm) == ["FLASH_ATTENTION"]
    assert attention_kernels(["fmha_cutlassF_bf16_aligned_64x64_rf_sm80"]) == ["EFFICIENT_ATTENTION"]
    assert attention_kernels(gemm) == []


def test_kernel_breakdown_of_a_trace():
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    from profile_step import format_breakdown, kernel_breakdown

    trace = {"traceEvents": [
        {"cat": "kernel", "name": "nvjet_sm90_tst_128x256", "ts": 0, "dur": 10},
        {"cat": "kernel", "name": "triton_poi_fused__scaled_mm__to_copy_clamp_0", "ts": 12, "dur": 3},  # a cast, not a matmul
        {"cat": "kernel", "name": "cudnn_generated_fort_native_sdpa_sm90_flash_fprop", "ts": 14, "dur": 4},
        {"cat": "cpu_op", "name": "aten::mm", "ts": 0, "dur": 100},
    ]}
    b = kernel_breakdown(trace, steps=1)
    assert b["by_category_ms_per_step"] == {"matmul": 0.01, "attention": 0.004, "triton pointwise": 0.003}
    assert b["wall_ms_per_step"] == 0.018 and b["gpu_busy_ms_per_step"] == 0.016  # 14-15 overlaps: counted once
    assert b["idle_ms_per_step_by_gap"] == {"under 10 us": 0.002, "10-100 us": 0.0, "100 us or more": 0.0}
    assert b["longest_gaps"] == [{"us": 2, "after": "nvjet_sm90_tst_128x256",
                                  "before": "triton_poi_fused__scaled_mm__to_copy_clamp_0"}]  # 14-15 overlap: no gap
    assert "idle per step by gap: under 10 us 0.002 ms" in format_breakdown(b)
    assert [(k["name"][:6], k["calls_per_step"], k["us_per_call"]) for k in b["all_kernels"]] == [
        ("nvjet_", 1, 10), ("cudnn_", 1, 4), ("triton", 1, 3)]  # every kernel, busiest first
    assert kernel_breakdown({"traceEvents": []}, 1)["note"].startswith("no GPU kernels")


def test_attention_probe_names_a_backend_and_cpu_profiles_nothing():
    from torch.nn.attention import SDPBackend

    from cs336_basics.training.attention import AttentionKernels, attention_backends, probe_backend

    # "flash" must exclude cuDNN outright: a priority alone did not reach compiled graphs on the H200
    assert SDPBackend.CUDNN_ATTENTION not in attention_backends(True, "flash")
    assert attention_backends(True, "cudnn")[0] == SDPBackend.CUDNN_ATTENTION
    assert attention_backends(False, "flash") == [SDPBackend.MATH]
    cpu = torch.device("cpu")
    assert probe_backend(False, "auto", 16, cpu) == "MATH"
    assert probe_backend(True, "auto", 16, cpu) in ("FLASH_ATTENTION", "EFFICIENT_ATTENTION", "CUDNN_ATTENTION")
    with AttentionKernels(cpu) as kernels:
        pass
    assert kernels.ran is None  # no GPU kernels to read on a CPU: the Trainer reports nothing rather than a guess


def test_inductor_overrides_are_checked_and_reach_the_configuration():
    assert parse_inductor("coordinate_descent_tuning=True, triton.max_tiles=3") == {
        "coordinate_descent_tuning": True, "triton.max_tiles": 3}
    assert parse_inductor("") == {}
    for bad, message in (("coordinate_descent_tuning", "expected KEY=VALUE"), ("no_such_knob=1", "has no"),
                         ("coordinate_descent_tuning=yes please", "Python literal")):
        with pytest.raises(UserError, match=message):
            parse_inductor(bad)
    seen = {}
    real_step = Trainer.train_step

    def spy(self, lr):
        import torch._inductor.config as inductor_config

        seen["value"] = inductor_config.coordinate_descent_tuning
        return real_step(self, lr)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(Trainer, "train_step", spy)
        result = run(BenchSpec(name="t", config=TINY.to_dict(), steps=1, inductor={"coordinate_descent_tuning": True}))
    assert seen["value"] is True and result["tokens_per_second"] > 0


def test_bench_run_trains_the_prepared_model_of_its_config():
    """The row's model is the one prepare_model builds from the config (float8 emulated on a CPU), stepped by the
    Trainer; the row says what ran, and times every step after the warm-up."""
    spec = row_spec(TINY, "fp8-delayed-eager-ac", steps=3, device=CPU)
    result = run(spec)
    assert result["precision"] == "fp8-delayed" and result["fp8_layers"] == 10 and result["fp8_head"]
    assert result["checkpointing"] and not result["compiled"] and result["compile_mode"] is None
    assert result["fp8_fused_swiglu"] and result["fp8_merge_w13"] and result["fp8_weight_cache"]
    assert result["residual_dtype"] == "fp32" and not result["bf16_weight_cache"]  # CPU: float32, no bf16 cache
    assert len(result["step_ms_each"]) == 3 and result["step_ms_mean"] == pytest.approx(
        sum(result["step_ms_each"]) / 3, abs=0.02)
    assert result["tokens_per_second"] == pytest.approx(2 * 32 / (result["step_ms"] / 1e3), rel=1e-2)  # the median
    assert result["params"] == n_params(TINY.model) and result["loss"] > 0


def test_a_row_whose_loss_is_not_finite_fails_instead_of_timing(monkeypatch):
    """A broken computation can run faster than the real one on NaNs: such a row must fail."""
    real_step = Trainer.train_step
    monkeypatch.setattr(Trainer, "train_step", lambda self, lr: (real_step(self, lr)[0] * float("nan"), None))
    with pytest.raises(FloatingPointError, match="the loss is nan after the timed steps"):
        run(BenchSpec(name="t", config=TINY.to_dict(), steps=1))


def test_attention_probe_turns_a_kernel_refusal_into_a_one_line_error(monkeypatch):
    import torch.nn.functional as F

    from cs336_basics.training.attention import probe_backend

    def refuse(*args, **kwargs):
        raise RuntimeError("No available kernel. Aborting execution.\nmore detail")

    monkeypatch.setattr(F, "scaled_dot_product_attention", refuse)
    with pytest.raises(UserError, match="head dimension 512 .*No available kernel.*up to 256"):
        probe_backend(True, "auto", 512, torch.device("cpu"))


def test_reference_ratio_compares_mean_with_mean():
    ours = dict(name="bf16-compile", tokens_per_second=100_000, step_ms=160.0, step_ms_mean=164.0, model_tflops=1.0,
                warmup_seconds=1.0, attention_backend="CUDNN_ATTENTION")
    stock = dict(mode="bf16-compile", tok_s=100_000, step_ms=163.84)  # the yardstick's step_ms is a mean
    row = format_table([ours], [stock], on_gpu=True).splitlines()[-1]
    assert "| 0.999 |" in row  # 163.84 / 164.0, not 100,000 / 100,000 or 163.84 / 160.0


def test_matrix_compares_with_bf16_mean_to_mean_and_shows_how_steps_wander():
    common = dict(model_tflops=1.0, warmup_seconds=1.0, attention_backend="CUDNN_ATTENTION")
    bf16 = dict(name="bf16-compile", tokens_per_second=100_000, step_ms=90.0, step_ms_mean=90.0,
                step_ms_each=[90.0] * 20, **common)
    wandering = [77.0] * 14 + [100.0] * 6  # median 77, mean 83.9: a host-bound fp8 row
    fp8 = dict(name="fp8-delayed-compile", tokens_per_second=116_883, step_ms=77.0, step_ms_mean=sum(wandering) / 20,
               step_ms_each=wandering, compile_mode="reduce-overhead", fp8_fused_swiglu=True, residual_dtype="bf16",
               **common)
    rows = format_table([bf16, fp8], [{"mode": "fp8-compile", "error": "boom"}], on_gpu=True).splitlines()
    assert "| 90.0-90.0 |" in rows[2] and "| 1.000x |" in rows[2]
    assert "| 77.0-100.0 |" in rows[3] and "| 1.073x |" in rows[3]  # 90 / 83.9, not the median's 1.17x
    assert rows[3].startswith("| fp8-delayed-compile (CUDA graphs) (fused SwiGLU) (bf16 residual) |")
    assert rows[-1] == "reference failed: fp8-compile: boom"


def test_failed_child_keeps_its_traceback() -> None:
    """A configuration that dies gets a one-line error for the table and the end of its traceback in the row."""
    result = bench.run_child("cs336_basics.no_such_module", {}, timeout=60)
    assert "No module named" in result["error"] and result["returncode"] != 0
    assert any("cs336_basics.no_such_module" in line for line in result["stderr_tail"])

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from cs336_basics.model.transformer import PRESETS, ModelConfig, Transformer
from cs336_basics.perf.flops import mfu, optimizer_step_seconds, roofline_tokens_per_second, token_flops
from cs336_basics.perf.hardware import lookup_peaks
from cs336_basics.perf.matrix import all_modes, main as matrix_main, parse_inductor, parse_mode
from cs336_basics.errors import UserError
from cs336_basics.training.trainer import Trainer
from conftest import ROOT

H200 = lookup_peaks("NVIDIA H200")


def n_params(cfg) -> int:
    with torch.device("meta"):
        return Transformer(cfg).num_params()


def test_seed_flops_by_hand():
    f = token_flops(PRESETS["seed"])
    # 6 * 24 layers * (4 * 896^2 + 3 * 896 * 3584) = 1,849,688,064
    assert f.blocks_linear == 1_849_688_064
    assert f.head == 6 * 896 * 50304 == 270_434_304
    assert f.attention_full == 12 * 24 * 896 * 1024 == 264_241_152
    assert f.model == 2_384_363_520


def test_seed_bf16_roofline_by_hand():
    # parameters: 2 x 50304 x 896 (embedding, head) + 24 x (4 x 896^2 + 3 x 896 x 3584 + 2 x 896) + 896 = 398,470,016
    # compute: (1,849,688,064 + 270,434,304 + 264,241,152 / 2) / 989.4e12 s per token, 16,384 tokens per step;
    # optimizer: 28 bytes x 398,470,016 parameters / 4.8e12 B/s
    params = n_params(PRESETS["seed"])
    assert params == 398_470_016
    step = 16384 * 2_252_242_944 / 989.4e12 + 28 * 398_470_016 / 4.8e12
    assert roofline_tokens_per_second(PRESETS["seed"], H200, False, 16384, params) == pytest.approx(16384 / step)
    assert 16384 / step == pytest.approx(413_523, rel=1e-5)
    assert optimizer_step_seconds(params, H200) == pytest.approx(2.32441e-3, rel=1e-4)


def test_1b_fp8_roofline_by_hand():
    cfg = PRESETS["1b"]
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


def test_mode_parsing():
    assert parse_mode("fp8-rowwise_with_gw_hp-compile-cudnn-ac") == dict(
        precision="fp8-rowwise_with_gw_hp", compiled=True, flash=True, fused_attention="cudnn", checkpointing=True,
        fp8_head=True, fp8_fused_swiglu=None, fp8_kernel_casts="auto", fp8_head_kernel=False,
        residual_dtype="auto", fp8_weight_cache=None, fp8_fast_accum=None, fp8_merge_w13=None)  # the trainer's defaults
    assert parse_mode("fp8-tensorwise-compile-bf16head")["fp8_head"] is False  # the head kept in bf16
    assert parse_mode("bf16-compile-bf16res")["residual_dtype"] == parse_mode("fp8-delayed-compile-bf16res")["residual_dtype"] == "bf16"
    assert parse_mode("fp8-delayed-compile-fp32res")["residual_dtype"] == "fp32"
    assert parse_mode("fp8-delayed-compile-wcache")["fp8_weight_cache"] is True
    assert parse_mode("fp8-delayed-compile-nowcache")["fp8_weight_cache"] is False
    assert parse_mode("fp8-delayed-compile")["fp8_weight_cache"] is None
    with pytest.raises(UserError, match="applies to fp8-delayed only"):
        parse_mode("fp8-tensorwise-compile-wcache")
    with pytest.raises(UserError, match="keep one"):
        parse_mode("bf16-compile-bf16res-fp32res")
    assert parse_mode("bf16-eager-math")["flash"] is False
    assert parse_mode("bf16-compile")["fused_attention"] == "auto"  # PyTorch's own kernel order
    assert parse_mode("bf16-compile-flash")["fused_attention"] == "flash"
    assert len(all_modes()) == 5 * 2 * 4 * 2
    for bad in ("fp16-eager", "bf16-fast", "bf16-compile-turbo"):
        with pytest.raises(UserError):
            parse_mode(bad)


def test_matrix_on_cpu_writes_every_output_and_survives_a_failing_configuration(tmp_path, capsys):
    # --compile_mode bogus makes every compiled configuration fail inside its own process; eager ones run.
    rc = matrix_main(["--modes", "bf16-eager,bf16-compile,fp8-tensorwise-eager", "--steps", "2", "--compile_mode", "bogus",
                      "--out", str(tmp_path)])
    out = capsys.readouterr().out
    assert rc == 0
    result = json.loads((tmp_path / "matrix.json").read_text())
    assert result["complete"] is True
    rows = {r["name"]: r for r in result["rows"]}
    assert rows["bf16-eager"]["tokens_per_second"] > 0 and rows["fp8-tensorwise-eager"]["fp8_layers"] == 10
    assert "--compile_mode must be one of" in rows["bf16-compile"]["error"]
    assert result["environment"]["torch"] == torch.__version__ and result["environment"]["torchao"]
    md = (tmp_path / "matrix.md").read_text()
    assert "FAILED" in md and "CPU timings" in md and "Command:" in md
    assert (tmp_path / "tokens_per_second.png").stat().st_size > 1000
    assert "CPU timings" in out
    factors = json.loads((tmp_path / "measured_factors.json").read_text())
    assert set(factors) == {"fp8_eager_vs_bf16_eager"}  # the compiled baseline failed: no ratio against it
    assert factors["fp8_eager_vs_bf16_eager"]["ratio"] == pytest.approx(
        rows["fp8-tensorwise-eager"]["tokens_per_second"] / rows["bf16-eager"]["tokens_per_second"])


def test_interrupted_matrix_keeps_the_configurations_it_measured(tmp_path, monkeypatch):
    import cs336_basics.perf.matrix as matrix

    calls = []

    def fake_child(module, payload, timeout):
        calls.append(payload["name"])
        if len(calls) == 2:
            raise KeyboardInterrupt  # a Ctrl-C or the device's time limit, during the second configuration
        return {"name": payload["name"], "tokens_per_second": 1234}

    monkeypatch.setattr(matrix, "run_child", fake_child)
    with pytest.raises(KeyboardInterrupt):
        matrix_main(["--modes", "bf16-eager,fp8-tensorwise-eager", "--out", str(tmp_path)])
    saved = json.loads((tmp_path / "matrix.json").read_text())
    assert saved["complete"] is False and [r["name"] for r in saved["rows"]] == ["bf16-eager"]
    assert saved["rows"][0]["tokens_per_second"] == 1234


def test_optimize_performance_script_reports_bad_mode():
    proc = subprocess.run([sys.executable, "optimize_performance.py", "--modes", "int4-eager"], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and proc.stderr.strip().startswith("error: mode 'int4-eager'")


def test_verify_fp8_compilation_on_cpu():
    proc = subprocess.run([sys.executable, "verify_fp8_compilation.py", "--device", "cpu"], cwd=ROOT,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "11 passed, 0 failed, 1 skipped" in proc.stdout
    assert "[PASS] bf16 weight gradient in float32 vs reference" in proc.stdout
    assert "[PASS] fused fp8 SwiGLU vs the three layers" in proc.stdout
    assert "[PASS] delayed float8 layer: kernels vs reference" in proc.stdout
    assert "[PASS] float8 head: kernels vs reference" in proc.stdout
    assert "[PASS] delayed scaling (default recipe): gradients, compiled training" in proc.stdout
    assert "[SKIP] FP8+compile faster than FP8 eager: skipped: emulated float8" in proc.stdout


@pytest.mark.parametrize("check_name", ["check_fp8_head", "check_delayed_layer"])
def test_verify_kernel_checks_catch_a_broken_kernel(monkeypatch, check_name):
    from cs336_basics.precision import verify

    check = getattr(verify, check_name)
    assert check(torch.device("cpu")).passed
    real = torch._scaled_mm
    monkeypatch.setattr(torch, "_scaled_mm", lambda a, b, scale_a, scale_b, **kwargs: real(
        a, b, scale_a=scale_a, scale_b=torch.ones_like(scale_b), **kwargs))  # one scale dropped
    broken = check(torch.device("cpu"))
    assert broken.passed is False and "relative error" in broken.figure


def test_verify_delayed_layer_check_runs_our_cast_kernel(monkeypatch):
    """The delayed layer's check runs the default path, casts through our kernel: a kernel writing a wrong
    transposed copy (as call 40 found ours on the GPU once) fails it through the weight gradient."""
    from cs336_basics.precision import fp8_cast, verify

    right = fp8_cast.cast_both

    def transposed_wrong(x, scale, e5m2, config=None):
        q, qt, amax = right(x, scale, e5m2)
        return q, qt.view(torch.uint8).flip(0).view(qt.dtype), amax  # the features' order reversed

    monkeypatch.setattr(fp8_cast, "cast_both", transposed_wrong)
    broken = verify.check_delayed_layer(torch.device("cpu"))
    assert broken.passed is False and "casts by our kernel" in broken.figure


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
    from cs336_basics.perf.bench_run import BenchSpec, run

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
        result = run(BenchSpec(name="t", model=PRESETS["test"].to_dict(), batch_size=2, compiled=False, steps=1,
                               device="cpu", inductor={"coordinate_descent_tuning": True}))
    assert seen["value"] is True and result["tokens_per_second"] > 0


def test_a_row_whose_loss_is_not_finite_fails_instead_of_timing(monkeypatch):
    """Call 36's -castall rows trained on NaNs and timed faster than the real thing: such a row must fail."""
    from cs336_basics.perf.bench_run import BenchSpec, run

    real_step = Trainer.train_step
    monkeypatch.setattr(Trainer, "train_step", lambda self, lr: (real_step(self, lr)[0] * float("nan"), None))
    with pytest.raises(FloatingPointError, match="the loss is nan after the timed steps"):
        run(BenchSpec(name="t", model=PRESETS["test"].to_dict(), batch_size=2, compiled=False, steps=1, device="cpu"))


def test_attention_probe_turns_a_kernel_refusal_into_a_one_line_error(monkeypatch):
    import torch.nn.functional as F

    from cs336_basics.training.attention import probe_backend

    def refuse(*args, **kwargs):
        raise RuntimeError("No available kernel. Aborting execution.\nmore detail")

    monkeypatch.setattr(F, "scaled_dot_product_attention", refuse)
    with pytest.raises(UserError, match="head dimension 512 .*No available kernel.*up to 256"):
        probe_backend(True, "auto", 512, torch.device("cpu"))


def test_reference_ratio_compares_mean_with_mean():
    from cs336_basics.perf.matrix import format_table

    ours = dict(name="bf16-compile", tokens_per_second=100_000, step_ms=160.0, step_ms_mean=164.0, model_tflops=1.0,
                warmup_seconds=1.0, attention_backend="CUDNN_ATTENTION")
    stock = dict(mode="bf16-compile", tok_s=100_000, step_ms=163.84)  # the yardstick's step_ms is a mean
    row = format_table([ours], [stock], on_gpu=True).splitlines()[-1]
    assert "| 0.999 |" in row  # 163.84 / 164.0, not 100,000 / 100,000 or 163.84 / 160.0


def test_matrix_compares_with_bf16_mean_to_mean_and_shows_how_steps_wander():
    from cs336_basics.perf.matrix import format_table

    common = dict(model_tflops=1.0, warmup_seconds=1.0, attention_backend="CUDNN_ATTENTION")
    bf16 = dict(name="bf16-compile", tokens_per_second=100_000, step_ms=90.0, step_ms_mean=90.0,
                step_ms_each=[90.0] * 20, **common)
    wandering = [77.0] * 14 + [100.0] * 6  # median 77, mean 83.9: a host-bound fp8 row
    fp8 = dict(name="fp8-delayed-compile", tokens_per_second=116_883, step_ms=77.0, step_ms_mean=sum(wandering) / 20,
               step_ms_each=wandering, **common)
    rows = format_table([bf16, fp8], [], on_gpu=True).splitlines()
    assert "| 90.0-90.0 |" in rows[2] and "| 1.000x |" in rows[2]
    assert "| 77.0-100.0 |" in rows[3] and "| 1.073x |" in rows[3]  # 90 / 83.9, not the median's 1.17x


def test_fp8_gains_pair_training_runs_of_one_model_and_bench_rows_of_one_matrix(tmp_path):
    from cs336_basics.perf.measured import collect_fp8_gains

    call = tmp_path / "results" / "call"
    call.mkdir(parents=True)
    (call / "env.txt").write_text("NVIDIA H200, 580.159.04, 143771 MiB\n")
    model = dataclasses.asdict(ModelConfig(dim=896, n_layers=24))
    train = dict(batch_size=16, gradient_accumulation_steps=1, compile_model=True, compile_mode="default",
                 gradient_checkpointing=False)

    def run(name: str, fp8: bool, tokens_per_second: float, ran: str | None = None, **changes) -> None:
        (call / name).mkdir()
        (call / name / "run.json").write_text(json.dumps(dict(model_config=model, train_config={**train, **changes},
                                                              fp8=fp8, fp8_recipe="delayed" if fp8 else None,
                                                              **({"compile_mode": ran} if ran else {}))))
        (call / name / "summary.json").write_text(json.dumps(dict(tokens_per_second=tokens_per_second, world_size=1)))

    run("bf16-batch8", False, 50.0, batch_size=8)  # another batch: not fp8's pair
    run("bf16", False, 200.0)
    run("fp8", True, 180.0)
    # --compile_mode auto (run.json says what ran): fp8 with CUDA graphs paired with bf16 without
    run("bf16-auto", False, 100.0, ran="default", compile_mode="auto", batch_size=32)
    run("fp8-auto", True, 115.0, ran="reduce-overhead", compile_mode="auto", batch_size=32)
    # fp8 asked for default, bf16 for auto (which ran default for bf16): paired by what ran
    run("bf16-auto-64", False, 100.0, ran="default", compile_mode="auto", batch_size=64)
    run("fp8-default-64", True, 110.0, ran="default", batch_size=64)
    run("fp8-tuned", True, 240.0, tune_kernels=True)  # tuned kernels: paired with the tuned bf16 run only
    run("bf16-tuned", False, 200.0, tune_kernels=True)
    run("fp8-bf16res", True, 250.0, residual_dtype="bf16")  # bf16 residual stream: paired with bf16's of the same
    run("bf16-bf16res", False, 125.0, residual_dtype="bf16")
    # bf16 with and without its weights cast once per step: fp8 (whose weights are) pairs with the cached one
    run("bf16-accum-cache", False, 110.0, gradient_accumulation_steps=8, bf16_weight_cache=True)
    run("bf16-accum", False, 100.0, gradient_accumulation_steps=8, bf16_weight_cache=False)
    run("fp8-accum", True, 143.0, gradient_accumulation_steps=8, fp8_weight_cache=True)
    # pairs of several seeds: each fp8 run with the bf16 run of its own seed
    run("bf16-seed1", False, 400.0, batch_size=128, seed=1)
    run("bf16-seed2", False, 300.0, batch_size=128, seed=2)
    run("fp8-seed1", True, 480.0, batch_size=128, seed=1)
    def compiled(name: str, precision: str, step_ms: float, mean: float, **extra) -> dict:
        return dict(name=name, precision=precision, compiled=True, checkpointing=False, step_ms=step_ms,
                    step_ms_mean=mean, **extra)

    def write_matrix(directory: str, rows: list[dict], **extra) -> None:
        (call / directory).mkdir()
        (call / directory / "matrix.json").write_text(json.dumps(dict(
            model=model, batch_size=16, rows=rows,
            **{"environment": dict(gpu="NVIDIA H200", command="optimize_performance.py"), **extra})))

    graphs = dict(compile_mode="reduce-overhead")
    rows = [compiled("bf16-compile", "bf16", 80.0, 90.0),
            compiled("fp8-delayed-compile", "fp8-delayed", 70.0, 75.0, **graphs),
            dict(name="fp8-tensorwise-compile-ac", precision="fp8-tensorwise", compiled=True, checkpointing=True,
                 step_ms=60.0),
            dict(name="fp8-rowwise-compile", error="out of memory"),
            compiled("bf16-compile-bf16res", "bf16", 70.0, 80.0, residual_dtype="bf16"),
            compiled("fp8-delayed-compile-bf16res", "fp8-delayed", 60.0, 64.0, **graphs, residual_dtype="bf16")]
    write_matrix("matrix", rows)
    write_matrix("matrix-auto", [  # rows named without a suffix ran the trainer's default, bf16 on a GPU
        compiled("bf16-compile", "bf16", 90.0, 100.0, residual_dtype="bf16"),
        compiled("fp8-delayed-compile", "fp8-delayed", 75.0, 80.0, **graphs, residual_dtype="bf16"),
        compiled("bf16-compile-fp32res", "bf16", 95.0, 110.0, residual_dtype="fp32"),
        compiled("fp8-delayed-compile-fp32res", "fp8-delayed", 95.0, 100.0, **graphs, residual_dtype="fp32")])
    # --inductor overrides: an experiment, not a setting of the trainer
    write_matrix("experiment", rows, inductor={"triton.max_tiles": 3}, environment={})
    gains = collect_fp8_gains(call, results_dir=tmp_path / "repo" / "benchmarks" / "results")
    assert [(g["kind"], g["recipe"], g["ratio"], g["dim"], g["batch_size"], g["compile_mode"], g["tune_kernels"],
             g["residual_dtype"]) for g in gains] == [
        ("training", "delayed", 0.9, 896, 16, "default", False, "fp32"),
        ("training", "delayed", 1.3, 896, 16, "default", False, "fp32"),  # fp8-accum vs bf16-accum-cache
        ("training", "delayed", 1.15, 896, 32, "reduce-overhead", False, "fp32"),
        ("training", "delayed", 2.0, 896, 16, "default", False, "bf16"),
        ("training", "delayed", 1.1, 896, 64, "default", False, "fp32"),
        ("training", "delayed", 1.2, 896, 128, "default", False, "fp32"),  # fp8-seed1 vs bf16-seed1
        ("training", "delayed", 1.2, 896, 16, "default", True, "fp32"),
        ("bench", "delayed", 1.2, 896, 16, "reduce-overhead", False, "fp32"),  # bench: mean step over mean step
        ("bench", "delayed", 1.25, 896, 16, "reduce-overhead", False, "bf16"),  # against bf16-compile-bf16res
        ("bench", "delayed", 1.25, 896, 16, "reduce-overhead", False, "bf16"),  # matrix-auto: paired by stream
        ("bench", "delayed", 1.1, 896, 16, "reduce-overhead", False, "fp32")]
    assert all(g["gpu"] == "NVIDIA H200" for g in gains) and gains[0]["source"].endswith("fp8 vs bf16")
    assert gains[1]["source"].endswith("fp8-accum vs bf16-accum-cache") and gains[1]["bf16_weight_cache"]
    assert not gains[0]["bf16_weight_cache"] and gains[1]["weight_cache"]


def test_fp8_gains_from_bench_runs_alone(tmp_path):
    from cs336_basics.perf.measured import collect_fp8_gains

    call = tmp_path / "call"
    call.mkdir()
    model = dataclasses.asdict(ModelConfig(dim=2048, n_layers=16))

    def bench(name: str, precision: str, mode: str, mean: float, ran: str | None = None) -> None:
        spec = dict(name=name, model=model, batch_size=8, precision=precision, compile_mode=mode)
        (call / f"{name}.command").write_text(f"python3 -m cs336_basics.perf.bench_run '{json.dumps(spec)}'\n")
        row = dict(name=name, precision=precision, compiled=True, checkpointing=False, batch_size=8, step_ms=mean,
                   step_ms_mean=mean, **({"compile_mode": ran} if ran else {}))
        (call / f"{name}.log").write_text("compiling\nRESULT " + json.dumps(row) + "\n")

    bench("bf16-graphs", "bf16", "reduce-overhead", 150.0)  # an older row: the spec says what ran; not a baseline
    bench("bf16", "bf16", "auto", 180.0, ran="default")
    bench("fp8", "fp8-delayed", "auto", 120.0, ran="reduce-overhead")
    (call / "crashed.command").write_text("python3 -m cs336_basics.perf.bench_run '{}'\n")  # no log: skipped
    gains = collect_fp8_gains(call, results_dir=tmp_path / "repo" / "benchmarks" / "results")
    assert [(g["kind"], g["recipe"], g["compile_mode"], g["ratio"], g["dim"], g["batch_size"]) for g in gains] == [
        ("bench", "delayed", "reduce-overhead", 1.5, 2048, 8)]
    assert gains[0]["source"].endswith("fp8 vs bf16 (bench_run)")


def test_fp8_gains_record_the_warm_up_and_the_change_in_validation_loss_of_like_runs(tmp_path):
    from cs336_basics.perf.measured import collect_fp8_gains

    call = tmp_path / "call"
    call.mkdir()
    model = dataclasses.asdict(ModelConfig(dim=896, n_layers=24))
    schedule = dict(batch_size=16, gradient_accumulation_steps=8, compile_model=True, compile_mode="auto",
                    gradient_checkpointing=False, max_steps=120, warmup_steps=10, lr=6e-4, min_lr=6e-5)

    def run(name: str, fp8: bool, val_loss: float, steps: int = 120, data: str = "train.txt", **changes) -> None:
        (call / name).mkdir()
        (call / name / "run.json").write_text(json.dumps(dict(
            model_config=model, train_config={**schedule, **changes}, fp8=fp8, fp8_recipe="delayed" if fp8 else None,
            train_data=data, val_data="val.txt")))
        (call / name / "summary.json").write_text(json.dumps(dict(tokens_per_second=100.0 * (1.3 if fp8 else 1.0),
                                                                 world_size=1, val_loss=val_loss, steps=steps)))

    run("bf16-seed0", False, 5.0, seed=0)
    run("fp8-seed0", True, 5.1, seed=0)  # +2%
    run("bf16-seed1", False, 5.0, seed=1, warmup_steps=30)
    run("fp8-seed1", True, 4.95, seed=1, warmup_steps=30)  # -1%
    run("bf16-seed2", False, 5.0, seed=2)
    run("fp8-seed2", True, 6.0, seed=2, steps=112)  # cut short: its last loss is not a final one
    run("bf16-seed3", False, 5.0, seed=3)
    run("fp8-seed3", True, 6.0, seed=3, data="other.txt")  # another corpus
    run("bf16-seed4", False, 5.0, seed=4)
    run("fp8-seed4", True, 6.0, seed=4, min_lr=0.0)  # another schedule
    found = collect_fp8_gains(call, results_dir=tmp_path / "repo" / "benchmarks" / "results")
    gains = {g["source"].split("/")[-1]: g for g in found}
    assert gains["fp8-seed0 vs bf16-seed0"]["val_loss_change"] == 0.02
    assert gains["fp8-seed1 vs bf16-seed1"]["val_loss_change"] == -0.01
    assert [gains[f"fp8-seed{i} vs bf16-seed{i}"]["warmup_steps"] for i in (0, 1)] == [10, 30]
    for unlike in ("fp8-seed2 vs bf16-seed2", "fp8-seed3 vs bf16-seed3", "fp8-seed4 vs bf16-seed4"):
        assert "val_loss_change" not in gains[unlike] and gains[unlike]["ratio"] == 1.3


def test_failed_child_keeps_its_traceback() -> None:
    """A configuration that dies gets a one-line error for the table and the end of its traceback in the row."""
    from cs336_basics.perf.matrix import run_child

    result = run_child("cs336_basics.no_such_module", {}, timeout=60)
    assert "No module named" in result["error"] and result["returncode"] != 0
    assert any("cs336_basics.no_such_module" in line for line in result["stderr_tail"])


def test_plot_gains_draws_the_committed_history(tmp_path, monkeypatch):
    """benchmarks/plot_gains.py: each entry placed at its device call (a session's callNN, or a folder that is one
    call), the committed file drawn to a PNG."""
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import plot_gains

    assert plot_gains.call_of({"source": "benchmarks/results/eighteenth_session_h200/call80/guide-fp8 vs guide-bf16"}) \
        == "eighteenth_session_h200/call80"
    assert plot_gains.call_of({"source": "benchmarks/results/delayed_gc_x2/seed-fp8-delayed vs seed-bf16"}) == "delayed_gc_x2"
    plot_gains.main(str(tmp_path / "gains.png"))
    assert (tmp_path / "gains.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

"""The performance matrix behind optimize_performance.py: every configuration in a fresh process, the
per-layer fp8 microbenchmark, the stock-TorchAO yardstick in the same process tree, and the results as a
console table, JSON, markdown and PNG charts."""

from __future__ import annotations

import argparse
import datetime
import itertools
import json
import os
import platform
import subprocess
import sys
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from cs336_basics.errors import UserError
from cs336_basics.files import write_text_atomic
from cs336_basics.model.transformer import PRESETS, ModelConfig, Transformer
from cs336_basics.perf.bench_run import BenchSpec
from cs336_basics.perf.flops import roofline_tokens_per_second, token_flops
from cs336_basics.perf.hardware import current_device_peaks
from cs336_basics.perf.measured import mean_ms
from cs336_basics.training.transforms import CUDA_GRAPH_MODES, check_tune_kernels

PRECISIONS = ("bf16", "fp8-tensorwise", "fp8-rowwise", "fp8-rowwise_with_gw_hp", "fp8-delayed")
DEFAULT_GPU_MODES = ("bf16-eager", "bf16-compile", "bf16-compile-flash", "fp8-delayed-compile", "fp8-delayed-compile-unfused",
                     "fp8-tensorwise-compile",
                     "fp8-tensorwise-compile-bf16head", "fp8-tensorwise-compile-flash", "fp8-rowwise-compile",
                     "fp8-rowwise_with_gw_hp-compile", "fp8-tensorwise-eager", "bf16-compile-ac", "fp8-tensorwise-compile-ac", "bf16-compile-math")
DEFAULT_CPU_MODES = ("bf16-eager", "fp8-tensorwise-eager", "bf16-eager-ac")
# Our mode -> the reference script's name for the same configuration.
# The yardstick keeps its head in bf16: -bf16head is the like-for-like row, ours (fp8 head) the fast path.
REFERENCE_MODES = {"bf16-eager": "bf16-eager", "bf16-compile": "bf16-compile", "fp8-tensorwise-compile": "fp8-compile",
                   "fp8-tensorwise-compile-bf16head": "fp8-compile", "fp8-rowwise-compile": "fp8rw-compile",
                   "fp8-tensorwise-eager": "fp8-eager", "fp8-delayed-compile": "fp8-compile",
                   "fp8-delayed-compile-bf16head": "fp8-compile", "fp8-delayed-compile-unfused": "fp8-compile"}
BASELINE = "bf16-compile"
DEFAULT_REFERENCE = Path(__file__).resolve().parents[3] / "shared" / "reference" / "anchor_bench.py"


# Mode suffixes that set the delayed recipe's own options, with what each does (in parse_mode's errors).
DELAYED_SUFFIXES = {"unfused": "SwiGLU's three layers one by one", "castnone": "inductor's casts, not our kernel",
                    "castinputs": "our cast kernel for inputs", "castgrads": "our cast kernel for gradients",
                    "castall": "our cast kernel for every cast", "wcache": "weights cast once per step",
                    "nowcache": "weights cast in every micro-batch", "fastacc": "fast accumulation",
                    "nofastacc": "without fast accumulation", "w13": "w1 and w3 as one product",
                    "now13": "w1 and w3 as two products"}
SUFFIXES = {"math", "flash", "cudnn", "ac", "bf16head", "headkernel", "bf16res", "fp32res", *DELAYED_SUFFIXES}


def all_modes() -> list[str]:
    return [f"{p}-{c}{a}{ac}" for p, c, a, ac in
            itertools.product(PRECISIONS, ("eager", "compile"), ("", "-flash", "-cudnn", "-math"), ("", "-ac"))]


def parse_mode(mode: str) -> dict[str, Any]:
    """'fp8-rowwise-compile-math-ac' -> precision fp8-rowwise, compiled, plain attention, checkpointing on."""
    for precision in sorted(PRECISIONS, key=len, reverse=True):
        if mode.startswith(precision + "-"):
            parts = mode[len(precision) + 1:].split("-")
            break
    else:
        raise UserError(f"mode {mode!r} must start with one of {', '.join(PRECISIONS)}")
    if parts[0] not in ("eager", "compile") or not set(parts[1:]) <= SUFFIXES:
        raise UserError(f"mode {mode!r}: expected <precision>-<eager|compile>[-math|-flash|-cudnn][-ac][-bf16head]"
                        f"[-unfused][-castnone|-castinputs|-castgrads|-castall][-headkernel][-bf16res|-fp32res][-wcache|-nowcache]"
                        f"[-fastacc|-nofastacc][-w13|-now13], "
                        f"e.g. fp8-rowwise-compile-ac")
    if {"bf16res", "fp32res"} <= set(parts[1:]):
        raise UserError(f"mode {mode!r}: -bf16res and -fp32res name two residual streams; keep one")
    for name in ("wcache", "fastacc", "w13"):
        if {name, f"no{name}"} <= set(parts[1:]):
            raise UserError(f"mode {mode!r}: -{name} and -no{name} contradict each other; keep one")
    if len({"castnone", "castinputs", "castgrads", "castall"} & set(parts[1:])) > 1:
        raise UserError(f"mode {mode!r}: name one of -castnone, -castinputs, -castgrads, -castall")
    for suffix, what in DELAYED_SUFFIXES.items():
        if suffix in parts[1:] and precision != "fp8-delayed":
            raise UserError(f"mode {mode!r}: -{suffix} ({what}) applies to fp8-delayed only")
    if "headkernel" in parts[1:] and (not precision.startswith("fp8") or "bf16head" in parts[1:]):
        raise UserError(f"mode {mode!r}: -headkernel computes the float8 head's gradient: an fp8 mode without -bf16head")
    fused = next((a for a in ("flash", "cudnn") if a in parts[1:]), "auto")  # none named: PyTorch's order
    return dict(precision=precision, compiled=parts[0] == "compile", flash="math" not in parts[1:],
                fused_attention=fused, checkpointing="ac" in parts[1:], fp8_head="bf16head" not in parts[1:],
                fp8_fused_swiglu=False if "unfused" in parts[1:] else None,
                fp8_kernel_casts=next((c for c in ("none", "inputs", "grads", "all") if f"cast{c}" in parts[1:]), "auto"),
                fp8_head_kernel="headkernel" in parts[1:],
                residual_dtype=next((d for d in ("bf16", "fp32") if f"{d}res" in parts[1:]), "auto"),
                fp8_weight_cache=_yes_no(parts[1:], "wcache"), fp8_fast_accum=_yes_no(parts[1:], "fastacc"),
                fp8_merge_w13=_yes_no(parts[1:], "w13"))


def _yes_no(suffixes: list[str], name: str) -> bool | None:
    """-name: True, -noname: False, neither: None (the default for the recipe)."""
    return True if name in suffixes else False if f"no{name}" in suffixes else None


def parse_inductor(text: str) -> dict[str, Any]:
    """'coordinate_descent_tuning=True,triton.max_tiles=3' -> {...}, each key checked against torch._inductor.config."""
    import ast

    import torch._inductor.config as inductor_config

    overrides: dict[str, Any] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        key, sep, value = item.partition("=")
        if not sep:
            raise UserError(f"--inductor {item!r}: expected KEY=VALUE, e.g. coordinate_descent_tuning=True")
        try:
            current = inductor_config
            for part in key.split("."):
                current = getattr(current, part)
        except AttributeError:
            raise UserError(f"--inductor: torch._inductor.config has no {key!r}") from None
        try:
            overrides[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            raise UserError(f"--inductor {key}={value!r}: the value must be a Python literal (True, 3, 'x')") from None
    return overrides


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Time the configuration matrix for a model on this machine.",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--preset", default=None, choices=sorted(PRESETS), help="default: seed on GPU, test on CPU")
    for name in ("vocab_size", "context_length", "dim", "n_layers", "n_heads", "intermediate_size"):
        p.add_argument(f"--{name}", type=int)
    p.add_argument("--batch_size", type=int, help="micro-batch (default 16 on GPU, 4 on CPU; 8 for the 1b preset)")
    p.add_argument("--modes", help=f"comma-separated <precision>-<eager|compile>[-math|-flash|-cudnn][-ac][-bf16head]"
                                   f"[-unfused][-castnone|-castinputs|-castgrads|-castall][-headkernel][-bf16res|-fp32res]"
                                   f"[-wcache|-nowcache][-fastacc|-nofastacc][-w13|-now13] (attention kernel; activation checkpointing; "
                                   f"the output head in bf16; fp8-delayed's SwiGLU as three layers; which of fp8-delayed's "
                                   f"casts our kernel does, by default all; the head's gradient by our kernel; the residual "
                                   f"stream's dtype, by default the trainer's: bf16 on GPU, float32 on CPU; fp8-delayed's "
                                   f"weights cast once per step or in every micro-batch, by default once; its forward "
                                   f"products with fast accumulation or without, by default with; its fused SwiGLU's w1 and w3 as "
                                   f"one product or two, by default one), or 'all' ({len(all_modes())}, without "
                                   f"the last seven suffixes); precisions: "
                                   f"{', '.join(PRECISIONS)}; default: {','.join(DEFAULT_GPU_MODES)}")
    p.add_argument("--steps", type=int, help="timed steps per configuration (default 50 GPU, 3 CPU)")
    p.add_argument("--compile_mode", default="auto", help="as train_h100.py's: auto uses CUDA graphs for the fp8 rows")
    p.add_argument("--tune_kernels", action="store_true", help="as train_h100.py's: tuned Triton kernels in every compiled row")
    p.add_argument("--inductor", default="", metavar="KEY=VALUE,...",
                   help="torch._inductor.config overrides for every compiled configuration, e.g. "
                        "coordinate_descent_tuning=True,triton.prefer_nd_tiling=True (recorded in the results)")
    p.add_argument("--no_layers", action="store_true", help="skip the per-layer microbenchmark")
    p.add_argument("--compare-reference", dest="compare_reference", action="store_true",
                   help="also run the stock-TorchAO yardstick in this process tree")
    p.add_argument("--reference", type=Path, default=DEFAULT_REFERENCE, help="path of anchor_bench.py")
    p.add_argument("--timeout", type=int, default=900, help="seconds per configuration")
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/latest"))
    return p


def environment() -> dict[str, Any]:
    env: dict[str, Any] = dict(date=datetime.datetime.now().isoformat(timespec="seconds"), python=platform.python_version(),
                               torch=torch.__version__, cuda=torch.version.cuda, host=platform.node(),
                               command=" ".join([Path(sys.argv[0]).name] + sys.argv[1:]))
    try:
        import torchao

        env["torchao"] = torchao.__version__
    except ImportError:
        env["torchao"] = None
    if torch.cuda.is_available():
        env["gpu"] = torch.cuda.get_device_name()
        env["gpu_count"] = torch.cuda.device_count()
        try:
            env["driver"] = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                           capture_output=True, text=True, timeout=30).stdout.split("\n")[0].strip()
        except (OSError, subprocess.SubprocessError):
            env["driver"] = None
    else:
        env["gpu"] = None
        env["cpu"] = platform.processor() or platform.machine()
    return env


def run_child(module: str, payload: dict[str, Any], timeout: int) -> dict[str, Any]:
    """Run `python -m module payload` in a fresh process; its 'RESULT {...}' line, or the error it died with."""
    cmd = [sys.executable, "-m", module, json.dumps(payload)]
    try:
        # No compile caches shared between configurations: each compiles its own graphs (a cached graph
        # would also carry the attention kernel chosen when it was first traced).
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "TORCHINDUCTOR_FX_GRAPH_CACHE": "0", "TORCHINDUCTOR_AUTOGRAD_CACHE": "0"}
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout} s"}
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT "):])
    lines = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()]
    message = next((ln for ln in reversed(lines) if "Error" in ln or "error" in ln), lines[-1] if lines else "no output")
    if "out of memory" in proc.stderr:
        message = "out of memory: " + message
    # the message is one line for the table; the end of the traceback goes into matrix.json for whoever debugs it
    return {"error": message.strip()[:300], "returncode": proc.returncode, "stderr_tail": lines[-60:]}


def run_reference(script: Path, cfg: ModelConfig, batch_size: int, modes: list[str], steps: int, out: Path,
                  timeout: int) -> list[dict[str, Any]]:
    if not script.is_file():
        raise UserError(f"reference script {script} not found; pass --reference PATH/anchor_bench.py")
    ref_modes = list(dict.fromkeys(REFERENCE_MODES[m] for m in modes if m in REFERENCE_MODES))  # each once
    if not ref_modes:
        return []
    jsonl = out / "reference.jsonl"
    cmd = [sys.executable, str(script), "--dim", str(cfg.dim), "--heads", str(cfg.n_heads), "--layers", str(cfg.n_layers),
           "--ffn", str(cfg.intermediate_size), "--vocab", str(cfg.vocab_size), "--seq", str(cfg.context_length),
           "--batch", str(batch_size), "--steps", str(steps), "--modes", ",".join(ref_modes), "--out", str(jsonl)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout * len(ref_modes))
    except subprocess.TimeoutExpired:
        return [{"mode": "reference", "error": "timed out"}]
    rows = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0:
        rows.append({"mode": "reference", "error": (proc.stderr.strip().splitlines() or ["failed"])[-1][:300]})
    (out / "reference_command.txt").write_text(" ".join(cmd) + "\n")
    return rows


def measured_factors(rows: dict[str, dict[str, Any]], env: dict[str, Any], source: str) -> dict[str, Any]:
    """Ratios that the trainer quotes in its warnings, derived from this run's rows."""
    def ratio(num: str, den: str, what: str) -> dict[str, Any] | None:
        a, b = rows.get(num, {}), rows.get(den, {})
        if "tokens_per_second" not in a or "tokens_per_second" not in b:
            return None
        return dict(ratio=a["tokens_per_second"] / b["tokens_per_second"], what=what, gpu=env.get("gpu") or "CPU",
                    date=env["date"][:10], source=source)
    factors = {
        "fp8_eager_vs_bf16_compile": ratio("fp8-tensorwise-eager", BASELINE, "fp8 eager tokens/s vs bf16 + compile"),
        "fp8_eager_vs_bf16_eager": ratio("fp8-tensorwise-eager", "bf16-eager", "fp8 eager tokens/s vs bf16 eager"),
        "activation_checkpointing_cost": ratio("bf16-compile-ac", BASELINE, "bf16 + compile tokens/s with vs without checkpointing"),
        "activation_checkpointing_cost_fp8": ratio("fp8-tensorwise-compile-ac", "fp8-tensorwise-compile",
                                                   "fp8 + compile tokens/s with vs without checkpointing"),
    }
    return {k: v for k, v in factors.items() if v}


def ref_ratio(row: dict[str, Any], ref: dict[str, Any]) -> float:
    """Our speed over the yardstick's, both from the *mean* step time: the yardstick times its steps as one
    span (a mean), so our row's median (its tokens/s column) would flatter us by the slow steps it ignores."""
    return ref["step_ms"] / mean_ms(row)


def spread(row: dict[str, Any]) -> str:
    """The 10th-90th percentile step times: a wide one marks a step that waits on the host (NOTES 25)."""
    each = sorted(row.get("step_ms_each", []))
    if len(each) < 10:
        return "n/a"
    return f"{each[len(each) // 10]:.1f}-{each[(9 * len(each)) // 10]:.1f}"


def format_table(rows: list[dict[str, Any]], reference: list[dict[str, Any]], on_gpu: bool) -> str:
    base = next((r for r in rows if r["name"] == BASELINE and "tokens_per_second" in r), None)
    ref_by_mode = {r.get("mode"): r for r in reference}
    header = ["configuration", "tokens/s", "step ms", "step ms p10-p90", "model TFLOP/s", "MFU (bf16 peak)", "peak GiB",
              f"vs {BASELINE} (mean step)", "reference tokens/s", "ours / reference (mean step)", "roofline bound",
              "warm-up s", "attention that ran"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['name']} | FAILED: {r['error']} |" + " |" * (len(header) - 2))
            continue
        ref = ref_by_mode.get(REFERENCE_MODES.get(r["name"]), {})
        notes = (" (CUDA graphs)" if r.get("compile_mode") in CUDA_GRAPH_MODES else "") + (
            " (tuned kernels)" if r.get("tune_kernels") and r.get("compiled") else "") + (
            " (fused SwiGLU)" if r.get("fp8_fused_swiglu") else "") + (
            f" (kernel casts: {r['fp8_kernel_casts']})" if r.get("fp8_kernel_casts", "none") != "none" else "") + (
            " (head kernel)" if r.get("fp8_head_kernel") else "") + (
            f" ({r.get('residual_dtype', 'fp32')} residual)") + (
            " (weights cast per step)" if r.get("fp8_weight_cache") or r.get("bf16_weight_cache") else "") + (
            " (fast accumulation)" if r.get("fp8_fast_accum") else "") + (
            " (w1 and w3 as one product)" if r.get("fp8_merge_w13") else "")
        cells = [r["name"] + notes, f"{r['tokens_per_second']:,}", f"{r['step_ms']:.1f}", spread(r),
                 f"{r['model_tflops']:.0f}",
                 f"{100 * r['mfu_bf16_peak']:.1f}%" if "mfu_bf16_peak" in r else "n/a",
                 f"{r['peak_memory_gib']:.1f}" if "peak_memory_gib" in r else "n/a",
                 f"{mean_ms(base) / mean_ms(r):.3f}x" if base else "n/a",
                 f"{ref['tok_s']:,}" if "tok_s" in ref else "",
                 f"{ref_ratio(r, ref):.3f}" if "tok_s" in ref else "",
                 f"{r['roofline_tokens_per_second']:,}" if "roofline_tokens_per_second" in r else "n/a",
                 f"{r['warmup_seconds']:.1f}", r["attention_backend"]]
        lines.append("| " + " | ".join(cells) + " |")
    if not on_gpu:
        lines.append("\nCPU timings (no CUDA device): they say nothing about GPU speed.")
    return "\n".join(lines)


def format_layers(layers: list[dict[str, Any]]) -> str:
    lines = ["| layer (in -> out) | tokens | bf16 ms | fp8 ms | fp8 speedup | bf16 TFLOP/s | fp8 TFLOP/s |", "|---|---|---|---|---|---|---|"]
    for r in layers:
        if "error" in r:
            lines.append(f"| {r.get('shape')} | FAILED: {r['error']} | | | | | |")
            continue
        lines.append(f"| {r['in_features']} -> {r['out_features']} | {r['tokens']} | {r['bf16_ms']:.3f} | {r['fp8_ms']:.3f} | "
                     f"{r['speedup']:.2f}x | {r['bf16_tflops']:.0f} | {r['fp8_tflops']:.0f} |")
    return "\n".join(lines)


def plot(rows: list[dict[str, Any]], reference: list[dict[str, Any]], layers: list[dict[str, Any]], out: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = [r for r in rows if "tokens_per_second" in r]
    refs = [r for r in reference if "tok_s" in r]
    if ok:
        names = [r["name"] for r in ok] + [f"reference {r['mode']}" for r in refs]
        values = [r["tokens_per_second"] for r in ok] + [r["tok_s"] for r in refs]
        colors = ["tab:blue" if r["precision"] == "bf16" else "tab:orange" for r in ok] + ["tab:gray"] * len(refs)
        fig, ax = plt.subplots(figsize=(9, 0.45 * len(names) + 1.5))
        ax.barh(names[::-1], values[::-1], color=colors[::-1])
        for y, v in enumerate(values[::-1]):
            ax.text(v, y, f" {v:,.0f}", va="center", fontsize=8)
        ax.set_xlabel("training tokens/s (median step)")
        ax.set_title(title, fontsize=10)
        fig.tight_layout()
        fig.savefig(out / "tokens_per_second.png", dpi=110)
        plt.close(fig)
    good_layers = [r for r in layers if "speedup" in r]
    if good_layers:
        fig, ax = plt.subplots(figsize=(7, 0.5 * len(good_layers) + 1.5))
        labels = [f"Linear({r['in_features']}->{r['out_features']})" for r in good_layers]
        speedups = [r["speedup"] for r in good_layers]
        ax.barh(labels, speedups, color=["tab:green" if s > 1 else "tab:red" for s in speedups])
        ax.axvline(1.0, color="black", lw=1)
        ax.set_xlabel("fp8 speedup over bf16, forward + backward (compiled)")
        ax.set_title(f"per-layer fp8 gain at {good_layers[0]['tokens']} tokens", fontsize=10)
        fig.tight_layout()
        fig.savefig(out / "layer_fp8_speedup.png", dpi=110)
        plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    on_gpu = torch.cuda.is_available()
    preset = args.preset or ("seed" if on_gpu else "test")
    overrides = {n: getattr(args, n) for n in ("vocab_size", "context_length", "dim", "n_layers", "n_heads",
                                                 "intermediate_size") if getattr(args, n) is not None}
    cfg = replace(PRESETS[preset], **overrides).validate()
    batch_size = args.batch_size or ((8 if preset == "1b" else 16) if on_gpu else 4)
    steps = args.steps or (50 if on_gpu else 3)  # host-bound fp8 steps wander: 15-20 steps misled by 5% (NOTES 25)
    if args.modes == "all":
        modes = all_modes()
    elif args.modes:
        modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    else:
        modes = list(DEFAULT_GPU_MODES if on_gpu else DEFAULT_CPU_MODES)
    for m in modes:
        parse_mode(m)
    inductor = parse_inductor(args.inductor)
    if args.tune_kernels:  # here, not in each configuration's process: one error line, not a table of failures
        check_tune_kernels(torch.device("cuda" if on_gpu else "cpu"))
    if not on_gpu:
        print("no CUDA device: running on the CPU ('bf16' rows compute in fp32, fp8 is emulated); these are CPU "
              "timings, not GPU predictions")
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    env = environment()
    peaks = current_device_peaks(torch.device("cuda")) if on_gpu else None
    print(f"model: {preset} preset {asdict(cfg)}; micro-batch {batch_size} x {cfg.context_length} tokens; "
          f"{token_flops(cfg).model / 1e9:.2f} GFLOP/token")
    if peaks:
        for fp8 in (False, True):
            bound = roofline_tokens_per_second(cfg, peaks, fp8, batch_size * cfg.context_length,
                                               _param_count(cfg), fp8_head=fp8)
            print(f"roofline upper bound ({'fp8, head included' if fp8 else 'bf16'}, {peaks.name} datasheet): "
                  f"{bound:,.0f} tokens/s")

    rows: list[dict[str, Any]] = []
    about = dict(environment=env, model=asdict(cfg), preset=preset, batch_size=batch_size, steps=steps, inductor=inductor,
                 tune_kernels=args.tune_kernels)
    device = "cuda" if on_gpu else "cpu"
    for mode in tqdm(modes, desc="configurations", unit="config"):
        spec = BenchSpec(name=mode, model=asdict(cfg), batch_size=batch_size, steps=steps,
                         compile_mode=args.compile_mode, tune_kernels=args.tune_kernels, device=device, inductor=inductor,
                         **parse_mode(mode))
        result = run_child("cs336_basics.perf.bench_run", asdict(spec), args.timeout)
        result.setdefault("name", mode)
        result.setdefault("precision", spec.precision)
        rows.append(result)
        # Written after every configuration, so an interrupted or timed-out matrix keeps what it measured.
        write_text_atomic(out / "matrix.json", json.dumps(dict(about, rows=rows, complete=False), indent=1))
        tqdm.write(f"{mode}: " + (f"{result['tokens_per_second']:,} tokens/s" if "tokens_per_second" in result
                                  else f"FAILED ({result['error']})"))

    layers: list[dict[str, Any]] = []
    if on_gpu and not args.no_layers:
        layers_result = run_child("cs336_basics.perf.layer_bench", dict(model=asdict(cfg), tokens=batch_size * cfg.context_length,
                                                                        recipe="tensorwise"), args.timeout)
        layers = layers_result.get("layers", [layers_result])

    reference = (run_reference(args.reference, cfg, batch_size, modes, steps, out, args.timeout)
                 if args.compare_reference else [])

    table = format_table(rows, reference, on_gpu)
    title = f"{preset}: {_param_count(cfg) / 1e6:.0f}M params, batch {batch_size} x {cfg.context_length}, {env.get('gpu') or 'CPU'}"
    print("\n" + title + "\n" + table)
    if layers:
        print("\nper-layer fp8 (tensorwise) vs bf16, forward + backward, compiled:\n" + format_layers(layers))
    source = str(out / "matrix.json")
    factors = measured_factors({r["name"]: r for r in rows}, env, source)
    result = dict(about, rows=rows, reference=reference, layers=layers, measured_factors=factors, complete=True)
    write_text_atomic(out / "matrix.json", json.dumps(result, indent=1))
    (out / "measured_factors.json").write_text(json.dumps(factors, indent=1))
    md = [f"# Performance matrix: {title}", "", f"{env['date']}; torch {env['torch']}, torchao {env['torchao']}, "
          f"CUDA {env['cuda']}, driver {env.get('driver')}", "", f"Command: `{env['command']}`", "", table]
    if inductor:
        md[4:4] = [f"TorchInductor overrides in every compiled row: `{inductor}`", ""]
    if layers:
        md += ["", "## Per-layer fp8 (tensorwise) vs bf16", "", format_layers(layers)]
    (out / "matrix.md").write_text("\n".join(md) + "\n")
    plot(rows, reference, layers, out, title)
    print(f"\nwrote {out}/matrix.json, matrix.md, measured_factors.json and PNG charts")
    return 0


def _param_count(cfg: ModelConfig) -> int:
    with torch.device("meta"):
        return Transformer(cfg).num_params()

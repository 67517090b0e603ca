"""Which configuration trains fastest for a model on this machine: the benchmark matrix.

Every configuration (a mode, e.g. fp8-delayed-compile) runs in a fresh process (cli/bench_run.py), built as
training builds it from the recipe (--config) with the mode's settings on top; then the per-layer fp8
microbenchmark and, with --compare-reference, the project's stock-TorchAO yardstick
(perf/stock_torchao.py) at the same shape. Results: a console table, matrix.json, matrix.md and PNG
charts in --out.

Modes: <precision>-<eager|compile>[-suffix...]. The precision and eager/compile always set fp8.enabled (and
fp8.recipe) and train.compile_model; the row's attention (-math: no fused kernels; otherwise fused, -flash or
-cudnn first) and activation checkpointing (-ac: on; otherwise off) are always named too. Every other suffix
sets one setting; a setting no suffix names keeps the recipe's value, resolved as training resolves it.
"""

from __future__ import annotations

import argparse
import datetime
import itertools
import json
import os
import platform
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from cs336_basics.cli import run_main
from cs336_basics.cli.bench_run import BenchSpec
from cs336_basics.config import COMPILE_MODES, Config, load_recipe, with_overrides
from cs336_basics.errors import UserError
from cs336_basics.files import atomic_path, check_writable_dir, write_text_atomic
from cs336_basics.model.transformer import ModelConfig, Transformer
from cs336_basics.perf.flops import roofline_tokens_per_second, token_flops
from cs336_basics.perf.hardware import current_device_peaks
from cs336_basics.perf.memory import check_training_memory
from cs336_basics.training.prepare import resolve_config
from cs336_basics.training.transforms import CUDA_GRAPH_MODES

PRECISIONS = ("bf16", "fp8-tensorwise", "fp8-rowwise", "fp8-rowwise_with_gw_hp", "fp8-delayed")
DEFAULT_GPU_MODES = ("bf16-eager", "bf16-compile", "bf16-compile-flash", "fp8-delayed-compile",
                     "fp8-delayed-compile-unfused", "fp8-tensorwise-compile", "fp8-tensorwise-compile-bf16head",
                     "fp8-tensorwise-compile-flash", "fp8-rowwise-compile", "fp8-rowwise_with_gw_hp-compile",
                     "fp8-tensorwise-eager", "bf16-compile-ac", "fp8-tensorwise-compile-ac", "bf16-compile-math")
DEFAULT_CPU_MODES = ("bf16-eager", "fp8-tensorwise-eager", "bf16-eager-ac")
# Our mode -> the yardstick's name for the same configuration.
# The yardstick keeps its head in bf16: -bf16head is the like-for-like row, ours (fp8 head) the fast path.
REFERENCE_MODES = {"bf16-eager": "bf16-eager", "bf16-compile": "bf16-compile", "fp8-tensorwise-compile": "fp8-compile",
                   "fp8-tensorwise-compile-bf16head": "fp8-compile", "fp8-rowwise-compile": "fp8rw-compile",
                   "fp8-tensorwise-eager": "fp8-eager", "fp8-delayed-compile": "fp8-compile",
                   "fp8-delayed-compile-bf16head": "fp8-compile", "fp8-delayed-compile-unfused": "fp8-compile"}
BASELINE = "bf16-compile"
REFERENCE_SCRIPT = Path(__file__).resolve().parents[1] / "perf" / "stock_torchao.py"
# Without --config on a machine without a GPU: a model small enough to time every mode in seconds.
CPU_TEST_SHAPE = {"model.vocab_size": 512, "model.context_length": 32, "model.dim": 32, "model.n_layers": 2,
                  "model.n_heads": 2, "model.intermediate_size": 64, "train.batch_size": 4}
SHAPE_FLAGS = ("vocab_size", "context_length", "dim", "n_layers", "n_heads", "intermediate_size")

# Suffix -> the one setting it names. -math, -flash, -cudnn and -ac are parse_mode's own (see the docstring).
SETTINGS: dict[str, tuple[str, Any]] = {
    "bf16head": ("fp8.head", False), "bf16res": ("train.residual_dtype", "bf16"),
    "fp32res": ("train.residual_dtype", "fp32"),
    "unfused": ("fp8.fused_swiglu", False),
    "castnone": ("fp8.kernel_casts", "none"), "castinputs": ("fp8.kernel_casts", "inputs"),
    "castgrads": ("fp8.kernel_casts", "grads"), "castall": ("fp8.kernel_casts", "all"),
    "wcache": ("fp8.weight_cache", True), "nowcache": ("fp8.weight_cache", False),
    "fastacc": ("fp8.fast_accum", True), "nofastacc": ("fp8.fast_accum", False),
    "w13": ("fp8.merge_w13", True), "now13": ("fp8.merge_w13", False),
}
# The suffixes that shape the delayed recipe's own layers, with what each does (in parse_mode's errors).
DELAYED_SUFFIXES = {"unfused": "SwiGLU's three layers one by one", "castnone": "inductor's casts, not our kernel",
                    "castinputs": "our cast kernel for inputs", "castgrads": "our cast kernel for gradients",
                    "castall": "our cast kernel for every cast", "wcache": "weights cast once per step",
                    "nowcache": "weights cast in every micro-batch", "fastacc": "fast accumulation",
                    "nofastacc": "without fast accumulation", "w13": "w1 and w3 as one product",
                    "now13": "w1 and w3 as two products"}
ATTENTION = ("math", "flash", "cudnn")
SUFFIXES = {*ATTENTION, "ac", *SETTINGS}
GRAMMAR = ("<precision>-<eager|compile>[-math|-flash|-cudnn][-ac][-bf16head][-bf16res|-fp32res][-unfused]"
           "[-castnone|-castinputs|-castgrads|-castall][-wcache|-nowcache][-fastacc|-nofastacc][-w13|-now13]")


def all_modes() -> list[str]:
    return [f"{p}-{c}{a}{ac}" for p, c, a, ac in
            itertools.product(PRECISIONS, ("eager", "compile"), ("", "-flash", "-cudnn", "-math"), ("", "-ac"))]


def parse_mode(mode: str) -> dict[str, Any]:
    """A mode as config overrides: 'fp8-rowwise-compile-math-ac' -> {"fp8.enabled": True, "fp8.recipe": "rowwise",
    "train.compile_model": True, "train.use_flash_attn": False, "train.gradient_checkpointing": True}."""
    for precision in sorted(PRECISIONS, key=len, reverse=True):
        if mode.startswith(precision + "-"):
            parts = mode[len(precision) + 1:].split("-")
            break
    else:
        raise UserError(f"mode {mode!r} must start with one of {', '.join(PRECISIONS)}")
    suffixes = parts[1:]
    if parts[0] not in ("eager", "compile") or not set(suffixes) <= SUFFIXES:
        raise UserError(f"mode {mode!r}: expected {GRAMMAR}, e.g. fp8-rowwise-compile-ac")
    if len(set(suffixes)) != len(suffixes):
        raise UserError(f"mode {mode!r} names a suffix twice")
    for group in (ATTENTION, ("bf16res", "fp32res"), ("castnone", "castinputs", "castgrads", "castall"),
                  ("wcache", "nowcache"), ("fastacc", "nofastacc"), ("w13", "now13")):
        named = [s for s in group if s in suffixes]
        if len(named) > 1:
            raise UserError(f"mode {mode!r}: {' and '.join('-' + s for s in named)} contradict each other; keep one")
    fp8 = precision != "bf16"
    for suffix in suffixes:
        if suffix in DELAYED_SUFFIXES and precision != "fp8-delayed":
            raise UserError(f"mode {mode!r}: -{suffix} ({DELAYED_SUFFIXES[suffix]}) applies to fp8-delayed only")
    if "bf16head" in suffixes and not fp8:
        raise UserError(f"mode {mode!r}: -bf16head keeps the float8 head in bf16: an fp8 mode only")
    overrides: dict[str, Any] = {"fp8.enabled": fp8}
    if fp8:
        overrides["fp8.recipe"] = precision.split("-", 1)[1]
    overrides["train.compile_model"] = parts[0] == "compile"
    overrides["train.use_flash_attn"] = "math" not in suffixes
    if fused := next((a for a in ("flash", "cudnn") if a in suffixes), None):  # none named: PyTorch's order
        overrides["train.fused_attention"] = fused
    overrides["train.gradient_checkpointing"] = "ac" in suffixes
    for suffix in suffixes:
        if suffix in SETTINGS:
            key, value = SETTINGS[suffix]
            overrides[key] = value
    return overrides


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
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0], epilog=__doc__.split("\n", 2)[2].strip(),
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", metavar="RECIPE",
                   help="the recipe to time: tiny, small, seed, 1b (configs/) or a TOML file (default: seed on a "
                        "GPU; without a GPU a 2-layer test shape)")
    for name in SHAPE_FLAGS:
        p.add_argument(f"--{name}", type=int, help="model shape (default: the recipe's)")
    p.add_argument("--batch_size", type=int, help="sequences per step (default: the recipe's micro-batch; every "
                                                  "timed step is one micro-batch, as the yardstick's)")
    p.add_argument("--modes", help=f"comma-separated {GRAMMAR}, or 'all' ({len(all_modes())}: every precision, eager "
                                   f"and compiled, each attention, with and without -ac); precisions: "
                                   f"{', '.join(PRECISIONS)}; default on a GPU: {','.join(DEFAULT_GPU_MODES)}; "
                                   f"without one: {','.join(DEFAULT_CPU_MODES)}")
    p.add_argument("--steps", type=int, help="timed steps per configuration (default 50 on a GPU, 3 on a CPU)")
    p.add_argument("--compile_mode", choices=COMPILE_MODES,
                   help="train.compile_mode of every row (default: the recipe's, auto: CUDA graphs for the fp8 rows "
                        "on a GPU)")
    p.add_argument("--tune_kernels", action="store_true",
                   help="train.tune_kernels in every compiled row (tuned Triton kernels; slower compilation)")
    p.add_argument("--inductor", default="", metavar="KEY=VALUE,...",
                   help="torch._inductor.config overrides for every compiled configuration, e.g. "
                        "coordinate_descent_tuning=True,triton.prefer_nd_tiling=True (recorded in the results)")
    p.add_argument("--no_layers", action="store_true", help="skip the per-layer microbenchmark")
    p.add_argument("--compare-reference", dest="compare_reference", action="store_true",
                   help="also run the stock-TorchAO yardstick (cs336_basics/perf/stock_torchao.py) at the same shape")
    p.add_argument("--timeout", type=int, default=900, help="seconds per configuration")
    p.add_argument("--out", type=Path, default=Path("bench_results/latest"), help="results directory")
    return p


def base_config(args: argparse.Namespace, on_gpu: bool) -> tuple[Config, str]:
    """The config every row starts from, and its label: the recipe with the shape flags, one micro-batch a
    step, this machine's device (float8 emulated without a GPU) and --compile_mode."""
    if args.config:
        config, label = load_recipe(args.config)[0], Path(args.config).stem
    elif on_gpu:
        config, label = load_recipe("seed")[0], "seed"
    else:
        config, label = with_overrides(Config(), CPU_TEST_SHAPE), "CPU test shape"
    overrides: dict[str, Any] = {f"model.{n}": getattr(args, n) for n in SHAPE_FLAGS if getattr(args, n) is not None}
    if args.batch_size is not None:
        overrides["train.batch_size"] = args.batch_size
    if args.compile_mode is not None:
        overrides["train.compile_mode"] = args.compile_mode
    overrides.update({"train.gradient_accumulation_steps": 1, "run.device": "cuda" if on_gpu else "cpu"})
    if not on_gpu:
        overrides["fp8.emulate"] = True
    config = with_overrides(config, overrides)
    config.model.validate()
    return config, label


def row_spec(base: Config, mode: str, steps: int, device: torch.device, tune_kernels: bool = False,
             inductor: dict[str, Any] | None = None) -> BenchSpec:
    """One row: `base` with the mode's settings, resolved as training resolves a config on `device` (the mode's
    settings count as asked for: one that cannot apply is an error here, before anything runs)."""
    overrides = parse_mode(mode)
    # tuned kernels are compiled ones: an eager row runs without, whatever the recipe or --tune_kernels say
    tuned = overrides["train.compile_model"] and (tune_kernels or base.train.tune_kernels)
    try:
        config = resolve_config(with_overrides(base, {**overrides, "train.tune_kernels": tuned}), device,
                                explicit=frozenset(overrides))
    except UserError as e:
        raise UserError(f"mode {mode}: {e}") from None
    return BenchSpec(name=mode, config=config.to_dict(), steps=steps, inductor=inductor or {})


def check_before_work(args: argparse.Namespace, modes: list[str], specs: list[BenchSpec], device: torch.device) -> None:
    """What the matrix needs, checked before its first row runs rather than found missing after it: rows to run,
    a positive timeout, a writable --out, memory for every row, and yardstick modes for --compare-reference."""
    if not modes:
        raise UserError(f"--modes names no mode; give comma-separated modes ({GRAMMAR}) or 'all'")
    if args.timeout < 1:
        raise UserError(f"--timeout must be at least 1 second per configuration, got {args.timeout}")
    check_writable_dir(args.out, "--out", "choose another results directory")
    for spec in specs:
        try:
            check_training_memory(Config.from_dict(spec.config), device)
        except UserError as e:
            raise UserError(f"mode {spec.name}: {e}") from None
    if args.compare_reference:
        check_reference(REFERENCE_SCRIPT)
        if not any(m in REFERENCE_MODES for m in modes):
            raise UserError(f"--compare-reference: none of the modes has a yardstick counterpart; add one of "
                            f"{', '.join(sorted(REFERENCE_MODES))} or drop --compare-reference")


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


def check_reference(script: Path) -> None:
    if not script.is_file():
        raise UserError(f"--compare-reference runs the yardstick {script}, which is missing: reinstall the package "
                        "(in a checkout: git checkout -- cs336_basics/perf/stock_torchao.py) or drop --compare-reference")


def run_reference(script: Path, cfg: ModelConfig, batch_size: int, modes: list[str], steps: int, out: Path,
                  timeout: int, device: str) -> list[dict[str, Any]]:
    """The yardstick's modes that match `modes`, at the same shape, batch and steps; one row per mode."""
    ref_modes = list(dict.fromkeys(REFERENCE_MODES[m] for m in modes if m in REFERENCE_MODES))  # each once
    if not ref_modes:
        return []
    jsonl = out / "reference.jsonl"
    cmd = [sys.executable, str(script), "--dim", str(cfg.dim), "--heads", str(cfg.n_heads), "--layers", str(cfg.n_layers),
           "--ffn", str(cfg.intermediate_size), "--vocab", str(cfg.vocab_size), "--seq", str(cfg.context_length),
           "--batch", str(batch_size), "--steps", str(steps), "--modes", ",".join(ref_modes), "--out", str(jsonl),
           "--device", device]
    write_text_atomic(out / "reference_command.txt", " ".join(cmd) + "\n")
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout * len(ref_modes))
    except subprocess.TimeoutExpired:
        return [{"mode": "reference", "error": "timed out"}]
    rows = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 and not any("error" in r for r in rows):
        rows.append({"mode": "reference", "error": (proc.stderr.strip().splitlines() or ["failed"])[-1][:300]})
    return rows


def mean_ms(row: dict[str, Any]) -> float:
    """A row's mean step time."""
    return row.get("step_ms_mean", row["step_ms"])


def ref_ratio(row: dict[str, Any], ref: dict[str, Any]) -> float:
    """Our speed over the yardstick's, both from the *mean* step time: the yardstick times its steps as one
    span (a mean), so our row's median (its tokens/s column) would flatter us by the slow steps it ignores."""
    return ref["step_ms"] / mean_ms(row)


def spread(row: dict[str, Any]) -> str:
    """The 10th-90th percentile step times: a wide one marks a step that waits on the host."""
    each = sorted(row.get("step_ms_each", []))
    if len(each) < 10:
        return "n/a"
    return f"{each[len(each) // 10]:.1f}-{each[(9 * len(each)) // 10]:.1f}"


def row_notes(r: dict[str, Any]) -> str:
    """What ran beyond the row's name, in brackets."""
    notes = [("CUDA graphs", r.get("compile_mode") in CUDA_GRAPH_MODES),
             ("tuned kernels", r.get("tune_kernels") and r.get("compiled")),
             ("fused SwiGLU", r.get("fp8_fused_swiglu")),
             (f"kernel casts: {r.get('fp8_kernel_casts')}", r.get("fp8_kernel_casts", "none") != "none"),
             (f"{r.get('residual_dtype', 'fp32')} residual", True),
             ("weights cast per step", r.get("fp8_weight_cache") or r.get("bf16_weight_cache")),
             ("fast accumulation", r.get("fp8_fast_accum")),
             ("w1 and w3 as one product", r.get("fp8_merge_w13"))]
    return "".join(f" ({text})" for text, on in notes if on)


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
        cells = [r["name"] + row_notes(r), f"{r['tokens_per_second']:,}", f"{r['step_ms']:.1f}", spread(r),
                 f"{r['model_tflops']:.0f}",
                 f"{100 * r['mfu_bf16_peak']:.1f}%" if "mfu_bf16_peak" in r else "n/a",
                 f"{r['peak_memory_gib']:.1f}" if "peak_memory_gib" in r else "n/a",
                 f"{mean_ms(base) / mean_ms(r):.3f}x" if base else "n/a",
                 f"{ref['tok_s']:,}" if "tok_s" in ref else "",
                 f"{ref_ratio(r, ref):.3f}" if "tok_s" in ref else "",
                 f"{r['roofline_tokens_per_second']:,}" if "roofline_tokens_per_second" in r else "n/a",
                 f"{r['warmup_seconds']:.1f}", r["attention_backend"]]
        lines.append("| " + " | ".join(cells) + " |")
    failed = [r for r in reference if "error" in r]
    if failed:
        lines.append("\nreference failed: " + "; ".join(f"{r.get('mode')}: {r['error']}" for r in failed))
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
        with atomic_path(out / "tokens_per_second.png", keep_suffix=True) as tmp:
            fig.savefig(tmp, dpi=110)
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
        with atomic_path(out / "layer_fp8_speedup.png", keep_suffix=True) as tmp:
            fig.savefig(tmp, dpi=110)
        plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.compare_reference:  # before anything runs: a missing yardstick is not found out after the matrix
        check_reference(REFERENCE_SCRIPT)
    on_gpu = torch.cuda.is_available()
    device = torch.device("cuda" if on_gpu else "cpu")
    base, label = base_config(args, on_gpu)
    cfg, batch_size = base.model, base.train.batch_size
    steps = args.steps or (50 if on_gpu else 3)  # host-bound fp8 steps wander: 15-20 steps can mislead by 5%
    if steps < 1:
        raise UserError(f"--steps must be at least 1, got {steps}")
    if args.modes == "all":
        modes = all_modes()
    elif args.modes:
        modes = list(dict.fromkeys(m.strip() for m in args.modes.split(",") if m.strip()))
    else:
        modes = list(DEFAULT_GPU_MODES if on_gpu else DEFAULT_CPU_MODES)
    inductor = parse_inductor(args.inductor)
    # Every row resolved here, before any runs: one error line, not a table of failures.
    specs = [row_spec(base, mode, steps, device, args.tune_kernels, inductor) for mode in modes]
    check_before_work(args, modes, specs, device)
    if not on_gpu:
        print("no CUDA device: running on the CPU ('bf16' rows compute in fp32, fp8 is emulated); these are CPU "
              "timings, not GPU predictions")
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    env = environment()
    params = _param_count(cfg)
    peaks = current_device_peaks(device) if on_gpu else None
    print(f"model: {label} {asdict(cfg)}; micro-batch {batch_size} x {cfg.context_length} tokens; "
          f"{token_flops(cfg).model / 1e9:.2f} GFLOP/token")
    if peaks:
        for fp8 in (False, True):
            bound = roofline_tokens_per_second(cfg, peaks, fp8, batch_size * cfg.context_length, params, fp8_head=fp8)
            print(f"roofline upper bound ({'fp8, head included' if fp8 else 'bf16'}, {peaks.name} datasheet): "
                  f"{bound:,.0f} tokens/s")

    rows: list[dict[str, Any]] = []
    about = dict(environment=env, recipe=label, config=base.to_dict(), batch_size=batch_size, steps=steps,
                 inductor=inductor, tune_kernels=args.tune_kernels)
    for spec in tqdm(specs, desc="configurations", unit="config"):
        result = run_child("cs336_basics.cli.bench_run", asdict(spec), args.timeout)
        result.setdefault("name", spec.name)
        fp8 = spec.config["fp8"]
        result.setdefault("precision", f"fp8-{fp8['recipe']}" if fp8["enabled"] else "bf16")
        result["config"] = spec.config  # the resolved config the row trained with
        rows.append(result)
        # Written after every configuration, so an interrupted or timed-out matrix keeps what it measured.
        write_text_atomic(out / "matrix.json", json.dumps(dict(about, rows=rows, complete=False), indent=1))
        tqdm.write(f"{spec.name}: " + (f"{result['tokens_per_second']:,} tokens/s" if "tokens_per_second" in result
                                       else f"FAILED ({result['error']})"))

    layers: list[dict[str, Any]] = []
    if on_gpu and not args.no_layers:
        layers_result = run_child("cs336_basics.perf.layer_bench", dict(model=asdict(cfg), tokens=batch_size * cfg.context_length,
                                                                        recipe="tensorwise"), args.timeout)
        layers = layers_result.get("layers", [layers_result])

    reference = (run_reference(REFERENCE_SCRIPT, cfg, batch_size, modes, steps, out, args.timeout, device.type)
                 if args.compare_reference else [])

    table = format_table(rows, reference, on_gpu)
    title = f"{label}: {params / 1e6:.0f}M params, batch {batch_size} x {cfg.context_length}, {env.get('gpu') or 'CPU'}"
    print("\n" + title + "\n" + table)
    if layers:
        print("\nper-layer fp8 (tensorwise) vs bf16, forward + backward, compiled:\n" + format_layers(layers))
    write_text_atomic(out / "matrix.json", json.dumps(dict(about, rows=rows, reference=reference, layers=layers,
                                                           complete=True), indent=1))
    md = [f"# Benchmark matrix: {title}", "", f"{env['date']}; torch {env['torch']}, torchao {env['torchao']}, "
          f"CUDA {env['cuda']}, driver {env.get('driver')}", "", f"Command: `{env['command']}`", "", table]
    if inductor:
        md[4:4] = [f"TorchInductor overrides in every compiled row: `{inductor}`", ""]
    if layers:
        md += ["", "## Per-layer fp8 (tensorwise) vs bf16", "", format_layers(layers)]
    write_text_atomic(out / "matrix.md", "\n".join(md) + "\n")
    plot(rows, reference, layers, out, title)
    print(f"\nwrote {out}/matrix.json, matrix.md and PNG charts")
    return 0


def _param_count(cfg: ModelConfig) -> int:
    with torch.device("meta"):
        return Transformer(cfg).num_params()


def cli() -> int:
    return run_main(main)

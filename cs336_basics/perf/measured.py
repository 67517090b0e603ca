"""Factors measured on the GPU by optimize_performance.py and committed under benchmarks/results/,
quoted by the trainer's warnings. Nothing here is typed in: absent measurements are reported as absent."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any

from cs336_basics.files import write_text_atomic
from cs336_basics.training.transforms import CUDA_GRAPH_MODES

RESULTS_DIR = Path(__file__).resolve().parents[2] / "benchmarks" / "results"
FACTORS_FILE = RESULTS_DIR / "measured_factors.json"


def measured_factor(name: str) -> str | None:
    """e.g. '0.24x (fp8 eager vs bf16 + compile, NVIDIA H200, 2026-11-28, benchmarks/results/...)'."""
    try:
        factors = json.loads(FACTORS_FILE.read_text())
    except (OSError, ValueError):
        return None
    entry = factors.get(name)
    if not entry:
        return None
    return f"{entry['ratio']:.2f}x ({entry['what']}; {entry['gpu']}, {entry['date']}, {entry['source']})"


# fp8 / bf16 gains measured on the GPU, by model size. Collected from committed device calls by
# `python -m cs336_basics.perf.measured CALL_DIR ...` into GAINS_FILE; the configuration summary quotes the entries
# of the nearest measured width, so a run learns whether fp8 paid at about its size, in training as well as in
# the bench.
GAINS_FILE = RESULTS_DIR / "fp8_gains.json"
NEAR = 1.5  # a measured width within this factor of the run's counts as near
QUALITY_TOLERANCE = 0.01  # issue 5's bar: fp8's final validation loss within 1% of bf16's


def mean_ms(row: dict[str, Any]) -> float:
    """A bench row's mean step time (rows from before it was recorded have only the median)."""
    return row.get("step_ms_mean", row["step_ms"])


def _gpu_of(call: Path) -> str:
    env = call / "env.txt"  # first line: nvidia-smi's "name, driver, memory"
    return env.read_text().splitlines()[0].split(",")[0].strip() if env.is_file() else "unknown GPU"


def _shape(model: dict[str, Any], batch_size: int) -> dict[str, int]:
    return dict(dim=model["dim"], n_layers=model["n_layers"], batch_size=batch_size, context_length=model["context_length"])


def _compiled_fp8(row: dict[str, Any]) -> bool:
    """A bench row of the path fp8 gains are quoted for: compiled, without activation checkpointing, no experiment."""
    return row["precision"].startswith("fp8") and row["compiled"] and not row["checkpointing"] and not _experiment(row)


def _experiment(settings: dict[str, Any]) -> bool:
    """Whether a bench row or a run's settings (run.json merged with its train config) ran an opt-in experiment,
    which no gains entry tells apart yet: casts other than a default run's (inductor's, "none" or before the field
    None, until call 55; ours for "all" since), the head kernel, blocks kept in bf16, bf16 steps before float8's
    (--fp8_start_step), or delayed scales with headroom (--fp8_margin, --fp8_grad_margin). Weights cast per step
    (fp8's, bf16's), fast accumulation and w1 | w3 as one product (defaults since `69e4803`, `f4a9f8b` and calls
    70-73) are recorded in each entry instead."""
    return (settings.get("fp8_kernel_casts") not in (None, "none", "all") or bool(settings.get("fp8_head_kernel"))
            or bool(settings.get("fp8_bf16_blocks")) or bool(settings.get("fp8_start_step"))
            or bool(settings.get("fp8_margin")) or settings.get("fp8_grad_margin") is not None)


def _residual(config: dict[str, Any]) -> str:
    """The residual stream's dtype of a bench row or a run's train config (before --residual_dtype: float32)."""
    return config.get("residual_dtype", "fp32")


def _fused(row: dict[str, Any]) -> bool:
    """Whether a bench row ran the fused SwiGLU (call 33's rows named the field fp8_swiglu_kernel; older: never)."""
    return bool(row.get("fp8_fused_swiglu", row.get("fp8_swiglu_kernel", False)))


def _bench_gain(model: dict[str, Any], batch_size: int, row: dict[str, Any], base: dict[str, Any], compile_mode: str,
                gpu: str, source: str) -> dict[str, Any]:
    """One bench row's gain over its bf16 + compile row, mean step to mean step."""
    return dict(_shape(model, batch_size), kind="bench", recipe=row["precision"].split("-", 1)[1],
                compile_mode=compile_mode, tune_kernels=row.get("tune_kernels", False), fused_swiglu=_fused(row),
                residual_dtype=_residual(row), kernel_casts=row.get("fp8_kernel_casts") or "none",
                weight_cache=bool(row.get("fp8_weight_cache")), fast_accum=bool(row.get("fp8_fast_accum")),
                merge_w13=bool(row.get("fp8_merge_w13")), bf16_weight_cache=bool(base.get("bf16_weight_cache")),
                ratio=round(mean_ms(base) / mean_ms(row), 4), gpu=gpu, source=source)


def _bench_run_rows(call: Path) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """(model config, result row) of each bench_run a call ran alone: NAME.command holds the spec as JSON in
    single quotes, NAME.log the RESULT line; rows from before results named their compile mode take the spec's."""
    rows = []
    for command in sorted(call.glob("*.command")):
        text, log = command.read_text(), command.with_suffix(".log")
        if "cs336_basics.perf.bench_run" not in text or not log.is_file():
            continue
        result = next((line[len("RESULT "):] for line in log.read_text().splitlines() if line.startswith("RESULT ")), None)
        if result is not None:
            spec = json.loads(text[text.index("'") + 1 : text.rindex("'")])
            row = json.loads(result)
            rows.append((spec["model"], {"compile_mode": spec.get("compile_mode", "default"), **row}))
    return rows


def _val_loss_change(fp8: dict[str, Any], fp8_summary: dict[str, Any], bf16: dict[str, Any],
                     bf16_summary: dict[str, Any]) -> float | None:
    """fp8's final validation loss over its bf16 pair's, less one, where both trained the same steps on the same
    data with the same schedule and seed and evaluated at their end; None otherwise (a cut run, another schedule)."""
    schedule = ("max_steps", "max_tokens", "warmup_steps", "lr", "min_lr", "seed", "eval_steps")
    if (any(fp8["train_config"].get(k) != bf16["train_config"].get(k) for k in schedule)
            or any(fp8.get(k) != bf16.get(k) for k in ("train_data", "val_data"))
            or fp8_summary.get("steps") != bf16_summary.get("steps") or fp8_summary.get("steps") is None
            or not fp8_summary.get("val_loss") or not bf16_summary.get("val_loss")):
        return None
    return round(fp8_summary["val_loss"] / bf16_summary["val_loss"] - 1, 4)


def collect_fp8_gains(call: Path, results_dir: Path = RESULTS_DIR) -> list[dict[str, Any]]:
    """Every fp8 / bf16 tokens/s ratio one device call holds: training runs (run.json + summary.json) paired with
    the bf16 run of the same model, batch and compile settings (with their warm-up and, where both ran the same
    schedule to its end, the change in final validation loss); bench rows (*/matrix.json, or bench_run alone:
    NAME.command + NAME.log) against the bf16 + compile row of the same matrix or call, mean step to mean step.
    Collect only calls that ran this repository's own code."""
    repo = results_dir.resolve().parents[1]
    source = call.resolve().relative_to(repo).as_posix() if call.resolve().is_relative_to(repo) else call.as_posix()
    gains: list[dict[str, Any]] = []
    runs = []  # (run.json, summary.json, folder name) of each single-GPU training run
    for run_json in sorted(call.glob("*/run.json")):
        summary = json.loads(s.read_text()) if (s := run_json.parent / "summary.json").is_file() else {}
        run = json.loads(run_json.read_text())
        if (summary.get("tokens_per_second") and summary.get("world_size", 1) == 1
                and not _experiment({**run["train_config"], **run})):
            runs.append((run, summary, run_json.parent.name))

    def ran(run: dict[str, Any]) -> str:
        return run.get("compile_mode") or run["train_config"]["compile_mode"]

    def pairing_keys(run: dict[str, Any]) -> list[tuple[Any, ...]]:
        """An fp8 run's bf16 pair was asked for the same compile mode (auto and auto), or else ran the mode fp8 ran;
        of the same seed where the call trained one."""
        t = run["train_config"]
        same = (json.dumps(run["model_config"], sort_keys=True), t["batch_size"], t["gradient_accumulation_steps"],
                t["compile_model"], t.get("tune_kernels", False), t["gradient_checkpointing"], _residual(t))
        modes = [f"asked {t['compile_mode']}", f"ran {ran(run)}"]
        return [(*same, mode, f"seed {t.get('seed', 0)}") for mode in modes] + [(*same, mode) for mode in modes]

    def cached(run: dict[str, Any]) -> bool:
        return bool(run["train_config"].get("bf16_weight_cache"))

    # Where a call trained bf16 with and without its weights cast once per step, the fp8 runs (whose weights are)
    # pair with the cached one, written last: like for like.
    bf16 = {key: (run, summary, name) for run, summary, name in sorted(runs, key=lambda r: cached(r[0]))
            if not run["fp8"] for key in pairing_keys(run)}
    for run, summary, name in runs:
        if run["fp8"] and (pair := next((bf16[k] for k in pairing_keys(run) if k in bf16), None)):
            train, (bf16_run, bf16_summary, bf16_name) = run["train_config"], pair
            quality = _val_loss_change(run, summary, bf16_run, bf16_summary)
            gains.append(dict(_shape(run["model_config"], train["batch_size"]), kind="training", recipe=run["fp8_recipe"],
                              compile_mode=ran(run),  # what ran, where recorded
                              tune_kernels=train.get("tune_kernels", False),
                              fused_swiglu=bool(run.get("fp8_fused_swiglu")), residual_dtype=_residual(train),
                              kernel_casts=run.get("fp8_kernel_casts") or "none",
                              weight_cache=bool(train.get("fp8_weight_cache")), fast_accum=bool(run.get("fp8_fast_accum")),
                              merge_w13=bool(run.get("fp8_merge_w13")), bf16_weight_cache=cached(bf16_run),
                              ratio=round(summary["tokens_per_second"] / bf16_summary["tokens_per_second"], 4),
                              warmup_steps=train.get("warmup_steps"),
                              **({} if quality is None else dict(val_loss_change=quality)),
                              gpu=_gpu_of(call), source=f"{source}/{name} vs {bf16_name}"))
    alone = _bench_run_rows(call)
    for model, row in alone:
        base = next((r for m, r in alone if m == model and r["batch_size"] == row["batch_size"] and r["precision"] == "bf16"
                     and r["compiled"] and not r["checkpointing"] and r["compile_mode"] == "default"
                     and _residual(r) == _residual(row)), None)
        if base and _compiled_fp8(row):
            gains.append(_bench_gain(model, row["batch_size"], row, base, row["compile_mode"], _gpu_of(call),
                                     f"{source}/{row['name']} vs {base['name']} (bench_run)"))
    for matrix_json in sorted(call.glob("*/matrix.json")):
        matrix = json.loads(matrix_json.read_text())
        rows = {r["name"]: r for r in matrix["rows"] if "step_ms" in r}
        bases = {_residual(r): r for name in ("bf16-compile", "bf16-compile-fp32res", "bf16-compile-bf16res")
                 if (r := rows.get(name))}  # the fp8 rows' pairs, by residual stream
        if matrix.get("inductor"):  # --inductor experiments are not a setting the trainer offers
            continue
        command = matrix["environment"].get("command", "").split()
        asked = command[command.index("--compile_mode") + 1] if "--compile_mode" in command else "default"
        for row in rows.values():
            if _compiled_fp8(row) and (base := bases.get(_residual(row))) is not None:
                gains.append(_bench_gain(matrix["model"], matrix["batch_size"], row, base, row.get("compile_mode", asked),
                                         matrix["environment"].get("gpu") or _gpu_of(call),
                                         f"{source}/{matrix_json.parent.name} ({row['name']})"))
    return gains


def nearest_fp8_gains(dim: int, recipe: str, compile_mode: str = "default", batch_size: int | None = None,
                      tune_kernels: bool = False, fused_swiglu: bool = False,
                      residual_dtype: str = "fp32") -> list[dict[str, Any]]:
    """The measured gains of `recipe` compiled with `compile_mode` (kernels tuned or not, SwiGLU fused or not, the
    residual stream's dtype; fp8 and bf16 with the same stream) at the measured width nearest to `dim` (within a
    factor NEAR), those of micro-batch `batch_size` if that was measured there; or []. Entries with inductor's
    casts and with our cast kernel (each records kernel_casts) are pooled: ~3% apart where both were measured
    (call 55), while most widths were measured with inductor's only; so are those with and without the weight
    cache, fast accumulation and w1 | w3 as one product (each recorded too; 1-2% apart, calls 57-58, 70-72), and
    bf16 pairs with and without bf16's weight cache (recorded as bf16_weight_cache; 0.65% apart in call 61)."""
    try:
        gains = [g for g in json.loads(GAINS_FILE.read_text()) if g["recipe"] == recipe and g["compile_mode"] == compile_mode
                 and g.get("tune_kernels", False) == tune_kernels and g.get("fused_swiglu", False) == fused_swiglu
                 and _residual(g) == residual_dtype]
    except (OSError, ValueError):
        return []
    if not gains:
        return []
    nearest = min({g["dim"] for g in gains}, key=lambda d: abs(math.log(d / dim)))
    if max(nearest / dim, dim / nearest) > NEAR:
        return []
    near = [g for g in gains if g["dim"] == nearest]
    return [g for g in near if g["batch_size"] == batch_size] or near


def fp8_gain_note(dim: int, recipe: str, compile_mode: str = "default", batch_size: int | None = None,
                  tune_kernels: bool = False, fused_swiglu: bool = False,
                  residual_dtype: str = "fp32") -> tuple[str, bool] | None:
    """('fp8 delayed / bf16 tokens/s measured at dim 896, ...: training runs 0.90x-0.96x; bench 1.00x-1.13x', was
    fp8 slower in every training run there?) for the nearest width (and the same micro-batch, where measured)
    measured with that compile mode; None when nothing near was measured."""
    gains = nearest_fp8_gains(dim, recipe, compile_mode, batch_size, tune_kernels, fused_swiglu, residual_dtype)
    if not gains:
        return None
    g = gains[0]
    ratios = {kind: sorted(x["ratio"] for x in gains if x["kind"] == kind) for kind in ("training", "bench")}
    parts = [f"{label} {r[0]:.2f}x" + (f"-{r[-1]:.2f}x" if f"{r[-1]:.2f}" != f"{r[0]:.2f}" else "")
             for label, r in (("training runs", ratios["training"]), ("bench", ratios["bench"])) if r]
    graphs = ((" with CUDA graphs" if compile_mode in CUDA_GRAPH_MODES else "") + (" and tuned kernels" if tune_kernels else "")
              + (" and the fused SwiGLU" if fused_swiglu else ""))
    stream = f" (both with the {residual_dtype} residual stream)" if residual_dtype != "fp32" else ""
    batches = "/".join(str(b) for b in sorted({x["batch_size"] for x in gains}))
    text = (f"fp8 {recipe}{graphs} / bf16{stream} tokens/s measured at dim {g['dim']}, {g['n_layers']} layers, micro-batch "
            f"{batches} x {g['context_length']} ({g['gpu']}, {len(gains)} measurement{'s' if len(gains) > 1 else ''} in "
            f"{GAINS_FILE.name}): {'; '.join(parts)}")
    return text, bool(ratios["training"]) and ratios["training"][-1] < 1.0


def fp8_quality_note(dim: int, recipe: str, compile_mode: str = "default", batch_size: int | None = None,
                     tune_kernels: bool = False, fused_swiglu: bool = False, residual_dtype: str = "fp32",
                     warmup_steps: int | None = None) -> tuple[str, bool] | None:
    """('fp8 / bf16 final validation loss in 6 measured training pairs at dim 896 ...: warm-up 10: +0.70% to
    +3.27% (4 pairs, 2 over +1%); warm-up 30: ...', did a pair with a warm-up at least as long as `warmup_steps`
    end more than QUALITY_TOLERANCE above bf16?) from the training pairs nearest_fp8_gains finds; None when none
    has both losses."""
    pairs = [g for g in nearest_fp8_gains(dim, recipe, compile_mode, batch_size, tune_kernels, fused_swiglu,
                                          residual_dtype)
             if g["kind"] == "training" and "val_loss_change" in g and g.get("warmup_steps") is not None]
    if not pairs:
        return None
    parts = []
    for warmup in sorted({g["warmup_steps"] for g in pairs}):
        changes = sorted(g["val_loss_change"] for g in pairs if g["warmup_steps"] == warmup)
        span = f"{changes[0]:+.2%}" + (f" to {changes[-1]:+.2%}" if len(changes) > 1 else "")
        over = sum(c > QUALITY_TOLERANCE for c in changes)
        parts.append(f"warm-up {warmup}: {span} ({len(changes)} pair{'s' if len(changes) > 1 else ''}"
                     + (f", {over} over {QUALITY_TOLERANCE:+.0%})" if over else ")"))
    text = (f"fp8 / bf16 final validation loss in {len(pairs)} measured training pair{'s' if len(pairs) > 1 else ''} "
            f"at dim {pairs[0]['dim']} ({GAINS_FILE.name}): {'; '.join(parts)}")
    worse = warmup_steps is not None and any(
        g["val_loss_change"] > QUALITY_TOLERANCE and g["warmup_steps"] >= warmup_steps for g in pairs)
    return text, worse


def main(argv: list[str]) -> int:
    """python -m cs336_basics.perf.measured CALL_DIR [CALL_DIR ...]: (re)write GAINS_FILE from those calls."""
    if not argv or (missing := [c for c in argv if not Path(c).is_dir()]):
        print(f"error: {'no CALL_DIR given' if not argv else 'not a directory: ' + ', '.join(missing)}; usage: "
              "python -m cs336_basics.perf.measured benchmarks/results/CALL [...]", file=sys.stderr)
        return 2
    gains = [g for call in argv for g in collect_fp8_gains(Path(call))]
    write_text_atomic(GAINS_FILE, json.dumps(gains, indent=1) + "\n")
    print(f"wrote {len(gains)} measurements to {GAINS_FILE}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""Where one training step's time goes: torch.profiler over a few steps of our Trainer, kernels grouped by
what they do (matmul, attention, our fp8 kernels, inductor's reductions and pointwise kernels, optimizer, copies,
communication), the busiest kernels and the GPU's idle time by gap length.

    python benchmarks/profile_step.py --config seed --precision fp8 --out profile-seed-fp8
    python benchmarks/profile_step.py --config 1b --precision bf16 --out profile-1b-bf16
    python benchmarks/profile_step.py --config seed --precision fp8 --set fp8.recipe=tensorwise --out profile-tw
    torchrun --nproc_per_node 2 benchmarks/profile_step.py --config seed --out profile-seed-2gpu   # FSDP2; rank 0's
    python benchmarks/profile_step.py --config tiny --steps 1 --out /tmp/profile-cpu                 # CPU: no kernels

--config is a recipe (configs/<name>.toml, or a .toml file) and --set SECTION.FIELD=VALUE changes any setting of
it, as for training; the step runs one micro-batch of --batch_size (default: the recipe's) on random tokens.
Three untimed steps first (compilation), then --steps profiled steps, so the optimizer counts once per
micro-batch (training with accumulation runs it once per step). Writes OUT/top_ops.txt (the profiler's table),
OUT/trace.json (a Chrome trace: large), OUT/breakdown.json (ms per step by category, every kernel, the longest
gaps) and OUT/config.toml (what ran), and prints the breakdown.
benchmarks/reports/2026-11-29-h200-step-profile.md is made of four of these.
"""

import argparse
import json
import sys
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cs336_basics.training.attention import attention_kernels  # noqa: E402


def main() -> None:
    cuda = torch.cuda.is_available()
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--config", default="seed" if cuda else "tiny", help="a recipe name (configs/) or .toml file")
    p.add_argument("--precision", default="bf16", choices=("bf16", "fp8"), help="fp8: the recipe's [fp8] settings")
    p.add_argument("--batch_size", type=int, help="micro-batch size (default: the recipe's)")
    p.add_argument("--eager", action="store_true", help="no torch.compile")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.FIELD=VALUE", dest="overrides",
                   help="change a setting of the recipe, e.g. train.tune_kernels=true (repeatable)")
    p.add_argument("--steps", type=int, default=3, help="profiled steps")
    p.add_argument("--out", type=Path, default=Path("profile"))
    args = p.parse_args()
    import numpy as np

    from cs336_basics.config import load_recipe, parse_override, with_overrides
    from cs336_basics.data.batches import RandomWindows
    from cs336_basics.training.attention import attention_context
    from cs336_basics.training.distributed import choose_parallelism, init_distributed, shutdown
    from cs336_basics.training.prepare import prepare_model, resolve_config
    from cs336_basics.training.trainer import Trainer

    base, recipe_keys = load_recipe(args.config)
    overrides = {"fp8.enabled": args.precision == "fp8", "train.gradient_accumulation_steps": 1,
                 "train.compile_model": not args.eager and base.train.compile_model}
    if args.batch_size:
        overrides["train.batch_size"] = args.batch_size
    asked = dict(parse_override(item) for item in args.overrides)
    config = with_overrides(base, {**overrides, **asked})
    ctx, device = init_distributed(torch.device("cuda" if cuda else "cpu"))
    parallelism = choose_parallelism(config.validate(), device, ctx)[0] if ctx.enabled else None
    config = resolve_config(config, device, parallelism, recipe_keys | frozenset(asked))
    prepared = prepare_model(config, device, ctx, log=lambda s: None)
    model_cfg, train = config.model, config.train
    tokens = np.random.default_rng(0).integers(0, model_cfg.vocab_size, size=1 << 22).astype(np.uint32)
    args.out.mkdir(parents=True, exist_ok=True)
    trainer = Trainer(prepared, config, RandomWindows(tokens, train.batch_size, model_cfg.context_length, 0, ctx.rank,
                                                      ctx.world_size),
                      tokens[: 4 * model_cfg.context_length], device, args.out, log=lambda s: None, ctx=ctx)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with attention_context(train.use_flash_attn, train.fused_attention):
        for _ in range(3):  # compile and warm up outside the trace
            trainer.train_step(3e-4)
        if cuda:
            torch.cuda.synchronize()
        with profile(activities=activities) as prof:
            for _ in range(args.steps):
                trainer.train_step(3e-4)
            if cuda:
                torch.cuda.synchronize()
    if not ctx.is_main:
        shutdown()
        return
    sort = "cuda_time_total" if cuda else "cpu_time_total"
    table = prof.key_averages().table(sort_by=sort, row_limit=40)
    print(table)
    (args.out / "top_ops.txt").write_text(table)
    prof.export_chrome_trace(str(args.out / "trace.json"))
    (args.out / "config.toml").write_text(f"# compile mode {prepared.compile_mode}, residual stream "
                                          f"{prepared.residual_dtype}, {ctx.world_size} process(es)\n"
                                          + config.to_toml())
    breakdown = kernel_breakdown(json.loads((args.out / "trace.json").read_text()), args.steps)
    (args.out / "breakdown.json").write_text(json.dumps(breakdown, indent=1))
    print(format_breakdown(breakdown))
    shutdown()


# Kernel name -> what it does, first match wins. TorchInductor's Triton kernels go by kind (their names
# list every op fused into them, "_scaled_mm" included for the casts feeding an fp8 matmul), then fused
# attention (named as the Trainer names it), cuBLAS/CUTLASS GEMMs, the fused optimizer, copies.
TRITON = (("matmul", "triton_tem"), ("triton reduction", "triton_red"), ("triton reduction", "triton_per"),
          ("triton pointwise", "triton_poi"))
LIBRARY = (
    ("matmul", ("gemm", "nvjet", "cutlass", "xmma", "sm90")),
    ("optimizer", ("multi_tensor", "adam")),
    ("copy / memset", ("memcpy", "memset", "copy")),
)


def category(name: str) -> str:
    low = name.lower()
    if low.startswith("swiglu_") and "fp8" in low:  # ours: cs336_basics/precision/fp8_triton.py
        return "fused SwiGLU + fp8 casts (ours)"
    if low.startswith("cast_fp8_kernel"):
        return "fp8 casts (ours)"
    for cat, prefix in TRITON:
        if low.startswith(prefix):
            return cat
    if "nccl" in low:
        return "communication"
    if attention_kernels([name]) or "attention" in low:
        return "attention"
    for cat, keys in LIBRARY:
        if any(k in low for k in keys):
            return cat
    return "other"


def kernel_breakdown(trace: dict, steps: int) -> dict:
    """GPU time per step by kernel category, the busiest kernels, and the idle time between kernels."""
    kernels = [e for e in trace.get("traceEvents", []) if e.get("cat") in ("kernel", "gpu_memcpy", "gpu_memset")
               and "dur" in e]
    if not kernels:
        return {"steps": steps, "note": "no GPU kernels in the trace (CPU run)"}
    per_cat: dict[str, float] = {}
    per_name: dict[str, list[float]] = {}
    for e in kernels:
        per_cat[category(e["name"])] = per_cat.get(category(e["name"]), 0.0) + e["dur"]
        per_name.setdefault(e["name"], []).append(e["dur"])
    ordered = sorted(kernels, key=lambda e: e["ts"])
    busy, end, last = 0.0, ordered[0]["ts"], ordered[0]
    gaps: list[tuple[float, dict, dict]] = []  # (idle us, the kernel that ended last, the next one)
    for e in ordered:  # union of kernel intervals (one stream in practice; overlaps counted once)
        a, b = e["ts"], e["ts"] + e["dur"]
        if a > end:
            gaps.append((a - end, last, e))
        busy += max(0.0, b - max(a, end))
        if b >= end:
            end, last = b, e
    wall = end - ordered[0]["ts"]
    ms = lambda us: round(us / 1e3 / steps, 3)  # noqa: E731
    by_time = sorted(per_name.items(), key=lambda kv: -sum(kv[1]))
    return {
        "steps": steps, "wall_ms_per_step": ms(wall), "gpu_busy_ms_per_step": ms(busy), "idle_ms_per_step": ms(wall - busy),
        "kernels_per_step": round(len(kernels) / steps),
        "by_category_ms_per_step": {k: ms(v) for k, v in sorted(per_cat.items(), key=lambda kv: -kv[1])},
        "top_kernels": [{"name": n[:160], "category": category(n), "ms_per_step": ms(sum(d)), "calls_per_step": len(d) / steps}
                        for n, d in by_time[:30]],
        # Every kernel, so the long tail can be studied from the results without the trace (too large to keep).
        "all_kernels": [{"name": n[:300], "category": category(n), "ms_per_step": ms(sum(d)), "calls_per_step": len(d) / steps,
                         "us_per_call": round(sum(d) / len(d), 2)} for n, d in by_time],
        # Where the GPU waits: idle by gap length (many short gaps: launch latency; a few long ones: the host
        # stalling, e.g. between CUDA graph replays or at the optimizer), and the longest gaps' neighbours.
        "idle_ms_per_step_by_gap": {label: ms(sum(g for g, _, _ in gaps if lo <= g < hi)) for label, lo, hi in GAP_SIZES},
        "longest_gaps": [{"us": round(g, 1), "after": before["name"][:100], "before": after["name"][:100]}
                         for g, before, after in sorted(gaps, key=lambda x: -x[0])[:12]],
    }


GAP_SIZES = (("under 10 us", 0.0, 10.0), ("10-100 us", 10.0, 100.0), ("100 us or more", 100.0, float("inf")))


def format_breakdown(b: dict) -> str:
    if "note" in b:
        return b["note"]
    lines = [f"per step: wall {b['wall_ms_per_step']} ms, GPU busy {b['gpu_busy_ms_per_step']} ms, "
             f"idle {b['idle_ms_per_step']} ms, {b['kernels_per_step']} kernels"]
    lines += [f"  {k:<18} {v:9.3f} ms" for k, v in b["by_category_ms_per_step"].items()]
    lines += [f"  {k['ms_per_step']:8.3f} ms  x{k['calls_per_step']:<6g} {k['category']:<17} {k['name'][:90]}"
              for k in b["top_kernels"]]
    lines.append("idle per step by gap: " + ", ".join(f"{k} {v} ms" for k, v in b["idle_ms_per_step_by_gap"].items()))
    lines += [f"  gap {g['us']:9.1f} us  after {g['after'][:60]}  before {g['before'][:60]}" for g in b["longest_gaps"][:6]]
    return "\n".join(lines)


if __name__ == "__main__":
    main()

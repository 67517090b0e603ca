"""A scaling model on paper: per step and per GPU, the bytes each data-parallel mode moves, the time they take
at NVLink and InfiniBand rates, and the per-GPU efficiency that leaves against the measured one-GPU step.

    python benchmarks/scaling_model.py --config seed --step_seconds 0.558 --ddp_factor 1.01 --fsdp_factor 1.6 \
        --fsdp_gather_once_factor 1.2

Inputs that are measurements (pass them from a report): `--step_seconds`, the plain one-process optimizer step
on one GPU; `--ddp_factor`, `--fsdp_factor` and `--fsdp_gather_once_factor`, the step of torchrun with one
process in that mode over the plain step (what the mode costs before any byte crosses a link: hooks, CUDA
graphs off under FSDP, ...). Everything else follows from the recipe (parameters, micro-batches a step) and the
assumptions below; the output is a Markdown table and, with --json, the same numbers as JSON. docs/scaling.md
explains the model.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cs336_basics.config import load_recipe  # noqa: E402
from cs336_basics.perf.memory import parameter_count  # noqa: E402

# Assumptions (docs/scaling.md gives their sources). Bandwidths are what one GPU sends (and receives) per second
# in NCCL's ring algorithms ("bus bandwidth"), not datasheet link totals.
NVLINK_BUS = 360e9  # H100 SXM NVLink 4: 450 GB/s each way; NCCL's all-reduce bus bandwidth reaches ~80% of it
IB_BUS = 45e9  # one 400 Gb/s (50 GB/s) InfiniBand NIC per GPU, ~90% of line rate; the bottleneck across nodes
GPUS_PER_NODE = 8
LATENCY = {"nvlink": 20e-6, "ib": 60e-6}  # one small collective (the float8 amax all-reduce, the stop flag)
BACKWARD_SHARE = 2 / 3  # backward's share of a micro-batch (two of the three matrix products)
DDP_BUCKET = 25 * 2**20  # DistributedDataParallel's default bucket: the last one is reduced after backward ends
GRAD_BYTES = 4  # gradients are reduced in float32 (fp32 master weights)
# While a collective overlaps compute, NCCL's kernels hold some of the 132 multiprocessors and share memory
# bandwidth: compute slows by this fraction of the overlapped time (a lead, to be checked on two GPUs)
CONTENTION = 0.08


@dataclass
class Row:
    config: str
    mode: str
    gpus: int
    link: str
    bytes_per_gpu_per_step: float
    comm_seconds: float
    exposed_seconds: float
    step_seconds: float
    efficiency: float  # one GPU's plain step / this step: the share of one GPU's tokens/s each GPU keeps


def ring(n: int) -> float:
    """The fraction of a tensor each GPU sends in a ring all-gather or reduce-scatter over n GPUs."""
    return (n - 1) / n


def predict(config: str, params: int, micro_batches: int, step: float, mode: str, factor: float, n: int,
            fp8_all_gather: bool) -> Row:
    link = "nvlink" if n <= GPUS_PER_NODE else "ib"
    bandwidth = NVLINK_BUS if link == "nvlink" else IB_BUS
    base = step * factor  # this mode's step on one GPU, before any communication
    micro = base / micro_batches
    if mode == "ddp":  # one all-reduce of the gradients per step (accumulation runs without sync), hidden behind
        # the last micro-batch's backward except for what outlasts it and the last bucket
        sent = 2 * ring(n) * params * GRAD_BYTES
        comm = sent / bandwidth
        window = BACKWARD_SHARE * micro
        exposed = (max(0.0, comm - window) + 2 * ring(n) * DDP_BUCKET / bandwidth
                   + CONTENTION * min(comm, window))
    elif mode == "fsdp_gather_once":  # run.fsdp_gather_once: one all-gather of the weights, prefetched behind the
        # first micro-batch's forward, and one reduce-scatter of the whole gradients behind the last one's backward
        weight = 1 if fp8_all_gather else 2
        gather, scatter = ring(n) * params * weight / bandwidth, ring(n) * params * GRAD_BYTES / bandwidth
        sent = ring(n) * params * (weight + GRAD_BYTES)
        comm = gather + scatter
        exposed = sum(max(0.0, c - w) + CONTENTION * min(c, w)
                      for c, w in ((gather, (1 - BACKWARD_SHARE) * micro), (scatter, BACKWARD_SHARE * micro)))
    else:  # fsdp: every micro-batch all-gathers the weights twice (forward, backward) and reduce-scatters the
        # gradients; prefetching hides them behind that micro-batch's compute when they are shorter
        weight = 1 if fp8_all_gather else 2
        per_micro = ring(n) * params * (2 * weight + GRAD_BYTES)
        sent = micro_batches * per_micro
        comm = sent / bandwidth
        exposed = micro_batches * (max(0.0, per_micro / bandwidth - micro) + CONTENTION * min(per_micro / bandwidth, micro))
    exposed += 2 * LATENCY[link]  # the amax all-reduce and the stop flag, once a step each
    total = base + exposed
    return Row(config, mode + (" (fp8 all-gather)" if mode != "ddp" and fp8_all_gather else ""), n, link, sent,
               comm, exposed, total, step / total)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--config", default="seed")
    p.add_argument("--step_seconds", type=float, required=True, help="measured plain one-GPU optimizer step")
    p.add_argument("--ddp_factor", type=float, default=1.0, help="measured: torchrun ddp (1 process) step / plain")
    p.add_argument("--fsdp_factor", type=float, default=1.0, help="measured: torchrun fsdp (1 process) step / plain")
    p.add_argument("--fsdp_gather_once_factor", type=float, default=1.0,
                   help="measured: torchrun fsdp with run.fsdp_gather_once (1 process) step / plain")
    p.add_argument("--gpus", default="2,8,64")
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args()
    config = load_recipe(args.config)[0]
    params = parameter_count(config)
    micro = config.train.gradient_accumulation_steps
    rows = [predict(args.config, params, micro, args.step_seconds, mode, factor, int(n), fp8)
            for n in args.gpus.split(",")
            for mode, factor, fp8 in (("ddp", args.ddp_factor, False), ("fsdp", args.fsdp_factor, False),
                                      ("fsdp", args.fsdp_factor, True),
                                      ("fsdp_gather_once", args.fsdp_gather_once_factor, False),
                                      ("fsdp_gather_once", args.fsdp_gather_once_factor, True))]
    print(f"{args.config}: {params / 1e6:,.0f}M parameters, {micro} micro-batches a step, plain one-GPU step "
          f"{args.step_seconds * 1e3:.0f} ms")
    print("| mode | GPUs | link | GB sent per GPU per step | comm ms | exposed ms | step ms | per-GPU efficiency |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        print(f"| {r.mode} | {r.gpus} | {r.link} | {r.bytes_per_gpu_per_step / 1e9:.2f} | {r.comm_seconds * 1e3:.1f} | "
              f"{r.exposed_seconds * 1e3:.1f} | {r.step_seconds * 1e3:.0f} | {100 * r.efficiency:.1f}% |")
    if args.json:
        args.json.write_text(json.dumps([asdict(r) for r in rows], indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

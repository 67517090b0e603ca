"""One benchmark configuration, run in its own process by optimize_performance.py: the project's own
build_model + Trainer.train_step on random tokens, warm-up (compilation) timed apart, then the median of
N optimizer steps timed with CUDA events (host clock on CPU).

    python -m cs336_basics.perf.bench_run '<json spec>'   ->  prints 'RESULT {json}'
"""

from __future__ import annotations

import itertools
import json
import math
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from cs336_basics.data.batches import RandomWindows
from cs336_basics.model.transformer import ModelConfig
from cs336_basics.perf.flops import mfu, roofline_tokens_per_second, token_flops
from cs336_basics.perf.hardware import current_device_peaks
from cs336_basics.training.attention import AttentionKernels, attention_context, probe_backend
from cs336_basics.training.garbage import ScheduledGC
from cs336_basics.training.setup import Fp8Options, build_model
from cs336_basics.training.trainer import TrainConfig, Trainer


@dataclass
class BenchSpec:
    name: str
    model: dict[str, Any]
    batch_size: int
    precision: str = "bf16"  # "bf16" or "fp8-<recipe>"
    compiled: bool = True
    flash: bool = True
    fused_attention: str = "auto"
    checkpointing: bool = False
    steps: int = 10
    compile_mode: str = "auto"  # as TrainConfig.compile_mode: CUDA graphs for fp8 on one GPU
    tune_kernels: bool = False  # as TrainConfig.tune_kernels
    fp8_filter: str = "all"
    fp8_head: bool = True  # with fp8: the output head + loss in float8 too (mode suffix -bf16head: False)
    fp8_fused_swiglu: bool | None = None  # as Fp8Options.fused_swiglu (mode suffix -unfused: False)
    fp8_kernel_casts: str = "auto"  # as Fp8Options.kernel_casts (mode suffixes -castnone, -castinputs, -castgrads, -castall)
    fp8_head_kernel: bool = False  # as Fp8Options.head_kernel (mode suffix -headkernel)
    fp8_fast_accum: bool | None = None  # as Fp8Options.fast_accum (mode suffixes -fastacc, -nofastacc)
    fp8_merge_w13: bool | None = None  # as Fp8Options.merge_w13 (mode suffixes -w13, -now13)
    gc_interval: int = 50  # as TrainConfig.gc_interval; 0: Python's automatic collection
    residual_dtype: str = "auto"  # as TrainConfig.residual_dtype (mode suffixes -bf16res, -fp32res)
    fp8_weight_cache: bool | None = None  # as TrainConfig.fp8_weight_cache (mode suffixes -wcache, -nowcache)
    device: str = "cuda"
    inductor: dict[str, Any] = field(default_factory=dict)  # torch._inductor.config overrides, e.g. {"coordinate_descent_tuning": True}

    @property
    def fp8(self) -> Fp8Options | None:
        if not self.precision.startswith("fp8"):
            return None
        return Fp8Options(recipe=self.precision.split("-", 1)[1], filter=self.fp8_filter,
                          emulate=self.device != "cuda", head=self.fp8_head, fused_swiglu=self.fp8_fused_swiglu,
                          kernel_casts=self.fp8_kernel_casts, head_kernel=self.fp8_head_kernel,
                          fast_accum=self.fp8_fast_accum, merge_w13=self.fp8_merge_w13)


def run(spec: BenchSpec) -> dict[str, Any]:
    device = torch.device(spec.device)
    torch.manual_seed(0)
    cfg = ModelConfig(**spec.model)
    T = cfg.context_length
    model, report = build_model(cfg, device, spec.fp8, spec.batch_size * T, log=lambda s: print(s, file=sys.stderr))
    tokens = np.random.default_rng(0).integers(0, cfg.vocab_size, size=max(1 << 22, 4 * spec.batch_size * T),
                                               dtype=np.int64).astype(np.uint32)
    train_cfg = TrainConfig(batch_size=spec.batch_size, max_steps=10**6, warmup_steps=0, compile_model=spec.compiled,
                            compile_mode=spec.compile_mode, tune_kernels=spec.tune_kernels, gradient_checkpointing=spec.checkpointing,
                            use_flash_attn=spec.flash, fused_attention=spec.fused_attention, gc_interval=spec.gc_interval,
                            residual_dtype=spec.residual_dtype, fp8_weight_cache=spec.fp8_weight_cache)
    with tempfile.TemporaryDirectory() as tmp:
        trainer = Trainer(model, train_cfg, RandomWindows(tokens, spec.batch_size, T, 0), tokens[: 2 * T], device,
                          Path(tmp), log=lambda s: print(s, file=sys.stderr))
        with (attention_context(spec.flash, spec.fused_attention), torch._inductor.config.patch(spec.inductor),
              ScheduledGC(spec.gc_interval) as collector):
            steps_done = itertools.count(1)

            def step() -> None:  # what one step of Trainer.train() does, without logging
                trainer.train_step(3e-4)
                collector.step_done(next(steps_done))

            step_seconds, warmup = time_steps(step, device, spec.steps, warmup_steps=3 if spec.compiled else 2)
            with AttentionKernels(device) as kernels:  # one more step, untimed: the attention kernels that ran
                last_loss = float(trainer.train_step(3e-4)[0])
        if not math.isfinite(last_loss):  # call 36's broken rows ran fast on NaNs (benchmarks/NOTES.md 42)
            raise FloatingPointError(f"the loss is {last_loss} after the timed steps: this configuration's times "
                                     "measure a broken computation, not a step")
        backend = kernels.ran or probe_backend(spec.flash, spec.fused_attention, cfg.head_dim, device)
    step = statistics.median(step_seconds)
    step_mean = sum(step_seconds) / len(step_seconds)
    tokens_per_second = spec.batch_size * T / step
    result: dict[str, Any] = dict(
        name=spec.name, precision=spec.precision, compiled=spec.compiled, compile_mode=trainer.compile_mode,
        tune_kernels=spec.tune_kernels, fp8_fused_swiglu=bool(report and report.fused_swiglu),
        fused_swiglu_kernels_checked=report.kernels_checked if report else "",
        fp8_kernel_casts=report.kernel_casts if report else "none", fp8_head_kernel=spec.fp8_head_kernel,
        fp8_fast_accum=bool(report and report.fast_accum), fp8_merge_w13=bool(report and report.merge_w13),
        residual_dtype=trainer.cfg.residual_dtype, fp8_weight_cache=trainer.cfg.fp8_weight_cache,
        bf16_weight_cache=trainer.cfg.bf16_weight_cache, flash=spec.flash,
        checkpointing=spec.checkpointing, attention_backend=backend, batch_size=spec.batch_size, seq=T,
        params=model.num_params(), fp8_layers=len(report.converted) if report else 0,
        step_ms=round(step * 1e3, 2), step_ms_spread=[round(min(step_seconds) * 1e3, 2), round(max(step_seconds) * 1e3, 2)],
        step_ms_mean=round(step_mean * 1e3, 2), step_ms_each=[round(t * 1e3, 2) for t in step_seconds],
        tokens_per_second=round(tokens_per_second), warmup_seconds=round(warmup, 1),
        model_tflops=round(tokens_per_second * token_flops(cfg).model / 1e12, 1), loss=round(last_loss, 3),
    )
    peaks = current_device_peaks(device)
    if peaks:
        result["mfu_bf16_peak"] = round(mfu(tokens_per_second, cfg, peaks), 4)
        result["roofline_tokens_per_second"] = round(roofline_tokens_per_second(
            cfg, peaks, spec.fp8 is not None, spec.batch_size * T, model.num_params(),
            fp8_head=bool(report and report.fp8_head)))
    if device.type == "cuda":
        result["peak_memory_gib"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 2)
    return result


def time_steps(step: Callable[[], Any], device: torch.device, steps: int, warmup_steps: int) -> tuple[list[float], float]:
    """Seconds of each of `steps` calls of `step` after `warmup_steps` untimed ones, and the warm-up's seconds.
    On CUDA an event is recorded between consecutive steps and the host synchronizes only at the end, so
    the CPU runs ahead as it does in training and the reference."""
    cuda = device.type == "cuda"
    if cuda:  # the peak spans the warm-up too: CUDA graphs take their memory pool while they are recorded there
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    for _ in range(warmup_steps):
        step()
    if cuda:
        torch.cuda.synchronize(device)
    warmup = time.perf_counter() - start
    if not cuda:
        times = []
        for _ in range(steps):
            t0 = time.perf_counter()
            step()
            times.append(time.perf_counter() - t0)
        return times, warmup
    events = [torch.cuda.Event(enable_timing=True) for _ in range(steps + 1)]
    events[0].record()
    for i in range(steps):
        step()
        events[i + 1].record()
    torch.cuda.synchronize(device)
    return [events[i].elapsed_time(events[i + 1]) / 1e3 for i in range(steps)], warmup


def main() -> int:
    spec = BenchSpec(**json.loads(sys.argv[1]))
    result = run(spec)
    print("RESULT " + json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

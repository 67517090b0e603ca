"""Converters: transformations of a built model's numerics (float8, bf16 weights cast once per step), each
with hooks around the optimizer step. The Trainer calls the hooks in order without knowing what they do:

    prepare(first_pass)          once, before the first step (delayed float8 learns its first scales)
    before_step()                at the start of every optimizer step (weights cast for all its micro-batches)
    between_micro_batches()      after each backward pass but the last
    before_optimizer_step()      after the last backward pass (this step's amaxes set the next step's scales)
    after_optimizer_step()       after the weights changed (TorchAO's fp8 all-gather scales under FSDP)
"""

from __future__ import annotations

from typing import Any, Callable

import torch

from cs336_basics.config import Fp8Config
from cs336_basics.errors import UserError
from cs336_basics.model.transformer import Transformer

Log = Callable[[str], None]
# A delayed-fp8 cast whose amax was over this many times its scale's range is reported as it happens.
SATURATION_WARNING = 2.0


class Converter:
    """The hooks' defaults: nothing to do."""

    def convert(self, model: Transformer) -> None: ...

    def compile(self) -> None:
        """Compile the converter's own per-step work (called when the model is compiled)."""

    def prepare(self, first_pass: Callable[[], None], params: list[torch.Tensor]) -> None: ...

    def before_step(self) -> None: ...

    def between_micro_batches(self) -> None: ...

    def before_optimizer_step(self) -> None: ...

    def after_optimizer_step(self) -> None: ...

    def state_dict(self) -> dict[str, Any] | None:
        return None

    def load_state_dict(self, state: dict[str, Any]) -> None: ...

    def snapshot(self) -> Any:
        """The checkpointed state as it is now, kept without synchronizing the device: the Trainer takes one at the
        start of every optimizer step, so that a step interrupted part-way is checkpointed as not taken."""
        return None

    def snapshot_state(self, snapshot: Any) -> dict[str, Any] | None:
        """What state_dict() returned when `snapshot` was taken."""
        return None

    def log_metrics(self, record: dict[str, Any]) -> str | None:
        """Add this converter's figures to a log record; returns a line worth printing, if any."""
        return None

    def summary(self) -> dict[str, Any]:
        return {}


class Bf16WeightCacheConverter(Converter):
    """bf16 training: every nn.Linear's weight cast to bf16 once per optimizer step instead of by autocast in
    every micro-batch; the weight gradients leave cuBLAS in float32, as float8's do."""

    def __init__(self, log: Log = print) -> None:
        self.log, self.cache = log, None

    def convert(self, model: Transformer) -> None:
        from cs336_basics.precision.bf16_cache import Bf16WeightCache, cache_bf16_weights

        layers = cache_bf16_weights(model)
        self.cache = Bf16WeightCache(model)
        self.log(f"bf16 weights of {layers} linear layers cast once per optimizer step")

    def before_step(self) -> None:
        self.cache.cast_weights()


class Float8Converter(Converter):
    """Float8 training of the blocks' linear layers (and the output head), by our delayed-scaling layers or a
    TorchAO recipe, as `config` (resolved) says. Our Triton kernels are checked at the run's shapes before
    the run trains: a kernel that computes wrong results on this machine refuses the run."""

    MODE_MESSAGE = "TorchAO FP8 mode enabled - model contains Float8 modules"
    DELAYED_MODE_MESSAGE = "FP8 mode enabled - model contains Float8 modules (Float8DelayedLinear, delayed scaling)"

    def __init__(self, config: Fp8Config, device: torch.device, micro_batch_tokens: int = 0,
                 fsdp_all_gather: bool = False, distributed: bool = False, log: Log = print) -> None:
        """fsdp_all_gather: the weights all-gathered in float8 under FSDP (TorchAO's tensorwise layers, or ours:
        precision/fp8_fsdp.py). distributed: under torchrun, the delayed recipe's amaxes are reduced over the ranks
        every step (identical scales)."""
        if config.recipe == "auto":
            raise ValueError("resolve the fp8 config first (Fp8Config.resolve)")
        self.config, self.device, self.tokens, self.log = config, device, micro_batch_tokens, log
        self.fsdp_all_gather = fsdp_all_gather and config.recipe in ("tensorwise", "delayed")
        self.distributed = distributed
        self.report = None
        self.scales = None  # DelayedScaling, with the delayed recipe
        self._saturated, self._overflow_max = 0, 0.0

    @property
    def delayed(self) -> bool:
        return self.config.recipe == "delayed"

    def convert(self, model: Transformer) -> None:
        from cs336_basics.precision.fp8 import check_fp8_device, convert_model_to_fp8, linear_shapes

        cfg = self.config
        check_fp8_device(self.device, cfg.emulate)
        speedups = None
        if cfg.filter == "auto":
            if cfg.emulate or self.device.type != "cuda":
                raise UserError("fp8.filter auto times each layer shape on the GPU; with emulated float8 use fp8.filter=all")
            from cs336_basics.perf.layer_bench import measure_fp8_speedups

            shapes = linear_shapes(model)
            self.log(f"fp8.filter auto: timing bf16 vs fp8 forward+backward for {len(shapes)} layer shapes at "
                     f"{self.tokens} tokens ...")
            speedups = measure_fp8_speedups(shapes, self.tokens, cfg.recipe, self.device)
            for (k, n), s in speedups.items():
                self.log(f"  Linear({k}, {n}): fp8 is {s:.2f}x bf16")
        report = convert_model_to_fp8(model, cfg.recipe, cfg.emulate, speedups, self.fsdp_all_gather, cfg.head)
        report.fsdp_all_gather = self.fsdp_all_gather
        self.report, self._model = report, model  # fully_shard later shards this same module in place
        if self.delayed:
            self._shape_delayed_layers(model, report)
        self.log(report.summary())
        self.log(self.DELAYED_MODE_MESSAGE + ("; weights cast to float8 once per optimizer step" if cfg.weight_cache
                                              else "") if self.delayed else self.MODE_MESSAGE)

    def _shape_delayed_layers(self, model: Transformer, report) -> None:  # noqa: ANN001
        from cs336_basics.precision.fp8_delayed import DelayedScaling, Float8DelayedLinear

        cfg = self.config
        layers = [m for m in model.modules() if isinstance(m, Float8DelayedLinear)]
        for module in layers:
            module.kernel_casts, module.fast_accum = cfg.kernel_casts, cfg.fast_accum
        report.kernel_casts, report.fast_accum = cfg.kernel_casts, cfg.fast_accum
        if cfg.kernel_casts != "none" and self.tokens:
            check_kernel_casts(layers, self.tokens, self.device, self.log)
        if cfg.fused_swiglu:
            from cs336_basics.precision.swiglu_fp8 import fuse_float8_swiglu

            report.fused_swiglu = fuse_float8_swiglu(model, cfg.merge_w13)
            report.merge_w13 = cfg.merge_w13 and report.fused_swiglu > 0
            if report.fused_swiglu and self.tokens:
                report.kernels_checked = check_fused_swiglu_kernels(
                    self.tokens, model.cfg.intermediate_size, self.device, self.log, report.merge_w13)
        if self.fsdp_all_gather:
            from cs336_basics.precision.fp8_fsdp import gather_weights_in_fp8

            gather_weights_in_fp8(layers)
        if layers:
            self.scales = DelayedScaling(model, cache_weights=cfg.weight_cache, margin=cfg.margin,
                                         reduce_amax=all_reduce_max if self.distributed else None)

    def compile(self) -> None:
        if self.scales is not None and self.scales.cache_weights:
            self.scales.compile_weight_casts()

    def prepare(self, first_pass: Callable[[], None], params: list[torch.Tensor]) -> None:
        if self.scales is not None and not self.scales.calibrated:
            self.scales.calibrate(first_pass, params)
            self.log(f"fp8 delayed scaling: {len(self.scales.layers)} layers calibrated on one micro-batch")

    def before_step(self) -> None:
        if self.scales is not None:
            self.scales.cast_weights()  # with the weight cache: once for all of this step's micro-batches

    def between_micro_batches(self) -> None:
        if self.scales is not None:
            self.scales.after_backward()  # the max of the micro-batches' gradient amaxes, not their sum

    def before_optimizer_step(self) -> None:
        if self.scales is not None:
            self.scales.update()

    def after_optimizer_step(self) -> None:
        if not self.fsdp_all_gather:
            return
        # one all-reduce for every layer's weight scale, for the next float8 all-gathers
        if self.scales is not None:
            from cs336_basics.precision.fp8_fsdp import precompute_weight_scales

            precompute_weight_scales(self.scales.layers)
        else:
            from cs336_basics.precision.fp8 import precompute_float8_dynamic_scale_for_fsdp

            precompute_float8_dynamic_scale_for_fsdp(self._model)

    def state_dict(self) -> dict[str, Any] | None:
        return self.scales.state_dict() if self.scales is not None and self.scales.calibrated else None

    def snapshot(self) -> Any:
        # a copy on the device: update() replaces the history each step, load_state_dict writes into it
        return self.scales.history.clone() if self.scales is not None and self.scales.calibrated else None

    def snapshot_state(self, snapshot: Any) -> dict[str, Any] | None:
        return None if snapshot is None else {"history": snapshot.cpu()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if self.scales is None:
            return
        try:
            self.scales.load_state_dict(state)
        except ValueError as e:  # another set of float8 layers: the first step calibrates afresh
            self.log(f"fp8 delayed scaling: not resumed ({e}); recalibrating")

    def log_metrics(self, record: dict[str, Any]) -> str | None:
        """Delayed scales come from earlier steps: the casts that clipped since the last record, and a line when
        one clipped at over SATURATION_WARNING x its range (a few percent over is routine while tensors grow)."""
        if self.scales is None:
            return None
        count, ratio, name = self.scales.take_saturation()
        record["fp8_saturated"], record["fp8_overflow"] = count, round(ratio, 3)
        self._saturated += count
        self._overflow_max = max(self._overflow_max, ratio)
        if ratio > SATURATION_WARNING:
            return (f"fp8: {count} casts clipped since the last log, the largest {name} at {ratio:.2f}x its "
                    "scale's range (delayed scales lag growing tensors; fp8.margin adds headroom)")
        return None

    def summary(self) -> dict[str, Any]:
        if self.scales is None:
            return {}
        return {"fp8_saturated": self._saturated, "fp8_overflow_max": self._overflow_max}


def all_reduce_max(amaxes: torch.Tensor) -> None:
    import torch.distributed as dist

    dist.all_reduce(amaxes, op=dist.ReduceOp.MAX)


def _refuse_if_wrong(kernel: str, problems: list[str], way_around: str, where: str = "") -> None:
    """A kernel's run-time check before training: what it found wrong refuses the run, with the way around it
    (a wrong kernel is never trained with)."""
    if problems:
        raise UserError(f"{kernel} computed wrong results on this machine{where} ({'; '.join(problems)}): "
                        f"{way_around}, and report it")


def check_kernel_casts(layers: list, M: int, device: torch.device, log: Log = print) -> None:
    """Our cast kernel checked at every shape these delayed layers will cast (their inputs in e4m3, their output
    gradients in e5m2, as their kernel_casts choose) before the run trains."""
    from cs336_basics.precision.fp8_cast import check_cast

    shapes = sorted({(m.in_features, False) for m in layers if m.kernel_cast_flags[0]}
                    | {(m.out_features, True) for m in layers if m.kernel_cast_flags[1]})
    _refuse_if_wrong("our fp8 cast kernel", [p for n, e5m2 in shapes for p in check_cast(M, n, e5m2, device)],
                     "train with --set fp8.kernel_casts=none")
    widths = ", ".join(f"{n} ({'e5m2' if e5m2 else 'e4m3'})" for n, e5m2 in shapes)
    log(f"fp8 cast kernel checked at {M} tokens x {widths}: both layouts and amaxes as the reference's")


def check_fused_swiglu_kernels(M: int, N: int, device: torch.device, log: Log = print, merged: bool = False) -> str:
    """The fused SwiGLU's kernels checked at this run's shape before it trains (merged: in the layout of w1 and
    w3 as one product too). Returns the shape checked."""
    from cs336_basics.precision.swiglu_fp8 import check_kernels

    _refuse_if_wrong("the fused SwiGLU's Triton kernels", check_kernels(M, N, device, merged=merged),
                     "train with --set fp8.merge_w13=false (or fp8.fused_swiglu=false)" if merged
                     else "train with --set fp8.fused_swiglu=false", where=f" at {M} x {N}")
    log(f"fused SwiGLU kernels checked at {M} tokens x {N}: both layouts and amaxes as their references")
    return f"{M} tokens x {N}"

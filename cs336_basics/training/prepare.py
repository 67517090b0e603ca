"""From a config to a model ready to train, in one place and in this order:

    build (fp32 master weights) -> device -> bf16 weight cache or float8 conversion -> residual stream dtype
    -> activation checkpointing -> per-block torch.compile -> data parallelism (DDP replication or FSDP2 sharding)

Each step is a transformation of the plain model in model/transformer.py; the Trainer then runs the
converters' hooks around each optimizer step without knowing what they do.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable

import torch

from cs336_basics.config import Config
from cs336_basics.errors import UserError
from cs336_basics.model.transformer import Transformer
from cs336_basics.precision.converters import Bf16WeightCacheConverter, Converter, Float8Converter
from cs336_basics.precision.fp8 import ConversionReport, check_fp8_device
from cs336_basics.training.distributed import SHARDED, DistributedContext, apply_ddp, apply_fsdp
from cs336_basics.training.transforms import (apply_activation_checkpointing, cast_residual_stream, check_tune_kernels,
                                              compile_model, resolve_compile_mode, resolve_residual_dtype)


@dataclass
class PreparedModel:
    model: Transformer  # what trains: converted, checkpointed, compiled, sharded as the config says
    eval_model: Transformer  # evaluation's model: a plain view sharing the weights, or `model` itself
    converters: list[Converter]
    compile_mode: str | None  # the torch.compile mode that runs (None: eager)
    residual_dtype: str  # "bf16" or "fp32", as resolved for this device
    parallelism: str | None = None  # under torchrun: ddp, fsdp or hsdp

    @property
    def sharded(self) -> bool:
        return self.parallelism in SHARDED

    @property
    def fp8_report(self) -> ConversionReport | None:
        return next((c.report for c in self.converters if isinstance(c, Float8Converter)), None)

    @property
    def fp8(self) -> bool:
        return self.fp8_report is not None

    @property
    def fp8_head(self) -> bool:
        return bool(self.fp8_report and self.fp8_report.fp8_head)


def bf16_weight_cache_applies(config: Config, device: torch.device, parallelism: str | None) -> bool:
    """bf16 training on GPUs whose weights are whole (one process or DDP; FSDP casts its own shards to bf16)."""
    return not config.fp8.enabled and device.type == "cuda" and parallelism not in SHARDED


def resolve_config(config: Config, device: torch.device, parallelism: str | None = None,
                   explicit: frozenset[str] = frozenset()) -> Config:
    """The config as it will run here: the float8 recipe and its settings resolved, and under torchrun the
    data-parallel mode (`parallelism`, chosen by distributed.choose_parallelism; None: one process); what
    cannot apply on this device or launch and was asked for (`explicit`: keys set by the user) is an error,
    never ignored."""
    config = config.validate()
    if parallelism is None and "run.parallelism" in explicit and config.run.parallelism != "auto":
        raise UserError(f"run.parallelism {config.run.parallelism} splits a run over processes: launch with "
                        "torchrun --nproc_per_node N, or drop it")
    sharded = parallelism in SHARDED
    fp8 = config.fp8.resolve(sharded, explicit)
    if fp8.enabled:
        check_fp8_device(device, fp8.emulate)
    train = config.train
    resolve_residual_dtype(train.residual_dtype, device, sharded, asked="train.residual_dtype" in explicit)
    if train.tune_kernels:
        check_tune_kernels(device)
    if "train.bf16_weight_cache" in explicit and train.bf16_weight_cache:
        if not bf16_weight_cache_applies(replace(config, fp8=fp8), device, parallelism):
            raise UserError("train.bf16_weight_cache applies to bf16 training on GPUs with whole weights (one process "
                            "or ddp; FSDP keeps bf16 copies of its own; CPU training is float32): drop it")
    if "run.fsdp_gather_once" in explicit and config.run.fsdp_gather_once and not sharded:
        whole = f" ({parallelism} keeps whole weights and gradients already)" if parallelism else ""
        raise UserError("run.fsdp_gather_once applies to sharded runs (torchrun with run.parallelism fsdp or hsdp): "
                        f"drop it{whole}")
    # one process: "auto" (a resumed run's saved mode applies to torchrun launches only)
    run = replace(config.run, parallelism=parallelism or "auto")
    return replace(config, fp8=fp8, run=run)


def prepare_model(config: Config, device: torch.device, ctx: DistributedContext = DistributedContext(),
                  log: Callable[[str], None] = print) -> PreparedModel:
    """Build and transform the model of a resolved `config` (resolve_config) in the order above."""
    model_cfg, train = config.model, config.train
    parallelism = config.run.parallelism if ctx.enabled else None
    if parallelism == "auto":
        raise ValueError("resolve the config first (resolve_config with the chosen parallelism)")
    sharded = parallelism in SHARDED
    model = Transformer(model_cfg)  # fp32 master weights: the optimizer's copy; compute is bf16 under autocast
    model.to(device)

    converters: list[Converter] = []
    if config.fp8.enabled:
        converters.append(Float8Converter(config.fp8, device, train.batch_size * model_cfg.context_length,
                                          fsdp_all_gather=sharded,
                                          distributed=ctx.enabled, log=log))
    elif train.bf16_weight_cache and bf16_weight_cache_applies(config, device, parallelism):
        converters.append(Bf16WeightCacheConverter(log))
    for converter in converters:
        converter.convert(model)

    residual_dtype = resolve_residual_dtype(train.residual_dtype, device, sharded, asked=False)
    # Evaluation runs every model in one precision (bf16 autocast on a GPU, float32 on a CPU), so float8 and
    # bf16 runs report comparable validation losses: a plain model sharing the trained weights. Sharded
    # parameters cannot be shared that way: under FSDP a run evaluates with its training model.
    plain_eval = bool(converters) or residual_dtype == "bf16"
    eval_model = plain_view(model) if plain_eval and not sharded else model

    if residual_dtype == "bf16":
        cast_residual_stream(model)
        log("residual stream in bf16 (FSDP's bf16 parameters), in evaluation too" if sharded else
            "residual stream in bf16 while training; evaluation in float32")
    if train.gradient_checkpointing:
        apply_activation_checkpointing(model)
    compile_mode = None
    if train.compile_model:
        compile_mode = resolve_compile_mode(train.compile_mode, config.fp8.enabled, device, sharded)
        compile_model(model, compile_mode, train.tune_kernels)
        if eval_model is not model:  # untuned: evaluation is too small a share of a run to pay for tuning
            compile_model(eval_model, compile_mode)
        for converter in converters:
            converter.compile()
    if parallelism == "ddp":
        apply_ddp(model, device)
    elif sharded:
        apply_fsdp(model, ctx, device, gather_once=config.run.fsdp_gather_once)
    return PreparedModel(model, eval_model, converters, compile_mode, residual_dtype, parallelism)


def plain_view(model: Transformer) -> Transformer:
    """A plain Transformer whose parameters are `model`'s own (no copy): state-dict keys are the same."""
    with torch.device("meta"):
        plain = Transformer(model.cfg)
    plain.load_state_dict(model.state_dict(), assign=True)
    plain.rope_cos, plain.rope_sin = model.rope_cos, model.rope_sin
    return plain

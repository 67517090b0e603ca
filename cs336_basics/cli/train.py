"""Train a Llama-style language model; on Hopper GPUs with FP8 + torch.compile + fused attention.

Settings come from the config's defaults, a recipe (`--config seed`, or any TOML file), the run's own
config on `--resume`, and last the flags below and `--set SECTION.FIELD=VALUE` for any other field.

Without --config and without a model-shape flag the model is the 398M-parameter seed shape; on a machine
without a GPU such a run is refused (it would take days): pass --config tiny (minutes on a CPU), or --config
seed to train that shape anyway. A run whose estimated memory (weights, gradients, AdamW state, activations,
logits) exceeds what the GPU or host has free is refused with the estimate and the fix; --set
run.check_memory=false starts it anyway.

Everything is checked before the run directory is touched (the config, the data files, the tokenizer, that the
directories can be written, the memory); --overwrite replaces the old run only once the new one can start.
A run holds its directory's run.lock while it runs: a second run there (new, --resume or --overwrite) is
refused; a lock left by a run that no longer runs is recovered. Bad input ends with one `error: ...` line and
exit code 2.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable, TypeVar

import numpy as np
import torch

from cs336_basics.cli import run_main
from cs336_basics.config import (COMPILE_MODES, FP8_RECIPES, TORCHAO_RECIPES, Config, Fp8Config, load_recipe, parse_override,
                                 with_overrides)
from cs336_basics.data.batches import RandomWindows
from cs336_basics.data.prepare import fit_vocab_size, prepare_data
from cs336_basics.data.tokenizer import encode_prompt, eot_id, token_bytes
from cs336_basics.errors import UserError
from cs336_basics.files import describe_write_failure, is_write_failure, remove_stray_temps, write_text_atomic
from cs336_basics.generation import generate
from cs336_basics.perf.hardware import current_device_peaks
from cs336_basics.perf.memory import check_training_memory, parameter_count
from cs336_basics.training.attention import probe_backend
from cs336_basics.training.checkpoint import config_from_checkpoint, load_checkpoint
from cs336_basics.training.dashboards import check_dashboards
from cs336_basics.training.distributed import (SHARDED, DistributedContext, barrier, broadcast_from_rank0,
                                               choose_parallelism, init_distributed, shutdown)
from cs336_basics.training.metrics import dumps_strict
from cs336_basics.training.prepare import prepare_model, resolve_config
from cs336_basics.training.run_dir import (RunDirPlan, check_checkpoint_space, check_inputs, clean_up_failed_start,
                                           clear_leftovers, plan_run_dir, replace_old_run)
from cs336_basics.training.run_lock import RunLock
from cs336_basics.training.summary import format_summary, warnings_for
from cs336_basics.training.trainer import Trainer

T = TypeVar("T")
CONFIG_FILE = "config.toml"

# Each named flag sets one config field; every other field is reachable through --set.
FLAGS: dict[str, tuple[str, type, str]] = {
    "dim": ("model.dim", int, "model width"),
    "n_heads": ("model.n_heads", int, "attention heads"),
    "intermediate_size": ("model.intermediate_size", int, "SwiGLU width"),
    "n_layers": ("model.n_layers", int, "transformer blocks"),
    "context_length": ("model.context_length", int, "tokens per sequence"),
    "vocab_size": ("model.vocab_size", int, "vocabulary size (at least the tokenizer's)"),
    "batch_size": ("train.batch_size", int, "sequences per micro-batch"),
    "gradient_accumulation_steps": ("train.gradient_accumulation_steps", int, "micro-batches per optimizer step"),
    "max_steps": ("train.max_steps", int, "optimizer steps to train to"),
    "lr": ("train.lr", float, "peak learning rate (linear warm-up, cosine decay to train.min_lr)"),
    "warmup_steps": ("train.warmup_steps", int, "learning-rate warm-up steps"),
    "eval_interval": ("train.eval_interval", int, "steps between validations"),
    "seed": ("train.seed", int, "random seed (weights, batches)"),
    "compile_mode": ("train.compile_mode", str, "torch.compile mode; auto: CUDA graphs for fp8 in one process"),
    "fp8_recipe": ("fp8.recipe", str, "auto: delayed (ours) in one process, tensorwise under torchrun"),
    "train_data": ("data.train_data", list, "text, .jsonl(.gz), .parquet files, directories or globs of them, or a "
                   "save_to_disk dataset (column: data.text_field); default: the text that ships with Python"),
    "val_data": ("data.val_data", Path, "the same kinds; default: the last 2%% of the training tokens"),
    "tokenizer": ("data.tokenizer", Path, "a tokenizer.json to use instead of training one"),
    "out_dir": ("run.out_dir", Path, "run directory (default runs/<recipe>-<time>)"),
    "device": ("run.device", str, "cpu, cuda, cuda:N (default: cuda if available)"),
    "dashboard": ("run.dashboards", str, "also log the metrics to tensorboard, wandb or both (comma-separated)"),
}
SWITCHES = {"use_fp8": ("fp8.enabled", "float8 training for the blocks' linear layers and the head"),
            "compile_model": ("train.compile_model", "torch.compile each block and the loss"),
            "use_flash_attn": ("train.use_flash_attn", "fused attention kernels (cuDNN / Flash)")}
CHOICES = {"compile_mode": COMPILE_MODES, "fp8_recipe": FP8_RECIPES}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0], epilog=__doc__.split("\n", 2)[2].strip(),
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", metavar="RECIPE", help="a recipe: tiny, small, seed, 1b (configs/) or a TOML file")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.FIELD=VALUE",
                   help="set any config field, e.g. --set train.min_lr=1e-5 --set fp8.margin=1 (repeatable)")
    for name, (_, kind, help_text) in FLAGS.items():
        if kind is list:
            p.add_argument(f"--{name}", nargs="+", type=Path, help=help_text)
        else:
            p.add_argument(f"--{name}", type=str if kind is Path else kind, choices=CHOICES.get(name), help=help_text)
    for name, (_, help_text) in SWITCHES.items():
        p.add_argument(f"--{name}", action=argparse.BooleanOptionalAction, help=help_text)
    p.add_argument("--no_gradient_checkpointing", dest="gradient_checkpointing", action="store_false", default=None,
                   help="keep activations (faster, more memory); checkpointing is on otherwise")
    p.add_argument("--gradient_checkpointing", dest="gradient_checkpointing", action="store_true", default=None,
                   help="recompute each block's activations in backward")
    p.add_argument("--resume", type=Path, metavar="RUN", help="continue the run in this directory")
    p.add_argument("--overwrite", action="store_true", help="replace the run in --out_dir")
    return p


def command_line_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """{"section.field": value} for every flag given and every --set."""
    out: dict[str, Any] = {}
    for name, (key, kind, _) in FLAGS.items():
        value = getattr(args, name)
        if value is not None:
            out[key] = tuple(str(v) for v in value) if kind is list else value
    for name, (key, _) in SWITCHES.items():
        if getattr(args, name) is not None:
            out[key] = getattr(args, name)
    if args.gradient_checkpointing is not None:
        out["train.gradient_checkpointing"] = args.gradient_checkpointing
    for text in args.overrides:
        key, value = parse_override(text)
        out[key] = value
    return out


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f"--device {name!r} is not a device; use cpu, cuda or cuda:N") from None
    if device.type not in ("cpu", "cuda"):
        raise UserError(f"--device {name!r}: this project runs on cpu, cuda or cuda:N")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda but no CUDA GPU is visible; use --device cpu")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise UserError(f"--device {name}: only {torch.cuda.device_count()} CUDA GPU(s) are visible (cuda:0 .. "
                        f"cuda:{torch.cuda.device_count() - 1})")
    return device


def load_config(args: argparse.Namespace, resumed: dict[str, Any] | None) -> tuple[Config, frozenset[str]]:
    """The run's config (before device-specific resolution) and the keys the user set explicitly."""
    overrides = command_line_overrides(args)
    explicit = frozenset(overrides)
    if resumed is not None:
        if args.config:
            raise UserError("--resume continues a run with its own config; drop --config (change single settings "
                            "with flags or --set)")
        saved_file = Path(resumed["run_dir"]) / CONFIG_FILE
        saved = config_from_checkpoint(resumed)
        config = with_overrides(saved, overrides)
        if saved.fp8.recipe in TORCHAO_RECIPES and config.fp8.recipe in ("auto", "delayed"):
            # a TorchAO recipe recorded the delayed recipe's settings as off; the delayed recipe starts from its own
            fresh = Fp8Config()
            config = replace(config, fp8=replace(config.fp8, **{
                k: getattr(fresh, k) for k in Fp8Config.DELAYED_ONLY_OFF if f"fp8.{k}" not in explicit}))
        changed = [k for k in overrides if k.startswith("model.") and getattr(config.model, k[6:]) != getattr(saved.model, k[6:])]
        if changed:
            raise UserError(f"{', '.join(changed)} differ from the checkpoint's model ({saved_file}); "
                            "drop the flag or start a new run")
        check_resumable(config, saved, resumed, explicit)
        return config, explicit
    base, recipe_keys = load_recipe(args.config) if args.config else (Config(), frozenset())
    config = fit_vocab_size(with_overrides(base, overrides), explicit, recipe_keys, log=print_on_rank0)
    return config, explicit | recipe_keys


def check_resumable(config: Config, saved: Config, resumed: dict[str, Any], explicit: frozenset[str]) -> None:
    """What a resumed run cannot do: train to a step it is already past, or continue on other data."""
    step, steps = resumed["step"], config.train.max_steps
    if steps < step:
        raise UserError(f"--max_steps {steps} is below step {step}, where checkpoint {resumed['path']} is; pass "
                        f"--max_steps above {step} to train further (or start a new run for fewer steps)")

    def files(names: Any) -> list[str]:
        return [str(Path(n).resolve()) for n in ([names] if isinstance(names, str) else names) if n]

    for key, flag in (("train_data", "--train_data"), ("val_data", "--val_data")):
        if f"data.{key}" in explicit and files(getattr(config.data, key)) != files(getattr(saved.data, key)):
            was = ", ".join(files(getattr(saved.data, key))) or "the default corpus"
            raise UserError(f"{flag} differs from the data run {resumed['run_dir']} trained on ({was}); a resumed "
                            f"run continues on its own data: drop {flag}, or start a new run (--out_dir NEW) to "
                            "train on other data")


def print_on_rank0(message: str) -> None:
    """A line on stderr from rank 0 only (before the process group exists: by torchrun's RANK)."""
    if os.environ.get("RANK", "0") == "0":
        print(message, file=sys.stderr)


def prepare_out_dir(args: argparse.Namespace, config: Config) -> RunDirPlan:
    """The run directory and what will happen to it; checks only, nothing is created or deleted yet
    (training/run_dir.py)."""
    if args.resume:
        if args.overwrite:
            raise UserError("--resume continues a run and --overwrite replaces one: drop one of them")
        if args.out_dir and Path(args.out_dir).resolve() != args.resume.resolve():
            raise UserError("--resume DIR continues in DIR; drop --out_dir or make it the same directory")
        return plan_run_dir(args.resume, overwrite=False, resume=True)
    name = Path(args.config).stem if args.config else "run"
    out_dir = Path(config.run.out_dir) if config.run.out_dir else Path("runs") / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}"
    return plan_run_dir(out_dir, overwrite=args.overwrite, resume=False)


def check_default_model(args: argparse.Namespace, explicit: frozenset[str], resumed: dict[str, Any] | None,
                        config: Config, device: torch.device) -> None:
    """No recipe and no shape flag means the seed shape: refused on a CPU, where it would train for days."""
    if resumed is not None or args.config or device.type != "cpu" or any(k.startswith("model.") for k in explicit):
        return
    m = config.model
    raise UserError(f"no --config and no GPU: the default model is the {parameter_count(config) / 1e6:,.0f}M-parameter "
                    f"seed shape (dim {m.dim}, {m.n_layers} layers, vocabulary {m.vocab_size:,}), days of training on a "
                    f"CPU; pass --config tiny (minutes on a CPU) or --config small, or --config seed to train it anyway")


def rank0_checked(ctx: DistributedContext, fn: Callable[[], T]) -> T:
    """fn() on rank 0; its result, or its UserError, on every rank (no rank is left waiting for one that failed)."""
    if not ctx.enabled:
        return fn()
    result, error = None, None
    if ctx.is_main:
        try:
            result = fn()
        except UserError as e:
            error = str(e)
    result, error = broadcast_from_rank0((result, error), ctx)
    if error is not None:
        raise UserError(error)
    return result


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.resume:  # a run that is running is not resumed beside itself
        RunLock(args.resume).check_free()
    resumed = load_checkpoint(args.resume, log=print_on_rank0) if args.resume else None
    config, explicit = load_config(args, resumed)
    ctx, device = init_distributed(resolve_device(config.run.device), config.run.dp_replicate)
    try:
        if not ctx.is_main:  # rank 0 speaks for the job; the others print only errors
            sys.stdout = open(os.devnull, "w")
        rc = train(args, config, explicit, resumed, ctx, device)
        barrier()  # every rank is done before the process group goes away
        return rc
    finally:
        shutdown()


def on_rank0_first(ctx: DistributedContext, fn: Callable[[], T]) -> T:
    """Run fn on rank 0 first (it writes caches and the run directory), then on the others, which reuse them."""
    if ctx.is_main:
        result = fn()
        barrier()
    else:
        barrier()
        result = fn()
    return result


def train(args: argparse.Namespace, config: Config, explicit: frozenset[str], resumed: dict[str, Any] | None,
          ctx: DistributedContext, device: torch.device) -> int:
    """Check everything, claim the run directory, train; the old run of --overwrite is replaced only once the
    new one can start, and a failure leaves no staging directory or temporary file behind."""
    parallelism = None
    if ctx.enabled:
        parallelism, why = choose_parallelism(config.validate(), device, ctx)
        once = parallelism in SHARDED and config.run.fsdp_gather_once
        print(f"parallelism: {parallelism} over {ctx.world_size} process{'es' if ctx.world_size > 1 else ''} ({why})"
              + (", weights gathered once per optimizer step" if once else ""))
    config = resolve_config(config, device, parallelism, explicit)
    check_default_model(args, explicit, resumed, config, device)
    rank0_checked(ctx, lambda: check_dashboards(config.run.dashboards))  # a missing package, before the run dir
    plan = rank0_checked(ctx, lambda: prepare_out_dir(args, config))
    rank0_checked(ctx, lambda: check_inputs(config, plan))
    shards = ctx.dp_shard if parallelism in SHARDED else 1  # what FSDP divides the state by (fsdp: all ranks)
    check_training_memory(config, device, shards, ctx.processes_on_host)
    rank0_checked(ctx, lambda: check_checkpoint_space(config, plan))
    lock = RunLock(plan.out_dir) if ctx.is_main else None
    rank0_checked(ctx, lambda: lock.acquire() and None)
    try:
        if ctx.is_main:
            clear_leftovers(plan.out_dir)
        return train_in(args, config, resumed, ctx, device, plan)
    except BaseException as e:
        if ctx.is_main:
            if plan.started:
                remove_stray_temps(plan.out_dir, plan.out_dir / "checkpoints")
            else:
                clean_up_failed_start(plan)
        if is_write_failure(e):
            raise UserError(describe_write_failure(e, plan.out_dir)) from None
        raise
    finally:
        if lock is not None:
            lock.release()


def train_in(args: argparse.Namespace, config: Config, resumed: dict[str, Any] | None, ctx: DistributedContext,
             device: torch.device, plan: RunDirPlan) -> int:
    out_dir = plan.out_dir
    torch.manual_seed(config.train.seed)
    np.random.seed(config.train.seed)
    model_cfg = config.model
    data = on_rank0_first(ctx, lambda: prepare_data(config.data, model_cfg.vocab_size, model_cfg.context_length,
                                                    plan.data_dir,
                                                    resumed.get("tokenizer_fingerprint") if resumed else None))
    prepared = prepare_model(config, device, ctx)
    backend = probe_backend(config.train.use_flash_attn, config.train.fused_attention, model_cfg.head_dim, device)
    if ctx.is_main:  # the new run can start: only now is an old run in the directory replaced
        replace_old_run(plan)
    barrier()
    print(format_summary(config, prepared, device, ctx.world_size, backend, current_device_peaks(device)))
    if ctx.is_main:
        for warning in warnings_for(config, device):
            print(warning, file=sys.stderr)
        write_text_atomic(out_dir / CONFIG_FILE, config.to_toml())

    run_info = {"run_name": out_dir.name, **data.info, "compile_mode": prepared.compile_mode,
                "residual_dtype": prepared.residual_dtype}
    sampler = RandomWindows(data.train_tokens, config.train.batch_size, model_cfg.context_length, config.train.seed,
                            ctx.rank, ctx.world_size)
    try:  # bits per byte need the bytes each token stands for: exact for byte-level BPE tokenizers
        byte_counts = token_bytes(data.tokenizer)
    except UserError as e:
        byte_counts = None
        print(f"validation reports loss and perplexity only: {e}")
    trainer = Trainer(prepared, config, sampler, data.val_tokens, device, out_dir, run_info, ctx=ctx,
                      token_bytes=byte_counts)
    if resumed is not None:
        trainer.load_state_dict(resumed)
        print(f"resumed from {resumed['path']} at step {trainer.step}")
    try:
        summary = trainer.train()
    except KeyboardInterrupt:  # what the steps done measured is kept too; the checkpoint is already written
        if ctx.is_main and "steps" in trainer.summary:
            report_results(trainer.summary, out_dir, resumed=resumed is not None)
        raise
    if ctx.is_main:
        report_results(summary, out_dir, resumed=resumed is not None)
    sample_tokens = config.run.sample_tokens
    if sample_tokens > 0 and not ctx.enabled:  # (sharded runs: sample with generate.py afterwards)
        prompt = encode_prompt(data.tokenizer, config.run.prompt)
        ids = generate(trainer.eval_model, prompt, sample_tokens, temperature=0.8, top_k=50, stop_id=eot_id(data.tokenizer),
                       generator=torch.Generator(device).manual_seed(config.train.seed))
        print(f"sample: {config.run.prompt}{data.tokenizer.decode(ids)}")
    return 0


def report_results(summary: dict[str, Any], out_dir: Path, resumed: bool = False) -> None:
    path = out_dir / "summary.json"
    try:  # a resumed run keeps the figures of the segments before it (their steps, GPUs, speed) under "earlier"
        before = json.loads(path.read_text()) if resumed else None
    except (OSError, ValueError):
        before = None
    if isinstance(before, dict):
        summary = {**summary, "earlier": [*before.pop("earlier", []), before]}
    write_text_atomic(path, dumps_strict(summary, indent=1))  # NaN and infinities as null
    parts = [f"interrupted after {summary['steps']} steps" if "interrupted_at_step" in summary
             else f"trained {summary['steps']} steps"]
    if math.isfinite(summary.get("final_train_loss") or math.nan):
        parts.append(f"last logged train loss {summary['final_train_loss']:.4f}" if "interrupted_at_step" in summary
                     else f"final train loss {summary['final_train_loss']:.4f}")
    if "val_loss" in summary:
        parts.append(f"val loss {summary['val_loss']:.4f}")
    if "val_bits_per_byte" in summary:
        parts.append(f"{summary['val_bits_per_byte']:.4f} bits/byte")
    if "tokens_per_second" in summary:
        parts.append(f"measured {summary['tokens_per_second']:,.0f} tokens/s")
        if summary.get("world_size", 1) > 1:
            parts.append(f"{summary['tokens_per_second_per_device']:,.0f} per device on {summary['world_size']}")
    if "mfu_bf16_peak" in summary:
        parts.append(f"MFU {100 * summary['mfu_bf16_peak']:.1f}% of the bf16 peak")
    if "fraction_of_roofline" in summary:
        parts.append(f"{100 * summary['fraction_of_roofline']:.0f}% of the roofline bound")
    if "peak_memory_gib" in summary:
        parts.append(f"peak memory {summary['peak_memory_gib']:.1f} GiB")
    if "fp8_saturated" in summary:
        parts.append(f"{summary['fp8_saturated']} fp8 casts clipped")
    print("; ".join(parts))
    dashboards = "".join(f", {name}/" for name in ("tensorboard", "wandb") if (out_dir / name).is_dir())
    print(f"run directory: {out_dir} ({CONFIG_FILE}, metrics.jsonl, loss.png, checkpoints/, tokenizer.json{dashboards})")


def cli() -> int:
    return run_main(main)

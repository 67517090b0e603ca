"""`train_h100.py`: data -> tokenizer -> token files -> model -> (fp8) -> Trainer -> checkpoint -> sample.

Flags left unset fall back to the preset (model shape) or to TrainConfig's defaults; on --resume they fall
back to the checkpoint instead, and a model-shape flag that contradicts the checkpoint is an error.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import shutil
import sys
import time
from dataclasses import asdict, fields, replace
from pathlib import Path
from typing import Any, Callable, TypeVar

import numpy as np
import torch
from tokenizers import Tokenizer

from cs336_basics.cli import run_main
from cs336_basics.data.batches import RandomWindows, check_length
from cs336_basics.data.corpus import check_text_file, file_key, iter_chunks, write_default_corpus
from cs336_basics.data.tokenizer import (eot_id, load_tokenizer, save_tokenizer, tokenizer_fingerprint,
                                         train_tokenizer)
from cs336_basics.data.tokens import encode_files
from cs336_basics.errors import UserError
from cs336_basics.files import write_text_atomic
from cs336_basics.generation import generate
from cs336_basics.model.transformer import PRESETS, ModelConfig
from cs336_basics.perf.hardware import current_device_peaks
from cs336_basics.precision.fp8 import FILTERS, RECIPES, check_fp8_device
from cs336_basics.precision.fp8_cast import KERNEL_CASTS, resolve_kernel_casts
from cs336_basics.training.attention import FUSED_ORDERS, probe_backend
from cs336_basics.training.checkpoint import list_checkpoints, load_checkpoint
from cs336_basics.training.distributed import (DistributedContext, barrier, broadcast_from_rank0, init_distributed,
                                               shutdown)
from cs336_basics.training.setup import (Fp8Options, build_model, check_delayed_only, check_fused_swiglu,
                                         check_merge_w13)
from cs336_basics.training.summary import RunShape, format_summary, warnings_for
from cs336_basics.training.trainer import TrainConfig, Trainer
from cs336_basics.training.transforms import COMPILE_MODES, resolve_compile_mode, resolve_residual_dtype

T = TypeVar("T")
MODEL_FLAGS = ("vocab_size", "context_length", "dim", "n_layers", "n_heads", "intermediate_size")
SPEED_FLAGS = ("compile_model", "compile_mode", "tune_kernels", "gradient_checkpointing", "use_flash_attn", "fused_attention",
               "residual_dtype", "fp8_weight_cache", "fp8_margin", "fp8_grad_margin", "fp8_start_step", "bf16_weight_cache")
TRAIN_FLAGS = tuple(f.name for f in fields(TrainConfig) if f.name not in SPEED_FLAGS)


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows real defaults only: an unset flag (None) is explained by its group's title."""

    def _get_help_string(self, action: argparse.Action) -> str:
        return action.help or "" if action.default in (None, False) else super()._get_help_string(action)


def block_list(text: str) -> tuple[int, ...]:
    """'0,-1' -> (0, -1): --fp8_bf16_blocks."""
    try:
        return tuple(int(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected block numbers separated by commas, such as 0,-1; got {text!r}") from None


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0], formatter_class=_HelpFormatter)
    m = p.add_argument_group("model (unset flags come from --preset)")
    m.add_argument("--preset", default="seed", choices=sorted(PRESETS), help="model shape to start from")
    for name in MODEL_FLAGS:
        m.add_argument(f"--{name}", type=int)
    m.add_argument("--tie_embeddings", action="store_true", default=None, help="share embedding and output weights")

    t = p.add_argument_group("training (unset flags: TrainConfig defaults, or the checkpoint's on --resume)")
    for f in fields(TrainConfig):
        if f.name in TRAIN_FLAGS:
            t.add_argument(f"--{f.name}", type=type(f.default), help=f"default {f.default}")
    t.add_argument("--max_tokens", type=int, help="token budget instead of --max_steps")

    s = p.add_argument_group("speed (unset flags: off / the defaults shown, or the checkpoint's on --resume)")
    yes_no = argparse.BooleanOptionalAction
    s.add_argument("--use_fp8", action=yes_no, help="float8 training for the blocks' linear layers")
    s.add_argument("--fp8_recipe", choices=RECIPES,
                   help="delayed: our layer, scales from the last 16 steps (default on one GPU); tensorwise, rowwise, "
                        "rowwise_with_gw_hp: TorchAO's dynamic scaling (tensorwise is the default under torchrun "
                        "and with --fp8_filter auto)")
    s.add_argument("--fp8_filter", default="all", choices=FILTERS,
                   help="all: every eligible layer; auto: only layers measured faster in fp8 on this GPU")
    s.add_argument("--fp8_emulate", action="store_true", help="emulated float8 (any device, slow: for testing)")
    s.add_argument("--fp8_head", action=yes_no,
                   help="with --use_fp8: the output head and its loss in float8 too (default on; --no-fp8_head keeps bf16)")
    s.add_argument("--fp8_fused_swiglu", action=yes_no,
                   help="with the delayed recipe: each SwiGLU block as one function, SwiGLU and its fp8 casts as Triton "
                        "kernels (default on; --no-fp8_fused_swiglu runs its three float8 layers one by one)")
    s.add_argument("--fp8_merge_w13", action=yes_no,
                   help="with the fused SwiGLU: its w1 and w3 as one float8 product each way, under one weight scale "
                        "and one gradient scale (default on with the fused SwiGLU: 1.0-1.4%% faster on an H200, "
                        "benchmarks/NOTES.md 91-92; --no-fp8_merge_w13 runs two products)")
    s.add_argument("--fp8_kernel_casts", choices=("auto", *KERNEL_CASTS),
                   help="with the delayed recipe: which float8 casts our Triton kernel does (both layouts and the amax in "
                        "one pass) instead of the compiler's code fused into their producers: none, the layers' inputs, "
                        "their output gradients, or all (default auto: all with the delayed recipe, measured fastest, "
                        "benchmarks/NOTES.md 62; none with TorchAO's recipes)")
    s.add_argument("--fp8_fast_accum", action=yes_no,
                   help="with the delayed recipe: the layers' forward products with cuBLAS's fast accumulation, as "
                        "TorchAO's Float8Linear does; the gradients' keep full accumulation (default on with the "
                        "delayed recipe: +0.9%% seed steps on an H200, the same losses, benchmarks/NOTES.md 68)")
    s.add_argument("--fp8_bf16_blocks", type=block_list, metavar="I,J",
                   help="experimental, with --use_fp8: keep these blocks' linear layers in bf16 (0 is the first block, -1 "
                        "the last), as some fp8 recipes keep the first and last blocks (benchmarks/NOTES.md 78)")
    s.add_argument("--fp8_head_kernel", action=yes_no,
                   help="experimental: the float8 head's logit gradient by our Triton kernel instead of the compiler's "
                        "code (default off; benchmarks/NOTES.md 46)")
    s.add_argument("--compile_model", action=yes_no, help="torch.compile each block and the loss")
    s.add_argument("--compile_mode", choices=COMPILE_MODES,
                   help="torch.compile mode (default: auto: reduce-overhead, i.e. CUDA graphs, for fp8 on one GPU; "
                        "default otherwise)")
    s.add_argument("--tune_kernels", action=yes_no,
                   help="with --compile_model on a GPU: inductor tunes each Triton kernel's block sizes (coordinate "
                        "descent) and tiles pointwise kernels in 2-D; with today's defaults at the seed size: fp8 "
                        "steps 0.9-1.5%% faster, bf16 -0.1 to +0.6%%, for 60-100 s more compilation (benchmarks/NOTES.md "
                        "116, 118)")
    s.add_argument("--residual_dtype", metavar="auto|fp32|bf16",
                   help="the residual stream's dtype while training (default auto: bf16 on a GPU, float32 on CPU); "
                        "bf16 measured 2-4%% faster steps in both precisions than fp32, validation within 0.5%% at the "
                        "small and seed sizes (benchmarks/NOTES.md 49, 55); evaluation keeps float32")
    s.add_argument("--fp8_weight_cache", action=yes_no,
                   help="with the delayed fp8 recipe: cast the weights to float8 once per optimizer step instead of in "
                        "every micro-batch (the same numbers; pays with --gradient_accumulation_steps > 1: +1.6-2.8%% "
                        "in the seed guide's training on an H200, benchmarks/NOTES.md 65, 68; default on with the "
                        "delayed recipe)")
    s.add_argument("--fp8_margin", type=int,
                   help="with the delayed recipe: scale each input and gradient to 2^N times its amax history's max, "
                        "headroom for tensors that grow faster than the history follows (default 0; the training log "
                        "counts the casts that clipped)")
    s.add_argument("--fp8_grad_margin", type=int,
                   help="experimental, with the delayed recipe: the gradients' own headroom, 2^N above their amax "
                        "history's max (default: --fp8_margin's). e5m2 spans ~32 powers of two, so N = 3 costs only "
                        "values ~2^-27 of the largest; in the seed guide's runs 10-30%% of the gradient casts clip, "
                        "some at up to 10x (benchmarks/NOTES.md 89)")
    s.add_argument("--fp8_start_step", type=int,
                   help="experimental, with the delayed recipe: train the steps before this one in bf16 (the float8 layers "
                        "compute as plain ones) and start the float8 products here, their scales calibrated then "
                        "(default 0: float8 from the first step). Not a quality remedy: after a 10-step warm-up in bf16 "
                        "seed 1 ended within 1%% of bf16's validation loss and seed 2 did not; a 30-step warm-up did at "
                        "both (benchmarks/NOTES.md 83, 104)")
    s.add_argument("--bf16_weight_cache", action=yes_no,
                   help="bf16 runs on one GPU: cast the weights to bf16 once per optimizer step instead of by autocast "
                        "in every micro-batch (the same products; the fp8 weight cache's counterpart, so the two precisions "
                        "are compared like for like: +0.65%% in the seed guide's training on an H200, benchmarks/NOTES.md "
                        "73), the weight gradients written in float32 by cuBLAS as fp8's are (NOTES 85); default on "
                        "where it applies")
    s.add_argument("--use_flash_attn", action=yes_no, help="fused attention kernels (cuDNN / Flash)")
    s.add_argument("--fused_attention", choices=sorted(FUSED_ORDERS),
                   help="with --use_flash_attn: PyTorch's order of the fused kernels (auto; cuDNN first on Hopper), "
                        "cuDNN attention first, or FlashAttention-2 without cuDNN (default: auto)")
    s.add_argument("--no_gradient_checkpointing", dest="gradient_checkpointing", action="store_false", default=None,
                   help="keep activations (faster, more memory); checkpointing is on unless this is given")
    s.add_argument("--gradient_checkpointing", dest="gradient_checkpointing", action="store_true", default=None,
                   help="recompute each block's activations in backward (the default for a new run)")

    d = p.add_argument_group("data and output")
    d.add_argument("--train_data", type=Path, nargs="+", help="UTF-8 text file(s); default: CPython's doc topics")
    d.add_argument("--val_data", type=Path, help="UTF-8 text; default: the last 2%% of the training tokens")
    d.add_argument("--tokenizer", type=Path, help="tokenizer.json to use instead of training one")
    d.add_argument("--cache_dir", type=Path, default=Path("data_cache"), help="tokenizers and token files")
    d.add_argument("--out_dir", type=Path, help="run directory (default runs/<preset>-<time>)")
    d.add_argument("--resume", type=Path, metavar="DIR", help="continue the run in DIR exactly where it stopped")
    d.add_argument("--overwrite", action="store_true", help="replace the run in --out_dir")
    d.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N (under torchrun: each rank's own GPU)")
    d.add_argument("--dp_replicate", type=int, help="under torchrun: HSDP replicas (e.g. nodes); the rest shard")
    d.add_argument("--sample_tokens", type=int, default=80, help="tokens to generate after training (0: none)")
    d.add_argument("--prompt", default="The ", help="prompt for that sample")
    return p


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f"--device {name!r} is not a device name; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda but no CUDA GPU is visible; use --device cpu")
    return device


def resolve_model_config(args: argparse.Namespace, saved: dict[str, Any] | None) -> ModelConfig:
    if saved is not None:
        cfg = ModelConfig(**saved)
        for name in (*MODEL_FLAGS, "tie_embeddings"):
            given = getattr(args, name)
            if given is not None and given != getattr(cfg, name):
                raise UserError(f"--{name} {given} contradicts the checkpoint being resumed ({getattr(cfg, name)}); "
                                f"drop the flag or start a new run")
        return cfg
    overrides = {n: getattr(args, n) for n in (*MODEL_FLAGS, "tie_embeddings") if getattr(args, n) is not None}
    return replace(PRESETS[args.preset], **overrides).validate()


def resolve_train_config(args: argparse.Namespace, saved: dict[str, Any] | None, context_length: int) -> TrainConfig:
    # A checkpoint from before --residual_dtype trained with the float32 stream: it resumes with it.
    base = TrainConfig(**{"residual_dtype": "fp32", **saved}) if saved else TrainConfig()
    values = {n: getattr(args, n) for n in TRAIN_FLAGS if getattr(args, n) is not None}
    # Speed settings too: a resumed run keeps its checkpoint's unless a flag says otherwise.
    values.update({n: getattr(args, n) for n in SPEED_FLAGS if getattr(args, n) is not None})
    cfg = replace(base, **values)
    if args.max_tokens is not None:
        if args.max_steps is not None:
            raise UserError("give --max_steps or --max_tokens, not both")
        if args.max_tokens <= 0:
            raise UserError(f"--max_tokens must be positive, got {args.max_tokens}")
        per_step = cfg.batch_size * cfg.gradient_accumulation_steps * context_length
        cfg = replace(cfg, max_steps=math.ceil(args.max_tokens / per_step))
    return cfg.validate()


def prepare_out_dir(args: argparse.Namespace) -> Path:
    if args.resume:
        if args.out_dir and args.out_dir.resolve() != args.resume.resolve():
            raise UserError("--resume DIR continues in DIR; drop --out_dir or make it the same directory")
        return args.resume
    out_dir = args.out_dir or Path("runs") / f"{args.preset}-{time.strftime('%Y%m%d-%H%M%S')}"
    if (out_dir / "run.json").exists() or list_checkpoints(out_dir):
        if not args.overwrite:
            raise UserError(f"{out_dir} holds another run; pass --resume {out_dir} to continue it, --overwrite to "
                            f"replace it, or another --out_dir")
        shutil.rmtree(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    return out_dir


def prepare_tokenizer(args: argparse.Namespace, train_paths: list[Path], vocab_size: int, out_dir: Path,
                      resumed: dict[str, Any] | None) -> Tokenizer:
    saved = out_dir / "tokenizer.json"
    if args.tokenizer:
        tokenizer = load_tokenizer(args.tokenizer)
    elif resumed is not None:
        if not saved.exists():
            raise UserError(f"{saved} is missing; the run cannot be resumed without its tokenizer")
        tokenizer = load_tokenizer(saved)
    else:
        key = "|".join(file_key(p) for p in train_paths) + f"|{vocab_size}"
        cached = args.cache_dir / f"tokenizer-{hashlib.sha256(key.encode()).hexdigest()[:16]}.json"
        if cached.exists():
            tokenizer = load_tokenizer(cached)
        else:
            print(f"training a {vocab_size}-token byte-level BPE tokenizer on {', '.join(map(str, train_paths))}")
            chunks = (chunk for p in train_paths for chunk in iter_chunks(p))
            tokenizer = train_tokenizer(chunks, vocab_size)
            save_tokenizer(tokenizer, cached)
    if resumed is not None and tokenizer_fingerprint(tokenizer) != resumed.get("tokenizer_fingerprint"):
        raise UserError("this tokenizer is not the one the checkpoint was trained with; resume with the run's own "
                        f"{saved} (drop --tokenizer)")
    if tokenizer.get_vocab_size() > vocab_size:
        raise UserError(f"the tokenizer has {tokenizer.get_vocab_size()} tokens but the model's vocab_size is "
                        f"{vocab_size}; raise --vocab_size or use a smaller tokenizer")
    if not saved.exists():
        save_tokenizer(tokenizer, saved)
    return tokenizer


def prepare_data(args: argparse.Namespace, model_cfg: ModelConfig, out_dir: Path, resumed: dict[str, Any] | None
                 ) -> tuple[Tokenizer, np.ndarray, np.ndarray, dict[str, Any]]:
    if args.train_data is None and resumed is not None:
        args.train_data = [Path(p) for p in resumed["train_data"]]
        args.val_data = Path(resumed["val_data"]) if resumed.get("val_data") else None
    if args.train_data is None:
        default_train, default_val = write_default_corpus(args.cache_dir / "default_corpus")
        train_paths, val_path = [default_train], default_val
        print(f"data: CPython's bundled documentation topics (pydoc_data.topics), written to {train_paths[0].parent}")
    else:
        train_paths, val_path = list(args.train_data), args.val_data
    for p in train_paths + ([val_path] if val_path else []):
        check_text_file(p)
    tokenizer = prepare_tokenizer(args, train_paths, model_cfg.vocab_size, out_dir, resumed)
    train_file = encode_files(train_paths, tokenizer, args.cache_dir, "train")
    if val_path is not None:
        val_file = encode_files([val_path], tokenizer, args.cache_dir, "val")
        train_tokens, val_tokens = train_file.tokens, val_file.tokens
        max_id = max(train_file.max_id, val_file.max_id)
    else:  # hold out the tail of the training tokens; training never samples it
        check_length(train_file.tokens, model_cfg.context_length, "the training data")
        n_val = max(model_cfg.context_length + 1, len(train_file.tokens) // 50)
        if len(train_file.tokens) - n_val < model_cfg.context_length + 1:
            raise UserError(f"the training data has {len(train_file.tokens):,} tokens, too few to hold out a validation "
                            f"window of {n_val} and still train on one; pass --val_data or more text")
        train_tokens, val_tokens = train_file.tokens[:-n_val], train_file.tokens[-n_val:]
        max_id = train_file.max_id
    if max_id >= model_cfg.vocab_size:
        raise UserError(f"token file {train_file.path} holds id {max_id} >= the model's vocab_size {model_cfg.vocab_size}; "
                        f"raise --vocab_size or re-encode with the run's tokenizer")
    check_length(train_tokens, model_cfg.context_length, "the training data")
    check_length(val_tokens, model_cfg.context_length, "the validation data")
    print(f"data: {len(train_tokens):,} training tokens, {len(val_tokens):,} validation tokens "
          f"(vocabulary {tokenizer.get_vocab_size():,})")
    data_info = {"train_data": [str(p) for p in train_paths], "val_data": str(val_path) if val_path else None}
    return tokenizer, train_tokens, val_tokens, data_info


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    ctx, device = init_distributed(resolve_device(args.device), args.dp_replicate)
    try:
        if not ctx.is_main:  # rank 0 speaks for the job; the others print only errors
            sys.stdout = open(os.devnull, "w")
        rc = train(args, ctx, device)
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


def resolve_fp8(args: argparse.Namespace, saved: dict[str, Any] | None, distributed: bool) -> tuple[bool, Fp8Options]:
    """(use fp8, the float8 options): each from its flag, else the resumed checkpoint's, else bf16 / the default
    recipe / head on / SwiGLU fused and every cast through our kernel with the delayed recipe / no head kernel. The default recipe
    is delayed scaling (measured fastest, benchmarks/NOTES.md 21) where it runs: one process and every eligible
    layer; TorchAO's tensorwise under torchrun and with --fp8_filter auto. In a bf16 run the options say what
    --use_fp8 would do."""
    saved = saved or {}
    use_fp8 = args.use_fp8 if args.use_fp8 is not None else bool(saved.get("fp8"))
    default = "tensorwise" if distributed or args.fp8_filter == "auto" else "delayed"
    recipe = args.fp8_recipe or saved.get("fp8_recipe") or default

    def flag(name: str, saved_default: bool | None) -> bool | None:  # a yes/no flag, else the checkpoint's, else the default
        value = getattr(args, name)
        return value if value is not None else (saved.get(name) if saved.get(name) is not None else saved_default)

    options = Fp8Options(recipe, args.fp8_filter, args.fp8_emulate, head=flag("fp8_head", True),
                         fused_swiglu=recipe == "delayed" and flag("fp8_fused_swiglu", True),
                         kernel_casts=resolve_kernel_casts(args.fp8_kernel_casts or saved.get("fp8_kernel_casts") or "auto",
                                                           recipe),
                         head_kernel=flag("fp8_head_kernel", False), fast_accum=flag("fp8_fast_accum", None),
                         bf16_blocks=tuple(args.fp8_bf16_blocks if args.fp8_bf16_blocks is not None
                                           else saved.get("fp8_bf16_blocks") or ()),
                         merge_w13=flag("fp8_merge_w13", None))
    if args.fp8_emulate and not use_fp8:
        raise UserError("--fp8_emulate only applies with --use_fp8")
    for name in ("fp8_head", "fp8_fused_swiglu", "fp8_head_kernel", "fp8_fast_accum", "fp8_merge_w13"):
        if getattr(args, name) is not None and not use_fp8:
            raise UserError(f"--{name} / --no-{name} only apply with --use_fp8")
    for name in ("fp8_kernel_casts", "fp8_bf16_blocks"):
        if getattr(args, name) is not None and not use_fp8:
            raise UserError(f"--{name} only applies with --use_fp8")
    check_fused_swiglu(args.fp8_fused_swiglu, recipe)  # here too: before the data is prepared
    if use_fp8:
        check_merge_w13(options.merge_w13, options.fused_swiglu, recipe)
        check_delayed_only(options.kernel_casts, options.fast_accum, recipe)
    if use_fp8 and options.head_kernel and not options.head:
        raise UserError("--fp8_head_kernel computes the float8 head's gradient: drop --no-fp8_head")
    if use_fp8 and recipe == "delayed" and distributed:
        raise UserError("--fp8_recipe delayed runs on one GPU for now; under torchrun use --fp8_recipe tensorwise")
    return use_fp8, options


def train(args: argparse.Namespace, ctx: DistributedContext, device: torch.device) -> int:
    out_dir = broadcast_from_rank0(prepare_out_dir(args) if ctx.is_main else None, ctx)
    resumed = load_checkpoint(out_dir) if args.resume else None
    use_fp8, fp8_options = resolve_fp8(args, resumed, ctx.enabled)
    recipe = fp8_options.recipe
    if use_fp8:
        check_fp8_device(device, args.fp8_emulate)
    model_cfg = resolve_model_config(args, resumed["model_config"] if resumed else None)
    train_cfg = resolve_train_config(args, resumed["train_config"] if resumed else None, model_cfg.context_length)
    train_cfg = replace(train_cfg, residual_dtype=resolve_residual_dtype(  # before the data is prepared
        train_cfg.residual_dtype, device, ctx.enabled, asked=args.residual_dtype is not None))
    torch.manual_seed(train_cfg.seed)
    np.random.seed(train_cfg.seed)

    tokenizer, train_tokens, val_tokens, data_info = on_rank0_first(
        ctx, lambda: prepare_data(args, model_cfg, out_dir, resumed))
    fp8 = replace(fp8_options, fsdp_all_gather=ctx.enabled and device.type == "cuda") if use_fp8 else None
    model, fp8_report = build_model(model_cfg, device, fp8, train_cfg.batch_size * model_cfg.context_length)
    backend = probe_backend(train_cfg.use_flash_attn, train_cfg.fused_attention, model_cfg.head_dim, device)

    def compile_mode(fp8: bool) -> str:  # as the Trainer resolves it, for this run and for its fp8 variant
        return resolve_compile_mode(train_cfg.compile_mode, fp8, device, ctx.enabled)

    run_shape = RunShape(device, use_fp8, recipe, args.fp8_emulate, train_cfg.compile_model,
                         compile_mode(use_fp8), backend, train_cfg.gradient_checkpointing,
                         train_cfg.batch_size, train_cfg.gradient_accumulation_steps, model_cfg.context_length,
                         ctx.world_size, fp8_head=bool(fp8_report and fp8_report.fp8_head),
                         fp8_compile_mode=compile_mode(True), tune_kernels=train_cfg.tune_kernels,
                         fp8_fused_swiglu=bool(fp8_report.fused_swiglu) if fp8_report else fp8_options.fused_swiglu,
                         residual_dtype=train_cfg.residual_dtype, warmup_steps=train_cfg.warmup_steps)
    print(format_summary(model_cfg, model.num_params(), model.num_params(include_embedding=False), run_shape,
                         current_device_peaks(device), fp8_report.summary() if fp8_report else None))
    if ctx.is_main:
        for warning in warnings_for(run_shape, model_cfg.dim):
            print(warning, file=sys.stderr)

    run_info = {"run_name": out_dir.name, "tokenizer_fingerprint": tokenizer_fingerprint(tokenizer), **data_info,
                "fp8_recipe": recipe if use_fp8 else None, "fp8_head": fp8_report.fp8_head if fp8_report else None,
                "fp8_fused_swiglu": bool(fp8_report.fused_swiglu) if fp8_report else None,
                "fp8_kernel_casts": fp8_report.kernel_casts if fp8_report else None,
                "fp8_head_kernel": fp8_report.head_kernel if fp8_report else None,
                "fp8_fast_accum": fp8_report.fast_accum if fp8_report else None,
                "fp8_bf16_blocks": list(fp8_options.bf16_blocks) if fp8_report else None,
                "fp8_merge_w13": fp8_report.merge_w13 if fp8_report else None,
                "compile_mode": run_shape.compile_mode if train_cfg.compile_model else None}
    sampler = RandomWindows(train_tokens, train_cfg.batch_size, model_cfg.context_length, train_cfg.seed,
                            ctx.rank, ctx.world_size)
    trainer = Trainer(model, train_cfg, sampler, val_tokens, device, out_dir, run_info, ctx=ctx)
    if resumed is not None:
        trainer.load_state_dict(resumed)
        print(f"resumed from {resumed['path']} at step {trainer.step}")
    elif ctx.is_main:
        (out_dir / "run.json").write_text(json.dumps(
            {"model_config": model_cfg.to_dict(), "train_config": asdict(trainer.cfg), **run_info,
             "fp8": use_fp8}, indent=1))
    try:
        summary = trainer.train()
    except KeyboardInterrupt:  # what the steps done measured is kept too; the checkpoint is already written
        if ctx.is_main and "steps" in trainer.summary:
            report_results(trainer.summary, out_dir, resumed=resumed is not None)
        raise
    if ctx.is_main:
        report_results(summary, out_dir, resumed=resumed is not None)
    if args.sample_tokens > 0 and not ctx.enabled:  # (sharded runs: sample with generate.py afterwards)
        ids = generate(trainer.eval_model, tokenizer.encode(args.prompt).ids, args.sample_tokens, temperature=0.8,
                       top_k=50, stop_id=eot_id(tokenizer),
                       generator=torch.Generator(device).manual_seed(train_cfg.seed))
        print(f"sample: {args.prompt}{tokenizer.decode(ids)}")
    return 0


def report_results(summary: dict[str, Any], out_dir: Path, resumed: bool = False) -> None:
    path = out_dir / "summary.json"
    try:  # a resumed run keeps the figures of the segments before it (their steps, GPUs, speed) under "earlier"
        before = json.loads(path.read_text()) if resumed else None
    except (OSError, ValueError):
        before = None
    if isinstance(before, dict):
        summary = {**summary, "earlier": [*before.pop("earlier", []), before]}
    write_text_atomic(path, json.dumps(summary, indent=1))
    parts = [f"interrupted after {summary['steps']} steps" if "interrupted_at_step" in summary
             else f"trained {summary['steps']} steps"]
    if math.isfinite(summary.get("final_train_loss") or math.nan):
        parts.append(f"last logged train loss {summary['final_train_loss']:.4f}" if "interrupted_at_step" in summary
                     else f"final train loss {summary['final_train_loss']:.4f}")
    if "val_loss" in summary:
        parts.append(f"val loss {summary['val_loss']:.4f}")
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
    print(f"run directory: {out_dir} (metrics.jsonl, loss.png, checkpoints/, tokenizer.json)")


def cli() -> int:
    return run_main(main)

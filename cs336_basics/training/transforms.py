"""Transformations of a built model, applied by training/prepare.py in this order: the residual stream's
dtype, activation checkpointing per block, then torch.compile per block and of the output head + loss (so a
24-layer model compiles one block graph, reused 24 times, in seconds). All act in place and keep the
state-dict keys of the plain model."""

from __future__ import annotations

import warnings

import torch
from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import checkpoint_wrapper

from cs336_basics.errors import UserError
from cs336_basics.model.transformer import Transformer

CUDA_GRAPH_MODES = ("reduce-overhead", "max-autotune")  # these replay each compiled graph as a CUDA graph
# train.tune_kernels: inductor searches each Triton kernel's block sizes by coordinate descent, and tiles
# pointwise kernels over both dimensions. A small gain for much longer compilation (docs/log.md), so opt-in.
TUNED_KERNELS = {"coordinate_descent_tuning": True, "triton.prefer_nd_tiling": True}


def resolve_compile_mode(mode: str, fp8: bool, device: torch.device, sharded: bool) -> str:
    """The torch.compile mode a run uses. "auto": CUDA graphs ("reduce-overhead") for float8 on GPUs with whole
    weights (one process or DDP, whose gradient all-reduces run outside the graphed blocks), whose thousands of
    small kernel launches a step make the host the bottleneck at small widths; "default" otherwise: bf16 steps
    are GPU-bound and gain nothing, and FSDP's hooks inside every block keep CUDA graphs out."""
    if mode != "auto":
        return mode
    return "reduce-overhead" if fp8 and device.type == "cuda" and not sharded else "default"


def cast_residual_stream(model: Transformer) -> None:
    """The residual stream in bf16 instead of float32. Under autocast the embedding (float32 weights) returns
    float32 and every block adds its bf16 output to it in float32, so RMSNorm, its backward and the residual adds
    read and write 4 bytes an element each way; cast once at the embedding, the stream and its gradient stay bf16
    (Megatron-LM's default; torchtitan's with bf16 parameters). RMSNorm still computes in float32 (autocast's
    policy for it). Needs autocast (resolve_residual_dtype): without it bf16 activations would meet float32 weights."""
    model.embed.register_forward_hook(lambda module, args, out: out.to(torch.bfloat16))


def resolve_residual_dtype(dtype: str, device: torch.device, sharded: bool, asked: bool) -> str:
    """The residual stream's dtype a run trains with. "auto": bf16 on CUDA (bf16 autocast), float32 elsewhere; on
    one device an explicit `dtype` as given (bf16 needs CUDA). Under FSDP on CUDA the parameters compute in bf16
    and every block's input is cast to bf16 (apply_fsdp's MixedPrecisionPolicy), so the stream is bf16 whatever
    the config says; fp32 asked for there (`asked`: given as a flag) is refused rather than ignored."""
    if dtype == "auto":
        return "bf16" if device.type == "cuda" else "fp32"
    if sharded and device.type == "cuda":
        if dtype == "fp32" and asked:
            raise UserError("under FSDP the model computes with bf16 parameters and casts every block's input to bf16, "
                            "so the residual stream is bf16: drop train.residual_dtype=fp32")
        return "bf16"
    if dtype == "bf16" and device.type != "cuda":
        raise UserError(f"train.residual_dtype bf16 needs bf16 autocast, which training uses on CUDA GPUs only (device: {device})")
    return dtype


def apply_activation_checkpointing(model: Transformer) -> None:
    """Recompute each block's activations in the backward pass instead of storing them."""
    for i, block in enumerate(model.layers):
        model.layers[i] = checkpoint_wrapper(block, preserve_rng_state=False)


def check_tune_kernels(device: torch.device) -> None:
    if device.type != "cuda":
        raise UserError(f"train.tune_kernels tunes Triton kernels, which run on CUDA GPUs only (device: {device})")


def compile_model(model: Transformer, mode: str = "default", tune_kernels: bool = False) -> None:
    # torch.compile takes a mode or inductor options, not both: a tuned run passes the mode's own options too.
    how = {"options": torch._inductor.list_mode_options(mode) | TUNED_KERNELS} if tune_kernels else {"mode": mode}
    # Tracing a block on a GPU runs F.rms_norm on fake tensors: the bf16 residual stream meets the float32 norm
    # weight, and ATen warns that its own fused norm kernel cannot run. Compiled, inductor writes the norm as a
    # Triton kernel of its own, so the warning says nothing true about the run.
    warnings.filterwarnings("ignore", message="Mismatch dtype between input and weight", category=UserWarning)
    for block in model.layers:
        block.compile(fullgraph=True, **how)
    model.output.compile(fullgraph=True, **how)

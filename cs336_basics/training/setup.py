"""The order of operations that turns a model config into a model ready for the Trainer, in one place."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from cs336_basics.errors import UserError
from cs336_basics.model.transformer import ModelConfig, Transformer
from cs336_basics.precision.fp8 import ConversionReport, check_fp8_device, convert_model_to_fp8, linear_shapes
from cs336_basics.precision.fp8_cast import KERNEL_CASTS, resolve_kernel_casts


@dataclass(frozen=True)
class Fp8Options:
    recipe: str = "tensorwise"
    filter: str = "all"  # "all" or "auto" (measured per layer shape on the GPU)
    emulate: bool = False
    fsdp_all_gather: bool = False  # several GPUs, tensorwise: FSDP2 all-gathers the weights in fp8
    head: bool = True  # the output head + loss in float8 (precision/fp8_head.py); False keeps it in bf16
    # each SwiGLU block as one function with its SwiGLU and fp8 casts as Triton kernels (swiglu_fp8.py); it fuses
    # the delayed recipe's layers. None: on with the delayed recipe, off otherwise
    fused_swiglu: bool | None = None
    # delayed recipe: which casts go through our kernel (fp8_cast.py) instead of inductor's code fused into their
    # producers: "none", "inputs", "grads" (output gradients), "all", or "auto": all with the delayed recipe, none
    # otherwise (--fp8_kernel_casts; bench suffixes -castnone, -castinputs, -castgrads, -castall)
    kernel_casts: str = "auto"
    # the float8 head's logit gradient (softmax - onehot in e5m2, both layouts) by our Triton kernel
    # (head_grad_fp8.py) instead of inductor's code; experimental (bench suffix -headkernel)
    head_kernel: bool = False
    # the delayed layers' forward products with cuBLAS's fast accumulation, as TorchAO's Float8Linear does
    # (gemm_config_output); the gradients' products keep the promoted accumulation. None: on with the delayed
    # recipe (measured faster at the seed size, the same losses: benchmarks/NOTES.md 68), off otherwise (bench
    # suffixes -fastacc, -nofastacc)
    fast_accum: bool | None = None
    # blocks (indices into model.layers; negative: from the end) whose linear layers stay in bf16, as some fp8
    # recipes keep the first and last blocks (--fp8_bf16_blocks; experimental, benchmarks/NOTES.md 78)
    bf16_blocks: tuple[int, ...] = ()
    # the fused SwiGLU's w1 and w3 as one float8 product each way, under one weight scale and one output-gradient
    # scale (--fp8_merge_w13); None: on wherever the fused SwiGLU runs (measured 1.0-1.4% faster, NOTES 91-92)
    merge_w13: bool | None = None


def check_fused_swiglu(fused_swiglu: bool | None, recipe: str) -> None:
    """The fused SwiGLU is made of the delayed recipe's layers: asking for it with another recipe is an error."""
    if fused_swiglu and recipe != "delayed":
        raise UserError(f"--fp8_fused_swiglu fuses the delayed recipe's layers, not {recipe}'s: drop it or use "
                        "--fp8_recipe delayed")


def check_merge_w13(merge_w13: bool | None, fused_swiglu: bool | None, recipe: str) -> None:
    """w1 | w3 as one product is a way of running the fused SwiGLU: asked for by name without it, an error."""
    if merge_w13 and (recipe != "delayed" or fused_swiglu is False):
        raise UserError("--fp8_merge_w13 runs the fused SwiGLU's w1 and w3 as one product: it needs --fp8_recipe "
                        "delayed (the default on one GPU) without --no-fp8_fused_swiglu")


def check_delayed_only(kernel_casts: str, fast_accum: bool | None, recipe: str) -> None:
    """Our cast kernel (kernel_casts, resolved) and fast accumulation set the delayed recipe's layers: asking for
    them with another recipe is an error (checked by build_model, and by the CLI before the data is prepared)."""
    if recipe == "delayed":
        return
    if kernel_casts != "none":
        raise UserError(f"--fp8_kernel_casts {kernel_casts} casts the delayed recipe's layers: use --fp8_recipe delayed")
    if fast_accum:
        raise UserError("--fp8_fast_accum sets the delayed recipe's layers (TorchAO's recipes already use it in their "
                        "forward): use --fp8_recipe delayed")


def resolve_bf16_blocks(blocks: tuple[int, ...], n_layers: int) -> frozenset[int]:
    """--fp8_bf16_blocks as block indices 0..n_layers-1 (-1 is the last block); out of range: an error."""
    wrong = [b for b in blocks if not -n_layers <= b < n_layers]
    if wrong:
        raise UserError(f"--fp8_bf16_blocks {','.join(map(str, wrong))}: the model has {n_layers} blocks, numbered "
                        f"0 to {n_layers - 1} (or -1 for the last)")
    return frozenset(b % n_layers for b in blocks)


def build_model(cfg: ModelConfig, device: torch.device, fp8: Fp8Options | None = None,
                micro_batch_tokens: int = 0, log=print) -> tuple[Transformer, ConversionReport | None]:
    """1. build the plain model with fp32 weights (the optimizer's master copy; compute runs in bf16 under
          autocast, which TorchAO float8 also expects, so the weights are never cast to bf16 by hand);
    2. move it to the device;
    3. with fp8: swap the eligible nn.Linear layers for TorchAO Float8Linear (or our delayed-scaling layer),
       the output head + loss for our float8 one (fp8.head), and, with the delayed recipe, each SwiGLU block's
       three layers for one function running SwiGLU and its casts as Triton kernels (fp8.fused_swiglu), whose
       kernels are checked at the run's shape (micro_batch_tokens x SwiGLU width) against their references;
    4. then hand it to the Trainer, which detects the Float8 modules, applies activation checkpointing
       and compiles, in that order."""
    model = Transformer(cfg)
    model.to(device)
    if fp8 is None:
        return model, None
    check_fp8_device(device, fp8.emulate)
    if fp8.kernel_casts not in ("auto", *KERNEL_CASTS):
        raise UserError(f"kernel casts {fp8.kernel_casts!r}: expected auto or one of {', '.join(KERNEL_CASTS)}")
    kernel_casts = resolve_kernel_casts(fp8.kernel_casts, fp8.recipe)
    check_delayed_only(kernel_casts, fp8.fast_accum, fp8.recipe)
    fast_accum = fp8.recipe == "delayed" if fp8.fast_accum is None else fp8.fast_accum
    check_fused_swiglu(fp8.fused_swiglu, fp8.recipe)
    check_merge_w13(fp8.merge_w13, fp8.fused_swiglu, fp8.recipe)
    speedups = None
    if fp8.filter == "auto":
        if fp8.recipe == "delayed":
            raise UserError("--fp8_filter auto times TorchAO's layers; with --fp8_recipe delayed use --fp8_filter all")
        if fp8.emulate or device.type != "cuda":
            raise UserError("--fp8_filter auto times each layer shape on the GPU; with --fp8_emulate use --fp8_filter all")
        from cs336_basics.perf.layer_bench import measure_fp8_speedups

        shapes = linear_shapes(model)
        log(f"--fp8_filter auto: timing bf16 vs fp8 forward+backward for {len(shapes)} layer shapes at "
            f"{micro_batch_tokens} tokens ...")
        speedups = measure_fp8_speedups(shapes, micro_batch_tokens, fp8.recipe, device)
        for (k, n), s in speedups.items():
            log(f"  Linear({k}, {n}): fp8 is {s:.2f}x bf16")
    report = convert_model_to_fp8(model, fp8.recipe, fp8.emulate, speedups, fp8.fsdp_all_gather, fp8.head,
                                  resolve_bf16_blocks(fp8.bf16_blocks, cfg.n_layers))
    from cs336_basics.precision.fp8_delayed import Float8DelayedLinear

    delayed = [m for m in model.modules() if isinstance(m, Float8DelayedLinear)]  # none with TorchAO's recipes
    for module in delayed:
        module.kernel_casts, module.fast_accum = kernel_casts, fast_accum
    report.kernel_casts, report.fast_accum = kernel_casts, fast_accum
    if kernel_casts != "none" and micro_batch_tokens:
        check_kernel_casts(delayed, micro_batch_tokens, device, log)
    if fp8.fast_accum and fp8.emulate:  # asked for by name: say it is moot here
        log("--fp8_fast_accum: emulated float8 products compute in float32, so it changes nothing in this run; "
            "it applies to a GPU's float8 tensor cores")
    if fp8.head_kernel:
        from cs336_basics.precision.fp8_head import Float8OutputHead

        heads = [m for m in model.modules() if isinstance(m, Float8OutputHead)]
        if not heads:
            raise UserError("the head kernel computes the float8 head's gradient, and this model's head is not in "
                            "float8 (--no-fp8_head, or a vocabulary it cannot take: see the conversion summary)")
        heads[0].kernel = report.head_kernel = True
        if micro_batch_tokens:
            check_head_kernel(micro_batch_tokens, cfg.vocab_size, device, log)
    if fp8.fused_swiglu is not False and fp8.recipe == "delayed":
        from cs336_basics.precision.swiglu_fp8 import fuse_float8_swiglu

        merge_w13 = fp8.merge_w13 is not False
        report.fused_swiglu = fuse_float8_swiglu(model, merge_w13)
        report.merge_w13 = merge_w13 and report.fused_swiglu > 0
        if report.fused_swiglu and micro_batch_tokens:
            report.kernels_checked = check_fused_swiglu_kernels(micro_batch_tokens, cfg.intermediate_size, device, log,
                                                                report.merge_w13)
    return model, report


def _refuse_if_wrong(kernel: str, problems: list[str], way_around: str, where: str = "") -> None:
    """A kernel's run-time check before training: what it found wrong refuses the run, with the way around it
    (a wrong kernel is never trained with)."""
    if problems:
        raise UserError(f"{kernel} computed wrong results on this machine{where} ({'; '.join(problems)}): "
                        f"{way_around}, and report it")


def check_head_kernel(M: int, V: int, device: torch.device, log=print) -> None:
    """The float8 head's logit-gradient kernel checked at this run's shape before it trains; a wrong one refused."""
    from cs336_basics.precision.head_grad_fp8 import check_head_grad

    _refuse_if_wrong("our fp8 head-gradient kernel", check_head_grad(M, V, device), "run without it")
    log(f"fp8 head-gradient kernel checked at {M} tokens x {V}: both layouts as the reference's")


def check_kernel_casts(layers: list, M: int, device: torch.device, log=print) -> None:
    """Our cast kernel checked at every shape these delayed layers will cast (their inputs in e4m3, their output
    gradients in e5m2, as their kernel_casts choose) before the run trains: a wrong kernel is refused."""
    from cs336_basics.precision.fp8_cast import check_cast

    shapes = sorted({(m.in_features, False) for m in layers if m.kernel_cast_flags[0]}
                    | {(m.out_features, True) for m in layers if m.kernel_cast_flags[1]})
    _refuse_if_wrong("our fp8 cast kernel", [p for n, e5m2 in shapes for p in check_cast(M, n, e5m2, device)],
                    "run without kernel casts")
    widths = ", ".join(f"{n} ({'e5m2' if e5m2 else 'e4m3'})" for n, e5m2 in shapes)
    log(f"fp8 cast kernel checked at {M} tokens x {widths}: both layouts and amaxes as the reference's")


def check_fused_swiglu_kernels(M: int, N: int, device: torch.device, log=print, merged: bool = False) -> str:
    """The fused SwiGLU's kernels checked at this run's shape before it trains (swiglu_fp8.check_kernels; merged:
    in the layout of w1 and w3 as one product too): a wrong kernel is refused with the way around it, never
    trained with. Returns the shape checked."""
    from cs336_basics.precision.swiglu_fp8 import check_kernels

    _refuse_if_wrong("the fused SwiGLU's Triton kernels", check_kernels(M, N, device, merged=merged),
                     # merged: both layouts were checked, so either may be the wrong one
                     "train with --no-fp8_merge_w13 (or --no-fp8_fused_swiglu)" if merged
                     else "train with --no-fp8_fused_swiglu",
                     where=f" at {M} x {N}")
    log(f"fused SwiGLU kernels checked at {M} tokens x {N}: both layouts and amaxes as their references")
    return f"{M} tokens x {N}"

"""TorchAO float8 training: which nn.Linear layers to convert, the conversion itself, and what it reports.

TorchAO converts the blocks' layers; the output head is not a TorchAO layer: with `head=True` (the default
of training runs) it runs with its loss in float8 through our own `fp8_head.Float8OutputHead` (an exact
static scale for the logit gradient), otherwise it stays in bf16. Layers whose dimensions are not multiples
of 16 cannot use the fp8 matrix units, and with `fp8.filter = "auto"` layers whose measured fp8
forward+backward is not faster than bf16 are kept too.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field

import torch
import torch.nn as nn

from cs336_basics.errors import UserError
from cs336_basics.perf.hardware import supports_fp8

from cs336_basics.config import TORCHAO_RECIPES

RECIPES = (*TORCHAO_RECIPES, "delayed")  # delayed: our own layer (fp8_delayed.py), not a TorchAO recipe
HEAD_FQN = "output.proj"

# torchao logs a warning at import for each optional CUDA extension it cannot load (always, on CPU), and
# torch warns that torchao registers an Enum as a pytree constant: neither is actionable for a user.
logging.getLogger("torchao").setLevel(logging.ERROR)
logging.getLogger("torch.utils._pytree").setLevel(logging.ERROR)

LayerShape = tuple[int, int]  # (in_features, out_features)


@dataclass
class ConversionReport:
    converted: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)  # fqn -> reason
    fp8_head: bool = False  # the output head + loss run in float8 (fp8_head.py), not TorchAO
    layer: str = "Float8Linear"  # what the converted layers became: TorchAO's, or our Float8DelayedLinear
    fused_swiglu: int = 0  # SwiGLU blocks whose three layers run as one function (swiglu_fp8.py)
    kernel_casts: str = "none"  # which delayed-layer casts our Triton kernel does (fp8_cast.py)
    fast_accum: bool = False  # the delayed layers' forward products with cuBLAS's fast accumulation
    merge_w13: bool = False  # the fused SwiGLUs run w1 and w3 as one product (fp8.merge_w13)
    kernels_checked: str = ""  # where the fused SwiGLU's kernels were checked before training ("16384 tokens x 3584")
    fsdp_all_gather: bool = False  # FSDP all-gathers the layers' weights in float8 (fp8_fsdp.py), not bf16

    @property
    def total(self) -> int:
        return len(self.converted) + len(self.skipped) + self.fp8_head

    def summary(self) -> str:
        lines = [f"FP8: converted {len(self.converted)} of {self.total} linear layers to {self.layer}"]
        if self.fp8_head:
            lines.append(f"  {HEAD_FQN} and its cross-entropy: float8 (e4m3 forward, e5m2 logit gradient, static scale)")
        if self.fused_swiglu:
            lines.append(f"  {self.fused_swiglu} SwiGLU blocks: one function each, SwiGLU and its fp8 casts in one pass "
                         "(Triton kernels on a GPU)")
        if self.merge_w13:
            lines.append("  w1 and w3 of each SwiGLU block: one float8 product each way, one weight scale and one "
                         "gradient scale for both")
        if self.kernel_casts != "none":
            casts = {"inputs": "the layers' inputs", "grads": "their output gradients", "all": "inputs and output gradients"}
            lines.append(f"  fp8 casts of {casts[self.kernel_casts]}: our Triton kernel, both layouts in one pass "
                         f"(fp8.kernel_casts = {self.kernel_casts})")
        if self.fast_accum:
            lines.append("  the layers' forward products: cuBLAS's fast accumulation on a GPU, as TorchAO's")
        if self.fsdp_all_gather:
            lines.append("  weights all-gathered by FSDP in float8, each shard cast with the whole weight's scale")
        reasons: dict[str, list[str]] = {}
        for fqn, reason in self.skipped.items():
            reasons.setdefault(reason, []).append(fqn)
        for reason, fqns in reasons.items():
            shown = ", ".join(fqns[:4]) + (f" and {len(fqns) - 4} more" if len(fqns) > 4 else "")
            lines.append(f"  kept in bf16 ({reason}): {shown}")
        return "\n".join(lines)


def float8_config(recipe: str, emulate: bool, fsdp_all_gather: bool = False):
    """TorchAO's recipe; with fsdp_all_gather (tensorwise only) FSDP2 all-gathers weights already in fp8."""
    from torchao.float8 import Float8LinearConfig

    if recipe not in TORCHAO_RECIPES:
        raise UserError(f"--fp8_recipe {recipe!r} is not one of TorchAO's recipes: {', '.join(TORCHAO_RECIPES)}")
    config = dataclasses.replace(Float8LinearConfig.from_recipe_name(recipe), emulate=emulate)
    if fsdp_all_gather and recipe == "tensorwise":
        config = dataclasses.replace(config, enable_fsdp_float8_all_gather=True)
    return config


def check_fp8_device(device: torch.device, emulate: bool) -> None:
    if emulate or supports_fp8(device):
        return
    if device.type == "cuda":
        cap = ".".join(map(str, torch.cuda.get_device_capability(device)))
        where = f"{torch.cuda.get_device_name(device)} (compute capability {cap})"
    else:
        where = f"the {device.type} device"
    raise UserError(
        f"--use_fp8 needs a GPU with float8 tensor cores (compute capability >= 8.9: Ada, Hopper, Blackwell); "
        f"{where} has none. Drop --use_fp8, or add --set fp8.emulate=true to test the numerics (slow)"
    )


def skip_reason(fqn: str, linear: nn.Linear, fp8_speedup: dict[LayerShape, float] | None,
                fp8_head: bool = False) -> str | None:
    """Why a linear layer stays in bf16, or None to convert it (the head: to our float8 head, when
    `fp8_head`). `fp8_speedup` (auto filter) maps a block layer's shape to its measured bf16-time / fp8-time
    for forward+backward."""
    if fqn == HEAD_FQN and not fp8_head:
        return "output head"
    if linear.in_features % 16 or linear.out_features % 16:
        return "dimension not divisible by 16"
    if fp8_speedup is not None and fqn != HEAD_FQN:
        speedup = fp8_speedup[(linear.in_features, linear.out_features)]
        if speedup <= 1.0:
            return "measured slower in fp8"
    return None


def convert_model_to_fp8(
    model: nn.Module, recipe: str = "tensorwise", emulate: bool = False,
    fp8_speedup: dict[LayerShape, float] | None = None, fsdp_all_gather: bool = False, head: bool = False,
) -> ConversionReport:
    """Swap the eligible nn.Linear layers of `model` for TorchAO Float8Linear (recipe "delayed": for our
    Float8DelayedLinear), in place; with `head`, the output head (projection + loss) for the float8 one of
    fp8_head.py when its dimensions allow."""
    from torchao.float8 import convert_to_float8_training

    from cs336_basics.precision.fp8_delayed import convert_to_delayed_float8
    from cs336_basics.precision.fp8_head import Float8OutputHead

    if recipe not in RECIPES:
        raise UserError(f"--fp8_recipe {recipe!r} is not one of {', '.join(RECIPES)}")

    report = ConversionReport(layer="Float8DelayedLinear" if recipe == "delayed" else "Float8Linear")
    for fqn, module in model.named_modules():
        if type(module) is nn.Linear:
            reason = skip_reason(fqn, module, fp8_speedup, head)
            if reason:
                report.skipped[fqn] = reason
            elif fqn == HEAD_FQN:
                report.fp8_head = True
            else:
                report.converted.append(fqn)
    convert_set = set(report.converted)
    if recipe == "delayed":
        convert_to_delayed_float8(model, convert_set, emulate)
    else:
        convert_to_float8_training(
            model, config=float8_config(recipe, emulate, fsdp_all_gather), module_filter_fn=lambda mod, fqn: fqn in convert_set
        )
    if report.fp8_head:
        model.output = Float8OutputHead(model.output, emulate)
    return report


def is_float8_model(model: nn.Module) -> bool:
    from torchao.float8.float8_linear import Float8Linear

    from cs336_basics.precision.fp8_delayed import Float8DelayedLinear

    return any(isinstance(m, (Float8Linear, Float8DelayedLinear)) for m in model.modules())


def has_fp8_head(model: nn.Module) -> bool:
    from cs336_basics.precision.fp8_head import Float8OutputHead

    return isinstance(getattr(model, "output", None), Float8OutputHead)


def uses_fp8_all_gather(model: nn.Module) -> bool:
    from torchao.float8.float8_linear import Float8Linear

    return any(isinstance(m, Float8Linear) and m.config.enable_fsdp_float8_all_gather for m in model.modules())


def precompute_float8_dynamic_scale_for_fsdp(model: nn.Module) -> None:
    """After each optimizer step, when weights are all-gathered in fp8: all the weights' scales in one go."""
    from torchao.float8 import precompute_float8_dynamic_scale_for_fsdp as precompute

    precompute(model)


def linear_shapes(model: nn.Module) -> list[LayerShape]:
    """Distinct (in, out) shapes of the plain nn.Linear layers that fp8 could convert (the head excluded)."""
    shapes = {(m.in_features, m.out_features) for fqn, m in model.named_modules() if type(m) is nn.Linear and fqn != HEAD_FQN}
    return sorted(shapes)

"""bf16 weights cast once per optimizer step (train.bf16_weight_cache): the bf16 counterpart of the delayed fp8
recipe's weight cache (fp8_delayed.py), so that the two precisions are compared with the same care.

Under bf16 autocast every nn.Linear casts its float32 weight to bf16 in each forward, so a step of A micro-batches
casts every weight A times although the weights change only at the optimizer step: ~6 bytes a weight each time.
`cache_bf16_weights` swaps a model's nn.Linear layers for `CachedCastLinear`, which reads a bf16 buffer that
`Bf16WeightCache.cast_weights()` writes once at the start of each step; the products are autocast's own (bf16
inputs, bf16 output), so on a CPU the numbers are those of the plain layers. On a GPU the float32 weight's
gradient comes out of cuBLAS in float32 (`torch.mm(..., out_dtype=torch.float32)`, as the fp8 layers' weight
gradients do) instead of being rounded to bf16 by the product and converted by a kernel of its own: measured
faster at the seed size and at 1B (see docs/log.md), and no bf16 rounding of the gradient. Parameter names and
state-dict keys are unchanged; the buffers are not saved (they follow from the weights).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


class _CachedCastLinear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, weight_cast: torch.Tensor) -> torch.Tensor:
        """y = x W^T with W's cast (weight_cast, in the compute dtype) in place of casting weight here; weight
        only receives the gradient."""
        x_cast = x.to(weight_cast.dtype)
        ctx.save_for_backward(x_cast, weight_cast)
        ctx.x_dtype, ctx.w_dtype = x.dtype, weight.dtype
        return F.linear(x_cast, weight_cast)

    @staticmethod
    def backward(ctx, grad_y: torch.Tensor):
        x_cast, weight_cast = ctx.saved_tensors
        g = grad_y.to(weight_cast.dtype)
        grad_x = (g @ weight_cast).to(ctx.x_dtype)
        grad_w = weight_gradient(g.reshape(-1, g.shape[-1]), x_cast.reshape(-1, x_cast.shape[-1]), ctx.w_dtype,
                                 float32_out=g.is_cuda)
        return grad_x, grad_w, None


def weight_gradient(g: torch.Tensor, x: torch.Tensor, dtype: torch.dtype, float32_out: bool) -> torch.Tensor:
    """g^T x ((N, M) @ (M, K), bf16 operands) as a `dtype` weight's gradient. float32_out (for a float32 weight):
    accumulated and written in float32, never rounded to bf16 (cuBLAS on CUDA; elsewhere the same product of the
    operands made float32, the reference the GPU check compares with); else autocast's: the product in bf16,
    then converted."""
    if not (float32_out and dtype == torch.float32):
        return (g.t() @ x).to(dtype)
    if g.is_cuda:
        return torch.mm(g.t(), x, out_dtype=torch.float32)
    return g.t().float() @ x.float()


class CachedCastLinear(nn.Module):
    """An nn.Linear (no bias) whose forward reads its weight's bf16 cast from a buffer (`weight_cast`) that
    Bf16WeightCache fills once per optimizer step. It holds the original `weight` Parameter."""

    def __init__(self, linear: nn.Linear, dtype: torch.dtype = torch.bfloat16) -> None:
        super().__init__()
        if linear.bias is not None:
            raise ValueError("CachedCastLinear takes layers without bias")
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.weight = linear.weight
        self.register_buffer("weight_cast", linear.weight.detach().to(dtype), persistent=False)
        torch._dynamo.mark_static_address(self.weight_cast)  # CUDA graphs replay reading it

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _CachedCastLinear.apply(x, self.weight, self.weight_cast)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, weight cast once per step"


def cache_bf16_weights(model: nn.Module, dtype: torch.dtype = torch.bfloat16) -> int:
    """Swap every nn.Linear of `model` for a CachedCastLinear, in place; returns how many."""
    swaps = [(parent, name, child) for parent in model.modules() for name, child in parent.named_children()
             if type(child) is nn.Linear]
    for parent, name, child in swaps:
        setattr(parent, name, CachedCastLinear(child, dtype))
    return len(swaps)


class Bf16WeightCache:
    """The CachedCastLinear layers of a model, their casts refreshed together."""

    def __init__(self, model: nn.Module) -> None:
        self.layers = [m for m in model.modules() if isinstance(m, CachedCastLinear)]
        if not self.layers:
            raise ValueError("the model has no CachedCastLinear layers")
        self._casts = [m.weight_cast for m in self.layers]
        self._weights = [m.weight for m in self.layers]

    @torch.no_grad()
    def cast_weights(self) -> None:
        """At the start of an optimizer step: every layer's weight cast for all of the step's micro-batches."""
        torch._foreach_copy_(self._casts, self._weights)

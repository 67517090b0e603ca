"""A SwiGLU block's three delayed-scaling float8 layers as one function, with SwiGLU's forward and backward
and their float8 outputs in one pass each (issue 5, benchmarks/NOTES.md 38-40). The delayed recipe's default
(`--no-fp8_fused_swiglu`: the three layers one by one).

In an fp8 step the gradients of w1 x and w3 x leave SwiGLU's backward only to be cast to e5m2 twice each: once
row-major (for the input gradient's matmul) and once transposed (for the weight gradient's, which cuBLAS wants
column-major on Hopper), with their amax kept for the delayed scales. Inductor fuses all of it into one
row-reduction kernel (the amax) whose transposed stores are strided: at the seed size it moves ~0.6 GB in
296 us a layer, ~2 TB/s (call 19). `swiglu_backward_fp8` does the same in 2-D tiles: each tile is loaded once,
stored row-major and transposed (the transpose happens in registers and shared memory, so both stores are
coalesced), and its amax joins the global one through an atomic max: no reduction pass shapes the kernel.

`swiglu_forward_fp8` does the same for the forward: g = silu(h1) * h3 in e4m3 for w2's matmul, and its
transposed copy, which w2's weight gradient needs in the backward (saved instead of the row-major one, so the
backward makes no copy of its own), and its amax.

Measured on an H200 at the seed shape (calls 32-33): forward 103 us against inductor's 206, backward 213 us
against 222 (bf16's SwiGLU backward alone: 140); the seed step 1.137x -> 1.215x bf16, 1B 1.282x -> 1.332x.

The `_reference` functions are the same computations in PyTorch ops as inductor compiles the model's graph
(fp32 throughout, each result rounded once to the bf16 it is in the graph, then scaled and cast; the amax as
fp8_delayed takes it): the CPU path, and what the Triton kernels (fp8_triton.py) are checked against on
the GPU.
"""

from __future__ import annotations

import functools

import torch
import torch.nn as nn
import torch.nn.functional as F

from cs336_basics.precision.fp8_cast import Config, amax, check_2d, compare_fp8, launch
from cs336_basics.precision.fp8_delayed import Float8DelayedLinear, WeightCast, cast_grad, cast_input, weight_fp8
from cs336_basics.precision.fp8_head import E4M3, E4M3_MAX, E5M2, E5M2_MAX, cast_to, column_major, scaled_mm

Outputs = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]


def swiglu_backward(dg: torch.Tensor, h1: torch.Tensor, h3: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Gradients of g = silu(h1) * h3 with respect to h1 and h3, in fp32, rounded to the inputs' dtype."""
    a, b, d = h1.float(), h3.float(), dg.float()
    sig = torch.sigmoid(a)
    dh1 = d * b * sig * (1 + a * (1 - sig))
    dh3 = d * a * sig
    return dh1.to(dg.dtype), dh3.to(dg.dtype)


def swiglu_backward_fp8_reference(dg: torch.Tensor, h1: torch.Tensor, h3: torch.Tensor, scale1: torch.Tensor,
                                  scale3: torch.Tensor) -> Outputs:
    """(dh1 e5m2 (M, N), dh1 e5m2 transposed (N, M), the same for dh3, amax of [dh1, dh3] (2,) fp32), each
    gradient scaled by its scale and saturated at e5m2's largest value."""
    outs: list[torch.Tensor] = []
    amaxes = []
    for grad, scale in zip(swiglu_backward(dg, h1, h3), (scale1, scale3)):
        g8 = cast_to(grad, scale, E5M2, E5M2_MAX)
        outs += [g8, g8.t().contiguous()]
        amaxes.append(amax(grad))
    return outs[0], outs[1], outs[2], outs[3], torch.stack(amaxes)


def swiglu_forward_fp8_reference(h1: torch.Tensor, h3: torch.Tensor, scale: torch.Tensor
                                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(g = silu(h1) * h3 in e4m3 (M, N), the same transposed (N, M), amax of g (0-dim fp32)), g scaled by
    `scale` and saturated at e4m3's largest value."""
    g = (F.silu(h1.float()) * h3.float()).to(h1.dtype)
    g8 = cast_to(g, scale, E4M3, E4M3_MAX)
    return g8, g8.t().contiguous(), amax(g)


def swiglu_forward_fp8(h1: torch.Tensor, h3: torch.Tensor, scale: torch.Tensor, config: Config | None = None
                       ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """As swiglu_forward_fp8_reference, one Triton kernel on CUDA tensors (the reference elsewhere); `config`
    picks the tile (else the autotuner does)."""
    if h1.device.type != "cuda":
        return swiglu_forward_fp8_reference(h1, h3, scale)
    check_2d(h1, h3)
    M, N = h1.shape
    g8, g8t = torch.empty(M, N, dtype=E4M3, device=h1.device), torch.empty(N, M, dtype=E4M3, device=h1.device)
    amax_g = torch.zeros(1, dtype=torch.float32, device=h1.device)
    launch("swiglu_forward", config, M, N, h1, h3, scale.float().reshape(1), g8, g8t, amax_g, FP8_MAX=E4M3_MAX)
    return g8, g8t, amax_g.reshape(())


def swiglu_backward_fp8(dg: torch.Tensor, h1: torch.Tensor, h3: torch.Tensor, scale1: torch.Tensor,
                        scale3: torch.Tensor, config: Config | None = None) -> Outputs:
    """As swiglu_backward_fp8_reference, one Triton kernel on CUDA tensors (the reference elsewhere); `config`
    picks the tile (else the autotuner does)."""
    if dg.device.type != "cuda":
        return swiglu_backward_fp8_reference(dg, h1, h3, scale1, scale3)
    check_2d(dg, h1, h3)
    M, N = dg.shape
    d1, d3 = torch.empty(M, N, dtype=E5M2, device=dg.device), torch.empty(M, N, dtype=E5M2, device=dg.device)
    d1t, d3t = torch.empty(N, M, dtype=E5M2, device=dg.device), torch.empty(N, M, dtype=E5M2, device=dg.device)
    amax = torch.zeros(2, dtype=torch.float32, device=dg.device)
    scales = torch.stack([scale1.float().reshape(()), scale3.float().reshape(())])
    launch("swiglu_backward", config, M, N, dg, h1, h3, scales, d1, d1t, d3, d3t, amax, FP8_MAX=E5M2_MAX)
    return d1, d1t, d3, d3t, amax


def random_inputs(M: int, N: int, device: torch.device | str, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(dg, h1, h3) (M, N) bf16 of a gradient's and activations' magnitudes: the kernels' test inputs, here and
    in benchmarks/kernel_swiglu_fp8.py."""
    g = torch.Generator(device=device).manual_seed(seed)
    return tuple((torch.randn(M, N, device=device, generator=g) * s).bfloat16() for s in (1e-3, 2.0, 2.0))


def check_kernels(M: int, N: int, device: torch.device, seed: int = 0) -> list[str]:
    """Both kernels as training runs them (the autotuner's tiles) at the training shape (M tokens, SwiGLU width
    N), on seeded random inputs of an activation's and a gradient's magnitudes, against the references
    (fp8_cast.compare_fp8). Returns what failed (nothing: right). The device's Triton has miscompiled a
    transposed copy at one shape and not at others (NOTES 42), so a run checks its own shape before it trains.
    On a CPU both sides are the references."""
    dg, h1, h3 = random_inputs(M, N, device, seed)
    one = torch.ones((), device=device)
    scale = E4M3_MAX / swiglu_forward_fp8_reference(h1, h3, one)[2]
    scales = (E5M2_MAX / swiglu_backward_fp8_reference(dg, h1, h3, one, one)[4]).unbind()
    return (compare_fp8("forward", swiglu_forward_fp8(h1, h3, scale), swiglu_forward_fp8_reference(h1, h3, scale))
            + compare_fp8("backward", swiglu_backward_fp8(dg, h1, h3, *scales),
                          swiglu_backward_fp8_reference(dg, h1, h3, *scales)))


# An opaque op for torch.compile and CUDA graphs: one node in the graph, the Triton kernel (or on CPU the
# reference) inside, outputs allocated by the op.
@torch.library.custom_op("cs336::swiglu_backward_fp8", mutates_args=())
def _swiglu_backward_fp8_op(dg: torch.Tensor, h1: torch.Tensor, h3: torch.Tensor, scales: torch.Tensor
                            ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    return swiglu_backward_fp8(dg, h1, h3, scales[0], scales[1])


@torch.library.custom_op("cs336::swiglu_forward_fp8", mutates_args=())
def _swiglu_forward_fp8_op(h1: torch.Tensor, h3: torch.Tensor, scale: torch.Tensor
                           ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return swiglu_forward_fp8(h1, h3, scale)


@_swiglu_forward_fp8_op.register_fake
def _(h1: torch.Tensor, h3: torch.Tensor, scale: torch.Tensor):
    M, N = h1.shape
    return h1.new_empty(M, N, dtype=E4M3), h1.new_empty(N, M, dtype=E4M3), h1.new_empty((), dtype=torch.float32)


@_swiglu_backward_fp8_op.register_fake
def _(dg: torch.Tensor, h1: torch.Tensor, h3: torch.Tensor, scales: torch.Tensor):
    M, N = dg.shape
    return (dg.new_empty(M, N, dtype=E5M2), dg.new_empty(N, M, dtype=E5M2), dg.new_empty(M, N, dtype=E5M2),
            dg.new_empty(N, M, dtype=E5M2), dg.new_empty(2, dtype=torch.float32))


class _Float8SwiGLU(torch.autograd.Function):
    """w2(silu(w1 x) * w3 x) with the three products in float8 and delayed scales, as three
    Float8DelayedLinear layers compute it, except that SwiGLU's forward and backward with their casts are the
    kernels above instead of what inductor makes of autograd's ops, and that x is cast once for w1 and w3 (their
    input scales come from the same amaxes, so they are equal; w1's is used) and transposed once for their
    weight gradients.

    Every scale is a tensor of its own, never a slice of a stacked one: cuBLAS wants the scales of
    torch._scaled_mm 16-byte aligned, and element 1 or 2 of a float32 vector is not (pytorch/pytorch#159957;
    call 32 failed so)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, w1: torch.Tensor, w3: torch.Tensor, w2: torch.Tensor,
                casts: tuple[WeightCast | None, WeightCast | None, WeightCast | None], x_scale: torch.Tensor,
                g_scale: torch.Tensor, d1_scale: torch.Tensor, d3_scale: torch.Tensor, dy_scale: torch.Tensor,
                sink1: torch.Tensor, sink3: torch.Tensor, sink2: torch.Tensor, emulate: bool, kernel_x: bool,
                kernel_g: bool, fast_accum: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """casts: w1's, w3's and w2's weights cast once this step (all or none), or None to cast them here;
        x_scale: w1's (and w3's) input scale; g_scale: w2's input scale; d1, d3, dy: the scales of the
        gradients of w1's, w3's and w2's outputs; kernel_x, kernel_g: x, and w2's output gradient, cast by our
        kernel (fp8_cast.py) instead of inductor's code; fast_accum: the three forward products with cuBLAS's fast
        accumulation (as Float8DelayedLinear)."""
        out_dtype = torch.get_autocast_dtype(x.device.type) if torch.is_autocast_enabled(x.device.type) else x.dtype
        x2 = x.reshape(-1, x.shape[-1])  # (M, D)
        x8, x8_kept, x_amax = cast_input(x2, x_scale, kernel_x, out_dtype)
        (w1_8, inv_w1, w1_kept), (w3_8, inv_w3, w3_kept), (w2_8, inv_w2, w2_kept) = (
            weight_fp8(cast, w) for cast, w in zip(casts, (w1, w3, w2)))
        h1 = scaled_mm(x8, w1_8.t(), x_scale.reciprocal(), inv_w1, out_dtype, emulate, fast_accum)  # (M, F)
        h3 = scaled_mm(x8, w3_8.t(), x_scale.reciprocal(), inv_w3, out_dtype, emulate, fast_accum)
        g8, g8_t, g_amax = _swiglu_forward_fp8_op(h1, h3, g_scale)  # (M, F), (F, M)
        y = scaled_mm(g8, w2_8.t(), g_scale.reciprocal(), inv_w2, out_dtype, emulate, fast_accum)  # (M, D)
        ctx.save_for_backward(x8_kept, g8_t, h1, h3, w1_kept, w3_kept, w2_kept, inv_w1, inv_w3, inv_w2, x_scale,
                              g_scale, d1_scale, d3_scale, dy_scale)
        ctx.emulate, ctx.kernel_g, ctx.x_shape, ctx.x_dtype, ctx.w_dtype = emulate, kernel_g, x.shape, x.dtype, w1.dtype
        ctx.weights_cached = casts[0] is not None
        amaxes = torch.stack([x_amax, g_amax])
        ctx.mark_non_differentiable(amaxes)
        return y.reshape(*x.shape[:-1], y.shape[-1]), amaxes

    @staticmethod
    def backward(ctx, grad_y: torch.Tensor, _grad_amaxes: torch.Tensor):
        (x8, g8_t, h1, h3, w1_kept, w3_kept, w2_kept, inv_w1, inv_w3, inv_w2, x_scale, g_scale, d1_scale, d3_scale,
         dy_scale) = ctx.saved_tensors
        w1_cols, w3_cols, w2_cols = (w if ctx.weights_cached else column_major(w) for w in (w1_kept, w3_kept, w2_kept))
        mm = functools.partial(scaled_mm, emulate=ctx.emulate)
        d2 = grad_y.reshape(-1, grad_y.shape[-1])  # (M, D)
        d8, d8_t, d_amax = cast_grad(d2, dy_scale, ctx.kernel_g)
        dg = mm(d8, w2_cols, dy_scale.reciprocal(), inv_w2, h1.dtype)  # (M, F)
        grad_w2 = mm(d8_t, g8_t.t(), dy_scale.reciprocal(), g_scale.reciprocal(), ctx.w_dtype)  # (D, M) @ (M, F)
        dh1, dh1_t, dh3, dh3_t, grad_amaxes = _swiglu_backward_fp8_op(dg, h1, h3, torch.stack([d1_scale, d3_scale]))
        grad_x = (mm(dh1, w1_cols, d1_scale.reciprocal(), inv_w1, ctx.x_dtype)
                  + mm(dh3, w3_cols, d3_scale.reciprocal(), inv_w3, ctx.x_dtype))
        x8_columns = column_major(x8)
        grad_w1 = mm(dh1_t, x8_columns, d1_scale.reciprocal(), x_scale.reciprocal(), ctx.w_dtype)  # (F, M) @ (M, D)
        grad_w3 = mm(dh3_t, x8_columns, d3_scale.reciprocal(), x_scale.reciprocal(), ctx.w_dtype)
        return (grad_x.reshape(ctx.x_shape), grad_w1, grad_w3, grad_w2, None, None, None, None, None, None,
                grad_amaxes[0], grad_amaxes[1], d_amax, None, None, None, None)


class Float8DelayedSwiGLU(nn.Module):
    """A FeedForward whose w1, w3, w2 are Float8DelayedLinear, run as one autograd function (above). It holds
    the same three layers, so parameter names, state-dict keys, scale buffers and the DelayedScaling history
    are those of the unfused model. While the scales calibrate it runs the layers one by one."""

    def __init__(self, w1: Float8DelayedLinear, w3: Float8DelayedLinear, w2: Float8DelayedLinear) -> None:
        super().__init__()
        self.w1, self.w3, self.w2 = w1, w3, w2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w1, w3, w2 = self.w1, self.w3, self.w2
        if any(m.calibrating or m.high_precision for m in (w1, w3, w2)):
            return w2(F.silu(w1(x)) * w3(x))
        casts = (w1.weight_cast(), w3.weight_cast(), w2.weight_cast())
        y, amaxes = _Float8SwiGLU.apply(x, w1.weight, w3.weight, w2.weight, casts, w1.x_scale, w2.x_scale,
                                        w1.g_scale, w3.g_scale, w2.g_scale, w1.g_amax_sink, w3.g_amax_sink,
                                        w2.g_amax_sink, w1.emulate, *w1.kernel_cast_flags, w1.fast_accum)
        for m, seen in ((w1, amaxes[0]), (w3, amaxes[0]), (w2, amaxes[1])):
            m.x_amax.copy_(torch.maximum(m.x_amax, seen))
        return y


def fuse_float8_swiglu(model: nn.Module) -> int:
    """Swap every FeedForward whose three layers are Float8DelayedLinear for Float8DelayedSwiGLU, in place;
    returns how many."""
    from cs336_basics.model.transformer import FeedForward

    swapped = 0
    for name, module in list(model.named_modules()):
        if isinstance(module, FeedForward) and all(isinstance(getattr(module, w), Float8DelayedLinear) for w in ("w1", "w3", "w2")):
            parent_name, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent_name), child, Float8DelayedSwiGLU(module.w1, module.w3, module.w2))
            swapped += 1
    return swapped

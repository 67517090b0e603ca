"""A SwiGLU block's three delayed-scaling float8 layers as one function, with SwiGLU's forward and backward
and their float8 outputs in one pass each. The delayed recipe's default (fp8.fused_swiglu = false: the three
layers one by one).

In an fp8 step the gradients of w1 x and w3 x leave SwiGLU's backward only to be cast to e5m2 twice each: once
row-major (for the input gradient's matmul) and once transposed (for the weight gradient's, which cuBLAS wants
column-major on Hopper), with their amax kept for the delayed scales. Inductor fuses all of it into one
row-reduction kernel (the amax) whose transposed stores are strided: at the seed size it measured ~2 TB/s, well
below the GPU's bandwidth. `swiglu_backward_fp8` does the same in 2-D tiles: each tile is loaded once,
stored row-major and transposed (the transpose happens in registers and shared memory, so both stores are
coalesced), and its amax joins the global one through an atomic max: no reduction pass shapes the kernel.

`swiglu_forward_fp8` does the same for the forward: g = silu(h1) * h3 in e4m3 for w2's matmul, and its
transposed copy, which w2's weight gradient needs in the backward (saved instead of the row-major one, so the
backward makes no copy of its own), and its amax.

Measured on an H200 at the seed shape, the forward kernel takes half the time of inductor's code and the
backward slightly less; fused, the float8 step's speed-up over bf16 grew at the seed size and at 1B (see
docs/log.md).

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

from cs336_basics.precision.float8 import E4M3, E4M3_MAX, E5M2, E5M2_MAX, amax, cast_to, column_major, scaled_mm
from cs336_basics.precision.fp8_cast import Config, check_2d, compare_fp8, launch
from cs336_basics.precision.fp8_delayed import (MERGED_CAST, Float8DelayedLinear, WeightCast, cast_buffers, cast_grad,
                                                 cast_input, register_weight_cast, weight_fp8)

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
    picks the tile (else the autotuner does). h1 and h3 may be the halves of one (M, 2N) product (row stride
    2N, see split_halves)."""
    if h1.device.type != "cuda":
        return swiglu_forward_fp8_reference(h1, h3, scale)
    check_2d(h1, h3, rows_may_stride=True)
    M, N = h1.shape
    g8, g8t = torch.empty(M, N, dtype=E4M3, device=h1.device), torch.empty(N, M, dtype=E4M3, device=h1.device)
    amax_g = torch.zeros(1, dtype=torch.float32, device=h1.device)
    launch("swiglu_forward", config, M, N, h1, h3, scale.float().reshape(1), g8, g8t, amax_g, h1.stride(0),
           FP8_MAX=E4M3_MAX)
    return g8, g8t, amax_g.reshape(())


def _backward_kernel(dg: torch.Tensor, h1: torch.Tensor, h3: torch.Tensor, scale1: torch.Tensor,
                     scale3: torch.Tensor, d1: torch.Tensor, d1t: torch.Tensor, d3: torch.Tensor, d3t: torch.Tensor,
                     config: Config | None) -> torch.Tensor:
    """The backward kernel into the given outputs (d1, d3 row-major with a common row stride; d1t, d3t
    contiguous); returns the amaxes (2,)."""
    check_2d(dg)
    check_2d(h1, h3, rows_may_stride=True)
    if h1.shape != dg.shape:
        raise ValueError(f"SwiGLU's gradient {tuple(dg.shape)} and activations {tuple(h1.shape)} differ in shape")
    M, N = dg.shape
    amax = torch.zeros(2, dtype=torch.float32, device=dg.device)
    scales = torch.stack([scale1.float().reshape(()), scale3.float().reshape(())])
    launch("swiglu_backward", config, M, N, dg, h1, h3, scales, d1, d1t, d3, d3t, amax, h1.stride(0), d1.stride(0),
           FP8_MAX=E5M2_MAX)
    return amax


def swiglu_backward_fp8(dg: torch.Tensor, h1: torch.Tensor, h3: torch.Tensor, scale1: torch.Tensor,
                        scale3: torch.Tensor, config: Config | None = None) -> Outputs:
    """As swiglu_backward_fp8_reference, one Triton kernel on CUDA tensors (the reference elsewhere); `config`
    picks the tile (else the autotuner does)."""
    if dg.device.type != "cuda":
        return swiglu_backward_fp8_reference(dg, h1, h3, scale1, scale3)
    M, N = dg.shape
    d1, d3 = torch.empty(M, N, dtype=E5M2, device=dg.device), torch.empty(M, N, dtype=E5M2, device=dg.device)
    d1t, d3t = torch.empty(N, M, dtype=E5M2, device=dg.device), torch.empty(N, M, dtype=E5M2, device=dg.device)
    amax = _backward_kernel(dg, h1, h3, scale1, scale3, d1, d1t, d3, d3t, config)
    return d1, d1t, d3, d3t, amax


def split_halves(h13: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """[h1 | h3] (M, 2N), w1 and w3 run as one product, as its halves (M, N) (views, row stride 2N)."""
    n = h13.shape[1] // 2
    return h13[:, :n], h13[:, n:]


def swiglu_backward_fp8_merged_reference(dg: torch.Tensor, h13: torch.Tensor, scale: torch.Tensor
                                         ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """swiglu_backward_fp8_reference's outputs, both gradients under `scale`, as one (M, 2N) array, its
    transpose (2N, M), and the two amaxes."""
    d1, d1t, d3, d3t, amax = swiglu_backward_fp8_reference(dg, *split_halves(h13), scale, scale)
    return torch.cat([d1, d3], dim=1), torch.cat([d1t, d3t]), amax


def swiglu_backward_fp8_merged(dg: torch.Tensor, h13: torch.Tensor, scale: torch.Tensor, config: Config | None = None
                               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """swiglu_backward_fp8 for w1 and w3 run as one product (fp8.merge_w13): h13 = [h1 | h3] (M, 2N); both
    gradients scaled by the one `scale` (the products take one scale an operand) into [dh1 | dh3] (M, 2N)
    e5m2 and its transpose (2N, M); the amaxes of dh1 and dh3 (2,) as before, for w1's and w3's histories."""
    if dg.device.type != "cuda":
        return swiglu_backward_fp8_merged_reference(dg, h13, scale)
    h1, h3 = split_halves(h13)
    M, N = dg.shape
    d13, d13t = torch.empty(M, 2 * N, dtype=E5M2, device=dg.device), torch.empty(2 * N, M, dtype=E5M2, device=dg.device)
    amax = _backward_kernel(dg, h1, h3, scale, scale, d13[:, :N], d13t[:N], d13[:, N:], d13t[N:], config)
    return d13, d13t, amax


def random_inputs(M: int, N: int, device: torch.device | str, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(dg, h1, h3) (M, N) bf16 of a gradient's and activations' magnitudes: the kernels' test inputs, here and
    in the repository's kernel benchmark."""
    g = torch.Generator(device=device).manual_seed(seed)
    return tuple((torch.randn(M, N, device=device, generator=g) * s).bfloat16() for s in (1e-3, 2.0, 2.0))


def check_kernels(M: int, N: int, device: torch.device, seed: int = 0, merged: bool = False) -> list[str]:
    """Both kernels as training runs them (the autotuner's tiles) at the training shape (M tokens, SwiGLU width
    N), on seeded random inputs of an activation's and a gradient's magnitudes, against the references
    (fp8_cast.compare_fp8). Returns what failed (nothing: right). The GPU's Triton has miscompiled a
    transposed copy at one shape and not at others, so a run checks its own shape before it trains.
    merged: also as they run when w1 and w3 are one product (h1, h3 and the gradients halves of (M, 2N) arrays).
    On a CPU both sides are the references."""
    dg, h1, h3 = random_inputs(M, N, device, seed)
    one = torch.ones((), device=device)
    scale = E4M3_MAX / swiglu_forward_fp8_reference(h1, h3, one)[2]
    scales = (E5M2_MAX / swiglu_backward_fp8_reference(dg, h1, h3, one, one)[4]).unbind()
    problems = (compare_fp8("forward", swiglu_forward_fp8(h1, h3, scale), swiglu_forward_fp8_reference(h1, h3, scale))
                + compare_fp8("backward", swiglu_backward_fp8(dg, h1, h3, *scales),
                              swiglu_backward_fp8_reference(dg, h1, h3, *scales)))
    if merged:
        h13 = torch.cat([h1, h3], dim=1)
        problems += (compare_fp8("forward, w1 | w3 as one", swiglu_forward_fp8(*split_halves(h13), scale),
                                 swiglu_forward_fp8_reference(h1, h3, scale))
                     + compare_fp8("backward, w1 | w3 as one", swiglu_backward_fp8_merged(dg, h13, scales[0]),
                                   swiglu_backward_fp8_merged_reference(dg, h13, scales[0])))
    return problems


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


@torch.library.custom_op("cs336::swiglu_forward_fp8_merged", mutates_args=())
def _swiglu_forward_fp8_merged_op(h13: torch.Tensor, scale: torch.Tensor
                                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return swiglu_forward_fp8(*split_halves(h13), scale)


@torch.library.custom_op("cs336::swiglu_backward_fp8_merged", mutates_args=())
def _swiglu_backward_fp8_merged_op(dg: torch.Tensor, h13: torch.Tensor, scale: torch.Tensor
                                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return swiglu_backward_fp8_merged(dg, h13, scale)


@_swiglu_forward_fp8_op.register_fake
def _(h1: torch.Tensor, h3: torch.Tensor, scale: torch.Tensor):
    M, N = h1.shape
    return h1.new_empty(M, N, dtype=E4M3), h1.new_empty(N, M, dtype=E4M3), h1.new_empty((), dtype=torch.float32)


@_swiglu_forward_fp8_merged_op.register_fake
def _(h13: torch.Tensor, scale: torch.Tensor):
    M, N = h13.shape[0], h13.shape[1] // 2
    return h13.new_empty(M, N, dtype=E4M3), h13.new_empty(N, M, dtype=E4M3), h13.new_empty((), dtype=torch.float32)


@_swiglu_backward_fp8_merged_op.register_fake
def _(dg: torch.Tensor, h13: torch.Tensor, scale: torch.Tensor):
    M, N2 = h13.shape
    return dg.new_empty(M, N2, dtype=E5M2), dg.new_empty(N2, M, dtype=E5M2), dg.new_empty(2, dtype=torch.float32)


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

    merged (training's default; fp8.merge_w13 = false turns it off): w1 and w3 as one product each way, [w1; w3]
    (2F, D) under one weight scale: the forward's N = 2F, the input gradient's one 2F-long sum (no add of two
    (M, D) outputs), 2F rows of weight gradient; their output gradients share one scale, the smaller of w1's and
    w3's (the one for the larger amax), while each layer's history still gets its own amax. Measured about 1 ms
    less a micro-batch at the seed size and at 1B, and faster training steps (see docs/log.md).

    Every scale is a tensor of its own, never a slice of a stacked one: cuBLAS wants the scales of
    torch._scaled_mm 16-byte aligned, and element 1 or 2 of a float32 vector is not (pytorch/pytorch#159957)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, w1: torch.Tensor, w3: torch.Tensor, w2: torch.Tensor,
                casts: tuple[WeightCast | None, WeightCast | None, WeightCast | None], x_scale: torch.Tensor,
                g_scale: torch.Tensor, d1_scale: torch.Tensor, d3_scale: torch.Tensor, dy_scale: torch.Tensor,
                sink1: torch.Tensor, sink3: torch.Tensor, sink2: torch.Tensor, emulate: bool, kernel_x: bool,
                kernel_g: bool, fast_accum: bool, merged: bool, gathered: bool = False
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """casts: w1's, w3's and w2's weights cast once this step (all or none), or None to cast them here (merged:
        [w1; w3]'s cast, None, w2's); x_scale: w1's (and w3's) input scale; g_scale: w2's input scale; d1, d3, dy:
        the scales of the gradients of w1's, w3's and w2's outputs; kernel_x, kernel_g: x, and w2's output
        gradient, cast by our kernel (fp8_cast.py) instead of inductor's code; fast_accum: the forward products
        with cuBLAS's fast accumulation (as Float8DelayedLinear); gathered: the weights arrive in float8, all-gathered
        so by FSDP (fp8_fsdp.py; never merged)."""
        out_dtype = torch.get_autocast_dtype(x.device.type) if torch.is_autocast_enabled(x.device.type) else x.dtype
        x2 = x.reshape(-1, x.shape[-1])  # (M, D)
        x8, x8_kept, x_amax = cast_input(x2, x_scale, kernel_x, out_dtype)
        inv_x = x_scale.reciprocal()
        if merged:  # with a cast made this step, weight_fp8 reads only the cast
            w13_8, inv_w13, w13_kept = weight_fp8(casts[0], w1 if casts[0] is not None else torch.cat([w1, w3]))
            h13 = scaled_mm(x8, w13_8.t(), inv_x, inv_w13, out_dtype, emulate, fast_accum)  # (M, 2F)
            g8, g8_t, g_amax = _swiglu_forward_fp8_merged_op(h13, g_scale)  # (M, F), (F, M)
            up = (h13, w13_kept, inv_w13, torch.minimum(d1_scale, d3_scale))
        else:
            (w1_8, inv_w1, w1_kept), (w3_8, inv_w3, w3_kept) = (weight_fp8(c, w, gathered) for c, w in zip(casts, (w1, w3)))
            h1 = scaled_mm(x8, w1_8.t(), inv_x, inv_w1, out_dtype, emulate, fast_accum)  # (M, F)
            h3 = scaled_mm(x8, w3_8.t(), inv_x, inv_w3, out_dtype, emulate, fast_accum)
            g8, g8_t, g_amax = _swiglu_forward_fp8_op(h1, h3, g_scale)  # (M, F), (F, M)
            up = (h1, h3, w1_kept, w3_kept, inv_w1, inv_w3, d1_scale, d3_scale)
        w2_8, inv_w2, w2_kept = weight_fp8(casts[2], w2, gathered)
        y = scaled_mm(g8, w2_8.t(), g_scale.reciprocal(), inv_w2, out_dtype, emulate, fast_accum)  # (M, D)
        ctx.save_for_backward(x8_kept, g8_t, w2_kept, inv_w2, x_scale, g_scale, dy_scale, *up)
        ctx.emulate, ctx.kernel_g, ctx.x_shape, ctx.x_dtype, ctx.w_dtype = emulate, kernel_g, x.shape, x.dtype, w1.dtype
        ctx.weights_cached, ctx.merged = casts[2] is not None, merged
        amaxes = torch.stack([x_amax, g_amax])
        ctx.mark_non_differentiable(amaxes)
        return y.reshape(*x.shape[:-1], y.shape[-1]), amaxes

    @staticmethod
    def backward(ctx, grad_y: torch.Tensor, _grad_amaxes: torch.Tensor):
        x8, g8_t, w2_kept, inv_w2, x_scale, g_scale, dy_scale, *up = ctx.saved_tensors

        def columns(w_kept: torch.Tensor) -> torch.Tensor:  # the weight column-major, as cast or copied here
            return w_kept if ctx.weights_cached else column_major(w_kept)

        mm = functools.partial(scaled_mm, emulate=ctx.emulate)
        d2 = grad_y.reshape(-1, grad_y.shape[-1])  # (M, D)
        d8, d8_t, d_amax = cast_grad(d2, dy_scale, ctx.kernel_g)
        dg = mm(d8, columns(w2_kept), dy_scale.reciprocal(), inv_w2, up[0].dtype)  # (M, F)
        grad_w2 = mm(d8_t, g8_t.t(), dy_scale.reciprocal(), g_scale.reciprocal(), ctx.w_dtype)  # (D, M) @ (M, F)
        x8_columns, inv_x = column_major(x8), x_scale.reciprocal()
        if ctx.merged:
            h13, w13_kept, inv_w13, d13_scale = up
            d13, d13_t, grad_amaxes = _swiglu_backward_fp8_merged_op(dg, h13, d13_scale)  # (M, 2F), (2F, M)
            inv_d = d13_scale.reciprocal()
            grad_x = mm(d13, columns(w13_kept), inv_d, inv_w13, ctx.x_dtype)  # (M, 2F) @ (2F, D)
            grad_w1, grad_w3 = mm(d13_t, x8_columns, inv_d, inv_x, ctx.w_dtype).chunk(2)  # (2F, M) @ (M, D)
        else:
            h1, h3, w1_kept, w3_kept, inv_w1, inv_w3, d1_scale, d3_scale = up
            dh1, dh1_t, dh3, dh3_t, grad_amaxes = _swiglu_backward_fp8_op(dg, h1, h3, torch.stack([d1_scale, d3_scale]))
            grad_x = (mm(dh1, columns(w1_kept), d1_scale.reciprocal(), inv_w1, ctx.x_dtype)
                      + mm(dh3, columns(w3_kept), d3_scale.reciprocal(), inv_w3, ctx.x_dtype))
            grad_w1 = mm(dh1_t, x8_columns, d1_scale.reciprocal(), inv_x, ctx.w_dtype)  # (F, M) @ (M, D)
            grad_w3 = mm(dh3_t, x8_columns, d3_scale.reciprocal(), inv_x, ctx.w_dtype)
        return (grad_x.reshape(ctx.x_shape), grad_w1, grad_w3, grad_w2, None, None, None, None, None, None,
                grad_amaxes[0], grad_amaxes[1], d_amax, None, None, None, None, None, None)


class Float8DelayedSwiGLU(nn.Module):
    """A FeedForward whose w1, w3, w2 are Float8DelayedLinear, run as one autograd function (above). It holds
    the same three layers, so parameter names, state-dict keys, scale buffers and the DelayedScaling history
    are those of the unfused model. While the scales calibrate it runs the layers one by one. merge_w13: w1 and
    w3 as one product each way (training's default, fp8.merge_w13); with the weight cache,
    DelayedScaling casts [w1; w3] into this module's buffers (`allocate_merged_cast`) instead of w1's and w3's."""

    def __init__(self, w1: Float8DelayedLinear, w3: Float8DelayedLinear, w2: Float8DelayedLinear,
                 merge_w13: bool = False) -> None:
        super().__init__()
        self.w1, self.w3, self.w2 = w1, w3, w2
        self.merge_w13 = merge_w13
        self.cache_weights = False  # merged: set by allocate_merged_cast

    def allocate_merged_cast(self) -> None:
        """Buffers for [w1; w3]'s float8 cast, written once per step by DelayedScaling.cast_weights."""
        register_weight_cast(self, 2 * self.w1.out_features, self.w1.in_features, self.w1.weight, MERGED_CAST)
        self.cache_weights = True

    def merged_weights(self) -> torch.Tensor:
        """[w1; w3] (2F, D): what the merged cast is made of."""
        return torch.cat([self.w1.weight, self.w3.weight])

    def _casts(self) -> tuple[WeightCast | None, WeightCast | None, WeightCast | None]:
        w1, w3, w2 = self.w1, self.w3, self.w2
        if not self.merge_w13:
            return w1.weight_cast(), w3.weight_cast(), w2.weight_cast()
        merged = cast_buffers(self, MERGED_CAST) if self.cache_weights else None
        return merged, None, w2.weight_cast()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w1, w3, w2 = self.w1, self.w3, self.w2
        if any(m.calibrating for m in (w1, w3, w2)):
            return w2(F.silu(w1(x)) * w3(x))
        y, amaxes = _Float8SwiGLU.apply(x, w1.weight, w3.weight, w2.weight, self._casts(), w1.x_scale, w2.x_scale,
                                        w1.g_scale, w3.g_scale, w2.g_scale, w1.g_amax_sink, w3.g_amax_sink,
                                        w2.g_amax_sink, w1.emulate, *w1.kernel_cast_flags, w1.fast_accum,
                                        self.merge_w13, w1.gathered_fp8)
        for m, seen in ((w1, amaxes[0]), (w3, amaxes[0]), (w2, amaxes[1])):
            m.x_amax.copy_(torch.maximum(m.x_amax, seen))
        return y

    def extra_repr(self) -> str:
        return "w1 | w3 as one product" if self.merge_w13 else ""


def fuse_float8_swiglu(model: nn.Module, merge_w13: bool = False) -> int:
    """Swap every FeedForward whose three layers are Float8DelayedLinear for Float8DelayedSwiGLU, in place;
    returns how many. merge_w13: their w1 and w3 run as one product each way (training's default)."""
    from cs336_basics.model.transformer import FeedForward

    swapped = 0
    for name, module in list(model.named_modules()):
        if isinstance(module, FeedForward) and all(isinstance(getattr(module, w), Float8DelayedLinear) for w in ("w1", "w3", "w2")):
            parent_name, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent_name), child,
                    Float8DelayedSwiGLU(module.w1, module.w3, module.w2, merge_w13))
            swapped += 1
    return swapped

"""Float8 linear layers with *delayed* scaling: the scales of a layer's input and of its output gradient come
from the amax seen in earlier steps, so the cast to float8 needs no pass over the tensor first and the compiler
can fuse it into the kernel that produces the tensor (RMSNorm, SwiGLU, the attention output, and their backward
counterparts). TorchAO's recipes scale dynamically: they read each activation once for its amax, then again to
cast it. The weights keep a dynamic tensorwise scale (they are small and change every step).

Each step every layer records the amax of its input (a buffer, maxed over micro-batches) and of its output
gradient (returned by backward as the "gradient" of a 0-dim sink tensor; `after_backward()` between
micro-batches keeps their max, where autograd would add them up). `DelayedScaling.update()` after the
backward passes moves them into a history of the last `history` steps and sets each scale to float8's
largest value / (the history's max x 2^margin). Casts saturate, so a value above that range is clipped, never
inf; `update()` counts the casts that were (a tensor whose amax this step exceeded its scale's range) and
`take_saturation()` reports them, so a run shows when its scales lagged its tensors. `calibrate()` fills the
history once before training from one forward + backward with dynamic scales whose gradients are thrown away
(the scales start unknown).

With `cache_weights` (fp8.weight_cache) the weights are cast once per optimizer step instead of in every
micro-batch's forward (and their column-major copy once instead of in every backward): `DelayedScaling.
cast_weights()` writes each layer's float8 weight, its column-major copy and its scale into buffers the layers
read. The weights do not change between micro-batches, so the numbers are the same; the casts' time is
divided by the gradient accumulation steps.

Under torchrun every rank must cast with the same scales (else the ranks' replicas drift apart): `reduce_amax`
takes this step's (layer, input/gradient) amaxes to their max over the ranks, one all-reduce of a few hundred
bytes per step, so every rank's history, scales and saturation counts are the same.

The history is saved in checkpoints (`state_dict`), so a resumed run scales as the uninterrupted one would
have. `emulate=True` computes each product as a float32 matmul of the dequantised fp8 values (exact fp8
numerics on any device, for tests).
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn as nn

from cs336_basics.precision.float8 import (E4M3, E4M3_MAX, E5M2, E5M2_MAX, amax, cast_to, column_major, scaled_mm,
                                           to_fp8)
from cs336_basics.precision.fp8_cast import KERNEL_CASTS, cast_both_layouts
from cs336_basics.precision.fp8_fsdp import gathered_weight


# A weight cast to float8: (w8 (N, K) e4m3 row-major, the same column-major, 1 / its scale).
WeightCast = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


def cast_weight(weight: torch.Tensor) -> WeightCast:
    """The weight's dynamic tensorwise e4m3 cast in both layouts the products need: row-major (forward, as
    the transposed operand) and column-major (the input gradient's product)."""
    w8, inv_w = to_fp8(weight)
    return w8, column_major(w8), inv_w


LAYER_CAST = ("w8", "w8_columns", "inv_w")  # a Float8DelayedLinear's cast buffers (Float8DelayedLinear.weight_cast)
MERGED_CAST = ("w13_8", "w13_columns", "inv_w13")  # a fused SwiGLU's [w1; w3] cast buffers (fp8.merge_w13)


def register_weight_cast(module: nn.Module, n: int, k: int, like: torch.Tensor,
                         names: tuple[str, str, str] = LAYER_CAST) -> None:
    """Buffers for a weight cast once per step on `module`, named `names`: the (n, k) e4m3 weight, the same
    column-major, and 1 / its scale; not saved (they follow from the weights), at fixed addresses for CUDA
    graphs, which replay the blocks reading them."""
    buffers = (like.new_empty(n, k, dtype=E4M3), like.new_empty(k, n, dtype=E4M3).t(),
               like.new_ones((), dtype=torch.float32))  # 1 / scale, as to_fp8's
    for name, buffer in zip(names, buffers):
        module.register_buffer(name, buffer, persistent=False)
        torch._dynamo.mark_static_address(buffer)


def cast_buffers(module: nn.Module, names: tuple[str, str, str] = LAYER_CAST) -> WeightCast:
    """The buffers register_weight_cast made on `module` under `names`."""
    return tuple(getattr(module, name) for name in names)  # type: ignore[return-value]


def weight_fp8(cast: WeightCast | None, weight: torch.Tensor, gathered: bool = False
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(w8, 1 / scale, what backward keeps): from the cast made once this step, whose column-major copy backward
    keeps, or cast here, keeping w8 for backward to copy (ctx.weights_cached says which). gathered: the weight
    arrives in float8 already, all-gathered so by FSDP (fp8_fsdp.py)."""
    if cast is not None:
        return cast[0], cast[2], cast[1]
    if gathered:
        w8, inv_w = gathered_weight(weight)
        return w8, inv_w, w8
    w8, inv_w = to_fp8(weight)
    return w8, inv_w, w8


def cast_input(x2: torch.Tensor, scale: torch.Tensor, kernel: bool, out_dtype: torch.dtype
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(x2 in e4m3 for the forward product, what backward keeps for the weight gradient's, amax of x2). kernel:
    our kernel writes both layouts and backward keeps the transposed one as a column-major view; under autocast
    x2 is rounded to bf16 first, as TorchAO's Float8Linear does (RMSNorm's float32 output is then written and
    read in 2 bytes, and our kernel sees the dtype its GPU checks cover best). Otherwise backward keeps x8 and
    makes it column-major there."""
    if kernel:
        x8, x8_t, x_amax = cast_both_layouts(x2.to(out_dtype), scale, e5m2=False)
        return x8, x8_t.t(), x_amax
    x8 = cast_to(x2, scale, E4M3, E4M3_MAX)
    return x8, x8, amax(x2)


def cast_grad(g2: torch.Tensor, scale: torch.Tensor, kernel: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(an output gradient g2 (M, N) in e5m2, the same transposed (N, M), amax of g2): by our kernel in one pass,
    or by the compiler's code."""
    if kernel:
        return cast_both_layouts(g2, scale, e5m2=True)
    g8 = cast_to(g2, scale, E5M2, E5M2_MAX)
    return g8, g8.t().contiguous(), amax(g2)


class _DelayedFloat8Matmul(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, weight_cast: WeightCast | None, x_scale: torch.Tensor,
                g_scale: torch.Tensor, g_sink: torch.Tensor, emulate: bool, calibrating: bool, kernel_x: bool,
                kernel_g: bool, fast_accum: bool, gathered: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """weight_cast: the weight cast once this step (DelayedScaling.cast_weights), or None to cast it here.
        kernel_x, kernel_g: x, and in backward the output gradient, cast by our kernel (fp8_cast.py).
        fast_accum: the forward product with cuBLAS's fast accumulation (the gradients' products never).
        gathered: `weight` is float8 already (all-gathered so by FSDP)."""
        out_dtype = torch.get_autocast_dtype(x.device.type) if torch.is_autocast_enabled(x.device.type) else x.dtype
        x2 = x.reshape(-1, x.shape[-1])  # (M, K)
        if calibrating:  # no history yet: scale by this tensor's own amax (dynamic scaling)
            x_scale = E4M3_MAX / amax(x2).clamp(min=1e-12)
        x8, x8_kept, x_amax = cast_input(x2, x_scale, kernel_x, out_dtype)
        w8, inv_w, w_kept = weight_fp8(weight_cast, weight, gathered)  # (N, K), dynamic scale
        y = scaled_mm(x8, w8.t(), x_scale.reciprocal(), inv_w, out_dtype, emulate, fast_accum)  # (M, N)
        ctx.save_for_backward(x8_kept, w_kept, x_scale, inv_w, g_scale)
        ctx.weights_cached = weight_cast is not None
        ctx.emulate, ctx.calibrating, ctx.kernel_g = emulate, calibrating, kernel_g
        ctx.x_shape, ctx.x_dtype, ctx.w_dtype = x.shape, x.dtype, weight.dtype
        ctx.mark_non_differentiable(x_amax)
        return y.reshape(*x.shape[:-1], y.shape[-1]), x_amax

    @staticmethod
    def backward(ctx, grad_y: torch.Tensor, _grad_amax: torch.Tensor):
        x8, w_kept, x_scale, inv_w, g_scale = ctx.saved_tensors
        w_columns = w_kept if ctx.weights_cached else column_major(w_kept)
        g2 = grad_y.reshape(-1, grad_y.shape[-1])  # (M, N)
        if ctx.calibrating:
            g_scale = E5M2_MAX / amax(g2).clamp(min=1e-12)
        g8, g8_t, g_amax = cast_grad(g2, g_scale, ctx.kernel_g)
        inv_g = g_scale.reciprocal()
        grad_x = scaled_mm(g8, w_columns, inv_g, inv_w, ctx.x_dtype, ctx.emulate)  # (M, N) @ (N, K)
        grad_w = scaled_mm(g8_t, column_major(x8), inv_g, x_scale.reciprocal(), ctx.w_dtype,
                           ctx.emulate)  # (N, M) @ (M, K)
        return grad_x.reshape(ctx.x_shape), grad_w, None, None, None, g_amax, None, None, None, None, None, None


class Float8DelayedLinear(nn.Module):
    """An nn.Linear (no bias) whose products run in float8 with delayed input and gradient scales. It holds
    the original `weight` Parameter, so parameter names and state-dict keys are those of the plain layer."""

    def __init__(self, linear: nn.Linear, emulate: bool, kernel_casts: str = "none") -> None:
        super().__init__()
        if linear.bias is not None:
            raise ValueError("Float8DelayedLinear takes layers without bias")
        self.in_features, self.out_features, self.emulate = linear.in_features, linear.out_features, emulate
        if kernel_casts not in KERNEL_CASTS:
            raise ValueError(f"kernel_casts must be one of {KERNEL_CASTS}, got {kernel_casts!r}")
        self.kernel_casts = kernel_casts  # which casts go through our kernel (fp8_cast.py), not inductor's code
        self.calibrating = False  # set by DelayedScaling.calibrate(): scale each tensor by its own amax
        self.cache_weights = False  # set by DelayedScaling(cache_weights=True): read the weight cast once per step
        self.fast_accum = False  # set from fp8.fast_accum: the forward product's accumulation
        self.gathered_fp8 = False  # set by fp8_fsdp.gather_weights_in_fp8: FSDP all-gathers the weight in float8
        self.weight = linear.weight
        device = linear.weight.device
        for name in ("x_scale", "g_scale"):
            self.register_buffer(name, torch.ones((), device=device), persistent=False)
        self.register_buffer("x_amax", torch.zeros((), device=device), persistent=False)
        # Not a parameter or buffer: backward writes the output gradient's amax into its .grad.
        self.g_amax_sink = torch.zeros((), device=device, requires_grad=True)

    def weight_cast(self) -> WeightCast | None:
        """The weight as cast once this step (buffers DelayedScaling.cast_weights writes), or None: cast it in
        the forward. Calibration casts dynamically, before the first cast_weights."""
        if not self.cache_weights or self.calibrating:
            return None
        return cast_buffers(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y, x_amax = _DelayedFloat8Matmul.apply(x, self.weight, self.weight_cast(), self.x_scale, self.g_scale,
                                                  self.g_amax_sink, self.emulate, self.calibrating, *self.kernel_cast_flags,
                                                  self.fast_accum, self.gathered_fp8)
        self.x_amax.copy_(torch.maximum(self.x_amax, x_amax))
        return y

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, delayed scaling, emulate={self.emulate}"
                + (f", kernel casts: {self.kernel_casts}" if self.kernel_casts != "none" else ""))

    @property
    def kernel_cast_flags(self) -> tuple[bool, bool]:
        """(cast x through our kernel, cast the output gradient through it)."""
        return self.kernel_casts in ("inputs", "all"), self.kernel_casts in ("grads", "all")


class DelayedScaling:
    """The amax histories and scales of every Float8DelayedLinear of a model, updated in a few batched ops."""

    def __init__(self, model: nn.Module, history: int = 16, cache_weights: bool = False, margin: int = 0,
                 reduce_amax: Callable[[torch.Tensor], None] | None = None) -> None:
        """margin: 2^margin of headroom above each history's max, for inputs and gradients alike. reduce_amax:
        sets a tensor of amaxes, in place, to its max over the processes of a distributed run."""
        named = [(n, m) for n, m in model.named_modules() if isinstance(m, Float8DelayedLinear)]
        if not named:
            raise ValueError("the model has no Float8DelayedLinear layers")
        if margin < 0:
            raise ValueError(f"margin must be >= 0 (powers of two of headroom), got {margin}")
        self.names = [n for n, _ in named]
        self.layers = [m for _, m in named]
        self.margin, self.reduce_amax = margin, reduce_amax
        device = self.layers[0].weight.device
        self._headroom = torch.tensor([2.0**margin, 2.0**margin], device=device)  # (input, gradient)
        self.cache_weights = cache_weights
        # fused SwiGLUs running w1 and w3 as one product (swiglu_fp8.py, fp8.merge_w13): [w1; w3] is cast as one
        self._merged = [m for m in model.modules() if getattr(m, "merge_w13", False)]
        paired = {id(layer) for pair in self._merged for layer in (pair.w1, pair.w3)}
        self._own_casts = [m for m in self.layers if id(m) not in paired]
        if cache_weights:
            self._allocate_weight_casts()
        self._cast_weights = self._cast_weights_eager  # compile_weight_casts() swaps in a compiled version
        self.history = torch.zeros(len(self.layers), 2, history, device=device)  # (layer, input/gradient, step)
        self._fp8_max = torch.tensor([E4M3_MAX, E5M2_MAX], device=device)
        self._x_amax = [m.x_amax for m in self.layers]
        self._x_scale, self._g_scale = [m.x_scale for m in self.layers], [m.g_scale for m in self.layers]
        self._g_amax = torch.zeros(len(self.layers), device=device)  # this step's max over micro-batches
        # Since the last take_saturation(): per (layer, input/gradient), the largest amax / its scale's range, and
        # how many steps that ratio exceeded 1 (the cast clipped values).
        self._overflow = torch.zeros(len(self.layers), 2, device=device)
        self._saturated = torch.zeros(len(self.layers), 2, dtype=torch.int64, device=device)
        self.calibrated = False
        # Each sink gets its own zero .grad now, so backward adds into memory we own (a layer that saw no
        # backward records 0; a CUDA-graph output installed as .grad would be overwritten by the next replay).
        for m in self.layers:
            m.g_amax_sink.grad = torch.zeros_like(m.g_amax_sink)

    def _allocate_weight_casts(self) -> None:
        """Each layer's float8 weight, its column-major copy and 1 / scale as buffers; for a fused SwiGLU that
        runs w1 and w3 as one product, [w1; w3]'s instead of theirs."""
        for m in self._own_casts:
            n, k = m.weight.shape
            register_weight_cast(m, n, k, m.weight)
            m.cache_weights = True
        for pair in self._merged:
            pair.allocate_merged_cast()

    @torch.no_grad()
    def _cast_weights_eager(self) -> None:
        own = [(cast_buffers(m), m.weight) for m in self._own_casts]
        merged = [(cast_buffers(pair, MERGED_CAST), pair.merged_weights()) for pair in self._merged]
        for buffers, weight in own + merged:
            for buffer, cast in zip(buffers, cast_weight(weight)):
                buffer.copy_(cast)

    def compile_weight_casts(self, **options) -> None:
        """Run cast_weights as one compiled graph (fused amax and cast kernels) instead of ~8 eager ops a layer."""
        self._cast_weights = torch.compile(self._cast_weights_eager, fullgraph=True, **options)

    def cast_weights(self) -> None:
        """At the start of an optimizer step, with cache_weights: cast every layer's weight for all of the step's
        micro-batches. Without: nothing (each forward casts its weight)."""
        if self.cache_weights:
            self._cast_weights()

    def _sink_grads(self) -> list[torch.Tensor]:
        return [m.g_amax_sink.grad for m in self.layers]

    @torch.no_grad()
    def after_backward(self) -> None:
        """Between micro-batches: fold the output-gradient amaxes of the backward pass just run (the sinks'
        .grad, which autograd would otherwise add up over the micro-batches) into this step's running max."""
        grads = self._sink_grads()
        torch.maximum(self._g_amax, torch.stack(grads), out=self._g_amax)
        torch._foreach_zero_(grads)  # the sinks' .grad accumulate in place

    @torch.no_grad()
    def update(self) -> None:
        """After a step's backward passes: record this step's amaxes, set the scales for the next step.
        A handful of batched kernels over all layers (the host is on the critical path at small sizes)."""
        self.after_backward()  # the last (or only) micro-batch
        now = torch.stack([torch.stack(self._x_amax), self._g_amax], dim=1)  # (layer, 2)
        if self.reduce_amax is not None:
            self.reduce_amax(now)
        if self.calibrated:  # this step's casts saturated at the range the scales gave them
            ratio = now / self._ranges()
            torch.maximum(self._overflow, ratio, out=self._overflow)
            self._saturated += ratio > 1
        self.history = self.history.roll(1, dims=-1)
        self.history[:, :, 0] = now
        self._set_scales()
        torch._foreach_zero_(self._x_amax)
        self._g_amax.zero_()

    def _ranges(self) -> torch.Tensor:
        """(layer, 2) the largest magnitude the current scales cast without clipping: the history's max x the
        headroom, 2^margin."""
        return self.history.amax(dim=-1).clamp(min=1e-12) * self._headroom

    def _set_scales(self) -> None:
        scales = self._fp8_max / self._ranges()  # (layer, 2)
        torch._foreach_copy_(self._x_scale, scales[:, 0].unbind())
        torch._foreach_copy_(self._g_scale, scales[:, 1].unbind())

    def take_saturation(self) -> tuple[int, float, str]:
        """Since the last call: (how many casts saturated, counting one per tensor and step; the largest amax /
        scale range seen; which tensor it was, e.g. "layers.3.ffn.w2 gradient"), and start counting afresh.
        Reads the device (a synchronisation): call it at log intervals, not every step."""
        count = int(self._saturated.sum())
        worst = int(self._overflow.argmax())
        ratio = float(self._overflow.flatten()[worst])
        name = f"{self.names[worst // 2]} {('input', 'gradient')[worst % 2]}"
        self._saturated.zero_()
        self._overflow.zero_()
        return count, ratio, name

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The amax history, from which the scales follow: checkpointed, so a resumed run scales its next step
        as the uninterrupted run would have (instead of recalibrating)."""
        return {"history": self.history.cpu()}

    @torch.no_grad()
    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        history = state["history"]
        if history.shape != self.history.shape:
            raise ValueError(f"amax history of shape {tuple(history.shape)} for {tuple(self.history.shape)} "
                             "(layers, input/gradient, steps): the checkpoint's float8 layers differ")
        self.history.copy_(history)
        self._set_scales()
        self.calibrated = True

    def calibrate(self, forward_backward: Callable[[], None], params: list[torch.Tensor]) -> None:
        """One forward + backward with dynamic scales (each tensor's own amax) to learn the first history;
        the gradients it leaves are discarded. Compiled modules run it eagerly: no graph is built for it."""
        for m in self.layers:
            m.calibrating = True
        try:
            with torch.compiler.set_stance("force_eager"):
                forward_backward()
        finally:
            for m in self.layers:
                m.calibrating = False
        self.update()
        for p in params:
            p.grad = None
        self.calibrated = True

    def scales(self) -> torch.Tensor:
        """(layer, 2) current input and gradient scales, for inspection and tests."""
        return torch.stack([torch.stack([m.x_scale, m.g_scale]) for m in self.layers])


def has_delayed_fp8(model: nn.Module) -> bool:
    return any(isinstance(m, Float8DelayedLinear) for m in model.modules())


def convert_to_delayed_float8(model: nn.Module, fqns: set[str], emulate: bool) -> None:
    """Swap the named nn.Linear layers of `model` for Float8DelayedLinear, in place."""
    for fqn in fqns:
        parent_name, _, child = fqn.rpartition(".")
        parent = model.get_submodule(parent_name)
        setattr(parent, child, Float8DelayedLinear(getattr(parent, child), emulate))

"""Float8 linear layers with *delayed* scaling (issue 5): the scales of a layer's input and of its output
gradient come from the amax seen in earlier steps, so the cast to float8 needs no pass over the tensor
first and the compiler can fuse it into the kernel that produces the tensor (RMSNorm, SwiGLU, the
attention output, and their backward counterparts). TorchAO's recipes scale dynamically: they read each
activation once for its amax, then again to cast it. The weights keep a dynamic tensorwise scale (they
are small and change every step).

Each step every layer records the amax of its input (maxed over micro-batches) and of its output gradient
(returned by backward as the "gradient" of a sink tensor, summed over micro-batches: an upper bound on
their max, exact with one micro-batch), in rows of tensors all layers share (`ScaleState`).
`DelayedScaling.update()` after the backward passes moves them into a history of the last `history` steps
and sets each scale to float8's largest value / the history's max. Casts
saturate, so a value above the history's max is clipped, never inf. `calibrate()` fills the history once
before training from one forward + backward whose gradients are thrown away (the scales start unknown).

The scales are not saved in checkpoints: a resumed run calibrates again. `emulate=True` computes each
product as a float32 matmul of the dequantised fp8 values (exact fp8 numerics on any device, for tests).
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn as nn

from cs336_basics.precision.fp8_head import E4M3, E4M3_MAX, E5M2, E5M2_MAX, column_major, scaled_mm


def cast_to(x: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype, max_value: float) -> torch.Tensor:
    """x * scale in float8, saturating."""
    return (x.float() * scale).clamp(-max_value, max_value).to(dtype)


def amax(x: torch.Tensor) -> torch.Tensor:
    """max |x| as a float32 scalar, reduced per row first (the same rows the cast walks, so the compiler can
    put both in one kernel), then over rows."""
    return x.detach().abs().amax(dim=-1).amax().float()


class _DelayedFloat8Matmul(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, x_scales: torch.Tensor, g_scales: torch.Tensor,
                g_sink: torch.Tensor, index: torch.Tensor, emulate: bool, calibrating: bool) -> tuple[torch.Tensor, torch.Tensor]:
        out_dtype = torch.get_autocast_dtype(x.device.type) if torch.is_autocast_enabled(x.device.type) else x.dtype
        x2 = x.reshape(-1, x.shape[-1])  # (M, K)
        # This layer's scales, (1,) each, from separate tables: with both in one (layer, 2) table the compiled
        # graph handed cuBLASLt a scale at a 4-byte offset, which it refused (CUBLAS_STATUS_NOT_SUPPORTED).
        x_scale, g_scale = x_scales.index_select(0, index), g_scales.index_select(0, index)
        if calibrating:  # no history yet: scale by this tensor's own amax (dynamic scaling)
            x_scale = E4M3_MAX / amax(x2).clamp(min=1e-12)
        x8 = cast_to(x2, x_scale, E4M3, E4M3_MAX)
        w_scale = E4M3_MAX / weight.detach().abs().amax().float().clamp(min=1e-12)
        w8 = cast_to(weight, w_scale, E4M3, E4M3_MAX)  # (N, K)
        y = scaled_mm(x8, w8.t(), x_scale.reciprocal(), w_scale.reciprocal(), out_dtype, emulate)  # (M, N)
        ctx.save_for_backward(x8, w8, x_scale, w_scale, g_scale, index)
        ctx.emulate, ctx.calibrating, ctx.x_shape, ctx.x_dtype = emulate, calibrating, x.shape, x.dtype
        ctx.out_dtype, ctx.w_dtype, ctx.n_layers = out_dtype, weight.dtype, g_sink.shape[0]
        x_amax = amax(x2)
        ctx.mark_non_differentiable(x_amax)
        return y.reshape(*x.shape[:-1], y.shape[-1]), x_amax

    @staticmethod
    def backward(ctx, grad_y: torch.Tensor, _grad_amax: torch.Tensor):
        x8, w8, x_scale, w_scale, g_scale, index = ctx.saved_tensors
        g2 = grad_y.reshape(-1, grad_y.shape[-1])  # (M, N)
        g_amax = amax(g2)
        if ctx.calibrating:
            g_scale = E5M2_MAX / g_amax.clamp(min=1e-12)
        g8 = cast_to(g2, g_scale, E5M2, E5M2_MAX)
        inv_g = g_scale.reciprocal()
        # grad_x in the compute dtype (bf16 under autocast), as an nn.Linear's would be: half the bytes of an
        # fp32 result; the cast to x's dtype, if any, fuses into the next kernel under compile.
        grad_x = scaled_mm(g8, column_major(w8), inv_g, w_scale.reciprocal(), ctx.out_dtype, ctx.emulate)  # (M, N) @ (N, K)
        grad_w = scaled_mm(g8.t().contiguous(), column_major(x8), inv_g, x_scale.reciprocal(), ctx.w_dtype,
                           ctx.emulate)  # (N, M) @ (M, K)
        one_hot = torch.arange(ctx.n_layers, device=index.device) == index
        return grad_x.reshape(ctx.x_shape).to(ctx.x_dtype), grad_w, None, None, one_hot * g_amax, None, None, None


class ScaleState:
    """Every delayed-scaling layer's scales and this step's amaxes, in four small tensors shared by all of
    them (each layer reads and writes its own row), so updating them is a few kernels, not one per layer."""

    def __init__(self, n_layers: int, device: torch.device) -> None:
        self.x_scale = torch.ones(n_layers, device=device)  # inputs, e4m3
        self.g_scale = torch.ones(n_layers, device=device)  # output gradients, e5m2
        self.x_amax = torch.zeros(n_layers, device=device)  # max over this step's micro-batches
        # Not a parameter: backward writes each layer's output-gradient amax into its row of .grad
        # (accumulated, so summed over micro-batches: an upper bound on their max, exact with one).
        self.g_sink = torch.zeros(n_layers, device=device, requires_grad=True)


class Float8DelayedLinear(nn.Module):
    """An nn.Linear (no bias) whose products run in float8 with delayed input and gradient scales (row `index`
    of a ScaleState). It holds the original `weight` Parameter, so parameter names and state-dict keys are
    those of the plain layer."""

    def __init__(self, linear: nn.Linear, state: ScaleState, index: int, emulate: bool) -> None:
        super().__init__()
        if linear.bias is not None:
            raise ValueError("Float8DelayedLinear takes layers without bias")
        self.in_features, self.out_features, self.emulate = linear.in_features, linear.out_features, emulate
        self.weight = linear.weight
        self.state = state
        # This layer's row, as a (1,) tensor rather than an int: every block then compiles to the same graph.
        self.register_buffer("index", torch.tensor([index], device=linear.weight.device), persistent=False)
        self.calibrating = False  # set by DelayedScaling.calibrate(): scale each tensor by its own amax

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.state
        y, x_amax = _DelayedFloat8Matmul.apply(x, self.weight, s.x_scale, s.g_scale, s.g_sink, self.index,
                                                  self.emulate, self.calibrating)
        s.x_amax.index_copy_(0, self.index, torch.maximum(s.x_amax.index_select(0, self.index), x_amax.view(1)))
        return y

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, delayed scaling, emulate={self.emulate}"


class DelayedScaling:
    """The amax history of a model's Float8DelayedLinear layers, and the update of their scales."""

    def __init__(self, model: nn.Module, history: int = 16) -> None:
        self.layers = [m for m in model.modules() if isinstance(m, Float8DelayedLinear)]
        if not self.layers:
            raise ValueError("the model has no Float8DelayedLinear layers")
        self.state = self.layers[0].state
        if any(m.state is not self.state for m in self.layers):
            raise ValueError("the model's Float8DelayedLinear layers do not share one ScaleState")
        n, device = self.state.x_scale.shape[0], self.state.x_scale.device
        self.history = torch.zeros(n, 2, history, device=device)  # (layer, input / gradient, step)
        self._fp8_max = torch.tensor([E4M3_MAX, E5M2_MAX], device=device)
        self.calibrated = False

    @torch.no_grad()
    def update(self) -> None:
        """After a step's backward passes: record this step's amaxes, set the scales for the next step."""
        s = self.state
        if s.g_sink.grad is None:  # no backward this step
            s.g_sink.grad = torch.zeros_like(s.g_sink)
        self.history = self.history.roll(1, dims=-1)
        self.history[:, 0, 0] = s.x_amax
        self.history[:, 1, 0] = s.g_sink.grad
        scales = self._fp8_max / self.history.amax(dim=-1).clamp(min=1e-12)  # (layer, 2)
        s.x_scale.copy_(scales[:, 0])
        s.g_scale.copy_(scales[:, 1])
        s.x_amax.zero_()
        s.g_sink.grad.zero_()  # accumulates in place from here on

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
        return torch.stack([self.state.x_scale, self.state.g_scale], dim=1)


def has_delayed_fp8(model: nn.Module) -> bool:
    return any(isinstance(m, Float8DelayedLinear) for m in model.modules())


def convert_to_delayed_float8(model: nn.Module, fqns: set[str], emulate: bool) -> None:
    """Swap the named nn.Linear layers of `model` for Float8DelayedLinear sharing one ScaleState, in place."""
    names = [fqn for fqn, _ in model.named_modules() if fqn in fqns]  # model order: row i is the i-th layer
    if not names:
        return
    state = ScaleState(len(names), model.get_submodule(names[0]).weight.device)
    for index, fqn in enumerate(names):
        parent_name, _, child = fqn.rpartition(".")
        parent = model.get_submodule(parent_name)
        setattr(parent, child, Float8DelayedLinear(getattr(parent, child), state, index, emulate))

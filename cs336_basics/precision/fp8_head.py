"""The output head and its cross-entropy as one float8 operation (issue 5), in the style of modded-nanogpt's
fp8 head: the three products of the 50K-wide head (logits, input gradient, weight gradient) run on the fp8
matrix units; the normed hidden states and the weight get dynamic tensorwise scales (small tensors, one
amax each), and the gradient of the logits gets a *static* scale that is exact, not guessed:

    d loss / d logits = (softmax(logits) - onehot(targets)) * grad_loss / n_tokens,

and softmax - onehot lies in [-1, 1]. So it is cast to float8 e5m2 as (softmax - onehot) * 57344 (e5m2's
largest value) in the same pass that computes it, and grad_loss / (n_tokens * 57344) becomes the scale of
the matrix product. TorchAO's dynamic scaling would need a second pass over the 16K x 50K gradient for its
amax; here it is written once, in fp8, in both layouts the two products need.

The loss is the mean cross-entropy in float32 over all tokens (no ignore_index); without targets the head
returns bf16-precision logits through the ordinary nn.Linear. `emulate=True` does each product as a float32
matmul of the dequantised fp8 values (exact fp8 numerics on any device, for tests).
"""

from __future__ import annotations

import torch
import torch.nn as nn

from cs336_basics.errors import UserError
from cs336_basics.model.transformer import OutputHead, cross_entropy

E4M3, E5M2 = torch.float8_e4m3fn, torch.float8_e5m2
E4M3_MAX, E5M2_MAX = torch.finfo(E4M3).max, torch.finfo(E5M2).max


def cast_to(x: torch.Tensor, scale: torch.Tensor | float, dtype: torch.dtype, max_value: float) -> torch.Tensor:
    """x * scale in float8, saturating."""
    return (x.float() * scale).clamp(-max_value, max_value).to(dtype)


def to_fp8(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Dynamic tensorwise e4m3 cast: (x * scale in fp8, 1 / scale), scale = 448 / amax(x)."""
    amax = x.detach().abs().amax().float().clamp(min=1e-12)
    scale = E4M3_MAX / amax
    return cast_to(x, scale, E4M3, E4M3_MAX), scale.reciprocal()


def scaled_mm(a: torch.Tensor, b: torch.Tensor, inv_a: torch.Tensor, inv_b: torch.Tensor,
              out_dtype: torch.dtype, emulate: bool, fast_accum: bool = False) -> torch.Tensor:
    """(a * inv_a) @ (b * inv_b) for fp8 a (M, K) row-major and b (K, N) column-major, in out_dtype.
    fast_accum: cuBLAS's fast accumulation (the tensor cores' own accumulator, without its periodic promotion to
    float32), as TorchAO's Float8Linear uses for the forward product; emulation computes in float32 either way."""
    if emulate:
        return ((a.float() @ b.float()) * (inv_a * inv_b)).to(out_dtype)
    return torch._scaled_mm(a, b, scale_a=inv_a, scale_b=inv_b, out_dtype=out_dtype, use_fast_accum=fast_accum)


def column_major(t: torch.Tensor) -> torch.Tensor:
    return t.t().contiguous().t()


class _Float8LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, emulate: bool, kernel: bool
                ) -> torch.Tensor:
        """kernel: the logit gradient by our Triton kernel (head_grad_fp8.py) instead of inductor's code."""
        x8, inv_x = to_fp8(x)  # (N, D)
        w8, inv_w = to_fp8(weight)  # (V, D)
        logits = scaled_mm(x8, w8.t(), inv_x, inv_w, torch.bfloat16, emulate)  # (N, V)
        lse = torch.logsumexp(logits.float(), dim=-1)
        loss = (lse - logits.gather(1, targets[:, None]).squeeze(1).float()).mean()
        ctx.save_for_backward(x8, inv_x, w8, inv_w, logits, lse, targets)
        ctx.emulate, ctx.kernel, ctx.x_dtype, ctx.w_dtype = emulate, kernel, x.dtype, weight.dtype
        return loss

    @staticmethod
    def backward(ctx, grad_loss: torch.Tensor):
        x8, inv_x, w8, inv_w, logits, lse, targets = ctx.saved_tensors
        n = logits.shape[0]
        # softmax - onehot in e5m2 at a static scale (no amax pass), both layouts: by our kernel in one pass, or
        # the reference's PyTorch ops that the compiler fuses (imported here: head_grad_fp8 imports this module)
        from cs336_basics.precision.head_grad_fp8 import head_grad, head_grad_fp8_reference

        g8, g8_t = (head_grad if ctx.kernel else head_grad_fp8_reference)(logits, lse, targets)
        inv_g = grad_loss.float() / (n * E5M2_MAX)
        grad_x = scaled_mm(g8, column_major(w8), inv_g, inv_w, ctx.x_dtype, ctx.emulate)  # (N, V) @ (V, D)
        grad_w = scaled_mm(g8_t, column_major(x8), inv_g, inv_x, ctx.w_dtype, ctx.emulate)  # (V, N) @ (N, D)
        return grad_x, grad_w, None, None, None


def linear_cross_entropy_fp8(x: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                             emulate: bool = False, kernel: bool = False) -> torch.Tensor:
    """Mean cross-entropy of x @ weight.T against targets; x (N, D), weight (V, D), targets (N,); `kernel`: the
    logit gradient by our Triton kernel (head_grad_fp8.py)."""
    return _Float8LinearCrossEntropy.apply(x, weight, targets, emulate, kernel)


class Float8OutputHead(nn.Module):
    """The model's OutputHead with its projection + loss in float8. It holds the same `norm` and `proj`
    modules, so parameter names, state-dict keys and checkpoints are those of the plain head."""

    def __init__(self, head: OutputHead, emulate: bool) -> None:
        super().__init__()
        self.norm, self.proj, self.emulate = head.norm, head.proj, emulate
        self.kernel = False  # set by build_model (Fp8Options.head_kernel): the logit gradient by our Triton kernel
        self.high_precision = False  # set by fp8_delayed.set_float8_compute: the plain head's loss (bf16 products)

    def forward(self, h: torch.Tensor, targets: torch.Tensor | None = None) -> torch.Tensor:
        x = self.norm(h)
        if targets is None:
            return self.proj(x)
        if self.high_precision:  # as the plain OutputHead
            return cross_entropy(self.proj(x), targets)
        if not self.emulate and targets.numel() % 16:
            raise UserError(f"the float8 output head needs a multiple of 16 tokens per micro-batch, got "
                            f"{targets.numel()}: change --batch_size or --context_length, or pass --no-fp8_head")
        return linear_cross_entropy_fp8(x.flatten(0, 1), self.proj.weight, targets.flatten(), self.emulate, self.kernel)

    def extra_repr(self) -> str:
        return (f"float8 e4m3 forward, e5m2 static-scale logit gradient, emulate={self.emulate}"
                + (", logit gradient by our kernel" if self.kernel else ""))

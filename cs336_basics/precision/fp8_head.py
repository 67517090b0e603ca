"""The output head and its cross-entropy as one float8 operation, in the style of modded-nanogpt's fp8 head: the
three products of the 50K-wide head (logits, input gradient, weight gradient) run on the fp8 matrix units; the
normed hidden states and the weight get dynamic tensorwise scales (small tensors, one amax each), and the
gradient of the logits gets a *static* scale that is exact, not guessed:

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
from cs336_basics.model.transformer import OutputHead
from cs336_basics.precision.float8 import E5M2, E5M2_MAX, cast_to, column_major, scaled_mm, to_fp8


def logit_gradient_fp8(logits: torch.Tensor, lse: torch.Tensor, targets: torch.Tensor
                       ) -> tuple[torch.Tensor, torch.Tensor]:
    """(softmax - onehot) * 57344 in e5m2, (N, V) and transposed (V, N); logits (N, V) bf16, lse (N,) float32.
    PyTorch ops, which the compiler fuses into the backward's kernels."""
    onehot = torch.arange(logits.shape[1], device=logits.device)[None, :] == targets[:, None]
    g = torch.exp(logits.float() - lse[:, None]) - onehot.float()  # in [-1, 1]
    g8 = cast_to(g, E5M2_MAX, E5M2, E5M2_MAX)
    return g8, g8.t().contiguous()


class _Float8LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, emulate: bool) -> torch.Tensor:
        x8, inv_x = to_fp8(x)  # (N, D)
        w8, inv_w = to_fp8(weight)  # (V, D)
        logits = scaled_mm(x8, w8.t(), inv_x, inv_w, torch.bfloat16, emulate)  # (N, V)
        lse = torch.logsumexp(logits.float(), dim=-1)
        loss = (lse - logits.gather(1, targets[:, None]).squeeze(1).float()).mean()
        ctx.save_for_backward(x8, inv_x, w8, inv_w, logits, lse, targets)
        ctx.emulate, ctx.x_dtype, ctx.w_dtype = emulate, x.dtype, weight.dtype
        return loss

    @staticmethod
    def backward(ctx, grad_loss: torch.Tensor):
        x8, inv_x, w8, inv_w, logits, lse, targets = ctx.saved_tensors
        n = logits.shape[0]
        g8, g8_t = logit_gradient_fp8(logits, lse, targets)  # at a static scale: no amax pass
        inv_g = grad_loss.float() / (n * E5M2_MAX)
        grad_x = scaled_mm(g8, column_major(w8), inv_g, inv_w, ctx.x_dtype, ctx.emulate)  # (N, V) @ (V, D)
        grad_w = scaled_mm(g8_t, column_major(x8), inv_g, inv_x, ctx.w_dtype, ctx.emulate)  # (V, N) @ (N, D)
        return grad_x, grad_w, None, None


def linear_cross_entropy_fp8(x: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                             emulate: bool = False) -> torch.Tensor:
    """Mean cross-entropy of x @ weight.T against targets; x (N, D), weight (V, D), targets (N,)."""
    return _Float8LinearCrossEntropy.apply(x, weight, targets, emulate)


class Float8OutputHead(nn.Module):
    """The model's OutputHead with its projection + loss in float8. It holds the same `norm` and `proj`
    modules, so parameter names, state-dict keys and checkpoints are those of the plain head."""

    def __init__(self, head: OutputHead, emulate: bool) -> None:
        super().__init__()
        self.norm, self.proj, self.emulate = head.norm, head.proj, emulate

    def forward(self, h: torch.Tensor, targets: torch.Tensor | None = None) -> torch.Tensor:
        x = self.norm(h)
        if targets is None:
            return self.proj(x)
        if not self.emulate and targets.numel() % 16:
            raise UserError(f"the float8 output head needs a multiple of 16 tokens per micro-batch, got "
                            f"{targets.numel()}: change --batch_size or --context_length, or train the head in bf16 "
                            "(--set fp8.head=false)")
        return linear_cross_entropy_fp8(x.flatten(0, 1), self.proj.weight, targets.flatten(), self.emulate)

    def extra_repr(self) -> str:
        return f"float8 e4m3 forward, e5m2 static-scale logit gradient, emulate={self.emulate}"

"""Sampling text from a trained model: temperature, top-k, top-p, stop at <|endoftext|>."""

from __future__ import annotations

import torch

from cs336_basics.model.transformer import Transformer


@torch.no_grad()
def sample_next(logits: torch.Tensor, temperature: float, top_k: int | None, top_p: float | None,
                generator: torch.Generator | None = None) -> int:
    """One token id from a (V,) logits vector; temperature 0 means greedy."""
    if temperature <= 0:
        return int(logits.argmax())
    logits = logits.float() / temperature
    if top_k:
        kth = torch.topk(logits, min(top_k, logits.numel())).values[-1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = torch.softmax(logits, dim=-1)
    if top_p is not None and top_p < 1.0:
        sorted_probs, order = torch.sort(probs, descending=True)
        # keep the smallest prefix whose mass reaches top_p (the first token is always kept)
        drop = sorted_probs.cumsum(0) - sorted_probs >= top_p
        sorted_probs[drop] = 0.0
        probs = torch.zeros_like(probs).scatter_(0, order, sorted_probs)
        probs /= probs.sum()
    return int(torch.multinomial(probs, 1, generator=generator))


@torch.no_grad()
def generate(model: Transformer, prompt: list[int], max_new_tokens: int, temperature: float = 1.0,
             top_k: int | None = None, top_p: float | None = None, stop_id: int | None = None,
             generator: torch.Generator | None = None) -> list[int]:
    """Token ids after `prompt` (the prompt excluded), ending before `stop_id` if it is sampled."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    ids = list(prompt)
    out: list[int] = []
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda")
    # Every step has a new sequence length: run eagerly rather than recompile per length.
    with torch.compiler.set_stance("force_eager"), autocast:
        for _ in range(max_new_tokens):
            context = torch.tensor([ids[-model.cfg.context_length:]], device=device)
            next_id = sample_next(model(context)[0, -1], temperature, top_k, top_p, generator)
            if next_id == stop_id:
                break
            ids.append(next_id)
            out.append(next_id)
    model.train(was_training)
    return out

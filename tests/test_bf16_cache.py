"""--bf16_weight_cache (precision/bf16_cache.py): bf16 weights cast once per optimizer step give autocast's numbers."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn as nn
from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import checkpoint_wrapper

from cs336_basics.model.transformer import ModelConfig, Transformer
from cs336_basics.precision.bf16_cache import Bf16WeightCache, CachedCastLinear, cache_bf16_weights, weight_gradient

CFG = ModelConfig(vocab_size=512, context_length=32, dim=64, n_layers=2, n_heads=4, intermediate_size=128)


def apply_activation_checkpointing(model: Transformer) -> None:
    """Each block's activations recomputed in the backward pass, as training checkpoints a model."""
    for i, block in enumerate(model.layers):
        model.layers[i] = checkpoint_wrapper(block, preserve_rng_state=False)


def compile_model(model: Transformer) -> None:
    """torch.compile per block and of the output head + loss, in place, as training compiles a model."""
    for block in model.layers:
        block.compile(fullgraph=True)
    model.output.compile(fullgraph=True)


@pytest.mark.parametrize("x_dtype", [torch.float32, torch.bfloat16])
def test_cached_layer_computes_what_autocast_linear_does(x_dtype):
    """Output, input gradient and the float32 weight's gradient of nn.Linear under bf16 autocast, bit for bit,
    from a float32 stream's input (the norm's output) and from a bf16 one."""
    torch.manual_seed(0)
    plain = nn.Linear(64, 96, bias=False)
    cached = CachedCastLinear(copy.deepcopy(plain))
    x = torch.randn(2, 8, 64).to(x_dtype)
    results = []
    for layer in (plain, cached):
        xe = x.clone().requires_grad_()
        with torch.autocast("cpu", torch.bfloat16):
            y = layer(xe)
        (y.float() ** 2).sum().backward()
        results.append((y, xe.grad, layer.weight.grad))
    for got, want in zip(results[1], results[0]):
        assert got.dtype == want.dtype
        torch.testing.assert_close(got, want, rtol=0, atol=0)


@pytest.mark.parametrize("mode", ["eager", "compiled", "checkpointed", "checkpointed-compiled"])
def test_weights_cast_once_per_step_train_as_autocast_does(mode):
    """A model whose linear layers read casts refreshed once per step trains as the plain model under bf16
    autocast: the same losses and weights over optimizer steps that change the weights (a stale cast would
    show), with two micro-batches a step, compiled or with activation checkpointing (the backward's recompute
    reads the cast too); parameter names and state-dict keys are the plain model's."""
    torch.manual_seed(0)
    plain = Transformer(CFG)
    cached = copy.deepcopy(plain)
    assert cache_bf16_weights(cached) == 5 * CFG.n_layers + 1  # qkv, out, w1, w3, w2 a block; the head
    assert cache_bf16_weights(cached) == 0  # already swapped: nothing left to swap
    assert list(cached.state_dict()) == list(plain.state_dict())
    cache = Bf16WeightCache(cached)
    tokens = torch.from_numpy((np.arange(4 * 2 * 3 * 33) * 7 % 509).astype(np.int64)).view(3, 2, 4, 33)
    losses = {}
    for name, model in (("plain", plain), ("cached", cached)):
        if mode.startswith("checkpointed"):  # the Trainer's order: checkpointing, then compile
            apply_activation_checkpointing(model)
        if mode.endswith("compiled"):
            compile_model(model)
        optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
        losses[name] = []
        for step in range(3):
            if model is cached:
                cache.cast_weights()
            for micro in range(2):
                batch = tokens[step, micro]
                with torch.autocast("cpu", torch.bfloat16):
                    loss = model(batch[:, :-1], batch[:, 1:])
                (loss / 2).backward()
                losses[name].append(loss.item())
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
    assert losses["cached"] == pytest.approx(losses["plain"], rel=1e-6, abs=0)
    for (name, want), got in zip(plain.state_dict().items(), cached.state_dict().values()):
        torch.testing.assert_close(got, want, rtol=1e-6, atol=0, msg=lambda m: f"{name}: {m}")


def test_the_cache_needs_cached_layers():
    with pytest.raises(ValueError, match="no CachedCastLinear"):
        Bf16WeightCache(Transformer(CFG))

def test_weight_gradient_in_float32_is_the_unrounded_product():
    """float32_out (a GPU's path, here its CPU reference): g^T x accumulated and kept in float32, ~1000x closer to
    the exact product than autocast's bf16-rounded gradient; weights of other dtypes keep autocast's."""
    g = torch.randn(256, 48).bfloat16()
    x = torch.randn(256, 32).bfloat16()
    exact = g.t().double() @ x.double()
    error = {out: float((weight_gradient(g, x, torch.float32, out).double() - exact).norm() / exact.norm())
             for out in (True, False)}
    assert error[True] < 1e-6 < 1e-3 < error[False]
    assert weight_gradient(g, x, torch.float32, True).dtype == torch.float32
    torch.testing.assert_close(weight_gradient(g, x, torch.bfloat16, True), (g.t() @ x), rtol=0, atol=0)

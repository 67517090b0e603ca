import math

import pytest
import torch

from cs336_basics.config import load_recipe
from cs336_basics.model.transformer import ConfigError, ModelConfig, Transformer, apply_rope, rope_tables
from conftest import TEST

CFG = TEST


def test_output_shapes_and_loss():
    model = Transformer(CFG)
    idx = torch.randint(0, CFG.vocab_size, (3, 17))
    assert model(idx).shape == (3, 17, CFG.vocab_size)
    loss = model(idx, idx)
    assert loss.shape == () and abs(loss.item() - math.log(CFG.vocab_size)) < 0.5  # near-uniform at init


def test_causality():
    torch.manual_seed(0)
    model = Transformer(CFG).eval()
    idx = torch.randint(0, CFG.vocab_size, (2, 20))
    changed = idx.clone()
    changed[:, 12] = (changed[:, 12] + 1) % CFG.vocab_size
    a, b = model(idx), model(changed)
    torch.testing.assert_close(a[:, :12], b[:, :12])
    assert not torch.allclose(a[:, 12:], b[:, 12:])


def test_rope_depends_only_on_relative_position():
    cos, sin = rope_tables(16, 128, 10000.0)
    q, k = torch.randn(16), torch.randn(16)

    def at(v: torch.Tensor, pos: int) -> torch.Tensor:  # v placed at every position, read back at pos
        return apply_rope(v.expand(1, 128, 1, 16).contiguous(), cos, sin)[0, pos, 0]

    dots = [float(at(q, m) @ at(k, n)) for m, n in ((5, 2), (40, 37), (100, 97))]
    assert max(dots) - min(dots) < 1e-4
    assert abs(float(at(q, 5) @ at(k, 2)) - float(at(q, 5) @ at(k, 4))) > 1e-3  # and it does depend on it


def test_rope_rotates_bf16_in_float32_and_returns_bf16():
    cos, sin = rope_tables(16, 64, 10000.0)
    x = torch.randn(2, 64, 3, 16).bfloat16()
    out = apply_rope(x, cos, sin)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out, apply_rope(x.float(), cos, sin).bfloat16(), rtol=0, atol=0)  # rounded once


def test_tiny_model_overfits_one_batch():
    torch.manual_seed(0)
    model = Transformer(CFG)
    idx = torch.randint(0, CFG.vocab_size, (4, CFG.context_length))
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    first = None
    for _ in range(150):
        loss = model(idx[:, :-1], idx[:, 1:])
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert first > 5.5 and loss.item() < 0.5


def test_parameter_counts_and_tying():
    d, f, L, V = CFG.dim, CFG.intermediate_size, CFG.n_layers, CFG.vocab_size
    per_block = 4 * d * d + 3 * d * f + 2 * d
    untied = Transformer(CFG)
    assert untied.num_params() == 2 * V * d + L * per_block + d
    assert untied.num_params(include_embedding=False) == V * d + L * per_block + d
    tied = Transformer(ModelConfig(**{**CFG.to_dict(), "tie_embeddings": True}))
    assert tied.output.proj.weight is tied.embed.weight
    assert tied.num_params() == V * d + L * per_block + d


def test_seed_recipe_matches_guide():
    seed = load_recipe("seed")[0].model
    assert (seed.dim, seed.n_heads, seed.n_layers, seed.intermediate_size) == (896, 14, 24, 3584)
    with torch.device("meta"):
        assert 398e6 < Transformer(seed).num_params() < 399e6  # 398.5M with the untied 50304-token head


def test_init_scales_residual_projections():
    torch.manual_seed(0)
    small = load_recipe("small")[0].model
    model = Transformer(small)
    assert abs(model.layers[0].attn.qkv.weight.std().item() - 0.02) < 0.002
    expected = 0.02 / math.sqrt(2 * small.n_layers)
    assert abs(model.layers[0].ffn.w2.weight.std().item() - expected) < 0.001


@pytest.mark.parametrize("overrides, message", [
    ({"dim": 100, "n_heads": 3}, "not divisible by --n_heads"),
    ({"dim": 96, "n_heads": 32}, "head dimension dim/n_heads = 3 is odd"),
    ({"n_layers": 0}, "--n_layers must be positive"),
])
def test_bad_configs(overrides, message):
    with pytest.raises(ConfigError, match=message):
        ModelConfig(**{**CFG.to_dict(), **overrides}).validate()

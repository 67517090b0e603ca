import pytest
import torch
import torch.nn as nn
from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import checkpoint_wrapper

from cs336_basics.generation import KVCache, forward_cached, generate, generate_batch, sample_next, sample_rows
from cs336_basics.model.transformer import Transformer
from conftest import TEST

L = TEST.context_length  # 32
PROMPTS = [[1, 2, 3], [5], list(range(40, 60)), [9, 8, 7, 6, 5, 4, 3, 2, 1, 0, 11]]


def sharp_model(seed: int = 0) -> Transformer:
    """The test model with weights ~ N(0, 1/fan_in) and a unit-variance embedding: attention far from uniform
    and logits far apart, so tokens depend on context and positions and greedy choices are not near ties."""
    torch.manual_seed(seed)
    model = Transformer(TEST)
    for p in model.parameters():
        if p.dim() == 2:
            nn.init.normal_(p, std=p.shape[1] ** -0.5)
    nn.init.normal_(model.embed.weight)
    return model.eval()


def greedy(model, prompt, n, **kw):
    return generate(model, prompt, n, temperature=0.0, **kw)


def test_greedy_top_k_and_top_p():
    logits = torch.tensor([1.0, 3.0, 2.0, -1.0])
    assert sample_next(logits, 0.0, None, None) == 1
    g = torch.Generator().manual_seed(0)
    assert {sample_next(logits, 1.0, 2, None, g) for _ in range(200)} == {1, 2}  # top-k 2
    # probabilities ~ (0.09, 0.66, 0.24, 0.01): top-p 0.7 keeps the two largest
    assert {sample_next(logits, 1.0, None, 0.7, g) for _ in range(200)} == {1, 2}
    assert {sample_next(logits, 1.0, None, 0.5, g) for _ in range(50)} == {1}


@pytest.mark.parametrize("how", [(0.0, None, None), (1.0, None, None), (0.7, 5, None), (1.3, None, 0.8),
                                 (1.0, 50, 0.9)])
def test_sample_rows_draws_what_sample_next_draws(how):
    """Row by row the same tokens as sample_next, from the same generator state; one row is one draw."""
    logits = torch.randn(3, 512, generator=torch.Generator().manual_seed(1)) * 3
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    for _ in range(20):
        for row in logits:
            assert int(sample_rows(row[None], *how, g1)[0]) == sample_next(row, *how, g2)
    rows = sample_rows(logits, 1.0, 2, None, g1)  # top-k 2: one of each row's two largest
    assert all(int(t) in set(torch.topk(r, 2).indices.tolist()) for t, r in zip(rows, logits))


def with_bias_on(model: Transformer, token: int) -> Transformer:
    """The head with a bias of +100 on `token`: that token overwhelmingly likely after any context (both paths)."""
    proj = nn.Linear(model.cfg.dim, model.cfg.vocab_size, bias=True)
    with torch.no_grad():
        proj.weight.copy_(model.output.proj.weight)
        proj.bias.zero_()
        proj.bias[token] = 100.0
    model.output.proj = proj
    return model


@pytest.mark.parametrize("use_cache", [True, False])
def test_generate_stops_at_stop_token_and_respects_length(use_cache):
    torch.manual_seed(0)
    model = with_bias_on(Transformer(TEST), 7)
    model.train()
    assert generate(model, [1, 2, 3], 10, temperature=0.0, use_cache=use_cache) == [7] * 10
    assert generate(model, [1, 2, 3], 10, temperature=0.0, stop_id=7, use_cache=use_cache) == []
    long_prompt = list(range(100))  # longer than the context (32): cropped, not an error
    assert len(generate(model, long_prompt, 5, temperature=1.0, top_k=3, use_cache=use_cache)) == 5
    assert generate(model, [1], 0, use_cache=use_cache) == []
    assert model.training  # put back as it was
    with pytest.raises(ValueError, match="at least one token"):
        generate(model, [], 3, use_cache=use_cache)


def test_cached_forward_matches_the_models_forward():
    """Prefill in chunks, then one token at a time: the logits of the full forward; a left-padded row's are
    those of the same tokens unpadded (per-row positions, pad columns masked)."""
    model = sharp_model()
    idx = torch.randint(0, TEST.vocab_size, (2, L), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want = model(idx)  # (2, L, V)
        cache = KVCache(model, [0, 0], L, idx.device)
        got = [forward_cached(model, idx[:, :5], cache), forward_cached(model, idx[:, 5:12], cache)]
        got += [forward_cached(model, idx[:, t:t + 1], cache) for t in range(12, L)]
        torch.testing.assert_close(torch.cat(got, dim=1), want, rtol=1e-4, atol=1e-4)
        assert cache.length == L
        with pytest.raises(ValueError, match="do not fit"):
            forward_cached(model, idx[:, :1], cache)

        short = idx[1, :L - 9]  # row 1: 9 pad columns, then L - 9 tokens
        padded = torch.stack([idx[0], torch.cat([torch.zeros(9, dtype=torch.long), short])])
        cache = KVCache(model, [0, 9], L, idx.device)
        got = torch.cat([forward_cached(model, padded[:, :20], cache),
                         forward_cached(model, padded[:, 20:], cache)], dim=1)
        torch.testing.assert_close(got[0], want[0], rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(got[1, 9:], want[1, :L - 9], rtol=1e-4, atol=1e-4)
        assert torch.isfinite(got).all()

        # Both rows behind 9 pad columns, L + 9 columns in all: positions are counted from each row's first
        # token (the rotary tables hold L positions), so the rows compute what they compute unpadded.
        cache = KVCache(model, [9, 9], L + 9, idx.device)
        got = forward_cached(model, torch.cat([torch.zeros(2, 9, dtype=torch.long), idx], dim=1), cache)
        torch.testing.assert_close(got[:, 9:], want, rtol=1e-4, atol=1e-4)
        assert cache.positions(L + 8, 1).tolist() == [[L - 1], [L - 1]]


def test_greedy_with_and_without_cache_identical():
    """Token for token within the context length, for prompts of several lengths (float32)."""
    model = sharp_model()
    for prompt in PROMPTS + [list(range(100, 131))]:
        n = L - len(prompt) + 1  # the last token is predicted from a full context
        want = greedy(model, prompt, n, use_cache=False)
        assert len(want) == n and len(set(want)) > 1
        assert greedy(model, prompt, n) == want


def test_batched_greedy_equals_one_prompt_at_a_time():
    """Prompts of different lengths in one batch: each row the tokens of its prompt alone, past the context
    length too (rows fill their windows at different steps)."""
    model = sharp_model()
    alone = [greedy(model, p, 45) for p in PROMPTS]
    assert generate_batch(model, PROMPTS, 45, temperature=0.0) == alone
    exact = generate_batch(model, PROMPTS, 45, temperature=0.0, overflow_keep=L)  # re-prefill every token
    assert exact == [greedy(model, p, 45, use_cache=False) for p in PROMPTS]
    assert generate_batch(model, PROMPTS, 45, temperature=0.0, use_cache=False) == exact
    assert generate_batch(model, [], 5) == []


def test_each_sequence_stops_at_its_own_stop_token():
    model = sharp_model()
    full = [greedy(model, p, 20) for p in PROMPTS]
    stop = full[0][5]  # rows stop at their first stop token: at different steps, or never
    want = [f[:f.index(stop)] if stop in f else f for f in full]
    assert len({len(w) for w in want}) > 1 and len(want[0]) <= 5
    assert generate_batch(model, PROMPTS, 20, temperature=0.0, stop_id=stop) == want
    assert [greedy(model, p, 20, stop_id=stop) for p in PROMPTS] == want
    full = [greedy(model, p, 20, use_cache=False) for p in PROMPTS]  # past the context: other contexts
    assert [greedy(model, p, 20, stop_id=stop, use_cache=False) for p in PROMPTS] == \
        [f[:f.index(stop)] if stop in f else f for f in full]
    biased = with_bias_on(sharp_model(), 7)  # every row stops at once: an empty batch result
    assert generate_batch(biased, PROMPTS, 10, temperature=0.0, stop_id=7) == [[] for _ in PROMPTS]


@pytest.mark.parametrize("how", [dict(temperature=1.0), dict(temperature=0.8, top_k=5), dict(top_p=0.9),
                                 dict(temperature=1.2, top_k=50, top_p=0.95)])
def test_sampling_reproducible_with_a_fixed_generator(how):
    model = sharp_model()

    def run(use_cache=True, batch=False):
        g = torch.Generator().manual_seed(123)
        if batch:
            return generate_batch(model, PROMPTS, 12, generator=g, **how)
        return generate(model, PROMPTS[0], L - 3, generator=g, use_cache=use_cache, **how)

    first = run()
    assert run() == first and len(first) == L - 3
    assert run(use_cache=False) == first  # the same draws from the same logits
    rows = run(batch=True)
    assert run(batch=True) == rows and [len(r) for r in rows] == [12] * len(PROMPTS)
    vocab = set(range(TEST.vocab_size))
    assert all(set(r) <= vocab for r in rows)


def test_temperature_top_k_and_top_p_paths():
    """top-k 1 and a tiny top-p keep only the most likely token: greedy; sampling at a high temperature differs."""
    model = sharp_model()
    g = torch.Generator().manual_seed(0)
    want = greedy(model, PROMPTS[2], 10)
    for use_cache in (True, False):
        assert generate(model, PROMPTS[2], 10, top_k=1, generator=g, use_cache=use_cache) == want
        assert generate(model, PROMPTS[2], 10, top_p=1e-6, generator=g, use_cache=use_cache) == want
    assert generate_batch(model, PROMPTS, 10, temperature=1.0, top_k=1, generator=g) == \
        generate_batch(model, PROMPTS, 10, temperature=0.0)
    assert generate(model, PROMPTS[2], 10, temperature=5.0, generator=g) != want


def reference(model, prompt, n, keep):
    """The cached sampler's contexts, each run through the model's full forward: the last L tokens of the
    prompt, growing until full, then the last `keep` tokens at positions 0.. (greedy)."""
    window, out = list(prompt[-L:]), []
    for _ in range(n):
        with torch.no_grad():
            t = int(model(torch.tensor([window]))[0, -1].argmax())
        out.append(t)
        window = (window + [t])[-keep:] if len(window) == L else window + [t]
    return out


def test_prompt_longer_than_the_context():
    model = sharp_model()
    prompt = list(range(200, 260))  # 60 tokens, context 32
    cacheless = greedy(model, prompt, 12, use_cache=False)
    assert cacheless == greedy(model, prompt[-L:], 12, use_cache=False)  # cropped to the last L tokens
    cached = greedy(model, prompt, 12)
    assert cached[0] == cacheless[0] and len(cached) == 12
    assert cached == reference(model, prompt, 12, L // 2)
    assert greedy(model, prompt, 12, overflow_keep=L) == cacheless


@pytest.mark.parametrize("keep", [None, 5, L - 1])
def test_cache_full(keep):
    """A prompt that fills the context after 3 new tokens, then 37 more: the tokens within the context are the
    cacheless sampler's, the rest those of the re-prefilled windows (several re-prefills at keep 5)."""
    model = sharp_model()
    prompt = list(range(300, 300 + L - 2))
    cached = greedy(model, prompt, 40, overflow_keep=keep)
    assert cached[:3] == greedy(model, prompt, 3, use_cache=False)
    assert cached == reference(model, prompt, 40, keep or L // 2)
    assert generate_batch(model, [prompt, [1, 2]], 40, temperature=0.0, overflow_keep=keep)[0] == cached
    with pytest.raises(ValueError, match="overflow_keep"):
        greedy(model, prompt, 2, overflow_keep=L + 1)


def test_cache_runs_checkpoint_wrapped_compiled_and_bf16_cast_layers():
    """The cached path calls submodules: training's wrappers (activation checkpointing, per-block compile: never
    entered) change nothing, and bf16 cached-cast linear layers run in it (float8 layers need a GPU)."""
    from cs336_basics.precision.bf16_cache import CachedCastLinear, cache_bf16_weights

    model = sharp_model()
    want = generate_batch(model, PROMPTS, 8, temperature=0.0)
    for i, block in enumerate(model.layers):
        model.layers[i] = checkpoint_wrapper(block, preserve_rng_state=False)
        model.layers[i].compile(fullgraph=True)
    model.output.compile(fullgraph=True)
    assert generate_batch(model, PROMPTS, 8, temperature=0.0) == want

    model = sharp_model()
    assert cache_bf16_weights(model) == 5 * TEST.n_layers + 1
    assert isinstance(model.layers[0].attn.qkv, CachedCastLinear)
    idx = torch.tensor([PROMPTS[2]])
    with torch.no_grad():
        want = model(idx)
        cache = KVCache(model, [0], L, idx.device)
        got = torch.cat([forward_cached(model, idx[:, :10], cache), forward_cached(model, idx[:, 10:11], cache)], 1)
    assert cache.k[0].dtype == torch.bfloat16  # the cache holds what the layers return
    torch.testing.assert_close(got, want[:, :11], rtol=0.05, atol=0.1)
    rows = generate_batch(model, PROMPTS, 8, temperature=0.0)
    assert [len(r) for r in rows] == [8] * len(PROMPTS)


def test_the_generate_command_samples_several_prompts_as_one_batch_with_or_without_the_cache(tiny_cli, tmp_path, capsys):
    """Greedy samples of two prompts, twice each: the cached batch prints what the cacheless sampler prints."""
    from cs336_basics.cli import run_main
    from cs336_basics.cli.generate import main as generate_main

    train, base = tiny_cli
    assert train([*base, "--out_dir", tmp_path / "run", "--max_steps", 2]) == 0
    argv = [str(tmp_path / "run"), "--prompt", "the quick", "--prompt", "lazy dog", "--num_samples", "2",
            "--temperature", "0", "--max_new_tokens", "12", "--device", "cpu"]
    capsys.readouterr()
    assert run_main(generate_main, argv) == 0
    cached = capsys.readouterr().out
    assert run_main(generate_main, [*argv, "--no_cache"]) == 0
    assert capsys.readouterr().out == cached
    assert cached.count("--- sample") == 4 and "the quick" in cached and "lazy dog" in cached
    assert run_main(generate_main, [str(tmp_path / "run"), "--prompt", "ok", "--prompt", ""]) == 2

"""Sampling text from a trained model: temperature, top-k, top-p, stop at <|endoftext|>; a K/V cache and batches.

Two samplers, the same tokens within the context length:

* cacheless (`generate(..., use_cache=False)`): every new token runs the model's own forward over the whole
  context (the last `context_length` tokens), O(T) work a token for the blocks, O(T^2) for attention.
* cached (the default, `generate` and `generate_batch`): the prompt runs once (prefill), then each new token
  runs through the blocks alone and attends to the keys and values stored for the tokens before it.

The cached path is `forward_cached` below, an inference-only forward that calls the model's own submodules
(embed, each block's attn_norm, attn.qkv, apply_rope, scaled_dot_product_attention, attn.out, ffn_norm, ffn,
output.norm, output.proj) with a preallocated K/V cache. The model's `forward`, the one training runs and
compiles, is untouched; since only submodules are called, linear layers converted for training (float8,
bf16 cached-cast layers) run in the cached path as they are. Models sharded by FSDP are not supported (their
blocks' forward gathers the weights): sample those with use_cache=False, or from an exported model.

Batches (`generate_batch`): prompts of different lengths are right-aligned in one cache, i.e. left-padded
(one column index for the whole batch, so a decode step is one (B, 1) forward), and each row has its own
positions counted from its first real token, so rotary embeddings see the positions that row would have
alone (attention scores depend on position differences only, but the rope tables hold context_length
positions and a padded row's columns run past them); a padding mask keeps every real query off the pad
columns. Each row
therefore computes what it would compute alone: greedy tokens of a batch are those of one prompt at a time.
A row that samples `stop_id` is done and leaves the batch (its cache rows are dropped); the batch ends
when every row has stopped or reached `max_new_tokens`.

Past the context length: the cacheless sampler crops its context to the last `context_length` tokens and
re-encodes them at positions 0.. every token. The cached sampler keeps its cache until a row's window
holds `context_length` tokens, then re-prefills (prefill again from position 0) that row's last
`overflow_keep` tokens (default context_length // 2) and carries on with the cache: one prefill per
`context_length - overflow_keep` new tokens instead of one full forward per token. Within the context
length the two samplers see the same tokens at the same positions; past it the cached one sees between
`overflow_keep` and `context_length` tokens, the cacheless one always `context_length`. With
overflow_keep=context_length it re-prefills every token past the context: the cacheless sampler's tokens at
its cost.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from cs336_basics.model.transformer import Transformer, apply_rope

try:
    from torch.distributed.fsdp import FSDPModule
except ImportError:  # a build of torch without torch.distributed
    FSDPModule = None


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
def sample_rows(logits: torch.Tensor, temperature: float, top_k: int | None, top_p: float | None,
                generator: torch.Generator | None = None) -> torch.Tensor:
    """One token id a row from (B, V) logits: (B,) int64, row by row what sample_next returns (for one row,
    the same draw from the same generator)."""
    if temperature <= 0:
        return logits.argmax(dim=-1)
    logits = logits.float() / temperature
    if top_k:
        kth = torch.topk(logits, min(top_k, logits.shape[-1]), dim=-1).values[:, -1:]  # (B, 1)
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = torch.softmax(logits, dim=-1)  # (B, V)
    if top_p is not None and top_p < 1.0:
        sorted_probs, order = torch.sort(probs, dim=-1, descending=True)
        drop = sorted_probs.cumsum(-1) - sorted_probs >= top_p  # the first token of a row is always kept
        sorted_probs = sorted_probs.masked_fill(drop, 0.0)
        probs = torch.zeros_like(probs).scatter_(-1, order, sorted_probs)
        probs = probs / probs.sum(dim=-1, keepdim=True)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


class KVCache:
    """Keys and values of every layer for a batch of rows, right-aligned (left-padded).

    k[i], v[i]: (B, H, capacity, D), allocated at the first forward in the dtype the keys come in (bf16 under
    autocast). Columns [0, length) are filled; row b's first `pads[b]` columns are padding, so its real
    tokens sit at columns pads[b] .. length - 1, at positions 0 .. length - 1 - pads[b].
    """

    def __init__(self, model: Transformer, pads: list[int], capacity: int, device: torch.device) -> None:
        self.n_layers, self.n_heads, self.head_dim = model.cfg.n_layers, model.cfg.n_heads, model.cfg.head_dim
        self.capacity, self.length = capacity, 0
        self.k: list[torch.Tensor | None] = [None] * self.n_layers
        self.v: list[torch.Tensor | None] = [None] * self.n_layers
        self._set_pads(pads, device)

    def _set_pads(self, pads: list[int], device: torch.device) -> None:
        self.pads_list = list(pads)
        self.pads = torch.tensor(pads, dtype=torch.long, device=device)  # (B,)
        self.padded = any(pads)

    @property
    def batch(self) -> int:
        return len(self.pads_list)

    def row_lengths(self) -> list[int]:
        """The real tokens each row holds."""
        return [self.length - p for p in self.pads_list]

    def layer(self, i: int, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.k[i] is None:
            shape = (self.batch, self.n_heads, self.capacity, self.head_dim)  # (B, H, T_max, D)
            self.k[i] = torch.empty(shape, dtype=like.dtype, device=like.device)
            self.v[i] = torch.empty(shape, dtype=like.dtype, device=like.device)
        return self.k[i], self.v[i]

    def keep_rows(self, rows: list[int]) -> None:
        """Only these rows (indices into the batch) from now on, in this order."""
        index = torch.tensor(rows, dtype=torch.long, device=self.pads.device)
        for i in range(self.n_layers):
            if self.k[i] is not None:
                self.k[i], self.v[i] = self.k[i].index_select(0, index), self.v[i].index_select(0, index)
        self._set_pads([self.pads_list[r] for r in rows], self.pads.device)

    def positions(self, start: int, T: int) -> torch.Tensor:
        """(B, T) rotary positions of columns start .. start + T - 1 (pad columns: 0)."""
        cols = torch.arange(start, start + T, device=self.pads.device)
        return (cols[None, :] - self.pads[:, None]).clamp_(min=0)

    def mask(self, start: int, T: int) -> tuple[torch.Tensor | None, bool]:
        """(attn_mask, is_causal) for T queries at columns start .. start + T - 1 over keys 0 .. start + T - 1.
        No mask where none is needed: an unpadded prefill is causal (the training forward's own attention),
        one query attends to every key. Otherwise a boolean (B, 1, T, start + T) mask, True where allowed:
        causal, and no real query sees a pad column (a pad query sees itself, so no row is empty)."""
        if not self.padded and (start == 0 or T == 1):
            return None, start == 0 and T > 1
        q_cols = torch.arange(start, start + T, device=self.pads.device)[:, None]  # (T, 1)
        k_cols = torch.arange(start + T, device=self.pads.device)[None, :]  # (1, S)
        causal = k_cols <= q_cols  # (T, S)
        real_key = k_cols[None] >= self.pads[:, None, None]  # (B, 1, S)
        allowed = causal[None] & (real_key | (k_cols == q_cols)[None])  # (B, T, S)
        return allowed[:, None], False  # (B, 1, T, S)


def _blocks(model: Transformer) -> list[nn.Module]:
    """The model's blocks, unwrapped from activation-checkpointing wrappers (their submodules are what runs)."""
    blocks = []
    for block in model.layers:
        block = getattr(block, "_checkpoint_wrapped_module", block)
        if FSDPModule is not None and isinstance(block, FSDPModule):
            raise ValueError("the K/V cache runs a block's submodules, which FSDP-sharded blocks cannot: "
                             "generate with use_cache=False, or from an exported model")
        blocks.append(block)
    return blocks


@torch.no_grad()
def forward_cached(model: Transformer, idx: torch.Tensor, cache: KVCache, last_only: bool = False) -> torch.Tensor:
    """The model's forward for idx (B, T), the tokens at columns cache.length .. cache.length + T - 1, attending
    to the cached keys and values before them; stores this chunk's keys and values and advances the cache.
    Returns logits (B, T, V), or (B, 1, V) for the last position alone with last_only."""
    B, T = idx.shape
    start, H, D = cache.length, cache.n_heads, cache.head_dim
    end = start + T
    if end > cache.capacity:
        raise ValueError(f"the K/V cache holds {cache.capacity} columns; {start} + {T} do not fit")
    if B != cache.batch:
        raise ValueError(f"the K/V cache has {cache.batch} rows, the input {B}")
    if cache.padded:  # per-row positions: the rows flattened into one sequence, a table row a token
        pos = cache.positions(start, T).flatten()  # (B*T,)
        cos, sin = model.rope_cos[pos], model.rope_sin[pos]  # (B*T, D/2)
    else:
        cos, sin = model.rope_cos[start:end], model.rope_sin[start:end]  # (T, D/2)

    def rope(x: torch.Tensor) -> torch.Tensor:  # x: (B, T, H, D)
        if cache.padded:
            return apply_rope(x.reshape(1, B * T, H, D), cos, sin).view(B, T, H, D)
        return apply_rope(x, cos, sin)

    mask, is_causal = cache.mask(start, T)  # None or (B, 1, T, end)
    h = model.embed(idx)  # (B, T, C)
    C = h.shape[-1]
    for i, block in enumerate(_blocks(model)):
        attn = block.attn
        q, k, v = attn.qkv(block.attn_norm(h)).view(B, T, 3, H, D).unbind(2)  # 3 x (B, T, H, D)
        q, k = rope(q), rope(k)
        k_cache, v_cache = cache.layer(i, k)  # 2 x (B, H, T_max, D)
        k_cache[:, :, start:end] = k.transpose(1, 2)  # (B, H, T, D)
        v_cache[:, :, start:end] = v.transpose(1, 2)
        y = F.scaled_dot_product_attention(q.transpose(1, 2), k_cache[:, :, :end], v_cache[:, :, :end],
                                           attn_mask=mask, is_causal=is_causal)  # (B, H, T, D)
        h = h + attn.out(y.transpose(1, 2).reshape(B, T, C))  # (B, H, T, D) -> (B, T, C)
        h = h + block.ffn(block.ffn_norm(h))
    cache.length = end
    if last_only:
        h = h[:, -1:]  # (B, 1, C)
    return model.output.proj(model.output.norm(h))  # (B, T or 1, V)


def prefill(model: Transformer, windows: list[list[int]], device: torch.device) -> tuple[KVCache, torch.Tensor]:
    """A new cache holding `windows` (each 1 .. context_length tokens), right-aligned; the last logits (B, V).
    Room for every row to grow to context_length tokens."""
    longest = max(len(w) for w in windows)
    pads = [longest - len(w) for w in windows]
    cache = KVCache(model, pads, model.cfg.context_length + max(pads), device)
    idx = torch.tensor([[0] * p + w for p, w in zip(pads, windows)], dtype=torch.long, device=device)  # (B, T)
    return cache, forward_cached(model, idx, cache, last_only=True)[:, -1]


@torch.no_grad()
def generate_batch(model: Transformer, prompts: list[list[int]], max_new_tokens: int, temperature: float = 1.0,
                   top_k: int | None = None, top_p: float | None = None, stop_id: int | None = None,
                   generator: torch.Generator | None = None, use_cache: bool = True,
                   overflow_keep: int | None = None) -> list[list[int]]:
    """The token ids after each prompt (the prompt excluded), each ending before `stop_id` if it samples it.
    One batch through the K/V cache (see the module's docstring); use_cache=False runs the cacheless sampler
    on one prompt after the other. A row's greedy tokens equal those of `generate` on its prompt alone;
    sampled rows draw from one generator in turn, so they differ from sampling one prompt at a time."""
    if any(len(p) == 0 for p in prompts):
        raise ValueError("every prompt needs at least one token")
    if not use_cache:
        return [_generate_cacheless(model, p, max_new_tokens, temperature, top_k, top_p, stop_id, generator)
                for p in prompts]
    L = model.cfg.context_length
    keep = L // 2 if overflow_keep is None else overflow_keep
    if not 1 <= keep <= L:
        raise ValueError(f"overflow_keep must be in [1, context_length={L}], got {overflow_keep}")
    outs: list[list[int]] = [[] for _ in prompts]
    if max_new_tokens <= 0 or not prompts:
        return outs
    seqs = [list(p) for p in prompts]  # prompt + generated tokens, for re-prefills
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda")
    try:
        # Submodules run eagerly (compiled blocks' graphs are never entered); force_eager for any compiled part.
        with torch.compiler.set_stance("force_eager"), autocast:
            rows = list(range(len(prompts)))  # the prompt each batch row generates for
            cache, logits = prefill(model, [s[-L:] for s in seqs], device)  # logits: (B, V)
            while True:
                next_ids = sample_rows(logits, temperature, top_k, top_p, generator).tolist()
                going = []  # batch rows still generating
                for r, (row, t) in enumerate(zip(rows, next_ids)):
                    if t == stop_id:
                        continue
                    seqs[row].append(t)
                    outs[row].append(t)
                    if len(outs[row]) < max_new_tokens:
                        going.append(r)
                if not going:
                    break
                if len(going) < len(rows):
                    cache.keep_rows(going)
                    rows = [rows[r] for r in going]
                lengths = cache.row_lengths()
                if max(lengths) >= L:  # a row's window is full: re-prefill (the full rows keep their last `keep`)
                    windows = [seqs[row][-(keep if n >= L else n + 1):] for row, n in zip(rows, lengths)]
                    cache, logits = prefill(model, windows, device)
                else:  # feed the sampled tokens: (B, 1)
                    idx = torch.tensor([[seqs[row][-1]] for row in rows], dtype=torch.long, device=device)
                    logits = forward_cached(model, idx, cache)[:, -1]
    finally:
        model.train(was_training)
    return outs


@torch.no_grad()
def generate(model: Transformer, prompt: list[int], max_new_tokens: int, temperature: float = 1.0,
             top_k: int | None = None, top_p: float | None = None, stop_id: int | None = None,
             generator: torch.Generator | None = None, use_cache: bool = True,
             overflow_keep: int | None = None) -> list[int]:
    """Token ids after `prompt` (the prompt excluded), ending before `stop_id` if it is sampled. With the K/V
    cache by default; use_cache=False runs the model's full forward for every token. Within the context length
    both give the same tokens (greedy; sampled too, from the same generator, up to float rounding)."""
    if not use_cache:
        return _generate_cacheless(model, prompt, max_new_tokens, temperature, top_k, top_p, stop_id, generator)
    return generate_batch(model, [prompt], max_new_tokens, temperature, top_k, top_p, stop_id, generator,
                          overflow_keep=overflow_keep)[0]


@torch.no_grad()
def _generate_cacheless(model: Transformer, prompt: list[int], max_new_tokens: int, temperature: float = 1.0,
                        top_k: int | None = None, top_p: float | None = None, stop_id: int | None = None,
                        generator: torch.Generator | None = None) -> list[int]:
    """The model's forward over the last context_length tokens for every new token."""
    if not prompt:
        raise ValueError("the prompt needs at least one token")
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    ids = list(prompt)
    out: list[int] = []
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda")
    # Every step has a new sequence length: run eagerly rather than recompile per length.
    try:
        with torch.compiler.set_stance("force_eager"), autocast:
            for _ in range(max_new_tokens):
                context = torch.tensor([ids[-model.cfg.context_length:]], device=device)
                next_id = sample_next(model(context)[0, -1], temperature, top_k, top_p, generator)
                if next_id == stop_id:
                    break
                ids.append(next_id)
                out.append(next_id)
    finally:
        model.train(was_training)
    return out

"""Evaluate a model on text files: loss, perplexity and bits per byte (`cs336-eval`).

    cs336-eval MODEL FILE [FILE ...] [--max_tokens N] [--batch_size B] [--device D] [--json]

MODEL is a run directory (its newest intact checkpoint), a checkpoints/step_N directory, a file written by
`cs336-generate --export`, or a transformers Llama directory written by `cs336-export`. Each FILE (UTF-8 text) is
encoded with the model's own tokenizer, in bounded chunks, and read as consecutive windows of context_length + 1
tokens that overlap by one token (the last token of a window is the first of the next), as the validation pass
of training reads its data: every token of a file after its first is predicted once, from the tokens before it
in its window; a file's last (n_tokens - 1) % context_length tokens, less than one window, are left out.
--max_tokens N stops after N predicted tokens over all files (the last window is cut short).

loss: the sum of the predicted tokens' cross-entropies (nats) over their number; perplexity: exp(loss);
bits per byte: the same sum / ln 2 over the UTF-8 bytes of the predicted tokens' text, which does not depend on
the tokenizer, so models with different tokenizers compare.
"""

from __future__ import annotations

import argparse
import math
from itertools import islice
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from cs336_basics.data.corpus import check_text_file, iter_chunks
from cs336_basics.data.encode_workers import cpu_cores, encode_texts
from cs336_basics.data.tokenizer import end_token, token_bytes, tokenizer_vocab_size
from cs336_basics.data.tokens import CHUNKS_PER_BATCH
from cs336_basics.errors import UserError
from cs336_basics.model.transformer import Transformer
from cs336_basics.training.checkpoint import load_model_weights, model_from_weights, tokenizer_from_json



def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0], epilog=__doc__.split("\n", 2)[2],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", type=Path, help="a run directory, a checkpoints/step_N directory, a file written by "
                   "cs336-generate --export, or a transformers Llama directory written by cs336-export")
    p.add_argument("data", type=Path, nargs="+", help="UTF-8 text files to evaluate on")
    p.add_argument("--max_tokens", type=int, default=None, help="stop after this many predicted tokens "
                   "(default: every whole window of every file)")
    p.add_argument("--batch_size", type=int, default=8, help="windows per forward pass")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of readable lines")
    args = p.parse_args(argv)
    if args.batch_size <= 0:
        raise UserError(f"--batch_size must be positive, got {args.batch_size}")
    if args.max_tokens is not None and args.max_tokens <= 0:
        raise UserError(f"--max_tokens must be positive, got {args.max_tokens}")
    from cs336_basics.cli.train import resolve_device

    device = resolve_device(args.device)
    for path in args.data:
        check_text_file(path)
    if not args.model.exists():
        raise UserError(f"{args.model} does not exist; pass a run directory, a checkpoints/step_N directory, a file "
                        "written by cs336-generate --export or a directory written by cs336-export")

    state = load_hf_dir(args.model) if is_hf_dir(args.model) else load_model_weights(args.model)
    tokenizer = tokenizer_from_json(state["tokenizer"], state["path"])
    model = model_from_weights(state, device)
    result = evaluate(model, tokenizer, args.data, args.batch_size, args.max_tokens, device)
    result = {"model": state["path"], "step": state.get("step"), **result}
    if args.json:
        from cs336_basics.training.metrics import dumps_strict

        print(dumps_strict(result))
        return 0
    for f in result["files"] if len(result["files"]) > 1 else []:
        print(f"{f['path']}: {describe(f)}")
    step = f" (step {result['step']})" if result["step"] is not None else ""
    print(f"{result['model']}{step}: {describe(result)}")
    return 0


def describe(r: dict[str, Any]) -> str:
    return (f"loss {r['loss']:.4f} nats/token, perplexity {r['perplexity']:.3f}, {r['bits_per_byte']:.4f} bits/byte "
            f"({r['tokens']:,} tokens, {r['bytes']:,} bytes)")


# ----------------------------------------------------------------------------------------------- loading
def is_hf_dir(path: Path) -> bool:
    """A transformers model directory (config.json), not a run or checkpoint directory."""
    from cs336_basics.interop.hf import HF_CONFIG
    from cs336_basics.training.checkpoint import META, checkpoint_dir

    return (path.is_dir() and (path / HF_CONFIG).is_file() and not (path / META).exists()
            and not checkpoint_dir(path).exists())


def load_hf_dir(hf_dir: Path) -> dict[str, Any]:
    """A transformers Llama directory as load_model_weights returns a checkpoint ({"model", "model_config", "step",
    "path", "tokenizer"}), read by cs336_basics.interop.hf's import functions, with nothing written."""
    from cs336_basics.interop.hf import from_hf_state_dict, read_hf_header, read_hf_weights

    model_config, tokenizer = read_hf_header(hf_dir, "evaluation")
    weights = from_hf_state_dict(read_hf_weights(hf_dir), model_config, where=str(hf_dir))
    return {"model": weights, "model_config": model_config, "step": None, "path": str(hf_dir), "tokenizer": tokenizer}


# ----------------------------------------------------------------------------------------------- evaluation
def iter_token_blocks(path: Path, tokenizer) -> Any:  # noqa: ANN001
    """The token ids of a file, a block of chunks at a time (bounded memory), encoded as training encodes it (the
    documents of a JSON Lines file joined by the tokenizer's end-of-document token, one chunk per core a batch)."""
    chunks = iter_chunks(path, separator=end_token(tokenizer))
    while batch := list(islice(chunks, min(CHUNKS_PER_BATCH, cpu_cores()))):
        ids, _ = encode_texts(tokenizer, batch, np.int64)
        if ids.size:
            yield ids


def iter_windows(blocks, T: int, budget: int | None):  # noqa: ANN001
    """Windows of T + 1 tokens, each starting at the last token of the one before; with a budget of predicted
    tokens, the last window holds budget + 1 tokens or fewer and nothing follows."""
    pending = np.zeros(0, dtype=np.int64)
    for block in blocks:
        pending = np.concatenate([pending, block])
        while len(pending) >= T + 1:
            take = T if budget is None else min(T, budget)
            yield pending[: take + 1]
            if budget is not None:
                budget -= take
                if budget == 0:
                    return
            pending = pending[T:]
    if budget is not None and len(pending) > 1 and budget < T:  # the budget ends inside this partial window
        yield pending[: min(budget, len(pending) - 1) + 1]


@torch.no_grad()
def window_nats(model: Transformer, windows: list[np.ndarray], device: torch.device) -> float:
    """The summed cross-entropy (nats, float64) of every predicted token of equal-length windows."""
    batch = torch.from_numpy(np.stack(windows)).to(device)
    logits = model(batch[:, :-1])
    nats = F.cross_entropy(logits.float().flatten(0, 1), batch[:, 1:].flatten(), reduction="none")
    return float(nats.double().sum())


def summary(path: str | None, nats: float, tokens: int, n_bytes: int) -> dict[str, Any]:
    loss = nats / tokens
    out = {"path": path} if path is not None else {}
    return {**out, "loss": loss, "perplexity": math.exp(loss) if loss < 700 else math.inf,
            "bits_per_byte": nats / math.log(2) / n_bytes, "tokens": tokens, "bytes": n_bytes, "nats": nats}


def evaluate(model: Transformer, tokenizer, paths: list[Path], batch_size: int, max_tokens: int | None,  # noqa: ANN001
             device: torch.device) -> dict[str, Any]:
    """{"files": [summary of each file evaluated], and the summary over all of them}."""
    T = model.cfg.context_length
    if tokenizer_vocab_size(tokenizer) > model.cfg.vocab_size:
        raise UserError(f"the tokenizer has {tokenizer_vocab_size(tokenizer)} tokens, more than the model's vocabulary "
                        f"({model.cfg.vocab_size}); the model and its tokenizer do not belong together")
    sizes = token_bytes(tokenizer)
    files, budget = [], max_tokens
    for path in paths:
        nats, tokens, n_bytes, pending = 0.0, 0, 0, []

        def flush() -> None:
            nonlocal nats, tokens, n_bytes, pending
            if pending:
                nats += window_nats(model, pending, device)
                for w in pending:
                    tokens += len(w) - 1
                    n_bytes += int(sizes[w[1:]].sum())
                pending = []

        for window in iter_windows(iter_token_blocks(path, tokenizer), T, budget):
            if pending and len(window) != len(pending[0]):  # a window cut short by --max_tokens: its own batch
                flush()
            pending.append(window)
            if len(pending) == batch_size:
                flush()
        flush()
        if tokens == 0:
            raise UserError(f"data file {path} has fewer than context_length + 1 = {T + 1} tokens, too little for "
                            "one window; give more text")
        files.append(summary(str(path), nats, tokens, n_bytes))
        if budget is not None:
            budget -= tokens
            if budget == 0:
                break
    total = summary(None, sum(f["nats"] for f in files), sum(f["tokens"] for f in files),
                    sum(f["bytes"] for f in files))
    return {**total, "context_length": T, "files": files}


def cli() -> int:
    from cs336_basics.cli import run_main

    return run_main(main)

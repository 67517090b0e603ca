"""Sample text from a run directory, a checkpoint or an exported model (`cs336-generate`, `generate.py`)."""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import torch

from cs336_basics.data.tokenizer import encode_prompt, eot_id
from cs336_basics.errors import UserError
from cs336_basics.files import check_writable_dir
from cs336_basics.generation import generate_batch
from cs336_basics.training.checkpoint import export_model, load_model_weights, model_from_weights, tokenizer_from_json


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("checkpoint", type=Path, help="a run directory (its newest intact checkpoint), a checkpoints/step_N directory, "
                   "or a file written by --export")
    p.add_argument("--prompt", action="append", metavar="TEXT",
                   help="text to continue; repeat it for several prompts, sampled together as one batch (default: 'The ')")
    p.add_argument("--max_new_tokens", type=int, default=200)
    p.add_argument("--temperature", type=float, default=0.8, help="0 for greedy decoding")
    p.add_argument("--top_k", type=int, default=None)
    p.add_argument("--top_p", type=float, default=0.95)
    p.add_argument("--num_samples", type=int, default=1, help="samples per prompt")
    p.add_argument("--no_cache", action="store_true",
                   help="run the model's full forward for every new token instead of the K/V cache (slower; the same "
                        "tokens within the context length)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--export", type=Path, metavar="FILE",
                   help="instead of sampling, write the weights as one safetensors file with the config and the "
                        "tokenizer in its metadata (from sharded runs too); generate samples from it alone")
    args = p.parse_args(argv)
    args.prompt = args.prompt or ["The "]
    check_args(args)

    state = load_model_weights(args.checkpoint)  # safetensors and JSON: nothing loaded can run code
    if args.export:
        export_model(state, args.export)
        print(f"wrote {args.export}: {len(state['model'])} tensors, step {state['step']}, with the config and the "
              f"tokenizer (safetensors); sample from it with generate.py {args.export}")
        return 0
    tokenizer = tokenizer_from_json(state["tokenizer"], state["path"])
    device = torch.device(args.device)
    model = model_from_weights(state, device)
    generator = torch.Generator(device).manual_seed(args.seed)
    texts = [text for text in args.prompt for _ in range(args.num_samples)]
    prompts = [encode_prompt(tokenizer, text) for text in texts]
    outputs = generate_batch(model, prompts, args.max_new_tokens, args.temperature, args.top_k, args.top_p,
                             stop_id=eot_id(tokenizer), generator=generator, use_cache=not args.no_cache)
    for i, (text, ids) in enumerate(zip(texts, outputs)):
        print(f"--- sample {i + 1} (step {state['step']}) ---\n{text}{tokenizer.decode(ids)}")
    return 0


def check_args(args: argparse.Namespace) -> None:
    """Every flag, before the checkpoint is loaded: one line naming the flag and the fix."""
    if args.max_new_tokens <= 0 or args.num_samples <= 0:
        raise UserError("--max_new_tokens and --num_samples must be positive")
    if not math.isfinite(args.temperature) or args.temperature < 0:
        raise UserError(f"--temperature must be a finite number >= 0 (0: greedy decoding), got {args.temperature}")
    if args.top_k is not None and args.top_k < 1:
        raise UserError(f"--top_k must be >= 1 (the k most likely tokens; omit it to keep all), got {args.top_k}")
    if args.top_p is not None and not 0 < args.top_p <= 1:  # NaN fails this too
        raise UserError(f"--top_p must be in (0, 1], got {args.top_p}")
    if not 0 <= args.seed < 2**63:
        raise UserError(f"--seed must be >= 0, got {args.seed}")
    if args.export is not None:
        if args.export.is_dir():
            raise UserError(f"--export {args.export} is a directory; name the file to write, e.g. {args.export}/model.pt")
        check_writable_dir(args.export.parent, f"--export {args.export}: the directory", "choose another path")
        return
    if any(text == "" for text in args.prompt):
        raise UserError("--prompt is empty; the model continues a prompt of at least one token (e.g. --prompt \"The \")")
    from cs336_basics.cli.train import resolve_device

    resolve_device(args.device)


def cli() -> int:
    from cs336_basics.cli import run_main

    return run_main(main)

"""Does an exported transformers directory compute what the run it came from computes? Logits and greedy tokens.

    python benchmarks/hf_parity.py RUN_DIR HF_DIR --data val.txt --device cuda --out parity.json

Loads the run's newest checkpoint into our Transformer and HF_DIR (written by `cs336-export RUN_DIR HF_DIR`)
with `AutoModelForCausalLM.from_pretrained` and `AutoTokenizer.from_pretrained`, no custom code, both in float32
on `--device`; encodes the start of `--data` with each side's tokenizer (they must give the same ids), compares
the logits of `--windows` windows of the model's context length (the largest absolute difference, and the
largest relative to the logits' own scale), and `--new_tokens` greedy tokens from a prompt of each window
(ours with the K/V cache, transformers' generate with its own). Float32 on a GPU uses TF32 nowhere here:
matmul precision is set to "highest" so that the two implementations differ by summation order only.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cs336_basics.data.corpus import iter_text_chunks  # noqa: E402
from cs336_basics.generation import generate  # noqa: E402
from cs336_basics.training.checkpoint import load_model_weights, model_from_weights, tokenizer_from_json  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("run", type=Path)
    p.add_argument("hf_dir", type=Path)
    p.add_argument("--data", type=Path, required=True, help="a UTF-8 text file: the windows come from its start")
    p.add_argument("--windows", type=int, default=4)
    p.add_argument("--new_tokens", type=int, default=32)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--out", type=Path, default=None, help="also write the result as JSON here")
    args = p.parse_args()
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_float32_matmul_precision("highest")
    device = torch.device(args.device)
    state = load_model_weights(args.run)
    ours = model_from_weights(state, device).float().eval()
    tokenizer = tokenizer_from_json(state["tokenizer"], state["path"])
    hf = AutoModelForCausalLM.from_pretrained(args.hf_dir, torch_dtype=torch.float32).to(device).eval()
    hf_tokenizer = AutoTokenizer.from_pretrained(args.hf_dir)

    T = ours.cfg.context_length
    text = next(iter_text_chunks(args.data))
    ids = tokenizer.encode(text, add_special_tokens=False).ids[: args.windows * T]
    hf_ids = hf_tokenizer(text, add_special_tokens=False)["input_ids"][: args.windows * T]
    if len(ids) < args.windows * T:
        raise SystemExit(f"error: the first chunk of {args.data} holds {len(ids)} tokens, fewer than "
                         f"{args.windows} windows of {T}")
    x = torch.tensor(ids, device=device).view(args.windows, T)
    with torch.no_grad():
        a, b = ours(x).float(), hf(x).logits.float()
    diff = (a - b).abs()
    prompt = ids[: T // 2]
    new_tokens = min(args.new_tokens, T - len(prompt))  # within the context: no sliding window on either side
    ours_tokens = generate(ours, prompt, new_tokens, temperature=0.0)
    with torch.no_grad():
        hf_out = hf.generate(torch.tensor([prompt], device=device), max_new_tokens=new_tokens, do_sample=False,
                             min_new_tokens=new_tokens, pad_token_id=hf.config.eos_token_id)
    hf_tokens = hf_out[0, len(prompt):].tolist()
    result = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch": torch.__version__, "transformers": __import__("transformers").__version__,
        "run": str(args.run), "step": state.get("step"), "hf_dir": str(args.hf_dir), "windows": args.windows,
        "context_length": T, "vocab_size": ours.cfg.vocab_size,
        "same_token_ids": ids == hf_ids,
        "max_abs_logit_diff": diff.max().item(),
        "max_abs_logit": a.abs().max().item(),
        "max_diff_relative_to_max_logit": (diff.max() / a.abs().max()).item(),
        "same_argmax_fraction": (a.argmax(-1) == b.argmax(-1)).float().mean().item(),
        "greedy_tokens": new_tokens, "same_greedy_tokens": ours_tokens == hf_tokens,
    }
    print(json.dumps(result, indent=1))
    if args.out:
        args.out.write_text(json.dumps(result, indent=1) + "\n")
    return 0 if result["same_token_ids"] and result["max_diff_relative_to_max_logit"] < 1e-4 else 1


if __name__ == "__main__":
    sys.exit(main())

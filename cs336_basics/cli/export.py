"""Export a run as a Hugging Face transformers Llama directory, or import one as a run (`cs336-export`).

    cs336-export RUN_DIR_OR_CHECKPOINT OUT_DIR [--dtype float32|bfloat16]
        writes config.json, model.safetensors, generation_config.json and the tokenizer files to OUT_DIR (new or
        empty), which AutoModelForCausalLM.from_pretrained and AutoTokenizer.from_pretrained load without custom
        code. The source may be a run directory (its newest intact checkpoint), a checkpoints/step_N directory
        (one-process or sharded) or a file written by `cs336-generate --export`.

    cs336-export --from-hf HF_DIR OUT_RUN_DIR
        writes a run directory OUT_RUN_DIR (new or empty) with one checkpoint, checkpoints/step_0000000, from a
        transformers Llama directory (config.json, model.safetensors or its sharded index, tokenizer.json with an
        end-of-document token: <|endoftext|>, </s>, ...); `cs336-generate OUT_RUN_DIR` samples from it. Configs
        this project's model cannot represent (grouped-query attention, biases, rope scaling, another activation)
        are refused.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from cs336_basics.errors import UserError
from cs336_basics.files import check_writable_dir
from cs336_basics.interop.hf import DTYPES, export_hf, import_hf


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0], epilog=__doc__.split("\n", 2)[2],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("source", type=Path, help="a run directory, a checkpoints/step_N directory or a file written by "
                   "cs336-generate --export; with --from-hf, a transformers Llama directory")
    p.add_argument("out_dir", type=Path, help="the directory to write (new or empty): a transformers model "
                   "directory; with --from-hf, a run directory")
    p.add_argument("--from-hf", action="store_true", help="import: SOURCE is a transformers Llama directory and "
                   "OUT_DIR the run directory to write")
    p.add_argument("--dtype", choices=tuple(DTYPES), default=None,
                   help="the exported weights' dtype (default float32); imports are always float32")
    args = p.parse_args(argv)
    if args.from_hf and args.dtype is not None:
        raise UserError("--dtype applies to exports; an imported run's weights are float32 (drop --dtype)")
    if args.out_dir.exists() and (not args.out_dir.is_dir() or any(args.out_dir.iterdir())):
        raise UserError(f"{args.out_dir} exists and is not an empty directory; choose a new directory")
    check_writable_dir(args.out_dir.absolute().parent, f"{args.out_dir}: the directory", "choose another path")

    if args.from_hf:
        checkpoint = import_hf(args.source, args.out_dir)
        print(f"wrote {checkpoint} from {args.source}; sample from it with cs336-generate {args.out_dir}")
        return 0
    export_hf(args.source, args.out_dir, args.dtype or "float32")
    print(f"wrote {args.out_dir} ({args.dtype or 'float32'}): load it with "
          f"transformers.AutoModelForCausalLM.from_pretrained({str(args.out_dir)!r}) and AutoTokenizer")
    return 0


def cli() -> int:
    from cs336_basics.cli import run_main

    return run_main(main)

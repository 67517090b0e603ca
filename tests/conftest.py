from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"
sys.path.insert(0, str(ROOT))

torch.set_num_threads(2)


@pytest.fixture(autouse=True)
def fresh_compiler_caches():
    """Each test compiles from a fresh dynamo cache, so one test's compiled functions never count against
    another's recompilation limit (the order of the test files would otherwise decide whether a compiled test
    hits it). Inductor's compiled kernels stay cached."""
    torch._dynamo.reset()
    yield


@pytest.fixture
def shakespeare() -> Path:
    path = SHARED_DATA / "tinyshakespeare.txt"
    if not path.exists():
        pytest.skip(f"{path} not present")
    return path


@pytest.fixture
def small_corpus(tmp_path: Path) -> Path:
    """~60 KB of mixed-script text with document separators."""
    docs = []
    for i in range(300):
        docs.append(f"Document {i}: the quick brown fox jumps over the lazy dog {i * 7}. "
                    f"Ünïcödé ✓ 日本語 {i % 13} — «quoted» text.\n" * 2)
    path = tmp_path / "corpus.txt"
    path.write_text("<|endoftext|>".join(docs), encoding="utf-8")
    return path


@pytest.fixture
def tiny_cli(tmp_path: Path):
    """(train(argv) -> exit code, base arguments) for CLI tests of the training flags: the test preset on a tiny
    repeated corpus, 2-sequence micro-batches, an evaluation every 2 steps, a 288-token vocabulary (16 divides
    it, as the float8 head needs); each test adds --out_dir, --max_steps and the flags under test."""
    from cs336_basics.cli import run_main
    from cs336_basics.cli.train import main as train_main

    corpus = tmp_path / "corpus.txt"
    corpus.write_text("the quick brown fox jumps over the lazy dog. " * 400)
    base = ["--preset", "test", "--train_data", corpus, "--cache_dir", tmp_path / "cache", "--batch_size", 2,
            "--eval_interval", 2, "--eval_steps", 1, "--sample_tokens", 0, "--vocab_size", 288]

    def train(argv: list) -> int:
        return run_main(train_main, [str(a) for a in argv])

    return train, base

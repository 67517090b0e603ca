from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"
sys.path.insert(0, str(ROOT))

torch.set_num_threads(2)


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

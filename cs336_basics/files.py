"""Files written whole or not at all: a temporary name beside the target, then an atomic rename, so a crash
or Ctrl-C leaves the previous version (and at worst a stray `.tmp`), never a half-written file."""

from __future__ import annotations

import os
from pathlib import Path


def write_text_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)

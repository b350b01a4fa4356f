"""Shared by every benchmark: replace one ``## Section`` of benchmarks/RESULTS.md atomically."""
from __future__ import annotations

import os
import platform
import re
import tempfile
from pathlib import Path

import torch

__all__ = ["RESULTS", "write_section", "machine"]

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"


def machine() -> str:
    """One line naming the machine the numbers come from."""
    return (f"{platform.machine()}, {os.cpu_count()} cores, {platform.python_version()}, "
            f"torch {torch.__version__}, {torch.get_num_threads()} thread(s)")


def write_section(heading: str, body: str, path: Path = RESULTS) -> None:
    """Put ``## heading`` + ``body`` in place of the old section (or at the end)."""
    text = path.read_text() if path.exists() else "# slimify benchmark results\n"
    block = f"## {heading}\n\n{body.strip()}\n"
    pattern = re.compile(rf"^## {re.escape(heading)}\n.*?(?=^## |\Z)", re.S | re.M)
    text = pattern.sub(lambda _: block + "\n", text) if pattern.search(text) else text.rstrip() + "\n\n" + block
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".results-")
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)

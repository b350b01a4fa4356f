"""Changed copies of .slim files, for tests of what load refuses."""
from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from safetensors.torch import load_file, save_file

from slimify.store.slimfile import META_KEY, read_config, tensors_digest


def rewrite_slim(src: Path, dst: Path, config_change: Callable[[dict], None] | None = None,
                 tensor_change: Callable[[dict], None] | None = None, fix_digest: bool = True) -> Path:
    """Copy a .slim file, changing its config and/or tensors (the checksum re-computed if asked)."""
    config, tensors = read_config(src), load_file(str(src))
    if tensor_change:
        tensor_change(tensors)
    if config_change:
        config_change(config)
    if fix_digest:
        config["tensors_sha256"] = tensors_digest(tensors)
    save_file(tensors, str(dst), metadata={META_KEY: json.dumps(config)})
    return dst

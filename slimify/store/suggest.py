"""Helpful messages for wrong inputs: the closest model names to a misspelt one, and what a file
given where a ``.slim`` is expected really is (a ``.pt2`` program, a pickled ``.pt``, ONNX)."""
from __future__ import annotations

import difflib
import zipfile
from pathlib import Path

__all__ = ["closest_models", "foreign_file"]


def closest_models(spec: str, n: int = 3) -> list[str]:
    """Known model names closest to ``spec`` (timm's list, or torchvision's for ``torchvision:``)."""
    prefix, _, name = spec.rpartition(":")
    if prefix == "torchvision":
        import torchvision

        return [f"torchvision:{m}" for m in difflib.get_close_matches(name, torchvision.models.list_models(), n)]
    if prefix in ("", "timm"):
        import timm

        return difflib.get_close_matches(name, timm.list_models(), n, cutoff=0.7)
    return []


def foreign_file(path: Path) -> str | None:
    """What ``path`` is, if it is a known kind of model file that is not a ``.slim``, and which
    command or option takes it; None otherwise."""
    with path.open("rb") as f:
        head = f.read(4)
    if head == b"PK\x03\x04":  # a zip archive: torch.export (.pt2) or torch.save (.pt)
        try:
            with zipfile.ZipFile(path) as archive:
                names = archive.namelist()
        except zipfile.BadZipFile:
            return None
        if any(n.endswith("archive_format") or "/models/" in n for n in names):
            return (f"{path} is a torch.export program (.pt2), not a .slim file: run it with "
                    "torch.export.load(path).module(); slimify commands take the .slim it was exported from")
        if any(n.endswith("data.pkl") for n in names):
            return (f"{path} is a torch.save file (.pt), not a .slim file: plain weights go to "
                    "'slimify convert MODEL --checkpoint FILE'; a slimify training checkpoint to "
                    "'slimify finetune/eval/calibrate FILE'")
    if path.suffix.lower() == ".onnx":
        return f"{path} is an ONNX file, not a .slim file: run it with onnxruntime; slimify commands take the .slim"
    if head[:2] == b"\x80\x02" or path.suffix.lower() in (".pt", ".pth"):  # legacy pickle
        return (f"{path} is a pickled torch file, not a .slim file: plain weights go to "
                "'slimify convert MODEL --checkpoint FILE'")
    return None

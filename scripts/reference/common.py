"""Shared helpers for the reference-fixture scripts (deterministic, offline).

Only the scripts in this folder import this module; the Node.js tests read the
files these scripts write (JSON + safetensors) and never need Python.
"""

from __future__ import annotations

import json
import os
import platform
import unicodedata
from pathlib import Path

# huggingface_hub reads these when it is imported, so scripts import this module first.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

REPO_ROOT = Path(__file__).resolve().parents[2]
FIXTURES = REPO_ROOT / "test" / "fixtures"
MINILM_DIR = REPO_ROOT / ".cache" / "models" / "all-MiniLM-L6-v2"


def deterministic(threads: int = 1) -> None:
    """Make torch CPU math repeatable (offline mode is set when this module is imported).

    One thread keeps reduction order fixed, so reruns give bit-identical files.
    """
    import torch

    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True)


def versions() -> dict:
    """Library versions recorded into every fixture's JSON (provenance)."""
    import numpy
    import safetensors
    import tokenizers
    import torch
    import transformers

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "tokenizers": tokenizers.__version__,
        "safetensors": safetensors.__version__,
        "numpy": numpy.__version__,
    }


def _fmt(obj, indent: int, level: int) -> str:
    """JSON with dicts/lists of containers broken over lines and flat lists on one line."""
    pad = " " * (indent * (level + 1))
    end = " " * (indent * level)
    if isinstance(obj, dict):
        if not obj:
            return "{}"
        items = [f"{pad}{_dump_str(str(k))}: {_fmt(v, indent, level + 1)}" for k, v in obj.items()]
        return "{\n" + ",\n".join(items) + "\n" + end + "}"
    if isinstance(obj, (list, tuple)):
        if all(not isinstance(v, (dict, list, tuple)) for v in obj):
            return "[" + ", ".join(_fmt(v, indent, level) for v in obj) + "]"
        items = [pad + _fmt(v, indent, level + 1) for v in obj]
        return "[\n" + ",\n".join(items) + "\n" + end + "]"
    if isinstance(obj, str):
        return _dump_str(obj)
    return json.dumps(obj, ensure_ascii=False)


def _dump_str(s: str) -> str:
    """Readable JSON string: letters/emoji/CJK kept, invisible code points escaped as \\uXXXX."""
    out = json.dumps(s, ensure_ascii=False)
    return "".join(_escape_invisible(ch) for ch in out)


def _escape_invisible(ch: str) -> str:
    cat = unicodedata.category(ch)
    if ch == " " or not (cat.startswith("C") or cat in ("Zs", "Zl", "Zp")):
        return ch
    return "".join(f"\\u{u:04x}" for u in _utf16_units(ch))


def _utf16_units(ch: str) -> list[int]:
    b = ch.encode("utf-16-be")
    return [int.from_bytes(b[i : i + 2], "big") for i in range(0, len(b), 2)]


def make_readable(folder: Path) -> None:
    """safetensors writes files 0600; fixtures are ordinary repository files."""
    for f in folder.iterdir():
        if f.is_file():
            f.chmod(0o644)


def write_json(path: Path, obj) -> None:
    """Write UTF-8 JSON (non-ASCII kept readable; lone control chars are escaped by json)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(_fmt(obj, 1, 0) + "\n", encoding="utf-8")

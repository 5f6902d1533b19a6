"""CLIP's BPE vocabulary as the two files facebook/sam3 publishes (`vocab.json`, `merges.txt`), written from the
gzipped merge list open_clip ships (the file Meta's SimpleTokenizer reads), so tests need no download."""

from __future__ import annotations

import gzip
import importlib.util
import json
from pathlib import Path
from typing import Optional

NUM_MERGES = 49152 - 256 - 2  # CLIP's vocabulary: 49408 = 2 * 256 byte symbols + merges + 2 special tokens


def open_clip_bpe_path() -> Optional[Path]:
    """open_clip's `bpe_simple_vocab_16e6.txt.gz`, found without importing open_clip; None when absent."""
    spec = importlib.util.find_spec("open_clip")
    if spec is None or spec.origin is None:
        return None
    path = Path(spec.origin).parent / "bpe_simple_vocab_16e6.txt.gz"
    return path if path.is_file() else None


def byte_symbols() -> list[str]:
    """GPT-2's printable stand-in for each byte 0..255, in CLIP's vocabulary order: the printable Latin-1 bytes
    stand for themselves (first), every other byte takes a character from 256 on (after them)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    others = [b for b in range(256) if b not in printable]
    return [chr(b) for b in printable] + [chr(256 + i) for i in range(len(others))]


def write_clip_vocab(bpe_gz: Path, folder: Path) -> tuple[Path, Path]:
    """Write `vocab.json` (token -> id, ids 0..49407) and `merges.txt` into folder; returns their paths."""
    lines = gzip.open(bpe_gz).read().decode("utf-8").split("\n")
    merges = [tuple(line.split()) for line in lines[1 : 1 + NUM_MERGES]]  # line 0 is a version header
    symbols = byte_symbols()
    tokens = symbols + [s + "</w>" for s in symbols] + ["".join(m) for m in merges]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    vocab_path, merges_path = folder / "vocab.json", folder / "merges.txt"
    vocab_path.write_text(json.dumps({token: i for i, token in enumerate(tokens)}, ensure_ascii=False), "utf-8")
    merges_path.write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges), "utf-8")
    return vocab_path, merges_path

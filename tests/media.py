"""Real media from ../shared/data: tests that need it skip with a clear reason when it is absent."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

# ../shared/data beside the repository; SAM2RT_SHARED_DATA points elsewhere (e.g. from a git worktree).
SHARED_DATA = Path(
    os.environ.get("SAM2RT_SHARED_DATA") or Path(__file__).resolve().parents[1].parent / "shared" / "data"
)


def shared_path(relative: str) -> Path:
    path = SHARED_DATA / relative
    if not path.exists():
        pytest.skip(f"needs the shared test media {path} (../shared/data beside the repository)")
    return path


def shared_image(name: str) -> np.ndarray:
    return np.asarray(Image.open(shared_path(f"images/{name}")).convert("RGB"))

"""Helpers for the evaluation tests: Meta's training-repository references, and small VOS folders made by the tests."""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
from PIL import Image

from sam2rt.io.sinks import davis_palette

# ../shared beside the repository (SAM2RT_SHARED points elsewhere, e.g. from a git worktree).
SHARED = Path(os.environ.get("SAM2RT_SHARED") or Path(__file__).resolve().parents[1].parent / "shared")
SAM2_TRAINING = SHARED / "oracles" / "sam2-training"


def import_reference(relative: str, name: str) -> ModuleType:
    """A file of Meta's training repository (test-only reference) as a module, or a skip saying what is missing."""
    path = SAM2_TRAINING / relative
    if not path.is_file():
        pytest.skip(f"needs Meta's reference {path} (../shared/oracles/sam2-training beside the repository)")
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # its objects pickle by module name (the official benchmark sends them to a Pool)
    spec.loader.exec_module(module)
    return module


def save_labels(path: Path, labels: np.ndarray, palette: list[int] | None = None) -> Path:
    """An indexed PNG whose pixel values are `labels` (H, W)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(labels.astype(np.uint8))
    image.putpalette(palette or davis_palette())
    image.save(path)
    return path


def ellipse(size: tuple[int, int], center: tuple[float, float], radii: tuple[float, float]) -> np.ndarray:
    """(H, W) bool: the pixels inside an axis-aligned ellipse, center and radii as (y, x)."""
    ys, xs = np.mgrid[: size[0], : size[1]]
    return ((ys - center[0]) / radii[0]) ** 2 + ((xs - center[1]) / radii[1]) ** 2 <= 1


def moving_objects(size: tuple[int, int], frames: int, objects: int, seed: int) -> list[np.ndarray]:
    """Label maps (H, W) of `objects` ellipses drifting over `frames` frames; later ids drawn on top."""
    rng = np.random.default_rng(seed)
    height, width = size
    starts = rng.uniform(0.2, 0.8, (objects, 2)) * (height, width)
    steps = rng.uniform(-0.04, 0.04, (objects, 2)) * (height, width)
    radii = rng.uniform(0.1, 0.3, (objects, 2)) * (height, width) + 1
    maps = []
    for t in range(frames):
        labels = np.zeros(size, np.uint8)
        for k in range(objects):
            labels[ellipse(size, tuple(starts[k] + t * steps[k]), tuple(radii[k]))] = k + 1
        maps.append(labels)
    return maps


def perturb(labels: np.ndarray, rng: np.random.Generator, shift: int = 2, noise: float = 0.03) -> np.ndarray:
    """A prediction-like copy: shifted by a few pixels, with a fraction of pixels set to random labels."""
    out = np.roll(labels, tuple(rng.integers(-shift, shift + 1, 2)), axis=(0, 1))
    flips = rng.random(labels.shape) < noise
    out[flips] = rng.integers(0, labels.max(initial=0) + 2, int(flips.sum()))
    return out

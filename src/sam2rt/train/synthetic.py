"""Synthetic VOS data: textured shapes moving over photos, written in the VOS layout.

For smoke tests, benchmarks and checking that a training setup learns: the ground truth is exact
and any number of clips can be made. Each video crops a random window of a background photo, and
each object is an ellipse or a rectangle filled with a stripe texture of its own colours that moves
(and may leave the frame) along a straight line.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

DAVIS_PALETTE = [0, 0, 0, 128, 0, 0, 0, 128, 0, 128, 128, 0, 0, 0, 128, 128, 0, 128]


def _shape_mask(kind: int, cx: float, cy: float, rx: float, ry: float, size: int) -> np.ndarray:
    ys, xs = np.mgrid[0:size, 0:size]
    if kind == 0:
        return ((xs - cx) / rx) ** 2 + ((ys - cy) / ry) ** 2 <= 1
    return (np.abs(xs - cx) <= rx) & (np.abs(ys - cy) <= ry)


def _texture(rng: np.random.Generator, size: int) -> np.ndarray:
    """(size, size, 3) uint8 stripes between two random colours, at a random angle and period."""
    ys, xs = np.mgrid[0:size, 0:size]
    angle = rng.uniform(0, np.pi)
    period = rng.uniform(4, 12)
    phase = np.sin((xs * np.cos(angle) + ys * np.sin(angle)) * 2 * np.pi / period) > 0
    first, second = rng.integers(0, 256, size=(2, 3))
    return np.where(phase[..., None], first, second).astype(np.uint8)


def make_synthetic_vos(
    root: str | Path,
    backgrounds: list[np.ndarray],
    num_videos: int,
    num_frames: int = 8,
    size: int = 256,
    max_objects: int = 3,
    seed: int = 0,
) -> Path:
    """Write JPEGImages/ and Annotations/ (palette PNGs, ids 1..K) for `num_videos` videos under `root`.

    backgrounds: HxWx3 uint8 photos; those with at least `size` pixels on each side are used.
    """
    backgrounds = [b for b in backgrounds if b.shape[0] >= size and b.shape[1] >= size]
    if not backgrounds:
        raise ValueError(f"need background photos of at least {size}x{size} pixels")
    root = Path(root)
    rng = np.random.default_rng(seed)
    for video in range(num_videos):
        photo = backgrounds[rng.integers(len(backgrounds))]
        top, left = rng.integers(0, photo.shape[0] - size + 1), rng.integers(0, photo.shape[1] - size + 1)
        background = photo[top : top + size, left : left + size]
        objects = []
        for _ in range(int(rng.integers(1, max_objects + 1))):
            radius = rng.uniform(0.08, 0.18, size=2) * size
            start = rng.uniform(0.25, 0.75, size=2) * size
            velocity = rng.uniform(-0.04, 0.04, size=2) * size
            objects.append((int(rng.integers(2)), start, velocity, radius, _texture(rng, size)))
        name = f"video{video:03d}"
        (root / "JPEGImages" / name).mkdir(parents=True, exist_ok=True)
        (root / "Annotations" / name).mkdir(parents=True, exist_ok=True)
        for t in range(num_frames):
            frame = background.copy()
            ids = np.zeros((size, size), dtype=np.uint8)
            for index, (kind, start, velocity, radius, texture) in enumerate(objects, start=1):
                cx, cy = start + velocity * t
                mask = _shape_mask(kind, cx, cy, radius[0], radius[1], size)
                frame[mask] = texture[mask]
                ids[mask] = index  # later objects occlude earlier ones
            Image.fromarray(frame).save(root / "JPEGImages" / name / f"{t:05d}.jpg", quality=95)
            annotation = Image.fromarray(ids, mode="P")
            annotation.putpalette(DAVIS_PALETTE)
            annotation.save(root / "Annotations" / name / f"{t:05d}.png")
    return root

"""Connected-component post-processing against a brute-force flood fill."""

from __future__ import annotations

from collections import deque

import numpy as np
import pytest
import torch

from sam2rt.processing.masks import (
    fill_holes,
    keep_highest_object,
    non_overlapping,
    small_components,
    small_components_by_pooling,
    tidy_small_regions,
)

# OpenCV's labelling (what masks on the CPU get) and the pooling form (what a GPU runs, in CUDA graphs too)
IMPLEMENTATIONS = pytest.mark.parametrize("find", [small_components, small_components_by_pooling], ids=["cpu", "pool"])


def _components(mask: np.ndarray) -> list[list[tuple[int, int]]]:
    """8-connected components by breadth-first search."""
    seen = np.zeros_like(mask, dtype=bool)
    found = []
    for start in zip(*np.nonzero(mask)):
        if seen[start]:
            continue
        queue, pixels = deque([start]), []
        seen[start] = True
        while queue:
            y, x = queue.popleft()
            pixels.append((y, x))
            for dy in (-1, 0, 1):
                for dx in (-1, 0, 1):
                    ny, nx = y + dy, x + dx
                    inside = 0 <= ny < mask.shape[0] and 0 <= nx < mask.shape[1]
                    if inside and mask[ny, nx] and not seen[ny, nx]:
                        seen[ny, nx] = True
                        queue.append((ny, nx))
        found.append(pixels)
    return found


@IMPLEMENTATIONS
@pytest.mark.parametrize("density", [0.2, 0.45, 0.6])
@pytest.mark.parametrize("max_area", [0, 1, 4, 8, 30])
def test_small_components_match_flood_fill(find, density, max_area):
    rng = np.random.default_rng(int(density * 100) + max_area)
    masks = rng.random((3, 1, 40, 50)) < density
    got = find(torch.from_numpy(masks), max_area).numpy()
    for index in range(3):
        expected = np.zeros((40, 50), dtype=bool)
        for pixels in _components(masks[index, 0]):
            if len(pixels) <= max_area:
                for pixel in pixels:
                    expected[pixel] = True
        assert np.array_equal(got[index, 0], expected)


@IMPLEMENTATIONS
def test_snake_longer_than_max_area_is_not_small(find):
    """A thin component of 60 pixels must not be taken for a small one even though few steps are run."""
    mask = torch.zeros(1, 1, 20, 20, dtype=torch.bool)
    mask[0, 0, 2, 1:19] = True
    mask[0, 0, 2:18, 18] = True
    mask[0, 0, 17, 1:19] = True
    assert not find(mask, 8).any()
    assert find(mask, 60).sum() == mask.sum()


def test_the_onnx_runners_hole_filling_is_the_engines():
    """The runner's numpy form (no PyTorch) fills the holes the engine's fills, on masks with holes of every size."""
    from sam2rt.export.numpy_ops import fill_holes as numpy_fill_holes

    rng = np.random.default_rng(5)
    logits = rng.normal(size=(2, 1, 64, 64)).astype(np.float32) + 0.8  # mostly foreground, holes of 1 to ~30 px
    expected = fill_holes(torch.from_numpy(logits), max_area=8).numpy()
    assert (expected != logits).any(), "no hole filled: the comparison would be trivial"
    np.testing.assert_array_equal(numpy_fill_holes(logits, 8), expected)


def test_fill_holes_and_remove_sprinkles():
    logits = torch.full((1, 1, 12, 12), -5.0)
    logits[0, 0, 2:10, 2:10] = 5.0
    logits[0, 0, 5, 5] = -3.0  # a one-pixel hole
    logits[0, 0, 0, 11] = 4.0  # a one-pixel sprinkle
    filled = fill_holes(logits, max_area=2)
    assert filled[0, 0, 5, 5] == pytest.approx(0.1) and filled[0, 0, 0, 0] == -5.0
    cleaned = tidy_small_regions(logits, max_hole_area=0, max_sprinkle_area=2)
    assert cleaned[0, 0, 0, 11] == -10.0 and cleaned[0, 0, 4, 4] == 5.0 and cleaned[0, 0, 5, 5] == -3.0
    both = tidy_small_regions(logits, max_hole_area=2, max_sprinkle_area=2, threshold=1.0)
    assert both[0, 0, 5, 5] == 11.0 and both[0, 0, 0, 11] == -9.0 and both[0, 0, 0, 0] == -5.0


def test_sprinkles_are_found_before_holes_are_filled():
    """A ring of 8 pixels around a one-pixel hole: filled, the hole would make it a piece of 9, larger than the
    sprinkle area of 8. Both are found in the decoder's logits (the official order): the ring goes, the hole
    is filled."""
    logits = torch.full((1, 1, 7, 7), -5.0)
    logits[0, 0, 2:5, 2:5] = 5.0
    logits[0, 0, 3, 3] = -5.0
    tidy = tidy_small_regions(logits, max_hole_area=1, max_sprinkle_area=8)
    assert tidy[0, 0, 3, 3] == 10.0
    ring = torch.ones(3, 3, dtype=torch.bool)
    ring[1, 1] = False
    assert (tidy[0, 0, 2:5, 2:5][ring] == -10.0).all()
    assert (tidy[0, 0, 0] == -5.0).all()


def test_keep_highest_object():
    logits = torch.tensor([[[[3.0, -1.0]]], [[[2.0, 4.0]]]])
    out = keep_highest_object(logits)
    assert out[:, 0, 0].tolist() == [[3.0, -10.0], [-10.0, 4.0]]


def test_non_overlapping_gives_each_pixel_to_the_likeliest_covering_mask():
    """Against the definition: per pixel, the argmax of the covering masks' probabilities (0 where not covering),
    the lowest row on a tie, and nothing for a mask of probability 0."""
    generator = torch.Generator().manual_seed(3)
    masks = torch.rand(6, 40, 50, generator=generator) > 0.55  # (N, H, W): most pixels covered by 2 or more
    probabilities = torch.tensor([0.3, 0.9, 0.3, 0.0, 0.9, 0.5])  # ties between rows 0 and 2, 1 and 4
    scored = torch.where(masks, probabilities[:, None, None], 0.0)
    winner = scored.argmax(0)  # (H, W), the first maximum on ties
    expected = (torch.arange(6)[:, None, None] == winner) & (scored > 0)
    out = non_overlapping(masks, probabilities)
    assert torch.equal(out, expected)
    assert (masks.sum(0) > 1).float().mean() > 0.3  # the overlaps it resolved are many
    assert out.sum(0).max() == 1 and not out[3].any() and out[4].any()
    assert torch.equal(out.any(0), (masks & (probabilities > 0)[:, None, None]).any(0))  # no covered pixel lost

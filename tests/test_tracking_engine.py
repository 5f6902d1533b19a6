"""The tracking engine's promises: bounded state on long streams, one batched pass for all objects."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import torch
from visible import assert_nontrivial, visible_model

import sam2rt
from sam2rt.tracking.engine import TrackingEngine
from sam2rt.tracking.object_batches import HOLE_FILL_LOGIT

IMAGE_SIZE = 64


@pytest.fixture(scope="module")
def model():
    return visible_model(image_size=IMAGE_SIZE)  # masks with area and holes: the post-processing has work


def _frames(count, height=48, width=64, seed=0):
    """A square moving across a noisy background."""
    rng = np.random.default_rng(seed)
    background = rng.integers(0, 80, size=(height, width, 3), dtype=np.uint8)
    for t in range(count):
        frame = background.copy()
        x = 5 + (t * 3) % (width - 20)
        frame[10:26, x : x + 16] = (220, 40, 40)
        yield frame


def _state_size(tracker):
    held = {id(t): t for t in tracker.state_tensors()}
    arena = tracker.pool.arena  # the rows of all objects, free ones included
    return len(held), sum(t.numel() * t.element_size() for t in held.values()), arena.capacity


def test_state_is_bounded_over_2000_frames(model, monkeypatch):
    """Tensor count and bytes stop changing early, through 2,000 frames with a correction every 97 frames.

    The image encoder is replaced by the features of one frame, computed once: the state under
    test is the engine's, and 2,000 runs of the image encoder would only cost CI time.
    """
    with torch.no_grad():
        features = model.encode_image(torch.zeros(1, 3, IMAGE_SIZE, IMAGE_SIZE))
    monkeypatch.setattr(model, "encode_image", lambda images: features)
    tracker = sam2rt.StreamTracker(model, max_cond_frames=4)
    sizes = []
    for t, frame in enumerate(_frames(2000)):
        tracker.step(frame)
        sizes.append(_state_size(tracker))  # what is carried from frame to frame
        if t == 0:
            tracker.add_prompt(1, points=[[12, 18]], labels=[1])
            tracker.add_prompt(2, box=[30, 5, 60, 40])
        elif t % 97 == 0:
            tracker.add_prompt(1 + t % 2, points=[[20, 20]], labels=[t % 3 > 0])
    assert tracker.frame_idx == 1999
    steady = sizes[20]
    assert all(size == steady for size in sizes[20:]), f"state changed: {sorted(set(sizes[20:]))}"
    for obj in tracker._objects.values():
        assert sum(frame >= 0 for frame in obj.memory.cond_frame) == 4  # capped, first prompt kept
        assert min(obj.memory.cond_frame) == 0


def test_one_batched_pass_serves_all_objects(model, monkeypatch):
    monkeypatch.setattr(TrackingEngine, "split_cpu_attention", False)  # the batched attention of GPUs
    calls = Counter()
    batch_sizes = Counter()

    def count(name):
        def hook(module, args, output):
            calls[name] += 1
            while isinstance(output, (tuple, list)):
                output = output[0]
            batch_sizes[name] = output.shape[0]

        return hook

    modules = {
        "image_encoder": model.image_encoder,
        "memory_attention": model.memory_attention,
        "mask_decoder": model.sam_mask_decoder,
        "memory_encoder": model.memory_encoder,
    }
    handles = [module.register_forward_hook(count(name)) for name, module in modules.items()]
    try:
        tracker = sam2rt.StreamTracker(model)
        frames = _frames(6)
        tracker.step(next(frames))
        for obj_id in range(1, 5):
            tracker.add_prompt(obj_id, points=[[8 * obj_id, 20]], labels=[1])
        tracker.step(next(frames))  # encodes the four prompts' memories, then tracks
        calls.clear()
        for frame in frames:
            result = tracker.step(frame)
            assert result.mask_logits.shape == (4, 48, 64)
    finally:
        for handle in handles:
            handle.remove()
    assert dict(calls) == {name: 4 for name in modules}  # once per frame each, for four frames
    assert batch_sizes["memory_attention"] == batch_sizes["mask_decoder"] == batch_sizes["memory_encoder"] == 4


def _holes(logits: torch.Tensor, max_area: int) -> np.ndarray:
    """Background (logits <= 0) pixels of 8-connected background pieces of at most `max_area` pixels, by OpenCV:
    a reference independent of sam2rt.processing.masks. logits (H, W) -> (H, W) bool."""
    import cv2

    background = (logits <= 0).numpy().astype(np.uint8)
    count, labels, stats, _ = cv2.connectedComponentsWithStats(background, connectivity=8)
    small = np.zeros(count, dtype=bool)
    small[1:] = stats[1:, cv2.CC_STAT_AREA] <= max_area
    return small[labels]


def _low_res(tracker, obj_id):
    return tracker._objects[obj_id].latest.mask_logits[0]  # (4h, 4w): what hole filling works on


def test_hole_filling_fills_small_background_holes_of_the_output():
    """The default hole filling, against a tracker without it: on the prompted frame the output is the unfilled
    one with each background piece of <= 8 pixels set to the fill logit; on tracked frames no such piece is
    left, where the unfilled tracker has some. The weights make holes, so removing the filling fails this."""
    model = visible_model(image_size=IMAGE_SIZE)
    plain, filled = sam2rt.StreamTracker(model, fill_hole_area=0), sam2rt.StreamTracker(model)
    assert filled.engine.options.fill_hole_area == 8  # the default, which the official also has
    frames = list(_frames(5))
    for tracker in (plain, filled):
        tracker.step(frames[0])
        tracker.add_prompt(1, points=[[20, 18]], labels=[1])
    unfilled = _low_res(plain, 1)
    holes = _holes(unfilled, 8)
    assert holes.sum() >= 8, "the weights made no holes: nothing to fill"
    assert_nontrivial(unfilled, "the prompted mask")
    expected = torch.where(torch.from_numpy(holes), HOLE_FILL_LOGIT, unfilled)
    assert torch.equal(_low_res(filled, 1), expected)
    for t, frame in enumerate(frames[1:], start=1):
        plain.step(frame)
        result = filled.step(frame)
        assert _holes(_low_res(plain, 1), 8).any(), f"frame {t}: the unfilled tracker has no holes to fill"
        assert not _holes(_low_res(filled, 1), 8).any(), f"frame {t}: a hole was left"
        assert_nontrivial(result.mask_logits, f"frame {t}")


def test_non_overlapping_masks(model):
    """Each pixel goes to the object with the highest logit, the others are capped at -10 there; only the output
    changes (the official applies it to outputs), so the logits equal a plain tracker's with that rule applied."""
    plain, exclusive = sam2rt.StreamTracker(model), sam2rt.StreamTracker(model, non_overlap_masks=True)
    frames = list(_frames(4))
    overlapped = 0
    for t, frame in enumerate(frames):
        results = [tracker.step(frame) for tracker in (plain, exclusive)]
        if t == 0:
            for tracker in (plain, exclusive):
                tracker.add_prompt(1, points=[[20, 18]], labels=[1])
            results = [tracker.add_prompt(2, points=[[40, 30]], labels=[1]) for tracker in (plain, exclusive)]
        reference, got = results
        logits = reference.mask_logits  # (2, H, W)
        assert_nontrivial(logits, f"frame {t}")
        winner = logits.argmax(dim=0)  # (H, W)
        expected = torch.stack(
            [torch.where(winner == row, logits[row], logits[row].clamp(max=-10.0)) for row in range(2)]
        )
        torch.testing.assert_close(got.mask_logits, expected, rtol=0, atol=0)
        assert not (got.masks[0] & got.masks[1]).any()
        overlapped += int((reference.masks[0] & reference.masks[1]).sum())
    assert overlapped > 100, "the plain masks barely overlap: nothing to separate"

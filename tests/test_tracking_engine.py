"""The tracking engine's promises: bounded state on long streams, one batched pass for all objects."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import torch

import sam2rt
from sam2rt.tracking.engine import TrackingEngine

IMAGE_SIZE = 64


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return sam2rt.build_model("sam2.1_hiera_tiny", image_size=IMAGE_SIZE)


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


def test_hole_filling_runs_on_cpu(model):
    tracker = sam2rt.StreamTracker(model, fill_hole_area=8)
    frames = _frames(5)
    tracker.step(next(frames))
    tracker.add_prompt(1, points=[[20, 18]], labels=[1])
    for frame in frames:
        tracker.step(frame)
    low_res = tracker._objects[1].latest.mask_logits[None]  # (1, 1, 4h, 4w)
    from sam2rt.masks import small_components

    assert not small_components(low_res <= 0, 8).any()


def test_non_overlapping_masks(model):
    tracker = sam2rt.StreamTracker(model, non_overlap_masks=True)
    frames = _frames(4)
    tracker.step(next(frames))
    tracker.add_prompt(1, points=[[20, 18]], labels=[1])
    tracker.add_prompt(2, points=[[22, 20]], labels=[1])
    for frame in frames:
        result = tracker.step(frame)
    assert not (result.masks[0] & result.masks[1]).any()

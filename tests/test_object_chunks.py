"""Many objects: a batched pass run a chunk of objects at a time, and the work shared by the objects of one frame
computed once, give the numbers of one pass over all objects (fp32 on the CPU, within 1e-5 relative)."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import torch
from visible import assert_masks_match, assert_nontrivial, visible_model

import sam2rt
from sam2rt.runtime import to_inference_dtype, use_cuda_graphs
from sam2rt.tracking.engine import TrackingEngine
from sam2rt.tracking.object_batches import bucket

IMAGE_SIZE = 64
OBJECTS = 5
CLICKS = [(8, 12), (40, 20), (20, 40), (56, 44), (30, 8)]  # (x, y) in 64x48 frames, one per object


@pytest.fixture(scope="module")
def model():
    return visible_model(image_size=IMAGE_SIZE)


def _frames(count, height=48, width=64, seed=1):
    """Two squares moving over a noisy background."""
    rng = np.random.default_rng(seed)
    background = rng.integers(0, 80, size=(height, width, 3), dtype=np.uint8)
    for t in range(count):
        frame = background.copy()
        x = 4 + (t * 3) % (width - 24)
        frame[6:22, x : x + 16] = (220, 40, 40)
        frame[28:44, width - x - 16 : width - x] = (40, 200, 60)
        yield frame


def _track(model, chunk, monkeypatch):
    """Five objects clicked on frame 0, one corrected on frame 3 (a new conditioning frame), seven frames: the
    masks of each frame (T, objects, h, w) and the batches memory attention and the memory encoder ran."""
    monkeypatch.setattr(TrackingEngine, "split_cpu_attention", False)  # the batched pass of GPUs
    monkeypatch.setattr(TrackingEngine, "objects_per_chunk", chunk)
    batches = Counter()

    def record(name, objects):
        batches[(name, objects)] += 1

    hooks = [  # the objects of each call: memory attention's memory (its frame may be shared), the encoder's masks
        model.memory_attention.register_forward_hook(lambda module, args, out: record("attention", args[2].shape[0])),
        model.memory_encoder.register_forward_hook(
            lambda module, args, out: record("memory encoder", args[1].shape[0])
        ),
    ]
    masks = []
    try:
        tracker = sam2rt.StreamTracker(model, fill_hole_area=0)
        for t, frame in enumerate(_frames(7)):
            result = tracker.step(frame)
            if t == 0:
                for obj_id, click in enumerate(CLICKS, start=1):
                    result = tracker.add_prompt(obj_id, points=[click], labels=[1])
            if t == 3:
                result = tracker.add_prompt(2, points=[(44, 24), (10, 10)], labels=[1, 0])
            masks.append(result.mask_logits.clone())
    finally:
        for hook in hooks:
            hook.remove()
    return torch.stack(masks), batches


def test_chunks_of_objects_equal_one_pass_over_all(model, monkeypatch):
    with torch.inference_mode():
        whole, whole_batches = _track(model, None, monkeypatch)
        chunked, chunked_batches = _track(model, 2, monkeypatch)
    assert whole.shape[1] == OBJECTS
    assert_nontrivial(whole[-1] > 0, "the last frame's masks")
    # One pass saw all five objects at once; chunked, no call saw more than two (five = 2 + 2 + 1).
    assert ("attention", OBJECTS) in whole_batches
    assert max(size for name, size in chunked_batches if name == "attention") == 2
    assert chunked_batches[("attention", 1)] >= 1, "the last chunk holds the fifth object alone"
    # Five prompts' memories are encoded together: in chunks too.
    assert ("memory encoder", OBJECTS) in whole_batches
    assert max(size for _, size in chunked_batches) == 2
    scale = whole.abs().max()
    torch.testing.assert_close(chunked, whole, rtol=0, atol=1e-5 * float(scale))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_chunks_replayed_from_one_cuda_graph_track_like_one_pass(monkeypatch):
    """Graphed, the chunks run inside one captured pass, each chunk's activations in the memory of the one
    before: the masks are those of the pass over all objects (bf16 on both sides)."""
    model = visible_model(image_size=IMAGE_SIZE).cuda()
    with torch.inference_mode():
        whole, _ = _track(use_cuda_graphs(to_inference_dtype(model)), None, monkeypatch)
        chunked, batches = _track(model, 2, monkeypatch)  # the same graphed model: new shapes, new graphs
    assert max(size for name, size in batches if name == "attention") == 2
    for t in range(1, whole.shape[0]):
        assert_masks_match(chunked[t], whole[t], min_iou=0.97, what=f"frame {t}")


def test_shared_frame_queries_equal_queries_of_each_object(model):
    """One frame's features (batch 1) for every object, against the same features repeated per object: the
    first layer's self-attention and its queries of the memory, computed once, give the same conditioning."""
    torch.manual_seed(0)
    attention = model.memory_attention
    size = model.config.image_size // 16
    tokens, channels, objects = size * size, model.config.hidden_dim, 3
    image = torch.randn(1, tokens, channels)
    image_pos = torch.randn(1, tokens, channels)
    memory = torch.randn(objects, 2 * tokens + 8, model.config.memory_dim)
    memory_pos = torch.randn(objects, 2 * tokens + 8, model.config.memory_dim)
    key_mask = torch.ones(objects, memory.shape[1], dtype=torch.bool)
    key_mask[1, tokens : 2 * tokens] = False  # the second object's second frame is an empty slot
    with torch.inference_mode():
        shared = attention(image, image_pos, memory, memory_pos, spatial_frames=2, key_mask=key_mask)
        repeated = attention(
            image.expand(objects, -1, -1), image_pos, memory, memory_pos, spatial_frames=2, key_mask=key_mask
        )
    assert shared.shape == (objects, tokens, channels)
    assert (shared[0] - shared[1]).abs().max() > 1e-2, "objects with other memories are conditioned apart"
    torch.testing.assert_close(shared, repeated, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "count, chunk, expected",
    [
        (1, None, 1),
        (3, None, 3),
        (4, None, 4),
        (5, 0, 6),
        (7, 16, 8),
        (13, None, 16),
        (16, 16, 16),
        (17, 16, 32),
        (40, 16, 48),
        (128, 16, 128),
        (9, 4, 12),
    ],
)
def test_batches_pad_to_a_power_of_two_or_halfway_then_to_whole_chunks(count, chunk, expected):
    assert bucket(count, chunk) == expected

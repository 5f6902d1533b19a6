"""The runtime speed settings change how the model runs, not what it computes."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

import sam2rt
from sam2rt.runtime import to_inference_dtype, use_cuda_graphs

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def _frames(count, height=96, width=128):
    rng = np.random.default_rng(0)
    background = rng.integers(0, 80, size=(height, width, 3), dtype=np.uint8)
    for t in range(count):
        frame = background.copy()
        frame[20:60, 10 + 3 * t : 50 + 3 * t] = (220, 40, 40)
        yield frame


def _track(model, count=8):
    tracker = sam2rt.StreamTracker(model, memory_dtype=torch.float32)
    results = []
    for t, frame in enumerate(_frames(count)):
        results.append(tracker.step(frame))
        if t == 0:
            results.append(tracker.add_prompt(1, points=[[30, 40]], labels=[1]))
            results.append(tracker.add_prompt(2, box=[60, 10, 120, 90]))
    return results


def test_bf16_weights_track_like_fp32():
    torch.manual_seed(0)
    model = sam2rt.build_model("sam2.1_hiera_tiny", image_size=64)
    reference = _track(model, count=4)
    fast = _track(to_inference_dtype(copy.deepcopy(model)), count=4)
    assert len(fast) == len(reference) == 6
    for ref, got in zip(reference[1:], fast[1:]):  # the first result is of the frame before any prompt
        assert got.mask_logits.dtype == torch.float32 and got.object_ids == ref.object_ids
        agree = ((got.mask_logits > 0) == (ref.mask_logits > 0)).float().mean()
        assert agree > 0.9  # bf16 moves logits a little; the masks stay


def test_bad_dtype():
    with pytest.raises(ValueError, match="dtype"):
        to_inference_dtype(sam2rt.build_model("sam2.1_hiera_tiny", image_size=64), torch.int8)


def test_cuda_graphs_need_cuda():
    if torch.cuda.is_available():
        pytest.skip("the CPU-only error path")
    with pytest.raises(ValueError, match="CUDA"):
        use_cuda_graphs(sam2rt.build_model("sam2.1_hiera_tiny", image_size=64))


@cuda
def test_cuda_graphs_replay_the_eager_results():
    torch.manual_seed(0)
    model = sam2rt.build_model("sam2.1_hiera_tiny", image_size=256).cuda()
    with torch.inference_mode():
        reference = _track(model, count=24)
        graphed = _track(use_cuda_graphs(copy.deepcopy(model)), count=24)
    for ref, got in zip(reference, graphed):
        assert got.object_ids == ref.object_ids
        torch.testing.assert_close(got.mask_logits, ref.mask_logits, atol=1e-3, rtol=1e-3)

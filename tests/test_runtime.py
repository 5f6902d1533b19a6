"""The runtime speed settings change how the model runs, not what it computes."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

import sam2rt
from sam2rt.runtime import GraphedCallable, _ModelGraphs, graphed_with_model, to_inference_dtype, use_cuda_graphs
from sam2rt.tracking import engine
from visible import assert_masks_match, visible_model

BF16_MIN_IOU = 0.97  # per object and frame: bf16 against fp32 measured 0.981 at least (tiny, 64 and 128 px)
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
    model = visible_model(image_size=64)
    reference = _track(model, count=4)
    fast = _track(to_inference_dtype(copy.deepcopy(model)), count=4)
    assert len(fast) == len(reference) == 6
    for t, (ref, got) in enumerate(zip(reference[1:], fast[1:])):  # the first result is of the frame before any prompt
        assert got.mask_logits.dtype == torch.float32 and got.object_ids == ref.object_ids
        assert_masks_match(got.mask_logits, ref.mask_logits, BF16_MIN_IOU, f"result {t}")  # bf16 moves logits a little


def test_bad_dtype():
    with pytest.raises(ValueError, match="dtype"):
        to_inference_dtype(sam2rt.build_model("sam2.1_hiera_tiny", image_size=64), torch.int8)


def test_cuda_graphs_need_cuda():
    if torch.cuda.is_available():
        pytest.skip("the CPU-only error path")
    with pytest.raises(ValueError, match="CUDA"):
        use_cuda_graphs(sam2rt.build_model("sam2.1_hiera_tiny", image_size=64))


def _pass(model, scale, x):
    """A module-level function of code around the model, as the engine's pass is."""
    return x * scale


def test_code_around_the_model_is_graphed_only_with_its_graphs():
    model = sam2rt.build_model("sam2.1_hiera_tiny", image_size=64)
    plain = graphed_with_model(model, _pass)
    assert not isinstance(plain, GraphedCallable) and plain(3, torch.ones(2)).tolist() == [3.0, 3.0]
    model._graphs = _ModelGraphs(pool=object())  # as use_cuda_graphs leaves it; no capture happens on CPU
    shared = graphed_with_model(model, _pass)
    assert isinstance(shared, GraphedCallable) and shared.fn.args == (model,)
    assert graphed_with_model(model, _pass) is shared  # each tracker of the model replays the same graphs
    other = sam2rt.build_model("sam2.1_hiera_tiny", image_size=64)
    assert not isinstance(graphed_with_model(other, _pass), GraphedCallable)  # graphs stay with their model


@cuda
def test_cuda_graphs_replay_the_eager_results():
    torch.manual_seed(0)
    model = sam2rt.build_model("sam2.1_hiera_tiny", image_size=256).cuda()
    graphed_model = use_cuda_graphs(copy.deepcopy(model))
    with torch.inference_mode():
        reference = _track(model, count=24)
        graphed = _track(graphed_model, count=24)
    for ref, got in zip(reference, graphed):
        assert got.object_ids == ref.object_ids
        torch.testing.assert_close(got.mask_logits, ref.mask_logits, atol=1e-3, rtol=1e-3)
    # Tracking replays the engine's whole pass over the objects (hole filling included): the model's steps
    # called inside it were taken into its graphs. Prompts (on the first frame: no memory) replay the segment
    # step, decoding inside it.
    assert graphed_with_model(graphed_model, engine._track_on_memory).graphs
    assert not graphed_model.condition_on_memory.graphs
    assert graphed_model.segment.graphs and not graphed_model.decode.graphs


@cuda
def test_cuda_graphs_predict_images_like_eager():
    torch.manual_seed(0)
    model = sam2rt.build_model("sam2.1_hiera_tiny", image_size=256).cuda()
    image = next(_frames(1))
    answers = []
    for candidate in (model, use_cuda_graphs(copy.deepcopy(model))):
        predictor = sam2rt.ImagePredictor(candidate)
        predictor.set_image(image)
        for _ in range(3):  # the first call captures, the next ones replay
            masks, scores, logits = predictor.predict(np.array([[30, 40]]), np.array([1]), return_logits=True)
        answers.append((masks, scores, logits))
    (masks, scores, logits), (graphed_masks, graphed_scores, graphed_logits) = answers
    np.testing.assert_allclose(graphed_logits, logits, atol=1e-3, rtol=1e-3)
    np.testing.assert_allclose(graphed_scores, scores, atol=1e-4)


@cuda
def test_a_tracking_step_never_waits_for_the_gpu():
    """With the default hole filling and two objects, a step only queues work: nothing in it synchronises
    with the GPU (a wait drains the queue, and the GPU then idles while the host prepares the next work)."""
    torch.manual_seed(0)
    model = use_cuda_graphs(to_inference_dtype(sam2rt.build_model("sam2.1_hiera_tiny", image_size=256).cuda()))
    frames = list(_frames(12))
    with torch.inference_mode():
        tracker = sam2rt.StreamTracker(model)
        assert tracker.engine.options.fill_hole_area > 0  # the default hole filling, which once waited
        tracker.step(frames[0])
        tracker.add_prompt(1, points=[[30, 40]], labels=[1])
        tracker.add_prompt(2, box=[60, 10, 120, 90])
        for frame in frames[1:9]:
            tracker.step(frame)
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            results = [tracker.step(frame) for frame in frames[9:]]
        finally:
            torch.cuda.set_sync_debug_mode(0)
    assert all(result.mask_logits.is_cuda and result.object_ids == [1, 2] for result in results)

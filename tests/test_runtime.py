"""The runtime speed settings change how the model runs, not what it computes."""

from __future__ import annotations

import copy
import logging

import numpy as np
import pytest
import torch
from visible import assert_masks_match, assert_nontrivial, visible_model

import sam2rt
from sam2rt.runtime import graphed_with_model, optimize, to_inference_dtype, use_cuda_graphs
from sam2rt.runtime.graphs import (
    GRAPHED_METHODS,
    GraphedCallable,
    _flatten,
    _ModelGraphs,
    _rebuild,
    captured_graphs,
    release_graphs,
)
from sam2rt.tracking import object_batches
from sam2rt.tracking.download import start_download

# bf16 against fp32 on `visible` weights, whose logits are smooth and near zero over wide areas. Measured on an
# H100 (tiny at 256): per object and frame at least 0.956 (a click's mask on a 64x160 stream), on average 0.998.
# Graphs replaying stale inputs gave 0.86-0.91 on average, memories lost in bf16 0.983-0.991: the mean catches
# what a single mask cannot.
BF16_MIN_IOU = 0.95  # each object and frame
BF16_MEAN_IOU = 0.99  # over every object and frame of a run
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def _frames(count, height=96, width=128):
    """A red box moving over a background of new noise on each frame: a step that works on another step's
    inputs (a graph replaying stale ones) gives other masks."""
    for t in range(count):
        frame = np.random.default_rng(t).integers(0, 80, size=(height, width, 3), dtype=np.uint8)
        frame[20:60, 10 + 3 * t : 50 + 3 * t] = (220, 40, 40)
        yield frame


def _track(model, count=8, memory_dtype=torch.float32):
    """A stream of `count` frames: a click and a box on frame 0, a correction of the click halfway."""
    tracker = sam2rt.StreamTracker(model, memory_dtype=memory_dtype)
    results = []
    for t, frame in enumerate(_frames(count)):
        results.append(tracker.step(frame))
        if t == 0:
            results.append(tracker.add_prompt(1, points=[[30, 40]], labels=[1]))
            results.append(tracker.add_prompt(2, box=[60, 10, 120, 90]))
        elif t == count // 2:
            results.append(tracker.add_prompt(1, points=[[45, 50]], labels=[0], clear_old_points=False))
    return results


def assert_tracks_alike(got, expected, what, min_iou=BF16_MIN_IOU, mean_iou=BF16_MEAN_IOU):
    """The same objects in each result, their masks non-trivial and overlapping with IoU >= min_iou each and
    >= mean_iou on average over every object and frame."""
    assert len(got) == len(expected), what
    ious = []
    for index, (result, reference) in enumerate(zip(got, expected)):
        assert result.object_ids == reference.object_ids, f"{what}, result {index}"
        assert result.mask_logits.dtype == torch.float32
        if reference.object_ids:  # the first frame's result, before any prompt, has no objects
            ious.extend(
                assert_masks_match(result.mask_logits, reference.mask_logits, min_iou, f"{what}, result {index}")
            )
    assert np.mean(ious) >= mean_iou, f"{what}: mean IoU {np.mean(ious):.4f} < {mean_iou}"


def test_bf16_weights_track_like_fp32():
    model = visible_model(image_size=128)
    reference = _track(model, count=6)
    fast = _track(to_inference_dtype(copy.deepcopy(model)), count=6)
    assert len(reference) == 9
    assert_tracks_alike(fast, reference, "bf16")  # bf16 moves logits a little; the masks stay


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
    model._graphs = _ModelGraphs(
        pool=object(), methods=GRAPHED_METHODS
    )  # as use_cuda_graphs leaves it; no capture on CPU
    shared = graphed_with_model(model, _pass)
    assert isinstance(shared, GraphedCallable) and shared.fn.args == (model,)
    assert graphed_with_model(model, _pass) is shared  # each tracker of the model replays the same graphs
    shared.graphs["a shape"] = "its graph"  # as a capture leaves it
    assert captured_graphs(model) == 1 and captured_graphs(sam2rt.build_model("sam2.1_hiera_tiny", image_size=64)) == 0
    assert release_graphs(model) == 1 and captured_graphs(model) == 0 and not shared.graphs
    other = sam2rt.build_model("sam2.1_hiera_tiny", image_size=64)
    assert not isinstance(graphed_with_model(other, _pass), GraphedCallable)  # graphs stay with their model


def test_graph_keys_and_static_inputs_follow_lists_inside_named_tuples():
    """SAM 3's image features are a NamedTuple of lists of levels: graphed, each level is a static input of its own
    and the replay's arguments keep the structure."""
    from sam2rt.model.sam3.detector import ImageFeatures

    features = ImageFeatures([torch.zeros(1, 4, 8, 8), torch.zeros(1, 4, 4, 4)], [torch.ones(1, 4, 8, 8)] * 2)
    tensors = []
    key = _flatten(((features, None), ()), tensors)
    assert len(tensors) == 4
    other = ImageFeatures([torch.zeros(1, 4, 8, 8)], [torch.ones(1, 4, 8, 8)])
    assert _flatten(((other, None), ()), []) != key  # one level fewer: another graph
    statics = [t.clone() + 1 for t in tensors]
    (rebuilt, _), _ = _rebuild(((features, None), ()), iter(statics))
    assert isinstance(rebuilt, ImageFeatures) and isinstance(rebuilt.levels, list)
    assert rebuilt.levels[1] is statics[1] and rebuilt.pos[0] is statics[2]


@cuda
def test_memory_encoder_on_cuda_equals_the_cpu(monkeypatch):
    """The memory encoder's ConvNeXt blocks run channels last, on cuDNN's kernels for that layout on CUDA: the
    memories of the CPU's (whose layers the parity tests hold to Meta's), fp32 with TF32 off."""
    model = visible_model(image_size=256)
    generator = torch.Generator().manual_seed(0)
    embed = torch.randn(1, 256, 16, 16, generator=generator)
    masks = torch.randn(3, 1, 256, 256, generator=generator) * 20  # mask inputs, scaled for memory
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    with torch.inference_mode():
        on_cpu = model.memory_encoder(embed, masks)
        on_cuda = model.cuda().memory_encoder(embed.cuda(), masks.cuda()).cpu()
    assert (on_cpu[0] - on_cpu[1]).abs().max() > 1e-2  # other masks, other memories
    torch.testing.assert_close(on_cuda, on_cpu, rtol=1e-4, atol=1e-4 * float(on_cpu.abs().max()))


@cuda
def test_cuda_graphs_replay_the_eager_results():
    model = visible_model(image_size=256).cuda()
    graphed_model = use_cuda_graphs(copy.deepcopy(model))
    with torch.inference_mode():
        reference = _track(model, count=24)
        graphed = _track(graphed_model, count=24)
    assert_tracks_alike(graphed, reference, "fp32 graphs", min_iou=0.999, mean_iou=0.999)
    for ref, got in zip(reference, graphed):
        torch.testing.assert_close(got.mask_logits, ref.mask_logits, atol=1e-3, rtol=1e-3)
    # Tracking replays the engine's whole pass over the objects (hole filling included): the model's steps
    # called inside it were taken into its graphs. Prompts (on the first frame: no memory) replay the segment
    # step, decoding inside it.
    assert graphed_with_model(graphed_model, object_batches.track_on_memory).graphs
    assert captured_graphs(graphed_model) >= 3 and captured_graphs(model) == 0
    assert len(graphed_model.condition_on_memory.graphs) == 1  # only the correction conditions outside the pass
    assert graphed_model.segment.graphs and not graphed_model.decode.graphs


@cuda
def test_bf16_graphs_track_like_fp32_eager():
    """What users run on a GPU by default (bf16 weights and memories, CUDA graphs) against fp32 eager."""
    model = visible_model(image_size=256).cuda()
    fast = optimize(copy.deepcopy(model))
    with torch.inference_mode():
        reference = _track(model, count=24)
        got = _track(fast, count=24, memory_dtype=None)
    assert_tracks_alike(got, reference, "bf16 + graphs")


POOL_SIZES = {"a": (96, 128), "b": (120, 90), "c": (64, 160)}  # (height, width) of each stream's frames


def _stream_frame(name, t):
    height, width = POOL_SIZES[name]
    frame = np.random.default_rng((ord(name), t)).integers(0, 80, size=(height, width, 3), dtype=np.uint8)
    x = 5 + (3 * t) % (width - 45)
    frame[height // 4 : height // 4 + 30, x : x + 40] = (220, 40, 40)
    return frame


def _prompt_stream(target, name, frame_idx):
    """After a stream's frame 0 a click and a box; after its frame 4 a correction of the click and a new object.
    Returns the last prompt's result, or None."""
    height, width = POOL_SIZES[name]
    if frame_idx == 0:
        target.add_prompt(1, points=[[width // 3, height // 2]], labels=[1])
        return target.add_prompt(2, box=[width // 2, 5, width - 5, height - 5])
    if frame_idx == 4:
        target.add_prompt(1, points=[[width // 4, height // 3]], labels=[0], clear_old_points=False)
        return target.add_prompt(3, points=[[width - 10, height - 10]], labels=[1])
    return None


@cuda
def test_graphed_pool_tracks_like_eager_trackers():
    """Three streams of different sizes and paces in one bf16 graphed pool, against fp32 eager trackers."""
    model = visible_model(image_size=256).cuda()
    pool = sam2rt.StreamPool(optimize(copy.deepcopy(model)))
    streams = {name: pool.open_stream() for name in POOL_SIZES}
    trackers = {name: sam2rt.StreamTracker(model, memory_dtype=torch.float32) for name in POOL_SIZES}
    got, expected = {name: [] for name in POOL_SIZES}, {name: [] for name in POOL_SIZES}
    with torch.inference_mode():
        for tick in range(16):
            due = [name for name in POOL_SIZES if name != "b" or tick % 2 == 0]  # b at half the pace
            frames = {name: _stream_frame(name, tick) for name in due}
            results = pool.step({streams[name]: frames[name] for name in due})
            for name in due:
                got[name].append(results[streams[name]])
                expected[name].append(trackers[name].step(frames[name]))
                prompted = [
                    _prompt_stream(target, name, got[name][-1].frame_idx) for target in (streams[name], trackers[name])
                ]
                if prompted[0] is not None:
                    got[name].append(prompted[0])
                    expected[name].append(prompted[1])
    for name in POOL_SIZES:
        assert got[name][-1].object_ids == [1, 2, 3]
        assert_tracks_alike(got[name], expected[name], f"stream {name}")


@cuda
def test_cuda_graphs_predict_images_like_eager():
    model = visible_model(image_size=256).cuda()
    image = next(_frames(1))
    answers = []
    for candidate in (model, use_cuda_graphs(copy.deepcopy(model))):
        predictor = sam2rt.ImagePredictor(candidate)
        predictor.set_image(image)
        for _ in range(3):  # the first call captures, the next ones replay
            masks, scores, logits = predictor.predict(np.array([[30, 40]]), np.array([1]), return_logits=True)
        answers.append((masks, scores, logits))
    (masks, scores, logits), (graphed_masks, graphed_scores, graphed_logits) = answers
    assert_nontrivial(masks, "the eager masks")
    np.testing.assert_allclose(graphed_logits, logits, atol=1e-3, rtol=1e-3)
    np.testing.assert_allclose(graphed_masks, masks, atol=1e-3, rtol=1e-3)
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
            pending = [start_download(result) for result in results]  # the copies to the CPU do not wait either
        finally:
            torch.cuda.set_sync_debug_mode(0)
    assert all(result.mask_logits.is_cuda and result.object_ids == [1, 2] for result in results)
    for result, frame in zip(results, pending):
        downloaded = frame.tracked(0, "0", np.zeros((96, 128, 3), np.uint8))
        assert np.array_equal(downloaded.masks, result.masks.cpu().numpy())


@cuda
def test_a_graphed_callable_holds_a_bounded_number_of_graphs(caplog):
    graphed = GraphedCallable(lambda x: x * 2 + 1, max_graphs=2)
    with caplog.at_level(logging.INFO, logger="sam2rt.runtime"):
        for size in (3, 4, 5, 3, 5, 4):  # 3 is dropped when 5 comes, 4 when 3 comes again; 5 stays held
            x = torch.arange(size, device="cuda", dtype=torch.float32)
            torch.testing.assert_close(graphed(x), x * 2 + 1)
    assert len(graphed.graphs) == 2
    assert caplog.text.count("captured a CUDA graph of <lambda>") == 5  # 3, 4, 5, 3 again, 4 again
    assert caplog.text.count("least recently replayed graph is dropped") == 3


@cuda
def test_another_thread_may_wait_on_the_gpu_while_a_graph_is_captured():
    """The server's publisher waits for masks' copies while the scheduler captures graphs: in CUDA's global capture
    mode that wait broke the capture (and every capture after it)."""
    import threading

    stop = threading.Event()
    failures: list[BaseException] = []

    def wait_on_events() -> None:
        try:
            while not stop.is_set():
                event = torch.cuda.Event()
                event.record()
                event.synchronize()
        except BaseException as error:  # noqa: BLE001 (the test reports it)
            failures.append(error)

    waiter = threading.Thread(target=wait_on_events)
    waiter.start()
    try:
        graphed = GraphedCallable(lambda x: (x @ x.T).relu() + 1)
        for size in range(8, 40):  # a capture per size, while the other thread waits again and again
            x = torch.randn(size, 64, device="cuda")
            torch.testing.assert_close(graphed(x), (x @ x.T).relu() + 1)
    finally:
        stop.set()
        waiter.join()
    assert not failures and len(graphed.graphs) == 32

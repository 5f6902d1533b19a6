"""StreamPool: several streams in one batched pass give each stream's StreamTracker results."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
from oracle import assert_close_logits
from stream_script import apply_ours
from visible import assert_nontrivial, visible_model

import sam2rt
from sam2rt.tracking.engine import TrackingEngine
from sam2rt.tracking.object_batches import bucket
from sam2rt.tracking.pool import warm_up_counts

IMAGE_SIZE = 64
TICKS = 8
SIZES = {"a": (48, 64), "b": (40, 56), "c": (64, 48)}
JOINS = {"a": 0, "b": 0, "c": 3}  # tick of the first frame
LEAVES = {"b": 6}  # tick at which the stream is closed, before stepping
EVERY = {"a": 1, "b": 2, "c": 1}  # stepped on ticks where (tick - join) % every == 0

# (stream, tick) -> prompts after that tick's frame: ("points", obj, points, labels, clear_old_points),
# ("box", obj, box), ("mask", obj), ("remove", obj)
SCRIPT = {
    ("a", 0): [("points", 1, [[20, 18]], [1], True)],
    ("a", 2): [("box", 2, [30, 5, 60, 40])],
    ("a", 4): [("points", 1, [[22, 20]], [0], True), ("points", 1, [[18, 16]], [1], False)],
    ("a", 7): [("remove", 2)],
    ("b", 0): [("box", 5, [4, 4, 30, 30])],
    ("b", 2): [("points", 5, [[10, 12]], [1], True)],
    ("b", 4): [("mask", 6)],
    ("c", 3): [("points", 1, [[20, 15]], [1], True)],
    ("c", 5): [("points", 2, [[10, 10]], [1], True)],
    ("c", 7): [("points", 1, [[30, 30]], [0], True), ("remove", 2)],
}


@pytest.fixture(scope="module")
def model():
    return visible_model(image_size=IMAGE_SIZE)


def _frame(name: str, t: int) -> np.ndarray:
    """A square moving over noise; each stream its own size and background."""
    height, width = SIZES[name]
    rng = np.random.default_rng(ord(name))
    frame = rng.integers(0, 80, size=(height, width, 3), dtype=np.uint8)
    x = 4 + (3 * t) % (width - 20)
    frame[8:24, x : x + 16] = (220, 40, 40)
    return frame


def _prompt(stream, action):
    mask = np.zeros(stream.frame.size, dtype=bool)  # a mask action's, sized for these small frames
    mask[5:25, 10:40] = True
    return apply_ours(stream, action, mask)


def _assert_same(got, expected, what, rel):
    assert got.frame_idx == expected.frame_idx and got.object_ids == expected.object_ids, what
    assert got.mask_logits.shape == expected.mask_logits.shape, what
    for row, obj_id in enumerate(expected.object_ids):
        assert_nontrivial(expected.mask_logits[row], f"{what}, {obj_id}")
        assert_close_logits(got.mask_logits[row], expected.mask_logits[row], rel=rel, what=f"{what}, {obj_id}")
        assert_close_logits(got.object_scores[row], expected.object_scores[row], rel=rel, what=f"{what}, score")


@pytest.mark.parametrize(
    "batched, buckets", [(False, False), (True, False), (True, True)], ids=["split", "batched", "buckets"]
)
def test_pool_matches_separate_stream_trackers(model, batched, buckets):
    """3 streams of different sizes and paces, joining and leaving, objects added, corrected and removed.

    batched: the pool attends for all objects of all streams in one call (the GPU's way: memories of
    different fill, padded and masked), the trackers one object at a time (the CPU's way). buckets: as with
    CUDA graphs, batches padded to buckets and memories to the most slots seen yet."""
    pool = sam2rt.StreamPool(model)
    pool.engine.split_cpu_attention = not batched
    pool.engine.shape_buckets = buckets
    rel = 1e-4 if batched else 1e-5  # another order of summation in the batched attention
    streams, trackers = {}, {}
    compared = Counter()
    for tick in range(TICKS):
        for name, leave in LEAVES.items():
            if tick == leave:
                pool.close_stream(streams.pop(name))
                trackers.pop(name)
        for name, join in JOINS.items():
            if tick == join:
                streams[name], trackers[name] = pool.open_stream(), sam2rt.StreamTracker(model)
        stepped = [n for n in streams if (tick - JOINS[n]) % EVERY[n] == 0]
        frames = {n: _frame(n, tick) for n in stepped}
        results = pool.step({streams[n]: frames[n] for n in stepped})
        assert set(results) == {streams[n] for n in stepped}  # streams without a frame are not stepped
        for name in stepped:
            _assert_same(results[streams[name]], trackers[name].step(frames[name]), f"{name} at tick {tick}", rel)
            compared[name] += 1
            for action in SCRIPT.get((name, tick), []):
                got, expected = _prompt(streams[name], action), _prompt(trackers[name], action)
                _assert_same(got, expected, f"{name} at tick {tick} after {action[0]} on {action[1]}", rel)
    assert compared == {"a": 8, "b": 3, "c": 5}
    assert streams["a"].object_ids == [1] and streams["c"].object_ids == [1]
    assert streams["a"].frame_idx == 7 and streams["c"].frame_idx == 4


def test_one_batched_pass_for_all_streams(model, monkeypatch):
    monkeypatch.setattr(TrackingEngine, "split_cpu_attention", False)  # the batched attention of GPUs
    calls, batches = Counter(), {}

    def hook(name):
        def record(module, args, output):
            while isinstance(output, (tuple, list)):
                output = output[0]
            calls[name] += 1
            batches[name] = output.shape[0]

        return record

    modules = {
        "image_encoder": model.image_encoder,
        "memory_attention": model.memory_attention,
        "mask_decoder": model.sam_mask_decoder,
        "memory_encoder": model.memory_encoder,
    }
    pool = sam2rt.StreamPool(model)
    streams = [pool.open_stream() for _ in SIZES]
    pool.step({s: _frame(n, 0) for s, n in zip(streams, SIZES)})
    for count, stream in enumerate(streams, start=1):
        for obj in range(count):  # 1 + 2 + 3 objects
            stream.add_prompt(obj, points=[[10 + 5 * obj, 20]], labels=[1])
    pool.step({s: _frame(n, 1) for s, n in zip(streams, SIZES)})  # encodes the prompts' memories, then tracks
    handles = [module.register_forward_hook(hook(name)) for name, module in modules.items()]
    try:
        results = pool.step({s: _frame(n, 2) for s, n in zip(streams, SIZES)})
    finally:
        for handle in handles:
            handle.remove()
    assert dict(calls) == {name: 1 for name in modules}
    assert batches == {"image_encoder": 3, "memory_attention": 6, "mask_decoder": 6, "memory_encoder": 6}
    for stream, name in zip(streams, SIZES):
        assert results[stream].mask_logits.shape == (len(stream.object_ids), *SIZES[name])


def test_pool_errors(model):
    pool, other = sam2rt.StreamPool(model), sam2rt.StreamPool(model)
    stream, foreign = pool.open_stream(), other.open_stream()
    with pytest.raises(TypeError, match="dict"):
        pool.step([_frame("a", 0)])
    with pytest.raises(ValueError, match="another pool"):
        pool.step({foreign: _frame("a", 0)})
    with pytest.raises(ValueError, match=r"shape \(H, W, 3\)"):  # one bad frame: no stream moves
        pool.step({stream: _frame("a", 0), pool.open_stream(): np.zeros((4, 4, 4), np.uint8)})
    assert stream.frame_idx == -1
    with pytest.raises(ValueError, match="max_cond_frames"):
        sam2rt.StreamPool(model, max_cond_frames=0)
    stream.step(_frame("a", 0))
    stream.add_prompt(1, points=[[20, 18]], labels=[1])
    stream.close()
    assert stream.closed and stream.state_tensors() == []  # its memory is released
    for use in (
        lambda: stream.step(_frame("a", 1)),
        lambda: pool.step({stream: _frame("a", 1)}),
        lambda: stream.add_prompt(1, points=[[20, 18]], labels=[1]),
        lambda: stream.remove_object(1),
        lambda: pool.close_stream(stream),
    ):
        with pytest.raises(RuntimeError, match="closed"):
            use()


def test_shape_buckets_leave_few_shapes_to_capture(model, monkeypatch):
    """With shape buckets (what CUDA graphs get), the passes see batches of bucket sizes and memories padded
    to full slots from the first tracked frame: one shape per bucket while the streams fill their memories and
    after, where exact shapes follow every age and mix of streams stepped together."""
    monkeypatch.setattr(TrackingEngine, "split_cpu_attention", False)
    seen, encoded = {}, {}
    for buckets in (False, True):
        shapes, encodes = [], []
        original, original_encode = model.condition_on_memory, model.encode_memory

        def record(embed, memory, original=original, shapes=shapes):
            shapes.append((memory.spatial.shape[0], memory.spatial.shape[1], memory.pointers.shape[1]))
            return original(embed, memory)

        def record_encode(embed, masks, *args, original=original_encode, encodes=encodes):
            encodes.append(masks.shape[0])  # prompts' memories and the tracking passes' alike
            return original(embed, masks, *args)

        monkeypatch.setattr(model, "condition_on_memory", record)
        monkeypatch.setattr(model, "encode_memory", record_encode)
        pool = sam2rt.StreamPool(model)
        pool.engine.shape_buckets = buckets
        streams = {name: pool.open_stream() for name in SIZES}
        for tick in range(24):
            # a, b and c out of step: 1 to 3 streams (1, 3, 5 or 7 objects) a pass
            stepped = [n for n, every in zip(SIZES, (1, 2, 3)) if tick % every == 0]
            pool.step({streams[n]: _frame(n, tick) for n in stepped})
            if tick == 0:
                for count, name in zip((1, 2, 4), SIZES):
                    for obj in range(count):
                        streams[name].add_prompt(obj, points=[[10 + 5 * obj, 20]], labels=[1])
        monkeypatch.setattr(model, "condition_on_memory", original)
        monkeypatch.setattr(model, "encode_memory", original_encode)
        seen[buckets], encoded[buckets] = set(shapes), set(encodes)
    assert all(bucket(batch) == batch for batch, _, _ in seen[True]), seen[True]  # bucket sizes: 1, 2, 3, 4, 6, ...
    assert all(bucket(batch) == batch for batch in encoded[True]), encoded[True]
    assert any(bucket(batch) != batch for batch in encoded[False]), encoded[False]  # the prompts' exact counts
    assert {(frames, pointers) for _, frames, pointers in seen[True]} == {(7, 16)}, seen[True]  # one size
    assert len(seen[True]) < len(seen[False]), (sorted(seen[True]), sorted(seen[False]))


def test_warm_up_captures_every_shape_that_paced_streams_then_bring(model, monkeypatch):
    """`StreamPool.warm_up` (what `sam2rt serve` runs before it says ready): with shape buckets, every call of a
    graphed step that streams of one object each bring later, joining at different ticks, clicked on their first
    frame and stepped out of phase, until one has full memory (no validity masks), has the key of a graph the
    warm-up captured. The warm-up leaves no stream or memory row behind, and tracking after it gives what a fresh
    pool gives."""
    from sam2rt.runtime import graphs

    monkeypatch.setattr(TrackingEngine, "split_cpu_attention", False)
    monkeypatch.setattr("sam2rt.tracking.pool.has_cuda_graphs", lambda model: True)
    keys: list = []
    for name in graphs.GRAPHED_METHODS:  # the key each call's graph is found by (runtime/graphs.py)

        def recorded(*args, original=getattr(model, name), name=name, **kwargs):
            keys.append((name, graphs._flatten((args, tuple(sorted(kwargs.items()))), [])))
            return original(*args, **kwargs)

        monkeypatch.setattr(model, name, recorded)

    def live(pool):
        streams, results = [], []
        for tick in range(20):  # stream 0 fills its memory and pointer slots (masks then dropped), alone at tick 18
            if tick < 3:
                streams.append(pool.open_stream())
            stepped = [s for i, s in enumerate(streams) if (tick - i) % (i + 1) == 0]  # 1 to 3 streams a tick
            results.append(pool.step({s: _frame("a", tick) for s in stepped}))
            for i, stream in enumerate(streams):
                if tick == i:  # a click on each stream's first frame
                    stream.add_prompt(1, points=[[20 + 4 * i, 18]], labels=[1])
        return [result for tick in results for result in tick.values()]

    def pool_with_buckets():
        pool = sam2rt.StreamPool(model)
        pool.engine.shape_buckets = True  # as CUDA graphs set it
        return pool

    pool = pool_with_buckets()
    assert pool.warm_up(3, frame_size=SIZES["a"]) == 0  # no graphs on the CPU: none captured
    warmed = set(keys)
    assert {name for name, _ in warmed} == set(graphs.GRAPHED_METHODS)  # each step taken
    assert pool.arena.capacity == 0  # every stream closed, every memory row given back
    keys.clear()
    after_warm_up = live(pool)
    new = set(keys) - warmed
    assert not new, sorted(name for name, _ in new)
    for got, expected in zip(after_warm_up, live(pool_with_buckets())):
        _assert_same(got, expected, "after a warm-up", rel=1e-5)


@pytest.mark.parametrize("chunk", [None, 4, 16])
def test_warm_up_counts_bring_every_padded_batch_pair_of_up_to_that_many_streams(chunk):
    """Each count of one-object streams from 1 to the maximum pads to a pair (frames encoded, objects tracked)
    that one of the warm-up's counts pads to as well; no count beyond the maximum is opened."""
    for max_streams in (1, 3, 16, 20, 40, 70):
        counts = warm_up_counts(max_streams, chunk)
        warmed = {(bucket(count), bucket(count, chunk)) for count in counts}
        needed = {(bucket(n), bucket(n, chunk)) for n in range(1, max_streams + 1)}
        assert needed <= warmed, (max_streams, chunk, sorted(needed - warmed))
        assert max(counts) == max_streams and len(counts) == len(warmed)  # none wasted
    assert warm_up_counts(40, 16) == [1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 40]  # 33-40 streams: 48 frames and objects

"""Frames of a known video encoded ahead in batches track exactly as frames encoded one at a time."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import sam2rt
from sam2rt.io.prompt_file import Prompt
from sam2rt.io.sinks import SinkSet, TrackedFrame
from sam2rt.io.sources import ListFrames
from sam2rt.io.track_source import FileSource
from sam2rt.io.video_file import VideoReadError
from sam2rt.tracking.lookahead import encoded_ahead
from sam2rt.tracking.run import run_tracking

IMAGE_SIZE = 64
CLOSE = 1e-4  # encoding a batch may sum in another order than encoding one frame (float32, CPU)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    model = sam2rt.build_model("sam2.1_hiera_tiny", image_size=IMAGE_SIZE)
    with torch.no_grad():  # random weights judge every object absent (constant masks): make them present
        model.sam_mask_decoder.pred_obj_score_head.layers[-1].bias += 1.0
    return model


@pytest.fixture()
def encoder_batches(model, monkeypatch):
    """The batch size of every image-encoder call."""
    sizes: list[int] = []
    encode = model.encode_image

    def counting(images):
        sizes.append(images.shape[0])
        return encode(images)

    monkeypatch.setattr(model, "encode_image", counting)
    return sizes


def _moving_square(count, height=48, width=64):
    """Frames of a bright square moving right over a dim noisy background."""
    rng = np.random.default_rng(3)
    frames = []
    for t in range(count):
        frame = rng.integers(0, 60, size=(height, width, 3), dtype=np.uint8)
        frame[14:30, 8 + 3 * t : 24 + 3 * t] = 230
        frames.append(frame)
    return frames


PROMPTS = {0: [(1, (16, 20))], 3: [(2, (40, 10)), (1, (26, 22))]}  # frame: [(object, click x, y)]


def _track(model, frames, lookahead):
    tracker = sam2rt.StreamTracker(model, fill_hole_area=0)
    results = []
    for frame_idx, frame in enumerate(encoded_ahead(tracker, frames, lookahead)):
        result = tracker.step(frame)
        for obj_id, click in PROMPTS.get(frame_idx, []):
            result = tracker.add_prompt(obj_id, points=[click], labels=[1])
        results.append(result)
    return results


def _assert_same_results(got, expected):
    assert len(got) == len(expected)
    for a, b in zip(got, expected):
        assert a.frame_idx == b.frame_idx and a.object_ids == b.object_ids
        assert (b.object_scores > 0).all() and b.masks.any()  # objects present: the logits carry masks
        scale = max(1.0, b.mask_logits.abs().max().item())
        assert (a.mask_logits - b.mask_logits).abs().max().item() < CLOSE * scale
        assert (a.object_scores - b.object_scores).abs().max().item() < CLOSE * scale


def test_frames_encoded_ahead_track_as_frames_encoded_one_by_one(model, encoder_batches):
    frames = _moving_square(8)
    expected = _track(model, frames, lookahead=1)
    assert encoder_batches == [1] * 8
    encoder_batches.clear()
    got = _track(model, frames, lookahead=3)
    assert encoder_batches == [3, 3, 1, 1]  # two groups of 3; the last two frames one by one
    _assert_same_results(got, expected)
    assert [r.frame_idx for r in got] == list(range(8))


def test_a_step_with_another_frame_drops_the_frames_encoded_ahead(model, encoder_batches):
    frames = _moving_square(4)
    plain = sam2rt.StreamTracker(model, fill_hole_area=0)
    expected = [plain.step(frames[0]), plain.add_prompt(1, points=[(16, 20)], labels=[1])]
    expected += [plain.step(frame) for frame in frames[2:4]]
    encoder_batches.clear()

    tracker = sam2rt.StreamTracker(model, fill_hole_area=0)
    tracker.step(frames[0])
    got = [tracker.add_prompt(1, points=[(16, 20)], labels=[1])]
    tracker.encode_ahead([frames[1], frames[2]])
    got.append(tracker.step(frames[2]))  # not the frame encoded next: both encoded frames are dropped
    got.append(tracker.step(frames[3]))
    assert encoder_batches == [1, 2, 1, 1]  # frames 2 and 3 encoded again, one by one
    _assert_same_results(got, expected[1:])


def test_frames_encoded_ahead_are_held_and_let_go_with_the_stream(model):
    frames = _moving_square(3)
    tracker = sam2rt.StreamTracker(model, fill_hole_area=0)
    tracker.step(frames[0])
    held = len(tracker.state_tensors())
    tracker.encode_ahead(frames[1:])
    assert len(tracker.state_tensors()) == 3 * held  # the newest frame's features and two more
    tracker.reset()
    assert tracker.state_tensors() == []
    assert tracker.step(frames[1]).frame_idx == 0  # encoded again after the reset


def test_a_pool_returns_results_in_the_order_its_streams_were_given(model):
    frames = _moving_square(2)
    pool = sam2rt.StreamPool(model, fill_hole_area=0)
    first, second = pool.open_stream(), pool.open_stream()
    first.encode_ahead([frames[0]])  # the first stream's frame is ready, the second's is encoded in the step
    results = pool.step({first: frames[0], second: frames[1]})
    assert list(results) == [first, second]


def test_groups_must_hold_a_frame(model):
    tracker = sam2rt.StreamTracker(model)
    with pytest.raises(ValueError, match="at least 1"):
        next(encoded_ahead(tracker, _moving_square(2), 0))


def test_a_refused_frame_in_a_group_is_refused_in_its_turn(model):
    frames = _moving_square(4)
    bad = np.full((48, 64, 3), np.nan, dtype=np.float32)
    tracker = sam2rt.StreamTracker(model, fill_hole_area=0)
    stepped = []
    with pytest.raises(ValueError):
        for frame in encoded_ahead(tracker, [frames[0], frames[1], bad, frames[2]], 4):
            stepped.append(tracker.step(frame).frame_idx)
    assert stepped == [0, 1]  # the frames before it were tracked
    assert tracker.step(frames[3]).frame_idx == 2  # and the tracker goes on


def test_a_read_error_comes_after_the_items_read_before_it(model):
    def source():
        yield from _moving_square(2)
        raise OSError("the disk went away")

    tracker = sam2rt.StreamTracker(model, fill_hole_area=0)
    stepped = []
    with pytest.raises(OSError, match="went away"):
        for frame in encoded_ahead(tracker, source(), 4):
            stepped.append(tracker.step(frame).frame_idx)
    assert stepped == [0, 1]


class _Keep:
    description = "kept in memory"

    def __init__(self) -> None:
        self.frames: list[TrackedFrame] = []

    def write(self, frame: TrackedFrame) -> None:
        self.frames.append(frame)

    def close(self) -> None:
        pass


@pytest.mark.parametrize("max_frames", [None, 6])
def test_a_file_tracked_with_lookahead_writes_what_it_writes_without(model, encoder_batches, max_frames):
    frames = _moving_square(9)
    prompts = [
        Prompt(0, 1, np.array([[16, 20]], np.float32), np.array([1], np.int32), None, None, "a click"),
        Prompt(4, 2, None, None, np.array([36, 4, 60, 20], np.float32), None, "a box"),
    ]
    runs = {}
    for lookahead in (1, 4):
        keep = _Keep()
        tracker = sam2rt.StreamTracker(model, fill_hole_area=0)
        summary = run_tracking(
            tracker,
            FileSource(ListFrames(frames), "clip"),
            prompts,
            SinkSet([keep]),
            max_frames,
            False,
            None,
            lookahead,
        )
        assert summary.error is None
        runs[lookahead] = keep.frames
    counted = max_frames or 9
    assert encoder_batches[:counted] == [1] * counted  # lookahead 1: one by one
    assert encoder_batches[counted:] == ([4] + [1] * (counted - 4) if counted < 8 else [4, 4, 1])
    assert len(runs[1]) == len(runs[4]) == counted
    for a, b in zip(runs[4], runs[1]):
        assert a.index == b.index and a.object_ids == b.object_ids
        # thresholded masks: a logit within float noise of 0 may flip a pixel
        assert (a.masks != b.masks).mean() < 1e-3


@pytest.mark.parametrize("reverse", [False, True])
def test_video_propagation_with_lookahead_equals_frame_by_frame(model, encoder_batches, reverse):
    frames = _moving_square(11)
    runs = {}
    for lookahead in (1, 4):
        predictor = sam2rt.VideoPredictor(model, fill_hole_area=0, lookahead=lookahead)
        state = predictor.init_state(frames)
        start = 10 if reverse else 0
        predictor.add_new_points_or_box(state, start, 1, points=[(16 + 3 * start, 20)], labels=[1])
        encoder_batches.clear()
        runs[lookahead] = list(predictor.propagate_in_video(state, reverse=reverse))
        # the 10 frames after the prompted one: two groups of 4, then the last 2 one by one
        assert encoder_batches == ([1] * 10 if lookahead == 1 else [4, 4, 1, 1])
    assert [idx for idx, _, _ in runs[4]] == [idx for idx, _, _ in runs[1]]
    for (_, ids_a, masks_a), (_, ids_b, masks_b) in zip(runs[4], runs[1]):
        assert ids_a == ids_b and (masks_b > 0).any()
        assert (masks_a - masks_b).abs().max().item() < CLOSE * max(1.0, masks_b.abs().max().item())


def test_video_lookahead_must_be_positive(model):
    with pytest.raises(ValueError, match="lookahead must be at least 1"):
        sam2rt.VideoPredictor(model, lookahead=0)


class _BreaksAt:
    """A video whose frame `broken` fails to decode (as a damaged mp4 does midway)."""

    def __init__(self, frames, broken: int) -> None:
        self.frames, self.broken = frames, broken
        self.size = frames.size

    def __len__(self) -> int:
        return len(self.frames)

    def __getitem__(self, index: int):
        if index == self.broken:
            raise VideoReadError(f"frame {index} cannot be decoded")
        return self.frames[index]


def test_video_frame_that_fails_to_load_fails_in_its_turn(model):
    predictor = sam2rt.VideoPredictor(model, fill_hole_area=0, lookahead=4)
    state = predictor.init_state(_moving_square(9))
    state.frames = _BreaksAt(state.frames, broken=6)  # inside the group of frames 5 to 8
    predictor.add_new_points_or_box(state, 0, 1, points=[(16, 20)], labels=[1])
    yielded = []
    with pytest.raises(VideoReadError, match="frame 6"):
        for frame_idx, _, _ in predictor.propagate_in_video(state):
            yielded.append(frame_idx)
    assert yielded == [0, 1, 2, 3, 4, 5]  # every frame before the broken one

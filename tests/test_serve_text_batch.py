"""`sam2rt serve`'s phrase sessions due in one tick share one backbone pass (SAM 3's ViT, the biggest part of a step).

The small SAM 3 of tests/test_serve_text.py (weights whose detections are present). `ConceptTracker.encode_batch`
over frames of three sizes must give each frame's encoding as `encode` alone does, and trackers stepped on their
rows the same tracks. The scheduler with three phrase sessions due in one tick must call the trunk once with a
batch of three (a hook on the trunk counts), and send each session the masks and ids it gets stepped alone; a
session whose step fails, or whose frame is refused, is told, and the two others' results still go out.
"""

from __future__ import annotations

import json
import threading
import time
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from cli_support import clip_frames
from serve_support import decode_masks
from test_serve_text import PHRASE, as_sent, small_concept_models

from sam2rt.serve.concepts import PHRASE_FRAMES_PER_PASS, SessionPhrase, encoding_groups
from sam2rt.serve.protocol import FORMAT_JPEG, ReceivedFrame, TextRequest
from sam2rt.serve.scheduler import Scheduler
from sam2rt.serve.sessions import Close, Session
from sam2rt.tracking.concepts import ConceptFrame, ConceptTracker

SIZES = [(96, 128), (88, 104), (112, 120)]  # (height, width) of each session's frames: one batch, three sizes
TICKS = 8  # long enough for tracks to be found, matched and added while others go on
RELATIVE = 1e-5
WAIT_S = 120.0


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    return small_concept_models(tmp_path_factory.mktemp("vocab"))


@pytest.fixture(scope="module")
def clips() -> list[list[np.ndarray]]:
    return [clip_frames(TICKS, size) for size in SIZES]


@pytest.fixture(scope="module")
def alone(models, clips) -> list[list[ConceptFrame]]:
    """Each session's ConceptFrames stepped alone (ConceptTracker.step on its clip), per frame."""
    per_session = []
    for clip in clips:
        tracker = ConceptTracker(models.detector, models.tracker, models.tokenizer, PHRASE)
        per_session.append([tracker.step(image) for image in clip])
    # the comparisons must be able to fail: every session finds objects, with masks of some area, one several
    found_ids = [[found.visible_masks()[0] for found in per_frame] for per_frame in per_session]
    for per_frame in per_session:
        assert all(found.visible.any() for found in per_frame), found_ids
        areas = [found.visible_masks()[1].float().mean((1, 2)).max().item() for found in per_frame]
        assert 0.005 < max(areas) < 0.95, areas
    assert max(int(found.visible.sum()) for per_frame in per_session for found in per_frame) >= 2, found_ids
    return per_session


class _TrunkCalls:
    """A forward hook on the backbone's trunk: the batch of each call."""

    def __init__(self, models) -> None:
        self.batches: list[int] = []
        self._trunk = models.tracker.image_encoder.trunk
        assert models.detector.backbone.vision_backbone.trunk is self._trunk  # one trunk serves both

    def __enter__(self) -> list[int]:
        self._handle = self._trunk.register_forward_pre_hook(lambda module, args: self.batches.append(len(args[0])))
        return self.batches

    def __exit__(self, *exc) -> None:
        self._handle.remove()


def _features(encoded) -> dict[str, torch.Tensor]:
    tracked, detected = encoded.tracker.features, encoded.detector
    named = {"embed": tracked.embed, "high_res0": tracked.high_res[0], "high_res1": tracked.high_res[1]}
    named["pos"] = tracked.pos
    for level, (features, pos) in enumerate(zip(detected.levels, detected.pos)):
        named[f"detector{level}"], named[f"detector_pos{level}"] = features, pos
    return named


def test_a_batched_encoding_equals_each_frame_encoded_alone(models, clips, alone):
    trackers = [ConceptTracker(models.detector, models.tracker, models.tokenizer, PHRASE) for _ in SIZES]
    assert all(trackers[0].encodes_like(tracker) for tracker in trackers)
    for tick in range(TICKS):
        frames = [clip[tick] for clip in clips]
        with _TrunkCalls(models) as calls:
            batched = trackers[0].encode_batch(frames)
        assert calls == [len(SIZES)]
        for frame, encoded, size in zip(frames, batched, SIZES):
            single = trackers[0].encode(frame)
            assert encoded.tracker.size == single.tracker.size == size
            for name, value in _features(single).items():
                got = _features(encoded)[name]
                assert got.shape == value.shape and got.shape[0] == 1, name
                scale = value.abs().max().item()
                assert scale > 0, name
                assert (got - value).abs().max().item() <= RELATIVE * scale, f"tick {tick}, {size}: {name}"
        # each tracker on its own frame's part: the tracks it finds stepped alone
        for tracker, encoded, per_frame in zip(trackers, batched, alone):
            found, expected = tracker.step_encoded(encoded), per_frame[tick]
            assert found.object_ids == expected.object_ids, f"tick {tick}"
            assert torch.equal(found.masks, expected.masks) and torch.equal(found.visible, expected.visible)
            torch.testing.assert_close(found.scores, expected.scores, rtol=1e-5, atol=1e-6)
            torch.testing.assert_close(found.tracker_scores, expected.tracker_scores, rtol=1e-5, atol=1e-6)
            assert found.removed_ids == expected.removed_ids


def test_encoding_groups_hold_alike_trackers_and_at_most_a_pass_each(models):
    phrase = SessionPhrase(models, PHRASE)
    other = SessionPhrase(models, PHRASE)  # resized otherwise: its frames are another input, not in the same pass
    other.tracker = ConceptTracker(models.detector, models.tracker, models.tokenizer, PHRASE, resize="pil-bicubic")
    assert not phrase.tracker.encodes_like(other.tracker)
    count = PHRASE_FRAMES_PER_PASS + 2
    groups = encoding_groups([phrase] * count + [other] + [phrase])
    assert groups == [list(range(PHRASE_FRAMES_PER_PASS)), [PHRASE_FRAMES_PER_PASS, count - 1, count + 1], [count]]


# The scheduler


class _ClickEngine:
    """The SAM 2 pool stand-in: phrase sessions open a stream and reset it, and nothing is stepped in it."""

    def open_stream(self):
        return SimpleNamespace(reset=lambda: None, object_ids=[])

    def step(self, frames):
        raise AssertionError("no session clicks here")

    def close_stream(self, stream) -> None:
        pass

    def release_memory(self) -> int:
        return 0


class _Inbox:
    """A session's messages as its connection would send them."""

    def __init__(self) -> None:
        self.messages: list[dict] = []
        self.changed = threading.Condition()

    def deliver(self, text: str, binary) -> None:
        with self.changed:
            self.messages.append(json.loads(text))
            self.changed.notify_all()

    def of_type(self, kind: str) -> list[dict]:
        with self.changed:
            return [m for m in self.messages if m["type"] == kind]

    def wait_for(self, kind: str, count: int) -> list[dict]:
        deadline = time.monotonic() + WAIT_S
        with self.changed:
            while len([m for m in self.messages if m["type"] == kind]) < count:
                left = deadline - time.monotonic()
                assert left > 0, f"waited for {count} {kind!r} messages; got {self.messages}"
                self.changed.wait(left)
        return self.of_type(kind)


def _phrase_sessions(scheduler: Scheduler) -> tuple[list[Session], list[_Inbox]]:
    """Three sessions tracking PHRASE, their phrases set (no frame yet)."""
    inboxes = [_Inbox() for _ in SIZES]
    sessions = [Session(scheduler.lock, inbox.deliver) for inbox in inboxes]
    for session in sessions:
        scheduler.add(session)
        session.request(TextRequest(PHRASE))
    for inbox in inboxes:
        assert inbox.wait_for("text", 1)[0]["phrase"] == PHRASE
    return sessions, inboxes


def _offer_together(scheduler: Scheduler, sessions: list[Session], images: list[np.ndarray], frame_id: int) -> None:
    """Every session's frame in before the scheduler looks: they are due in one tick."""
    with scheduler.lock:
        for session, image in zip(sessions, images):
            assert session.offer(ReceivedFrame(frame_id, image, b"jpeg", FORMAT_JPEG, time.monotonic())) is None


def _assert_result_is(result: dict, expected: dict[int, tuple[np.ndarray, float]], size, where: str) -> None:
    ids, masks = decode_masks(result, size)
    assert ids == sorted(expected), f"{where}: ids {ids}, expected {sorted(expected)}"
    for obj_id, mask, sent in zip(ids, masks, result["objects"]):
        assert np.array_equal(mask, expected[obj_id][0]), f"{where}, object {obj_id}: mask"
        assert sent["score"] == pytest.approx(expected[obj_id][1], abs=1e-4), f"{where}, object {obj_id}: score"


@pytest.fixture
def scheduler(models):
    scheduler = Scheduler(_ClickEngine(), batch_wait_s=0.0, concepts=models)
    scheduler.start()
    yield scheduler
    for session in list(scheduler.sessions):
        session.request(Close())
    scheduler.stop()


def test_phrase_sessions_due_in_one_tick_share_one_backbone_pass(models, clips, alone, scheduler):
    expected_sent = [as_sent(per_frame) for per_frame in alone]
    sessions, inboxes = _phrase_sessions(scheduler)
    with _TrunkCalls(models) as calls:
        for tick in range(TICKS):
            _offer_together(scheduler, sessions, [clip[tick] for clip in clips], tick)
            for inbox in inboxes:
                inbox.wait_for("result", tick + 1)
    assert calls == [len(SIZES)] * TICKS, "one trunk call a tick, of every session's frame"
    for number, (inbox, expected, size) in enumerate(zip(inboxes, expected_sent, SIZES)):
        results = inbox.of_type("result")
        assert [r["frame"] for r in results] == list(range(TICKS)) and not inbox.of_type("error")
        assert [r["index"] for r in results] == list(range(TICKS))
        for tick, result in enumerate(results):
            assert result["phrase"] == PHRASE and result["stats"]["processed"] == tick + 1
            _assert_result_is(result, expected[tick], size, f"session {number}, frame {tick}")
    assert scheduler.tracked_total == len(SIZES) * TICKS


@pytest.mark.parametrize("failure", ["step", "frame"])
def test_a_failing_session_is_told_and_the_others_results_go_out(models, clips, alone, scheduler, failure):
    sessions, inboxes = _phrase_sessions(scheduler)
    images = [clip[0] for clip in clips]
    if failure == "step":

        def broken(*args, **kwargs):
            raise RuntimeError("this session's step fails")

        sessions[1].phrase.tracker.step_encoded = broken
        sessions[1].phrase.tracker.step = broken
    else:  # a frame the model refuses: the batch's pass fails, each session then encodes its own frame
        images[1] = np.full((*SIZES[1], 3), 2.0)  # floats outside [0, 1]
    with _TrunkCalls(models) as calls:
        _offer_together(scheduler, sessions, images, 0)
        for inbox in (inboxes[0], inboxes[2]):
            inbox.wait_for("result", 1)
        error = inboxes[1].wait_for("error", 1)[0]
    assert "internal error while tracking the phrase" in error["message"]
    assert calls == ([len(SIZES)] if failure == "step" else [1, 1])
    assert not inboxes[1].of_type("result") and sessions[1].stats.processed == 0
    for number in (0, 2):
        assert not inboxes[number].of_type("error")
        result = inboxes[number].of_type("result")[0]
        _assert_result_is(result, as_sent(alone[number])[0], SIZES[number], f"session {number}")
    assert scheduler.tracked_total == 2


def test_an_idle_server_gives_back_the_detectors_and_trackers_graphs_too(models, clips, monkeypatch):
    """SAM 3's detector and tracker replay from CUDA graphs of their own (runtime.optimize_concept_models): an idle
    server drops them with the pool's (on the CPU there are none: the calls are what is checked)."""
    released = []
    monkeypatch.setattr("sam2rt.serve.scheduler.release_graphs", lambda model: released.append(model) or 2)
    scheduler = Scheduler(_ClickEngine(), batch_wait_s=0.0, release_after_s=0.2, concepts=models)
    scheduler.start()
    try:
        sessions, inboxes = _phrase_sessions(scheduler)
        _offer_together(scheduler, sessions, [clip[0] for clip in clips], 0)
        for inbox in inboxes:
            inbox.wait_for("result", 1)
        assert released == []  # sessions are open
        for session in sessions:
            session.request(Close())
        deadline = time.monotonic() + WAIT_S
        while len(released) < 2 and time.monotonic() < deadline:
            time.sleep(0.02)
    finally:
        scheduler.stop()
    assert released == [models.detector, models.tracker]

"""Frames of a server-side source (a file, a URL, an upload) are JPEG-encoded for their client on the publisher's
thread, not on the model's; a click lands on such a frame before and after it is encoded, with the masks of a
StreamTracker given the same clicks."""

from __future__ import annotations

import io
import json
import threading
import time

import numpy as np
import pytest
from cli_support import clip_frames
from PIL import Image
from serve_support import decode_masks, load_test_model

import sam2rt
from sam2rt.serve import publisher as publisher_module
from sam2rt.serve.protocol import PromptRequest, ReceivedFrame
from sam2rt.serve.scheduler import Scheduler, default_engine
from sam2rt.serve.sessions import Session

FRAMES = clip_frames(5)
SIZE = FRAMES[0].shape[:2]
WAIT_S = 60.0


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return load_test_model(tmp_path_factory.mktemp("serve-model"))


class Inbox:
    """What a session's client receives: JSON results, and the pictures sent before them."""

    def __init__(self) -> None:
        self.results: list[dict] = []
        self.pictures: list[bytes] = []
        self.changed = threading.Condition()

    def deliver(self, text: str, binary) -> None:
        with self.changed:
            if binary is not None:
                self.pictures.append(binary)
            self.results.append(json.loads(text))
            self.changed.notify_all()

    def wait_for(self, count: int) -> list[dict]:
        with self.changed:
            assert self.changed.wait_for(lambda: len(self.results) >= count, timeout=WAIT_S), self.results
            return list(self.results)


def _offer(session: Session, frame_id: int) -> None:
    session.offer(ReceivedFrame(frame_id, FRAMES[frame_id], None, 0, time.monotonic()))  # pixels only, as feeds do


def test_server_frames_are_encoded_off_the_model_thread_and_clicks_land_on_them(model, monkeypatch):
    encoders: list[str] = []
    encode = publisher_module.encode_jpeg
    frame_1_encoding, release = threading.Event(), threading.Event()

    def recorded(image):
        encoders.append(threading.current_thread().name)
        if len(encoders) == 2:  # frame 1: the publisher holds it until released, unencoded meanwhile
            frame_1_encoding.set()
            assert release.wait(WAIT_S)
        return encode(image)

    monkeypatch.setattr(publisher_module, "encode_jpeg", recorded)
    scheduler = Scheduler(default_engine(model))
    inbox = Inbox()
    session = Session(scheduler.lock, inbox.deliver)
    scheduler.add(session)
    reference = sam2rt.StreamTracker(model)
    scheduler.start()
    try:
        for frame_id in range(3):
            _offer(session, frame_id)
            reference.step(FRAMES[frame_id])
            if frame_id == 1:
                assert frame_1_encoding.wait(WAIT_S)
            else:
                time.sleep(0.3)  # stepped before the next comes
        held = session.recalled(1)
        assert held.encoded is None and held.image is not None  # not encoded yet: kept with its pixels

        # A click on frame 1 while its JPEG is not made: the frame is stepped again from its pixels.
        session.request(PromptRequest(frame=1, obj_id=1, points=[[28, 50]], labels=[1], box=None))
        reference.step(FRAMES[1])
        expected = reference.add_prompt(1, points=[[28, 50]], labels=[1], clear_old_points=False)
        release.set()
        answer = next(r for r in inbox.wait_for(4) if r["prompted"])
        assert answer["frame"] == 1
        ids, masks = decode_masks(answer, SIZE)
        assert ids == [1] and masks.any() and np.array_equal(masks, expected.masks.numpy())

        # Encoded since: its pixels freed; a click on frame 0 decodes the JPEG kept.
        for frame_id in (0, 1):
            kept = session.recalled(frame_id)
            assert kept.image is None and kept.encoded[:2] == b"\xff\xd8", f"frame {frame_id} not kept encoded"
        session.request(PromptRequest(frame=0, obj_id=2, points=[[60, 40]], labels=[1], box=None))
        answer = [r for r in inbox.wait_for(5) if r["prompted"]][-1]
        assert answer["frame"] == 0 and [o["id"] for o in answer["objects"]] == [1, 2]
    finally:
        release.set()
        scheduler.stop()
    assert len(set(encoders)) == 1 and encoders[0].startswith("sam2rt publisher"), f"JPEGs encoded on {set(encoders)}"
    # Each tracked frame's picture went to the client before its result, at the frame's size; none for prompts.
    assert len(inbox.pictures) == 3
    for picture in inbox.pictures:
        with Image.open(io.BytesIO(picture[picture.index(b"\xff\xd8") :])) as image:
            assert image.size == (SIZE[1], SIZE[0])

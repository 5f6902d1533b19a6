"""Live sources: the reader keeps only the newest frame and counts the dropped ones; streams through `sam2rt track`."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
from cli_support import assert_clean_error, decode_video, model_args, run_sam2rt, write_clip
from http_server import LocalServer

from sam2rt.io.live import Captured, LatestFrameReader, SourceError


class FakeCapture:
    """Numbered 4 x 4 frames (pixel value = frame number), one every `interval` seconds, then an end or an error."""

    name = "fake camera"
    fps = 100.0
    paced = False

    def __init__(self, count: int, interval: float, fail: bool = False) -> None:
        self.count, self.interval, self.fail = count, interval, fail
        self.sent = 0
        self.closed = threading.Event()

    def read(self):
        if self.sent == self.count:
            if self.fail:
                raise OSError("the cable was pulled")
            return None
        time.sleep(self.interval)
        self.sent += 1
        return Captured(np.full((4, 4, 3), self.sent - 1, np.uint8), None)

    def close(self) -> None:
        self.closed.set()


def test_a_slow_consumer_gets_the_newest_frames_and_the_rest_are_counted_as_dropped():
    capture = FakeCapture(count=60, interval=0.002)
    reader = LatestFrameReader(capture)
    assert reader.size == (4, 4)
    seen = []
    for index, image in reader:
        assert image[0, 0, 0] == index  # the frame and its number travel together
        seen.append(index)
        time.sleep(0.02)  # a tracker ten times slower than the camera
    reader.close()
    assert seen[0] == 0 and seen[-1] == 59  # the first and the last frame always arrive
    assert seen == sorted(set(seen))  # newest first, never an old frame again
    assert len(seen) < 30 and reader.dropped == 60 - len(seen) and reader.frames_read == 60
    assert capture.closed.is_set()


def test_a_fast_consumer_drops_nothing():
    reader = LatestFrameReader(FakeCapture(count=20, interval=0.01))
    assert [index for index, _ in reader] == list(range(20))
    assert reader.dropped == 0


def test_a_source_that_breaks_midway_raises_after_its_frames():
    reader = LatestFrameReader(FakeCapture(count=5, interval=0.001, fail=True))
    seen = []
    with pytest.raises(SourceError, match="fake camera broke off: the cable was pulled"):
        for index, _ in reader:
            seen.append(index)
    assert seen and seen[-1] == 4


def test_a_source_without_frames():
    with pytest.raises(SourceError, match="fake camera delivered no frame"):
        LatestFrameReader(FakeCapture(count=0, interval=0))


def _check_live_run(result, out, total: int) -> None:
    assert result.returncode == 0, result.stderr
    summary = result.stdout.splitlines()[0]
    tracked, dropped = int(summary.split()[1]), int(summary.split(", ")[1].split()[0])
    assert tracked + dropped == total and tracked >= 2, summary
    ids = [image["id"] for image in json.loads((out / "masks.json").read_text())["images"]]
    assert len(ids) == tracked and ids == sorted(ids) and ids[0] == 1 and ids[-1] == total  # frame index + 1
    assert decode_video(out / "overlay.mp4")[:2] == (tracked, (120, 160))


def test_http_stream(tmp_path, checkpoint):
    """A clip served over HTTP is played like a camera: at its frame rate, dropping what the tracker misses."""
    clip = write_clip(tmp_path / "clip.mp4", 24)
    with LocalServer() as server:
        server.served.files["/live.mp4"] = clip.read_bytes()
        out = tmp_path / "out"
        result = run_sam2rt(
            "track", server.url("/live.mp4"), "--point", "30,45", *model_args(checkpoint),
            "--coco", out / "masks.json", "--overlay", out / "overlay.mp4",
        )  # fmt: skip
    _check_live_run(result, out, 24)


def test_realtime_file(tmp_path, checkpoint):
    clip = write_clip(tmp_path / "clip.mp4", 24)
    out = tmp_path / "out"
    result = run_sam2rt(
        "track", clip, "--realtime", "--point", "30,45", *model_args(checkpoint),
        "--coco", out / "masks.json", "--overlay", out / "overlay.mp4",
    )  # fmt: skip
    _check_live_run(result, out, 24)


def test_prompt_on_a_frame_a_live_source_never_reaches(tmp_path, checkpoint):
    clip = write_clip(tmp_path / "clip.mp4", 24)
    result = run_sam2rt(
        "track", clip, "--realtime", "--point", "30,45", "--frame", "500", *model_args(checkpoint),
        "--max-frames", "2", "--coco", tmp_path / "masks.json",
    )  # fmt: skip
    assert_clean_error(result, "(object 1, frame 500): frame 500 never came, the run ended after 2 frames")
    assert len(json.loads((tmp_path / "masks.json").read_text())["images"]) == 2


def test_ctrl_c_closes_the_outputs(tmp_path, checkpoint):
    """Ctrl+C is how a live run ends: exit 130, and the outputs are whole."""
    clip = write_clip(tmp_path / "clip.mp4", 600)  # 20 s at 30 fps: it is still running when interrupted
    out = tmp_path / "out"
    child = subprocess.Popen(
        [sys.executable, "-m", "sam2rt", "track", str(clip), "--realtime", "--point", "30,45",
         *map(str, model_args(checkpoint)), "--progress", "--overlay", str(out / "overlay.mp4"),
         "--coco", str(out / "masks.json")],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        seen = ""
        while not re.search(r"tracking: [1-9]\d*frame", seen):  # the progress bar: a frame was tracked
            character = child.stderr.read(1)
            assert character, f"the command ended early: {child.communicate()}"
            seen += character
        time.sleep(0.5)
        child.send_signal(signal.SIGINT)
        stdout, stderr = child.communicate(timeout=60)
    finally:
        child.kill()
    assert child.returncode == 130, stderr
    assert "interrupted" in stderr and "Traceback" not in stderr
    tracked = int(stdout.split()[1])
    assert tracked >= 1 and "(stopped early)" in stdout
    assert decode_video(out / "overlay.mp4")[0] == tracked
    assert len(json.loads((out / "masks.json").read_text())["images"]) == tracked

"""`sam2rt serve` over its WebSocket protocol: the masks a client receives are the tracker's, sessions are isolated."""

from __future__ import annotations

import io
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import zipfile

import numpy as np
import pytest
from cli_support import clip_frames, make_checkpoint, model_args, variant_env
from PIL import Image
from serve_support import Client, decode_masks, load_test_model, png_frame, running_server

import sam2rt
from sam2rt.serve.app import ServerConfig
from sam2rt.serve.scheduler import default_engine

FRAMES = clip_frames(6)
SIZE = FRAMES[0].shape[:2]


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return load_test_model(tmp_path_factory.mktemp("serve-model"))


@pytest.fixture(scope="module")
def server(model, tmp_path_factory):
    with running_server(default_engine(model), ServerConfig(max_sessions=4)) as running:
        yield running


def reference_masks(result: sam2rt.FrameResult) -> tuple[list[int], np.ndarray]:
    return list(result.object_ids), result.masks.numpy()


def assert_same(received: dict, expected: tuple[list[int], np.ndarray]) -> None:
    ids, masks = decode_masks(received, SIZE)
    assert ids == expected[0]
    assert masks.shape == expected[1].shape
    assert np.array_equal(masks, expected[1]), f"masks differ in {(masks != expected[1]).sum()} pixels"


class SlowPacer:
    """The pool, but a tick with the first stream opened (the pacer's) lasts 0.3 s more, so that the
    other sessions' frames arrive meanwhile and go through the next tick together."""

    def __init__(self, model) -> None:
        self.pool = default_engine(model)
        self.pacer = None

    def open_stream(self):
        stream = self.pool.open_stream()
        self.pacer = self.pacer or stream
        return stream

    def step(self, frames):
        if self.pacer in frames:
            time.sleep(0.3)
        return self.pool.step(frames)

    def close_stream(self, stream) -> None:
        self.pool.close_stream(stream)

    def release_memory(self) -> int:
        return self.pool.release_memory()


def test_two_sessions_receive_the_stream_trackers_masks(model):
    """Two sessions stepped together, each with its own prompts, corrections and removals: StreamTracker's masks."""
    with running_server(SlowPacer(model)) as server:
        pacer = Client(server.ws_url)
        pacer.step(0, FRAMES[0])
        run_two_sessions(server, model, pacer)
        sizes = server.state.scheduler.batch_sizes
        assert sizes.count(2) >= len(FRAMES) - 1, sizes  # the two sessions' frames went through the pool together
        pacer.close()


def run_two_sessions(server, model, pacer: Client) -> None:
    clients = [Client(server.ws_url), Client(server.ws_url)]
    references = [sam2rt.StreamTracker(model), sam2rt.StreamTracker(model)]
    # Per session: frame -> list of (message, reference call) applied after that frame was tracked.
    scripts = [
        {
            0: [({"obj_id": 1, "points": [[28, 50]], "labels": [1]}, dict(obj_id=1, points=[[28, 50]], labels=[1]))],
            2: [
                ({"obj_id": 1, "points": [[120, 100]], "labels": [0]}, dict(obj_id=1, points=[[120, 100]], labels=[0]))
            ],
            3: [({"obj_id": 2, "box": [100, 75, 150, 115]}, dict(obj_id=2, box=[100, 75, 150, 115]))],
            4: [("remove", 1)],
        },
        {
            1: [
                ({"obj_id": 3, "box": [10, 20, 70, 80]}, dict(obj_id=3, box=[10, 20, 70, 80])),
                ({"obj_id": 3, "points": [[40, 40]], "labels": [1]}, dict(obj_id=3, points=[[40, 40]], labels=[1])),
            ],
        },
    ]
    for index, frame in enumerate(FRAMES):
        pacer.ws.send(png_frame(index + 1, FRAMES[0]))
        time.sleep(0.05)  # the pacer's tick starts first
        for client in clients:  # both frames wait for the pacer's tick together
            client.ws.send(png_frame(index, frame))
        for client, reference, script in zip(clients, references, scripts):
            result = client.next("result")
            assert result["frame"] == index and not result["prompted"]
            assert_same(result, reference_masks(reference.step(frame)))
            for message, call in script.get(index, []):
                if message == "remove":
                    client.send({"type": "remove", "obj_id": call})
                    expected = reference.remove_object(call)
                else:
                    client.send({"type": "prompt", "frame": index, **message})
                    clear = call.get("box") is not None
                    expected = reference.add_prompt(**call, clear_old_points=clear)
                answer = client.next("result")
                assert answer["prompted"] and answer["frame"] == index
                assert_same(answer, reference_masks(expected))
        assert pacer.next("result")["frame"] == index + 1
    assert [o["id"] for o in result["objects"]] == [3]  # the second session never saw the first's objects
    for client in clients:
        client.close()


def test_a_click_lands_on_the_frame_it_was_made_on(server, model):
    """A prompt on a frame the stream has passed: that frame is stepped again and the prompt lands on it."""
    client = Client(server.ws_url)
    reference = sam2rt.StreamTracker(model)
    for index in range(4):
        client.step(index, FRAMES[index])
        reference.step(FRAMES[index])
    client.send({"type": "prompt", "frame": 1, "obj_id": 1, "points": [[28, 50]], "labels": [1]})
    answer = client.next("result")
    reference.step(FRAMES[1])
    expected = reference.add_prompt(1, points=[[28, 50]], labels=[1], clear_old_points=False)
    assert answer["frame"] == 1 and answer["index"] == 4  # frame 1's pixels, the stream's fifth step
    assert_same(answer, reference_masks(expected))
    result = client.step(4, FRAMES[4])
    assert_same(result, reference_masks(reference.step(FRAMES[4])))
    client.send({"type": "prompt", "frame": 999, "obj_id": 1, "points": [[5, 5]]})
    assert "frame 999 is not held" in client.next("error")["message"]
    client.close()


def test_pause_reset_and_export(server, model):
    client = Client(server.ws_url)
    client.step(0, FRAMES[0])
    client.send({"type": "prompt", "frame": 0, "obj_id": 7, "points": [[28, 50]]})
    client.next("result")
    client.step(1, FRAMES[1])
    client.send({"type": "pause"})
    client.send({"type": "ping"})
    client.ws.send(png_frame(2, FRAMES[2]))  # ignored while paused
    client.send({"type": "prompt", "frame": 1, "obj_id": 7, "points": [[100, 20]], "labels": [0]})
    answer = client.next("result")
    assert answer["frame"] == 1 and answer["index"] == 1  # the paused frame is the newest: frame 2 was not taken
    url = f"{server.base}/api/export/{client.session['id']}/coco.json"
    coco = json.loads(urllib.request.urlopen(url, timeout=30).read())
    assert [image["id"] for image in coco["images"]] == [1, 2]
    assert {a["object_id"] for a in coco["annotations"]} == {7}
    ids, masks = decode_masks(answer, SIZE)
    from pycocotools import mask as mask_utils

    last = [a for a in coco["annotations"] if a["image_id"] == 2][0]
    assert np.array_equal(mask_utils.decode(last["segmentation"]).astype(bool), masks[0])  # the corrected masks
    with urllib.request.urlopen(f"{server.base}/api/export/{client.session['id']}/masks.zip", timeout=30) as reply:
        archive = zipfile.ZipFile(io.BytesIO(reply.read()))
    assert archive.namelist() == ["masks/00000.png", "masks/00001.png"]
    labels = np.asarray(Image.open(archive.open("masks/00001.png")))
    assert np.array_equal(labels == 7, masks[0]) and set(np.unique(labels)) <= {0, 7}  # DAVIS: pixel = object id
    client.send({"type": "resume"})
    client.send({"type": "reset"})
    assert client.step(3, FRAMES[3])["objects"] == []
    client.close()


@pytest.mark.parametrize("variant", ["sam2.1_hiera_tiny", "edgetam"])
def test_the_serve_command_serves_the_app(tmp_path, variant):
    """`sam2rt serve` as a user runs it: the model loads, the page and a session answer, Ctrl+C stops it."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    checkpoint = make_checkpoint(tmp_path / "visible.pt", variant)
    command = [sys.executable, "-m", "sam2rt", "serve", "--port", str(port), *model_args(checkpoint, variant)]
    env = dict(os.environ, **variant_env(variant))
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        banner = process.stdout.readline()
        assert f"http://localhost:{port}/" in banner, banner + process.stderr.read()
        page = ""
        for _ in range(100):  # the banner comes just before uvicorn listens
            try:
                page = urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=10).read().decode()
                break
            except OSError:
                time.sleep(0.1)
        assert '<canvas id="view"' in page
        client = Client(f"ws://127.0.0.1:{port}/ws")
        assert client.step(0, FRAMES[0])["objects"] == []
        client.send({"type": "prompt", "frame": 0, "obj_id": 1, "points": [[28, 50]]})
        client.next("result")
        assert [obj["id"] for obj in client.step(1, FRAMES[1])["objects"]] == [1]  # tracked on its memory
        client.close()
    finally:
        process.send_signal(signal.SIGINT)
        process.wait(timeout=30)
    assert process.stderr.read() == "", "a start, a session and Ctrl+C: nothing for stderr"


def _metrics(server) -> dict[str, float]:
    """/metrics parsed as Prometheus parses it: sample name (with labels) -> value."""
    from prometheus_client.parser import text_string_to_metric_families

    reply = urllib.request.urlopen(f"{server.base}/metrics", timeout=30)
    assert reply.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    samples = {}
    for family in text_string_to_metric_families(reply.read().decode()):
        for sample in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
            samples[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
    return samples


def test_health_and_metrics_follow_the_sessions(server):
    health = json.loads(urllib.request.urlopen(f"{server.base}/healthz", timeout=30).read())
    assert health["status"] == "ok"
    before = _metrics(server)
    client = Client(server.ws_url)
    client.step(0, FRAMES[0])
    client.send({"type": "prompt", "frame": 0, "obj_id": 1, "points": [[28, 50]]})
    client.next("result")
    for index in (1, 2):
        client.step(index, FRAMES[index])
    during = _metrics(server)
    assert during["sam2rt_sessions"] == before["sam2rt_sessions"] + 1
    assert during["sam2rt_frames_tracked_total"] == before["sam2rt_frames_tracked_total"] + 3
    assert during["sam2rt_frame_latency_seconds_count"] == before["sam2rt_frame_latency_seconds_count"] + 3
    assert during["sam2rt_tick_sessions_count"] == before["sam2rt_tick_sessions_count"] + 3  # one session a tick
    assert during["sam2rt_tick_sessions_sum"] == before["sam2rt_tick_sessions_sum"] + 3
    assert during["sam2rt_frame_latency_seconds_bucket{le=+Inf}"] == during["sam2rt_frame_latency_seconds_count"]

    def stage(samples, name):
        return samples.get(f"sam2rt_stage_seconds_count{{stage={name}}}", 0.0)

    assert stage(during, "decode") == stage(before, "decode") + 3  # each frame the client sent
    assert stage(during, "engine") == stage(before, "engine") + 3  # each tick
    assert stage(during, "download") == stage(before, "download") + 4  # each result, the click's too
    assert stage(during, "publish") >= stage(before, "publish") + 3  # the last may still be on its way
    client.close()
    deadline = time.monotonic() + 10
    while _metrics(server)["sam2rt_sessions"] != before["sam2rt_sessions"] and time.monotonic() < deadline:
        time.sleep(0.05)
    after = _metrics(server)
    assert after["sam2rt_sessions"] == before["sam2rt_sessions"]  # the closed session is gone ...
    assert after["sam2rt_frames_tracked_total"] == during["sam2rt_frames_tracked_total"]  # ... its counts stay
    assert after["sam2rt_frames_dropped_total"] >= during["sam2rt_frames_dropped_total"]


def test_health_says_when_the_scheduler_has_stopped(model):
    with running_server(default_engine(model)) as server:
        assert urllib.request.urlopen(f"{server.base}/healthz", timeout=30).status == 200
        server.state.scheduler.stop()  # as if its thread had died
        with pytest.raises(urllib.error.HTTPError) as stopped:
            urllib.request.urlopen(f"{server.base}/healthz", timeout=30)
        assert stopped.value.code == 503 and "stopped" in stopped.value.read().decode()


class _WarmingPool:
    """The real pool, whose warm-up waits to be let go (as capturing graphs on a GPU takes seconds) or fails."""

    def __init__(self, model, fails: bool = False) -> None:
        self.pool = default_engine(model)
        self.fails = fails
        self.warmed_for: list[int] = []
        self.go = threading.Event()

    def warm_up(self, max_streams: int) -> int:
        self.warmed_for.append(max_streams)
        self.go.wait(30)
        if self.fails:
            raise RuntimeError("capture failed")
        return 0

    def __getattr__(self, name):  # every other method: the pool's
        return getattr(self.pool, name)


@pytest.mark.parametrize("fails", [False, True])
def test_health_says_warming_up_until_the_engine_is_warm_and_frames_wait_for_it(model, fails):
    engine = _WarmingPool(model, fails)
    with running_server(engine, ServerConfig(max_sessions=3, warm_up=True)) as server:
        with pytest.raises(urllib.error.HTTPError) as warming:
            urllib.request.urlopen(f"{server.base}/healthz", timeout=30)
        assert warming.value.code == 503 and "warming up" in warming.value.read().decode()
        client = Client(server.ws_url)  # a session may open meanwhile: its frames are stepped once warm
        client.ws.send(png_frame(0, FRAMES[0]))
        time.sleep(0.3)
        assert server.state.scheduler.tracked_total == 0
        engine.go.set()
        assert client.next("result")["frame"] == 0  # a failed warm-up is logged; the server serves without it
        assert urllib.request.urlopen(f"{server.base}/healthz", timeout=30).status == 200
        client.close()
    assert engine.warmed_for == [3]  # for --max-sessions streams

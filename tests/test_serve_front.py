"""The front of `sam2rt serve --ray` over replicas in this process: placement, pinning, a replica that dies.

The replicas here are relay.AppHost objects running the single-process server's app (each with its own
StreamPool, serve_support.running_front); test_serve_ray.py runs the same front over Ray Serve replicas in
their own processes.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request

import numpy as np
import pytest
from cli_support import clip_frames
from serve_support import Client, decode_masks, load_test_model, running_front
from websockets.exceptions import ConnectionClosed

import sam2rt

FRAMES = clip_frames(4)
SIZE = FRAMES[0].shape[:2]
PROMPT = {"type": "prompt", "frame": 0, "obj_id": 1, "points": [[28, 50]], "labels": [1]}


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return load_test_model(tmp_path_factory.mktemp("front-model"))


@pytest.fixture
def front(model):
    with running_front(model) as running:
        yield running


def get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=30) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def track(client: Client, frames) -> dict:
    """Step `frames` with one object clicked on the first; the last frame's result."""
    client.step(0, frames[0])
    client.send(PROMPT)
    client.next("result")
    for index in range(1, len(frames)):
        result = client.step(index, frames[index])
    return result


def test_sessions_spread_over_replicas_and_their_requests_reach_them(front, model):
    clients = [Client(front.ws_url) for _ in range(4)]
    assert [len(replica.sessions) for replica in front.replicas] == [2, 2]
    assert front.front.placement.sessions == {"r0": 2, "r1": 2}
    reference = sam2rt.StreamTracker(model)
    reference.step(FRAMES[0])
    reference.add_prompt(1, points=[[28, 50]], labels=[1])
    expected = [reference.step(frame) for frame in FRAMES[1:]][-1].masks.numpy()
    assert expected.any() and not expected.all()
    for client in clients:  # each session, on either replica, is the tracker's
        ids, masks = decode_masks(track(client, FRAMES), SIZE)
        assert ids == [1] and np.array_equal(masks, expected)
    for client in clients:  # its export is on its replica, whichever that is
        status, body = get(f"{front.base}/api/export/{client.session['id']}/coco.json")
        assert status == 200 and len(json.loads(body)["annotations"]) == len(FRAMES)
        request = urllib.request.Request(
            f"{front.base}/api/upload?session={client.session['id']}&name=a.mp4", data=b"not a video", method="POST"
        )
        with urllib.request.urlopen(request, timeout=30) as response:
            assert json.loads(response.read())["bytes"] == len(b"not a video")
    assert get(f"{front.base}/api/export/nobody/coco.json") == (404, b'{"error": "no such session"}')
    status, page = get(f"{front.base}/")
    assert status == 200 and b"<html" in page.lower()
    for client in clients:
        client.close()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and (
        any(replica.sessions for replica in front.replicas) or any(front.front.placement.sessions.values())
    ):
        time.sleep(0.05)
    assert [len(replica.sessions) for replica in front.replicas] == [0, 0]
    assert front.front.placement.sessions == {"r0": 0, "r1": 0} and not front.front.owners


def test_a_replica_that_dies_ends_its_sessions_only(front):
    first, second = Client(front.ws_url), Client(front.ws_url)
    on_first = next(r for r in front.replicas if first.session["id"] in r.sessions)
    assert second.session["id"] not in on_first.sessions
    track(first, FRAMES[:2])
    track(second, FRAMES[:2])
    on_first.kill()
    first.ws.send(b"")  # any message: the replica's answer never comes
    second.step(2, FRAMES[2])  # the other session goes on
    stopped = False
    with pytest.raises(ConnectionClosed):
        while True:  # until the front closes it, after telling why
            message = first.receive(timeout=30)
            if isinstance(message, dict) and message["type"] == "error":
                assert "has stopped: start again" in message["message"]
                stopped = True
    assert stopped
    third = Client(front.ws_url)  # a new session goes to the replica that is up
    assert third.session["id"] not in on_first.sessions
    assert third.step(0, FRAMES[0])["frame"] == 0
    second.step(3, FRAMES[3])
    status, body = get(f"{front.base}/healthz")
    health = json.loads(body)
    assert status == 200 and health["replicas"][on_first.name]["ready"] is False
    assert sum(entry["ready"] for entry in health["replicas"].values()) == 1
    for client in (second, third):
        client.close()


def test_health_and_metrics_cover_every_replica(front):
    client = Client(front.ws_url)
    client.step(0, FRAMES[0])
    busy = next(r.name for r in front.replicas if client.session["id"] in r.sessions)
    idle = next(r.name for r in front.replicas if r.name != busy)
    status, body = get(f"{front.base}/healthz")
    assert status == 200 and json.loads(body)["replicas"] == {
        busy: {"ready": True, "sessions": 1},
        idle: {"ready": True, "sessions": 0},
    }
    status, body = get(f"{front.base}/metrics")
    text = body.decode()
    assert status == 200
    assert f'sam2rt_sessions{{replica="{busy}"}} 1.0' in text and f'sam2rt_sessions{{replica="{idle}"}} 0.0' in text
    assert f'sam2rt_frames_tracked_total{{replica="{busy}"}} 1.0' in text
    assert f'sam2rt_replica_up{{replica="{idle}"}} 1.0' in text
    assert f'sam2rt_replica_sessions{{replica="{busy}"}} 1.0' in text
    for replica in front.replicas:
        replica.kill()
    status, body = get(f"{front.base}/healthz")
    assert status == 503 and json.loads(body)["status"] == "no engine replica is ready"
    assert f'sam2rt_replica_up{{replica="{busy}"}} 0.0' in get(f"{front.base}/metrics")[1].decode()
    client.close()

"""`sam2rt serve --ray` on a local Ray cluster: two CPU engine replicas on Ray Serve, one killed mid-session.

The front and its replicas are started as the command starts them (cli.serve._start_on_ray); the test then
talks to the front over HTTP and WebSockets, kills one replica's process, and sees that only its session
ends (with a message), the other goes on, a new session is served, and Ray Serve brings a replacement up.
"""

from __future__ import annotations

import json
import os
import signal
import time

import pytest
import torch
from cli_support import IMAGE_SIZE, VARIANT, clip_frames, make_checkpoint
from serve_support import Client, decode_masks, running_asgi
from test_serve_front import get, track
from websockets.exceptions import ConnectionClosed

ray = pytest.importorskip("ray")
pytest.importorskip("ray.serve", reason="Ray Serve is not installed (pip install 'sam2rt[serve-ray]')")

from sam2rt.cli.model_choice import ModelChoice  # noqa: E402
from sam2rt.cli.serve import _start_on_ray  # noqa: E402
from sam2rt.serve.app import ServerConfig  # noqa: E402
from sam2rt.serve.ray_replicas import stop_replicas  # noqa: E402

FRAMES = clip_frames(4)
SIZE = FRAMES[0].shape[:2]
REPLACEMENT_TIMEOUT_S = 120.0


@pytest.fixture(scope="module")
def front(tmp_path_factory):
    checkpoint = make_checkpoint(tmp_path_factory.mktemp("ray-model") / "visible.pt")
    model = ModelChoice(checkpoint=checkpoint, variant=VARIANT, image_size=IMAGE_SIZE, device="cpu", fast=False)
    # Each replica's torch uses one thread: two replicas share this machine's two cores.
    ray.init(num_cpus=2, include_dashboard=False, runtime_env={"env_vars": {"OMP_NUM_THREADS": "1"}})
    try:
        app, count = _start_on_ray(model, ServerConfig(), replicas=2, address=None)
        assert count == 2
        with running_asgi(app) as running:
            running.replicas = app.app.placement.replicas  # Guard -> Front -> its replicas
            yield running
    finally:
        stop_replicas()
        ray.shutdown()


def test_replica_options_need_ray_and_cuda_needs_gpus(sam2rt, checkpoint):
    result = sam2rt("serve", "--checkpoint", checkpoint, "--replicas", "2")
    words = " ".join(result.stderr.replace("│", " ").split())  # the usage error's box, unwrapped
    assert result.returncode == 2 and "for --replicas: is for the engine replicas of --ray: give --ray too" in words
    if not torch.cuda.is_available():  # one line, no Ray started: the device is checked first
        result = sam2rt("serve", "--ray", "--checkpoint", checkpoint, "--device", "cuda")
        assert result.returncode == 1 and result.stderr.startswith("error: device cuda was asked for")
        assert not ray.is_initialized()


def replica_pid(replica) -> int:
    return replica.handle.pid.remote().result(timeout_s=60)


def test_a_killed_replica_ends_its_session_only_and_is_replaced(front):
    first, second = Client(front.ws_url), Client(front.ws_url)
    owners = front.app.app.owners
    assert owners[first.session["id"]] is not owners[second.session["id"]]  # one session on each replica
    for client in (first, second):
        ids, masks = decode_masks(track(client, FRAMES[:2]), SIZE)
        assert ids == [1] and masks.any() and not masks.all()
    status, body = get(f"{front.base}/api/export/{second.session['id']}/coco.json")
    assert status == 200 and len(json.loads(body)["annotations"]) == 2

    doomed = owners[first.session["id"]]
    os.kill(replica_pid(doomed), signal.SIGKILL)
    killed_at = time.monotonic()
    stopped = False
    with pytest.raises(ConnectionClosed):
        while True:  # the front tells the session why it ends, then closes it
            message = first.receive(timeout=60)
            if isinstance(message, dict) and message["type"] == "error":
                assert "has stopped: start again" in message["message"]
                stopped = True
    assert stopped
    assert second.step(2, FRAMES[2])["frame"] == 2  # the other session goes on

    again = Client(front.ws_url)  # starting again: placed on the replica that is up
    assert owners[again.session["id"]] is owners[second.session["id"]]
    ids, masks = decode_masks(track(again, FRAMES[:2]), SIZE)
    assert ids == [1] and masks.any()

    deadline = killed_at + REPLACEMENT_TIMEOUT_S
    while time.monotonic() < deadline:  # Ray Serve brings a replacement up
        status, body = get(f"{front.base}/healthz")
        if status == 200 and all(entry["ready"] for entry in json.loads(body)["replicas"].values()):
            break
        time.sleep(1.0)
    else:
        pytest.fail(f"no replacement within {REPLACEMENT_TIMEOUT_S:g} s: {body!r}")
    print(f"replacement ready {time.monotonic() - killed_at:.1f} s after the kill")
    fresh = Client(front.ws_url)  # the replacement has no session: the next one goes there, and is served
    assert owners[fresh.session["id"]] is doomed
    ids, masks = decode_masks(track(fresh, FRAMES[:2]), SIZE)
    assert ids == [1] and masks.any()
    second.step(3, FRAMES[3])
    for client in (second, again, fresh):
        client.close()

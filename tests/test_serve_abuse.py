"""`sam2rt serve` under faults and abuse: each gets an error (or a refusal) and the other sessions go on."""

from __future__ import annotations

import gc
import json
import os
import time
import urllib.error
import urllib.request
import weakref

import numpy as np
import pytest
import torch
from cli_support import clip_frames, invoke_in_process, write_clip
from serve_support import Client, load_test_model, png_frame, rgb_frame, running_server
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from sam2rt.serve.app import ServerConfig
from sam2rt.serve.protocol import FORMAT_JPEG, MAX_FRAME_BYTES, frame_header
from sam2rt.serve.scheduler import default_engine

FRAMES = clip_frames(3)
UPLOAD_CAP = 400_000


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return load_test_model(tmp_path_factory.mktemp("serve-model"))


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    folder = tmp_path_factory.mktemp("serve-media")
    root = folder / "media"
    (root / "clips").mkdir(parents=True)
    write_clip(root / "clips" / "clip.mp4", count=6)
    write_clip(folder / "secret.mp4", count=2)
    os.symlink(folder / "secret.mp4", root / "escape.mp4")
    return root


@pytest.fixture(scope="module")
def server(model, media):
    config = ServerConfig(media_root=media, max_sessions=30, max_upload_bytes=UPLOAD_CAP)
    with running_server(default_engine(model), config) as running:
        yield running


@pytest.fixture(scope="module")
def bystander(server):
    """A session that must keep being served whatever the others do."""
    client = Client(server.ws_url)
    client.step(0, FRAMES[0])
    client.send({"type": "prompt", "frame": 0, "obj_id": 1, "points": [[28, 50]]})
    client.next("result")
    client.frame_id = 1
    yield client
    client.close()


def assert_serving(client: Client) -> None:
    client.frame_id += 1
    result = client.step(client.frame_id, FRAMES[client.frame_id % len(FRAMES)])
    assert [o["id"] for o in result["objects"]] == [1]


def error_for(client: Client, message) -> str:
    if isinstance(message, bytes):
        client.ws.send(message)
    else:
        client.ws.send(message if isinstance(message, str) else json.dumps(message))
    return client.next("error", timeout=30)["message"]


def get(url: str, headers: dict | None = None) -> tuple[int, bytes, dict]:
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=30) as reply:
            return reply.status, reply.read(), dict(reply.headers)
    except urllib.error.HTTPError as error:
        return error.code, error.read(), dict(error.headers)


@pytest.mark.parametrize(
    "message, expected",
    [
        ("{not json", "malformed JSON"),
        ('["a list"]', 'a JSON object with a "type"'),
        ({"type": "launch"}, "unknown message type"),
        ({"type": "prompt", "frame": 0, "obj_id": "one", "points": [[1, 2]]}, "'obj_id' must be an integer"),
        ({"type": "prompt", "frame": 0, "obj_id": 1, "points": [[1, float("nan")]]}, "finite numbers"),
        ({"type": "prompt", "frame": 0, "obj_id": 1, "box": [5, 5, 1, 1]}, "x0 < x1"),
        ({"type": "remove", "obj_id": 9}, "no object 9"),
        ({"type": "reset", "extra": 1}, "unknown key"),
        ("x" * 70_000, "message too large"),
        (b"\x00\xffgarbage" * 10, "a binary message is a frame"),
        (frame_header(0, FORMAT_JPEG, 4, 4) + b"not a jpeg", "not a readable JPEG"),
        (frame_header(0, 3, 5000, 5000), "frame sides"),
        (frame_header(0, 9, 4, 4) + b"1234", "unknown frame format"),
    ],
)
def test_bad_messages_get_an_error_and_the_session_goes_on(server, bystander, message, expected):
    client = Client(server.ws_url)
    assert expected in error_for(client, message)
    client.frame_id = 0
    client.step(0, FRAMES[0])  # the same session still works
    assert_serving(bystander)
    client.close()


def test_oversized_frames_and_size_changes_are_refused(server, bystander):
    client = Client(server.ws_url)
    assert "frame too large" in error_for(client, frame_header(0, 3, 10, 10) + bytes(MAX_FRAME_BYTES + 1))
    client.step(0, FRAMES[0])
    small = np.zeros((60, 80, 3), np.uint8)
    assert "frame size changed from 160 x 120 to 80 x 60" in error_for(client, rgb_frame(1, small))
    client.step(2, FRAMES[1])
    client.send({"type": "source", "kind": "webcam"})  # a new source may have a new size
    client.next("source")
    client.step(3, small)
    assert_serving(bystander)
    client.close()


@pytest.mark.parametrize(
    "path, expected",
    [
        ("../secret.mp4", "without '..'"),
        ("clips/../../secret.mp4", "without '..'"),
        ("/etc/passwd", "without '..'"),
        ("escape.mp4", "leads outside the media root"),
        ("clips/missing.mp4", "no such file"),
        ("a" * 300 + ".mp4", "not a usable media path"),
    ],
)
def test_media_paths_outside_the_root_are_refused(server, bystander, path, expected):
    client = Client(server.ws_url)
    assert expected in error_for(client, {"type": "source", "kind": "media", "path": path})
    assert_serving(bystander)
    client.close()


def test_media_and_upload_sources_play_and_uploads_stay_private(server, media):
    client = Client(server.ws_url)
    status, body, _ = get(f"{server.base}/api/media")
    assert json.loads(body)["files"] == ["clips/clip.mp4"]  # the symlink that leaves the root is not listed
    client.send({"type": "source", "kind": "media", "path": "clips/clip.mp4"})
    assert client.next("source")["width"] == 160
    image = client.receive()
    while not isinstance(image, bytes):  # the 0.2 s clip may end (an `ended` message) before a frame is tracked
        assert image["type"] == "ended", image
        image = client.receive()
    assert image[:4] == b"S2RT"  # the frame's picture comes before its result
    assert client.next("result")["frame"] == int.from_bytes(image[8:12], "little")

    data = (media / "clips" / "clip.mp4").read_bytes()
    url = f"{server.base}/api/upload?session={client.session['id']}&name=clip.mp4"
    reply = json.loads(urllib.request.urlopen(urllib.request.Request(url, data=data), timeout=30).read())
    too_big = urllib.request.Request(url, data=bytes(UPLOAD_CAP + 1))
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(too_big, timeout=30)
    assert refused.value.code == 413
    other = Client(server.ws_url)
    assert "no such upload" in error_for(other, {"type": "source", "kind": "upload", "upload": reply["upload"]})
    assert get(f"{server.base}/api/export/not-a-session/coco.json")[0] == 404
    client.send({"type": "source", "kind": "upload", "upload": reply["upload"]})
    assert client.next("source")["height"] == 120
    assert client.next("result")["objects"] == []
    for c in (client, other):
        c.close()


def test_url_sources_cannot_read_local_files(server, bystander):
    client = Client(server.ws_url)
    assert "a stream URL starts with" in error_for(
        client, {"type": "source", "kind": "url", "url": "file:///etc/passwd"}
    )
    assert "could not be opened" in error_for(client, {"type": "source", "kind": "url", "url": "http://127.0.0.1:1/x"})
    assert_serving(bystander)
    client.close()


def test_a_client_vanishing_mid_stream_frees_its_session(server, bystander):
    client = Client(server.ws_url)
    client.step(0, FRAMES[0])
    session = server.state.sessions[client.session["id"]]
    for index in range(1, 4):
        client.ws.send(png_frame(index, FRAMES[index % 3]))
    client.ws.socket.close()  # no closing handshake: the network dropped
    assert session.released.wait(30), "the session was not freed"
    assert client.session["id"] not in server.state.sessions
    assert_serving(bystander)


def tensors_alive() -> int:
    gc.collect()
    return sum(1 for o in gc.get_objects() if isinstance(o, torch.Tensor))


def test_twenty_sessions_opened_and_closed_leave_memory_at_baseline(server, bystander):
    assert_serving(bystander)
    baseline = tensors_alive()
    streams = []
    for number in range(20):
        client = Client(server.ws_url)
        client.step(0, FRAMES[0])
        client.send({"type": "prompt", "frame": 0, "obj_id": 1, "points": [[28, 50]]})
        client.next("result")
        session = server.state.sessions[client.session["id"]]
        streams.append(weakref.ref(session.stream))
        if number % 2:
            client.close()
        else:
            client.ws.socket.close()
        assert session.released.wait(30)
    assert_serving(bystander)
    assert len(server.state.sessions) == 1 and len(server.state.scheduler.sessions) == 1
    assert all(ref() is None for ref in streams), "a closed session's tracker is still alive"
    assert tensors_alive() <= baseline


def test_the_token_guards_every_request(model):
    with running_server(default_engine(model), ServerConfig(token="s3cret")) as server:
        assert get(f"{server.base}/")[0] == 401
        assert get(f"{server.base}/api/media?token=wrong")[0] == 401
        assert get(f"{server.base}/api/config", {"Authorization": "Bearer s3cret"})[0] == 200
        status, _, headers = get(f"{server.base}/?token=s3cret")
        assert status == 200 and "sam2rt_token=s3cret" in headers["set-cookie"]
        assert get(f"{server.base}/static/app.js", {"Cookie": "sam2rt_token=s3cret"})[0] == 200
        for url in (server.ws_url, f"{server.ws_url}?token=wrong"):
            with pytest.raises(InvalidStatus):
                Client(url)
        Client(f"{server.ws_url}?token=s3cret").close()


def test_foreign_hosts_and_origins_are_refused(server):
    assert get(f"{server.base}/", {"Host": "attacker.example"})[0] == 403
    with pytest.raises(InvalidStatus):
        Client(server.ws_url, origin="http://attacker.example")
    Client(server.ws_url, origin=server.base).close()


def test_idle_sessions_time_out_and_the_session_cap_holds(model):
    with running_server(default_engine(model), ServerConfig(max_sessions=1, idle_timeout_s=1.0)) as server:
        first = Client(server.ws_url)
        with connect(server.ws_url, open_timeout=30) as refused:
            assert "the server is full" in json.loads(refused.recv(timeout=30))["message"]
        started = time.monotonic()
        assert "nothing from the client in 1 s" in first.next("error", timeout=30)["message"]
        assert time.monotonic() - started < 10
        deadline = time.monotonic() + 10
        while server.state.sessions and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not server.state.sessions


def test_serve_refuses_other_addresses_without_a_token(capsys, tmp_path):
    result = invoke_in_process(capsys, "serve", "--host", "0.0.0.0")
    assert result.returncode == 1 and "give --token too" in result.stderr
    result = invoke_in_process(capsys, "serve", "--media-root", tmp_path / "missing")
    assert result.returncode == 1 and "is not a folder" in result.stderr

"""Helpers for the `sam2rt serve` tests: a real server on 127.0.0.1 in a thread, and a protocol client."""

from __future__ import annotations

import copy
import io
import json
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Optional

import numpy as np
import uvicorn
from cli_support import IMAGE_SIZE, VARIANT, make_checkpoint
from PIL import Image
from websockets.sync.client import ClientConnection, connect

import sam2rt
from sam2rt.serve.app import ServerConfig, create_app
from sam2rt.serve.front import Front, ReplicaGone
from sam2rt.serve.protocol import FORMAT_PNG, FORMAT_RGB, frame_header
from sam2rt.serve.relay import AppHost
from sam2rt.serve.scheduler import default_engine

MESSAGE_TIMEOUT_S = 60.0


_models: dict[str, sam2rt.SAM2Model] = {}


def load_test_model(folder: Path) -> sam2rt.SAM2Model:
    """The tiny model with visible masks (cli_support's checkpoint), on the CPU, at the tests' small size.

    Loaded once for all the serve tests: servers and trackers only read it.
    """
    if "model" not in _models:
        checkpoint = make_checkpoint(folder / "visible.pt")
        _models["model"] = sam2rt.load_model(VARIANT, checkpoint=checkpoint, device="cpu", image_size=IMAGE_SIZE)
    return _models["model"]


class RunningServer:
    def __init__(self, server: uvicorn.Server, app) -> None:
        self.uvicorn = server
        self.app = app
        host, port = server.servers[0].sockets[0].getsockname()[:2]
        self.base = f"http://{host}:{port}"
        self.ws_url = f"ws://{host}:{port}/ws"

    @property
    def state(self):
        """The Server object behind the app (sessions, scheduler, uploads)."""
        return self.app.app.state.server


@contextmanager
def running_server(
    engine, config: Optional[ServerConfig] = None, ws_max_size: int = 64 * 2**20
) -> Iterator[RunningServer]:
    """`sam2rt serve`'s app under uvicorn on 127.0.0.1 and a free port, stopped at the end."""
    with running_asgi(create_app(engine, config or ServerConfig()), ws_max_size) as running:
        yield running


@contextmanager
def running_asgi(app, ws_max_size: int = 64 * 2**20) -> Iterator[RunningServer]:
    """An ASGI app under uvicorn on 127.0.0.1 and a free port, its lifespan run, stopped at the end."""
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=0, ws_max_size=ws_max_size, log_level="warning", lifespan="on")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the server did not start"
        time.sleep(0.02)
    try:
        yield RunningServer(server, app)
    finally:
        server.should_exit = True
        thread.join(timeout=30)


class InProcessReplica:
    """A replica in this process (front.Replica); `kill()` makes every call, and every pull under way, fail."""

    def __init__(self, name: str, app) -> None:
        self.name = name
        self.host = AppHost(app)
        self.dead = False

    def kill(self) -> None:
        self.dead = True

    def _check(self) -> None:
        if self.dead:
            raise ReplicaGone(self.name)

    async def http(self, scope, body):
        self._check()
        return await self.host.http(scope, body)

    async def websocket_open(self, scope):
        self._check()
        return await self.host.websocket_open(scope)

    async def websocket_push(self, connection_id, messages):
        self._check()
        return await self.host.websocket_push(connection_id, messages)

    async def websocket_pull(self, connection_id):
        async for batch in self.host.websocket_pull(connection_id):
            self._check()
            yield batch

    @property
    def sessions(self) -> dict:
        return self.host.app.app.state.server.sessions  # Guard -> Starlette -> Server


class HostsThenFront:
    """The front as an ASGI app whose lifespan also starts and stops the in-process replicas' apps."""

    def __init__(self, replicas: list[InProcessReplica], front: Front) -> None:
        self.replicas = replicas
        self.front = front

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "lifespan":
            await self.front(scope, receive, send)
            return
        await receive()  # startup
        for replica in self.replicas:
            await replica.host.start()
        await send({"type": "lifespan.startup.complete"})
        await receive()  # shutdown
        for replica in self.replicas:
            await replica.host.stop()
        await send({"type": "lifespan.shutdown.complete"})


@contextmanager
def running_front(model, replicas: int = 2, config: Optional[ServerConfig] = None) -> Iterator[RunningServer]:
    """The front of `sam2rt serve --ray` over `replicas` in-process replicas, each with its own copy of the model
    and StreamPool, under uvicorn; the RunningServer also holds `replicas` and `front`."""
    config = config or ServerConfig()
    models = [model] + [copy.deepcopy(model) for _ in range(replicas - 1)]  # as in their own processes
    hosts = [InProcessReplica(f"r{i}", create_app(default_engine(m), config)) for i, m in enumerate(models)]
    front = Front(hosts, max_body_bytes=config.max_upload_bytes, token=config.token)
    with running_asgi(HostsThenFront(hosts, front)) as running:
        running.replicas, running.front = hosts, front
        yield running


def png_frame(frame_id: int, image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    height, width = image.shape[:2]
    return frame_header(frame_id, FORMAT_PNG, width, height) + buffer.getvalue()


def rgb_frame(frame_id: int, image: np.ndarray) -> bytes:
    height, width = image.shape[:2]
    return frame_header(frame_id, FORMAT_RGB, width, height) + image.tobytes()


class Client:
    """One session over a WebSocket: send frames and requests, read the replies by type."""

    def __init__(self, url: str, **options) -> None:
        self._connection = connect(url, open_timeout=30, max_size=None, **options)
        self.ws: ClientConnection = self._connection.__enter__()  # as a context manager, the non-deprecated way
        self.session = self.next("session")

    def send(self, message: dict) -> None:
        self.ws.send(json.dumps(message))

    def receive(self, timeout: float = MESSAGE_TIMEOUT_S):
        """The next message: a dict for text, bytes for binary."""
        data = self.ws.recv(timeout=timeout)
        return json.loads(data) if isinstance(data, str) else data

    def next(self, kind: str, timeout: float = MESSAGE_TIMEOUT_S) -> dict:
        """The next text message of type `kind`, skipping other kinds and binary messages."""
        deadline = time.monotonic() + timeout
        while True:
            message = self.receive(max(0.01, deadline - time.monotonic()))
            if isinstance(message, dict) and message["type"] == kind:
                return message

    def step(self, frame_id: int, image: np.ndarray) -> dict:
        """Send a frame and wait for its result (lockstep: nothing is dropped)."""
        self.ws.send(png_frame(frame_id, image))
        while True:
            result = self.next("result")
            if result["frame"] == frame_id and not result["prompted"]:
                return result

    def close(self) -> None:
        self.ws.close()


def decode_masks(result: dict, size: tuple[int, int]) -> tuple[list[int], np.ndarray]:
    """A result's object ids and masks (N, H, W) bool, decoded from their RLE."""
    from pycocotools import mask as mask_utils

    objects = result["objects"]
    if not objects:
        return [], np.zeros((0, *size), bool)
    masks = mask_utils.decode([o["rle"] for o in objects]).transpose(2, 0, 1).astype(bool)  # (H, W, N) -> (N, H, W)
    return [o["id"] for o in objects], masks

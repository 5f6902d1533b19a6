"""Helpers for the `sam2rt serve` tests: a real server on 127.0.0.1 in a thread, and a protocol client."""

from __future__ import annotations

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
from sam2rt.serve.protocol import FORMAT_PNG, FORMAT_RGB, frame_header

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

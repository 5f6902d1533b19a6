"""The ASGI app of `sam2rt serve`: the browser app, a WebSocket per session, uploads and exports.

Routes: `/` the app (static files under /static), `/ws` a session (see protocol.py), `GET /api/config` (limits,
whether there is a media root, and whether phrases may be tracked: `text`, a server with SAM 3),
`GET /api/media` (videos under the media root), `POST /api/upload?session=ID&name=FILE` (a video, at
most `max_upload_bytes`), `GET /api/export/{session}/{coco.json|masks.zip|overlay.mp4}`. A session
lives as long as its WebSocket: a closed tab, a dropped connection or `idle_timeout_s` without a
message from the client ends it and gives its stream back.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Mount, Route, WebSocketRoute
from starlette.staticfiles import StaticFiles
from starlette.websockets import WebSocket, WebSocketDisconnect

from .concepts import NO_SAM3, ConceptModels
from .export import EXPORT_KINDS
from .feeds import Feed, FeedError, check_url
from .media import MediaError, UploadStore, list_media, resolve_media_path
from .metrics import CONTENT_TYPE, ServerMetrics
from .protocol import (
    MAX_FRAME_BYTES,
    MAX_OBJECTS,
    ControlRequest,
    ProtocolError,
    ReceivedFrame,
    SourceRequest,
    TextRequest,
    error_message,
    parse_frame,
    parse_text,
)
from .scheduler import DEFAULT_RELEASE_AFTER_S, Scheduler, StreamEngine
from .security import TOKEN_COOKIE, Guard
from .sessions import Close, Reset, Restart, Session
from .ticks import DEFAULT_BATCH_WAIT_S

STATIC = Path(__file__).parent / "static"
OUTBOX_SIZE = 32  # messages waiting for a slow client; the oldest results go first


@dataclass(frozen=True)
class ServerConfig:
    token: Optional[str] = None
    media_root: Optional[Path] = None
    max_sessions: int = 8
    idle_timeout_s: float = 600.0
    max_upload_bytes: int = 512 * 1024 * 1024
    batch_wait_s: float = DEFAULT_BATCH_WAIT_S
    release_after_s: float = DEFAULT_RELEASE_AFTER_S
    warm_up: bool = False  # capture the engine's graphs for max_sessions streams before serving (CUDA graphs)


class Server:
    """The sessions, the scheduler and the uploads of one running server."""

    def __init__(self, engine: StreamEngine, config: ServerConfig, concepts: Optional[ConceptModels] = None) -> None:
        self.config = config
        self.metrics = ServerMetrics(lambda: self.scheduler.figures())
        warm_up_streams = config.max_sessions if config.warm_up else 0
        self.scheduler = Scheduler(
            engine, config.batch_wait_s, self.metrics, config.release_after_s, concepts, warm_up_streams
        )
        self.uploads = UploadStore(config.max_upload_bytes)
        self.sessions: dict[str, Session] = {}

    # WebSocket sessions

    async def session(self, websocket: WebSocket) -> None:
        await websocket.accept()
        if len(self.sessions) >= self.config.max_sessions:
            await websocket.send_text(error_message(f"the server is full ({self.config.max_sessions} sessions)"))
            await websocket.close(code=1013)
            return
        loop = asyncio.get_running_loop()
        outbox: asyncio.Queue = asyncio.Queue(maxsize=OUTBOX_SIZE)

        def put(item: tuple[str, Optional[bytes]]) -> None:
            if outbox.full():
                outbox.get_nowait()  # a client that reads too slowly loses its oldest message
            outbox.put_nowait(item)

        def deliver(text: str, picture: Optional[bytes]) -> None:  # from any thread
            with contextlib.suppress(RuntimeError):  # the event loop has closed: the server is shutting down
                loop.call_soon_threadsafe(put, (text, picture))

        session = Session(self.scheduler.lock, deliver)
        self.sessions[session.id] = session
        self.scheduler.add(session)
        sender = asyncio.create_task(self._send_loop(websocket, outbox))
        limits = {"max_frame_bytes": MAX_FRAME_BYTES, "max_objects": MAX_OBJECTS}
        limits["max_upload_bytes"] = self.config.max_upload_bytes
        text = self.scheduler.concepts is not None
        put((json.dumps({"type": "session", "id": session.id, "limits": limits, "text": text}), None))
        try:
            await self._receive_loop(websocket, session, put)
        finally:
            await self.end_session(session)
            sender.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await sender

    async def _send_loop(self, websocket: WebSocket, outbox: asyncio.Queue) -> None:
        with contextlib.suppress(WebSocketDisconnect, RuntimeError, OSError):
            while True:
                text, picture = await outbox.get()
                if picture is not None:
                    await websocket.send_bytes(picture)
                await websocket.send_text(text)

    async def _receive_loop(self, websocket: WebSocket, session: Session, put) -> None:
        while True:
            try:
                message = await asyncio.wait_for(websocket.receive(), timeout=self.config.idle_timeout_s)
            except asyncio.TimeoutError:
                put(
                    (
                        error_message(f"session closed: nothing from the client in {self.config.idle_timeout_s:g} s"),
                        None,
                    )
                )
                await asyncio.sleep(0.1)  # let the sender deliver it
                with contextlib.suppress(Exception):
                    await websocket.close(code=4000)
                return
            if message["type"] == "websocket.disconnect":
                return
            try:
                if message.get("bytes") is not None:
                    await self._frame(session, message["bytes"])
                elif message.get("text") is not None:
                    await self._request(session, message["text"])
            except (ProtocolError, MediaError, FeedError) as error:
                put((error_message(str(error)), None))

    async def _frame(self, session: Session, data: bytes) -> None:
        if session.source_kind not in ("none", "webcam"):
            raise ProtocolError("this session reads a server-side source: send {'type': 'source', 'kind': 'webcam'}")
        arrived = time.monotonic()
        frame = await asyncio.to_thread(parse_frame, data, arrived)
        self.metrics.observe_stage("decode", time.monotonic() - arrived)
        refusal = session.offer(frame)
        if refusal is not None:
            raise ProtocolError(refusal)

    async def _request(self, session: Session, text: str) -> None:
        request = parse_text(text)
        if isinstance(request, SourceRequest):
            await self._source(session, request)
        elif isinstance(request, ControlRequest) and request.action in ("pause", "resume"):
            session.set_paused(request.action == "pause")
        elif isinstance(request, ControlRequest) and request.action == "reset":
            session.request(Reset())
        elif isinstance(request, TextRequest) and request.phrase is not None and self.scheduler.concepts is None:
            raise ProtocolError(NO_SAM3)
        elif not isinstance(request, ControlRequest):  # a prompt or a removal; a ping only keeps the session alive
            session.request(request)

    async def _source(self, session: Session, request: SourceRequest) -> None:
        await self._stop_feed(session)
        session.request(Restart())
        session.source_kind, session.source_name, session.fps = "none", "", None
        if request.kind == "webcam":
            session.source_kind, session.source_name = "webcam", "webcam"
            session.deliver(json.dumps({"type": "source", "kind": "webcam"}), None)
            return
        if request.kind == "media":
            source = resolve_media_path(self.config.media_root, request.target)
        elif request.kind == "upload":
            source = self.uploads.path(session.id, request.target)
        else:
            source = check_url(request.target)

        def on_frame(number: int, image) -> None:
            refusal = session.offer(ReceivedFrame(number, image, None, 0, time.monotonic()))
            if refusal is not None:
                session.deliver(error_message(refusal), None)

        def on_end(reason: str) -> None:
            session.deliver(json.dumps({"type": "ended", "reason": reason}), None)

        feed = await asyncio.to_thread(Feed, source, on_frame, on_end)
        session.feed, session.source_kind, session.fps = feed, request.kind, feed.fps
        session.source_name = request.target if request.kind != "upload" else "upload"
        height, width = feed.size
        info = {"type": "source", "kind": request.kind, "width": width, "height": height, "fps": feed.fps}
        session.deliver(json.dumps(info), None)
        feed.pause(session.paused)
        feed.start()

    async def _stop_feed(self, session: Session) -> None:
        feed, session.feed = session.feed, None
        if feed is not None:
            await asyncio.to_thread(feed.stop)

    async def end_session(self, session: Session) -> None:
        """Free everything of a session: its feed, its stream (on the scheduler's thread), its uploads."""
        await self._stop_feed(session)
        session.request(Close())
        self.sessions.pop(session.id, None)
        self.uploads.discard_session(session.id)

    # HTTP

    async def index(self, request: Request) -> Response:
        response = FileResponse(STATIC / "index.html")
        response.headers["Content-Security-Policy"] = (
            "default-src 'self'; img-src 'self' blob: data:; media-src 'self' blob: mediastream:; "
            "connect-src 'self' ws: wss:; style-src 'self'; script-src 'self'"
        )
        token = request.query_params.get("token")
        if token is not None:  # the Guard has checked it; the app's own requests then carry it as a cookie
            response.set_cookie(TOKEN_COOKIE, token, httponly=True, samesite="strict")
        return response

    async def config_info(self, request: Request) -> Response:
        limits = {"max_upload_bytes": self.config.max_upload_bytes, "max_objects": MAX_OBJECTS}
        text = self.scheduler.concepts is not None
        return JSONResponse({"media_root": self.config.media_root is not None, "limits": limits, "text": text})

    async def media(self, request: Request) -> Response:
        return JSONResponse({"files": await asyncio.to_thread(list_media, self.config.media_root)})

    async def upload(self, request: Request) -> Response:
        session = self.sessions.get(request.query_params.get("session", ""))
        if session is None:
            return JSONResponse({"error": "no such session"}, status_code=404)
        cap = self.config.max_upload_bytes
        declared = request.headers.get("content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > cap):
            return JSONResponse({"error": f"the upload is larger than {cap} bytes"}, status_code=413)
        upload_id, path = self.uploads.new_path(session.id, Path(request.query_params.get("name", "")).suffix)
        received = 0
        with path.open("wb") as file:
            async for chunk in request.stream():
                received += len(chunk)
                if received > cap:
                    break
                file.write(chunk)
        if received > cap or received == 0:
            self.uploads.discard(upload_id)
            problem = f"the upload is larger than {cap} bytes" if received else "the upload is empty"
            return JSONResponse({"error": problem}, status_code=413 if received else 400)
        return JSONResponse({"upload": upload_id, "bytes": received})

    async def export(self, request: Request) -> Response:
        session = self.sessions.get(request.path_params["session"])
        kind = request.path_params["kind"]
        if session is None:
            return JSONResponse({"error": "no such session"}, status_code=404)
        if kind not in EXPORT_KINDS:
            return JSONResponse({"error": f"the exports are {', '.join(EXPORT_KINDS)}"}, status_code=404)
        folder = Path(tempfile.mkdtemp(prefix="sam2rt-export-"))
        try:
            path = await asyncio.to_thread(session.recorder.export, kind, folder, session.source_name, session.fps)
        except ValueError as error:
            shutil.rmtree(folder, ignore_errors=True)
            return JSONResponse({"error": str(error)}, status_code=409)
        cleanup = BackgroundTask(shutil.rmtree, folder, ignore_errors=True)
        return FileResponse(path, filename=f"sam2rt-{kind}", background=cleanup)

    async def health(self, request: Request) -> Response:
        """200 once the model is loaded and warmed up and while the scheduler runs, else 503 (a server is made with
        its model loaded; the warm-up runs first in the scheduler's thread)."""
        alive, ready = self.scheduler.alive(), self.scheduler.ready.is_set()
        status = "ok" if alive and ready else "warming up" if alive else "the scheduler has stopped"
        body = {"status": status, "sessions": len(self.sessions)}
        return JSONResponse(body, status_code=200 if alive and ready else 503)

    async def metrics_text(self, request: Request) -> Response:
        return Response(self.metrics.render(), media_type=CONTENT_TYPE)

    @contextlib.asynccontextmanager
    async def lifespan(self, app: Starlette):
        self.scheduler.start()
        try:
            yield
        finally:
            for session in list(self.sessions.values()):
                await self.end_session(session)
            self.scheduler.stop()
            self.uploads.close()


def create_app(engine: StreamEngine, config: ServerConfig, concepts: Optional[ConceptModels] = None) -> Guard:
    """The ASGI app: the server's routes behind the token, Host and Origin checks; with `concepts` (SAM 3's
    models) sessions may track the instances of a phrase."""
    server = Server(engine, config, concepts)
    routes = [
        Route("/", server.index),
        Route("/api/config", server.config_info),
        Route("/api/media", server.media),
        Route("/api/upload", server.upload, methods=["POST"]),
        Route("/api/export/{session}/{kind}", server.export),
        Route("/healthz", server.health),
        Route("/metrics", server.metrics_text),
        WebSocketRoute("/ws", server.session),
        Mount("/static", StaticFiles(directory=STATIC), name="static"),
    ]
    app = Starlette(routes=routes, lifespan=server.lifespan)
    app.state.server = server
    return Guard(app, config.token)

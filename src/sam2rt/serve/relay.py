"""An ASGI app served to a front in another process: the engine replica's side of `sam2rt serve --ray`.

The front (front.py) owns the clients' connections and hands each request on as plain values: an HTTP
request as its scope and body, a WebSocket as its scope and then the messages the client sent, pushed in
batches, while the front pulls the app's messages back as they come. `AppHost` runs the app in this
process on those values, exactly as uvicorn would run it (lifespan first), so a replica serves the very app
of the single-process server, sessions, uploads and exports included.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from typing import AsyncIterator, Optional

Message = dict  # an ASGI message: {"type": "websocket.receive", "bytes": ...} and the like

# The parts of a scope that mean something across processes (values, not the server's objects).
SCOPE_KEYS = (
    "type",
    "asgi",
    "http_version",
    "method",
    "scheme",
    "path",
    "raw_path",
    "root_path",
    "query_string",
    "headers",
    "client",
    "server",
    "subprotocols",
)


def portable_scope(scope: dict) -> dict:
    """The scope with only plain values, to be sent to another process (no app, state or extensions)."""
    return {key: scope[key] for key in SCOPE_KEYS if key in scope}


class _Connection:
    """One WebSocket: what the front pushed, waiting for the app; what the app sent, waiting for the front."""

    def __init__(self) -> None:
        self.inbox: asyncio.Queue[Message] = asyncio.Queue()
        self.outbox: asyncio.Queue[Optional[Message]] = asyncio.Queue()  # None: the app has finished
        self.task: Optional[asyncio.Task] = None


class AppHost:
    """Runs an ASGI app (with its lifespan) for requests relayed from a front; one per replica."""

    def __init__(self, app) -> None:
        self.app = app
        self._connections: dict[str, _Connection] = {}
        self._ids = itertools.count()
        self._lifespan: Optional[asyncio.Task] = None
        self._lifespan_inbox: asyncio.Queue[Message] = asyncio.Queue()
        self._lifespan_outbox: asyncio.Queue[Message] = asyncio.Queue()

    async def start(self) -> None:
        """Run the app's startup (the scheduler's thread starts); raises if the app fails to start."""

        async def send(message: Message) -> None:
            self._lifespan_outbox.put_nowait(message)

        self._lifespan = asyncio.create_task(
            self.app({"type": "lifespan", "asgi": {"version": "3.0"}}, self._lifespan_inbox.get, send)
        )
        self._lifespan_inbox.put_nowait({"type": "lifespan.startup"})
        reply = await self._lifespan_outbox.get()
        if reply["type"] != "lifespan.startup.complete":
            raise RuntimeError(f"the app did not start: {reply.get('message', reply['type'])}")

    async def stop(self) -> None:
        """End every connection, then run the app's shutdown."""
        for connection in list(self._connections.values()):
            connection.inbox.put_nowait({"type": "websocket.disconnect", "code": 1001})
        if self._lifespan is not None and not self._lifespan.done():
            self._lifespan_inbox.put_nowait({"type": "lifespan.shutdown"})
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._lifespan_outbox.get(), timeout=15.0)

    async def http(self, scope: dict, body: bytes) -> list[Message]:
        """One HTTP request, its whole body given; returns the app's messages (response start, body parts)."""
        sent: list[Message] = []
        done = asyncio.Event()
        requested = False

        async def receive() -> Message:
            nonlocal requested
            if not requested:
                requested = True
                return {"type": "http.request", "body": body, "more_body": False}
            await done.wait()  # the client is never gone before its response: the front holds it
            return {"type": "http.disconnect"}

        async def send(message: Message) -> None:
            sent.append(message)

        try:
            await self.app(dict(scope), receive, send)
        finally:
            done.set()
        return sent

    async def websocket_open(self, scope: dict) -> str:
        """Start the app on a new WebSocket; the front pushes its messages, connect first, and pulls the app's."""
        connection_id = str(next(self._ids))
        connection = self._connections[connection_id] = _Connection()

        async def send(message: Message) -> None:
            connection.outbox.put_nowait(message)

        async def run() -> None:
            try:
                await self.app(dict(scope), connection.inbox.get, send)
            except Exception:  # the app failed: the client sees its connection closed, as with uvicorn
                connection.outbox.put_nowait({"type": "websocket.close", "code": 1011})
            finally:
                connection.outbox.put_nowait(None)

        connection.task = asyncio.create_task(run())
        return connection_id

    async def websocket_push(self, connection_id: str, messages: list[Message]) -> bool:
        """The client's messages, in order; False when the connection has ended here."""
        connection = self._connections.get(connection_id)
        if connection is None:
            return False
        for message in messages:
            connection.inbox.put_nowait(message)
        return True

    async def websocket_pull(self, connection_id: str) -> AsyncIterator[list[Message]]:
        """The app's messages for the client, in batches of all that waited, until the app has finished.

        If the front stops pulling (its client is gone, or the front itself), the app is told the client left.
        """
        connection = self._connections.get(connection_id)
        if connection is None:
            return
        finished = False
        try:
            while not finished:
                batch = [await connection.outbox.get()]
                while not connection.outbox.empty():
                    batch.append(connection.outbox.get_nowait())
                finished = batch[-1] is None
                messages = [message for message in batch if message is not None]
                if messages:
                    yield messages
        finally:
            if not finished:
                connection.inbox.put_nowait({"type": "websocket.disconnect", "code": 1006})
            self._connections.pop(connection_id, None)

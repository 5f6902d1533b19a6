"""The front of `sam2rt serve --ray`: one address for the clients, sessions spread over engine replicas.

Each replica (one per GPU, or CPU replicas) runs the single-process server's whole app (relay.py), so a
session lives in one replica, with its stream, uploads and exports. The front places each new WebSocket on
the replica with the fewest sessions and relays it there for its life; an upload or export names its
session, and goes to the replica that holds it. Requests of no session (the page, its files, the media
list) go to any replica that is up. If a replica dies, its sessions' clients are told so and may start
again, on the others; the other sessions do not notice. `/healthz` and `/metrics` are the front's own: the
replicas' figures, each sample labelled with its replica, and the sessions the front placed on each.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from typing import AsyncIterator, Iterator, Optional, Protocol, Sequence
from urllib.parse import parse_qs

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector

from .metrics import CONTENT_TYPE
from .protocol import error_message
from .relay import Message, portable_scope

RETRY_DOWN_AFTER_S = 5.0  # a replica that failed is offered new sessions again after this (its replacement)
CLIENT_BACKLOG = 64  # client messages read ahead of the replica: more and the front stops reading (TCP pushes back)


class ReplicaGone(Exception):
    """The replica did not answer: its process died or it is being replaced."""


class Replica(Protocol):
    """An engine replica as the front calls it: relay.AppHost's methods, raising ReplicaGone if it is gone."""

    name: str

    async def http(self, scope: dict, body: bytes) -> list[Message]: ...

    async def websocket_open(self, scope: dict) -> str: ...

    async def websocket_push(self, connection_id: str, messages: list[Message]) -> bool: ...

    def websocket_pull(self, connection_id: str) -> AsyncIterator[list[Message]]: ...


def session_of(scope: dict) -> Optional[str]:
    """The session an HTTP request belongs to: /api/export/{session}/..., or ?session= (uploads)."""
    parts = scope["path"].split("/")
    if len(parts) > 3 and parts[1:3] == ["api", "export"]:
        return parts[3]
    query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
    return query["session"][0] if query.get("session") else None


async def _send_json(send, status: int, body: dict) -> None:
    payload = json.dumps(body).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": payload})


class _Placement:
    """Which replicas are up, and the sessions placed on each."""

    def __init__(self, replicas: Sequence[Replica]) -> None:
        self.replicas = list(replicas)
        self.sessions = {replica.name: 0 for replica in replicas}
        self.down_since: dict[str, float] = {}
        self._turn = 0

    def up(self, replica: Replica) -> bool:
        since = self.down_since.get(replica.name)
        return since is None or time.monotonic() - since >= RETRY_DOWN_AFTER_S

    def candidates(self) -> list[Replica]:
        """Replicas up, fewest sessions first (ties in turn, so that requests of no session spread)."""
        self._turn += 1
        count = len(self.replicas)
        rotated = [self.replicas[(self._turn + i) % count] for i in range(count)]
        return sorted((replica for replica in rotated if self.up(replica)), key=lambda r: self.sessions[r.name])

    def failed(self, replica: Replica) -> None:
        self.down_since[replica.name] = time.monotonic()

    def answered(self, replica: Replica) -> None:
        self.down_since.pop(replica.name, None)


class Front:
    """The ASGI app of the front; `max_body_bytes` caps what it reads of a request's body (uploads), `token` is
    the server's, for the front's own requests to the replicas (health, metrics)."""

    def __init__(self, replicas: Sequence[Replica], max_body_bytes: int, token: Optional[str] = None) -> None:
        if not replicas:
            raise ValueError("the front needs at least one replica")
        self.placement = _Placement(replicas)
        self.max_body_bytes = max_body_bytes
        self._own_headers = [(b"host", b"localhost")]
        if token is not None:
            self._own_headers.append((b"authorization", f"Bearer {token}".encode()))
        self.owners: dict[str, Replica] = {}  # session id -> the replica that holds it

    async def __call__(self, scope: dict, receive, send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
        elif scope["type"] == "websocket":
            await self._websocket(scope, receive, send)
        elif scope["path"] == "/healthz":
            await self._health(send)
        elif scope["path"] == "/metrics":
            await self._metrics(send)
        else:
            await self._http(scope, receive, send)

    async def _lifespan(self, receive, send) -> None:
        while True:
            message = await receive()
            await send({"type": message["type"] + ".complete"})
            if message["type"] == "lifespan.shutdown":
                return

    # HTTP

    async def _read_body(self, receive) -> bytes:
        """The request's body, up to max_body_bytes + 1: the replica answers one byte over with its own error."""
        parts, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                break
            parts.append(message.get("body", b""))
            size += len(parts[-1])
            if not message.get("more_body") or size > self.max_body_bytes:
                break
        return b"".join(parts)[: self.max_body_bytes + 1]

    async def _http(self, scope: dict, receive, send) -> None:
        body = await self._read_body(receive)
        session = session_of(scope)
        if session is not None:
            owner = self.owners.get(session)
            if owner is None:
                await _send_json(send, 404, {"error": "no such session"})
                return
            targets = [owner]
        else:
            targets = self.placement.candidates()
        for replica in targets:
            try:
                messages = await replica.http(portable_scope(scope), body)
            except ReplicaGone:
                self.placement.failed(replica)
                continue
            self.placement.answered(replica)
            for message in messages:
                await send(message)
            return
        problem = "the engine that held this session has stopped" if session else "no engine replica is up"
        await _send_json(send, 502 if session else 503, {"error": problem})

    async def _replica_json(self, replica: Replica, path: str) -> Optional[tuple[int, bytes]]:
        """GET `path` of one replica: (status, body), or None if it did not answer."""
        scope = {"type": "http", "method": "GET", "path": path, "query_string": b"", "headers": self._own_headers}
        try:
            messages = await asyncio.wait_for(replica.http(scope, b""), timeout=10.0)
        except (ReplicaGone, asyncio.TimeoutError):
            return None
        status = next(m["status"] for m in messages if m["type"] == "http.response.start")
        return status, b"".join(m.get("body", b"") for m in messages if m["type"] == "http.response.body")

    async def _health(self, send) -> None:
        """200 while at least one replica is ready; the body says how each is."""
        replies = await asyncio.gather(*(self._replica_json(r, "/healthz") for r in self.placement.replicas))
        replicas = {}
        for replica, reply in zip(self.placement.replicas, replies):
            ready = reply is not None and reply[0] == 200
            if ready:  # a replacement that answers takes new sessions at once, not only after RETRY_DOWN_AFTER_S
                self.placement.answered(replica)
            replicas[replica.name] = {"ready": ready, "sessions": self.placement.sessions[replica.name]}
        ready = any(entry["ready"] for entry in replicas.values())
        status = "ok" if ready else "no engine replica is ready"
        await _send_json(send, 200 if ready else 503, {"status": status, "replicas": replicas})

    async def _metrics(self, send) -> None:
        replies = await asyncio.gather(*(self._replica_json(r, "/metrics") for r in self.placement.replicas))
        texts = {replica.name: reply[1].decode() for replica, reply in zip(self.placement.replicas, replies) if reply}
        registry = CollectorRegistry()
        registry.register(_MergedMetrics(texts, self.placement))
        payload = generate_latest(registry)
        headers = [(b"content-type", CONTENT_TYPE.encode()), (b"content-length", str(len(payload)).encode())]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": payload})

    # WebSockets

    async def _websocket(self, scope: dict, receive, send) -> None:
        connect = await receive()  # {"type": "websocket.connect"}
        for replica in self.placement.candidates():
            try:
                connection = await replica.websocket_open(portable_scope(scope))
                await replica.websocket_push(connection, [connect])
            except ReplicaGone:
                self.placement.failed(replica)
                continue
            self.placement.answered(replica)
            self.placement.sessions[replica.name] += 1
            try:
                await self._relay(replica, connection, receive, send)
            finally:
                self.placement.sessions[replica.name] -= 1
            return
        await send({"type": "websocket.close", "code": 1013, "reason": "no engine replica is up"})

    async def _relay(self, replica: Replica, connection: str, receive, send) -> None:
        """Both ways until the app ends the connection, the client leaves, or the replica dies."""
        backlog: asyncio.Queue[Message] = asyncio.Queue(maxsize=CLIENT_BACKLOG)

        async def read_client() -> None:
            while True:
                message = await receive()
                await backlog.put(message)
                if message["type"] == "websocket.disconnect":
                    return

        async def push_to_replica() -> None:
            while True:
                batch = [await backlog.get()]
                while not backlog.empty():
                    batch.append(backlog.get_nowait())
                if not await replica.websocket_push(connection, batch):
                    return  # the app has already ended this connection
                if batch[-1]["type"] == "websocket.disconnect":
                    return

        session: Optional[str] = None
        accepted = False

        async def pull_from_replica() -> None:
            nonlocal session, accepted
            async for batch in replica.websocket_pull(connection):
                for message in batch:
                    if session is None and message.get("text"):
                        session = self._learn_session(message["text"], replica)
                    accepted = accepted or message["type"] == "websocket.accept"
                    try:
                        await send(message)
                    except Exception:  # the client is gone: ending the pull tells the app (relay.AppHost)
                        return

        reader = asyncio.create_task(read_client())
        pusher = asyncio.create_task(push_to_replica())
        puller = asyncio.create_task(pull_from_replica())
        try:
            # The pull ends with the connection; a failed push (the replica is gone) ends it too.
            done, _ = await asyncio.wait({puller, pusher}, return_when=asyncio.FIRST_COMPLETED)
            if puller not in done and pusher.exception() is None:
                await asyncio.wait({puller})
            failed = [task for task in (puller, pusher) if task.done() and task.exception() is not None]
            if any(isinstance(task.exception(), ReplicaGone) for task in failed):
                await self._replica_stopped(replica, accepted, send)
            elif failed:
                raise failed[0].exception()
        finally:
            for task in (reader, pusher, puller):
                task.cancel()
            for task in (reader, pusher, puller):
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
            if session is not None:
                self.owners.pop(session, None)

    async def _replica_stopped(self, replica: Replica, accepted: bool, send) -> None:
        """Tell the client its session is gone with its replica, and close the connection."""
        self.placement.failed(replica)
        with contextlib.suppress(Exception):  # the client may be gone too
            if accepted:
                stopped = f"the engine serving this session ({replica.name}) has stopped: start again"
                await send({"type": "websocket.send", "text": error_message(stopped)})
            await send({"type": "websocket.close", "code": 1011})

    def _learn_session(self, text: str, replica: Replica) -> Optional[str]:
        """The session id, from the app's first message ({"type": "session", "id": ...})."""
        with contextlib.suppress(ValueError, AttributeError):
            message = json.loads(text)
            if message.get("type") == "session":
                self.owners[message["id"]] = replica
                return message["id"]
        return None


class _MergedMetrics(Collector):
    """The replicas' metrics, each sample labelled `replica`, and the front's own per replica."""

    def __init__(self, texts: dict[str, str], placement: _Placement) -> None:
        self.texts = texts
        self.placement = placement

    def collect(self) -> Iterator[Metric]:
        families: dict[str, Metric] = {}
        for name, text in self.texts.items():
            for family in text_string_to_metric_families(text):
                merged = families.setdefault(family.name, Metric(family.name, family.documentation, family.type))
                for sample in family.samples:
                    labels = {**sample.labels, "replica": name}
                    merged.add_sample(sample.name, labels, sample.value, sample.timestamp)
        yield from families.values()
        up = GaugeMetricFamily("sam2rt_replica_up", "Whether the replica answered this scrape", labels=["replica"])
        placed = GaugeMetricFamily(
            "sam2rt_replica_sessions", "Sessions the front placed on the replica", labels=["replica"]
        )
        for replica in self.placement.replicas:
            up.add_metric([replica.name], float(replica.name in self.texts))
            placed.add_metric([replica.name], self.placement.sessions[replica.name])
        yield up
        yield placed

"""Engine replicas on Ray Serve, for `sam2rt serve --ray`: one deployment of one replica per GPU (or CPU replica).

Each replica is its own deployment, so that the front can address it (a session is pinned to one replica
for its life); Ray Serve keeps each deployment's replica alive and brings up a replacement when one dies.
No Serve HTTP proxy runs: the front (front.py) is the one address, and talks to the replicas through
deployment handles. Ray is imported here only, when --ray is asked for.
"""

from __future__ import annotations

import asyncio
import logging
import os
from typing import AsyncIterator, Callable

from .front import ReplicaGone
from .relay import AppHost, Message

log = logging.getLogger("sam2rt.serve")

APPLICATION_PREFIX = "sam2rt-engine-"
OPEN_TIMEOUT_S = 20.0  # a replica being replaced queues new calls until its model is up; past this, try another
HEALTH_CHECK_PERIOD_S = 2.0
MAX_ONGOING_REQUESTS = 10_000  # each WebSocket keeps one call open (its pull) for its whole life
QUIET = {"log_level": "WARNING", "enable_access_log": False}  # not a line per frame on the terminal


class EngineReplica:
    """A Ray Serve replica: the single-process server's app, built by `make_app` in the replica's process."""

    async def __init__(self, make_app: Callable[[], object]) -> None:
        self.host = AppHost(make_app())
        await self.host.start()

    async def __del__(self) -> None:  # Ray Serve's shutdown of the replica: sessions end, the scheduler stops
        await self.host.stop()

    async def http(self, scope: dict, body: bytes) -> list[Message]:
        return await self.host.http(scope, body)

    async def websocket_open(self, scope: dict) -> str:
        return await self.host.websocket_open(scope)

    async def websocket_push(self, connection_id: str, messages: list[Message]) -> bool:
        return await self.host.websocket_push(connection_id, messages)

    async def websocket_pull(self, connection_id: str) -> AsyncIterator[list[Message]]:
        async for batch in self.host.websocket_pull(connection_id):
            yield batch

    def pid(self) -> int:
        return os.getpid()


class RayReplica:
    """One engine deployment as the front calls it (front.Replica): Ray's failures become ReplicaGone."""

    def __init__(self, name: str, handle) -> None:
        self.name = name
        self.handle = handle

    async def _call(self, method: str, *args, timeout: float | None = None):
        import ray

        try:
            return await asyncio.wait_for(getattr(self.handle, method).remote(*args), timeout)
        except (ray.exceptions.RayError, asyncio.TimeoutError) as error:
            log.warning("engine %s did not answer %s: %s", self.name, method, type(error).__name__)
            raise ReplicaGone(self.name) from error

    async def http(self, scope: dict, body: bytes) -> list[Message]:
        return await self._call("http", scope, body, timeout=None)

    async def websocket_open(self, scope: dict) -> str:
        return await self._call("websocket_open", scope, timeout=OPEN_TIMEOUT_S)

    async def websocket_push(self, connection_id: str, messages: list[Message]) -> bool:
        return await self._call("websocket_push", connection_id, messages)

    async def websocket_pull(self, connection_id: str) -> AsyncIterator[list[Message]]:
        import ray

        try:
            async for batch in self.handle.options(stream=True).websocket_pull.remote(connection_id):
                yield batch
        except ray.exceptions.RayError as error:
            log.warning("engine %s stopped during a session: %s", self.name, type(error).__name__)
            raise ReplicaGone(self.name) from error


def start_replicas(make_app: Callable[[], object], count: int, gpus_each: float, cpus_each: float) -> list[RayReplica]:
    """`count` engine deployments on the Ray cluster this process is connected to (ray.init first), each
    building its app with `make_app`; returns once every replica has its model loaded."""
    from ray import serve

    logging.getLogger("ray.serve").setLevel(logging.WARNING)  # this process's Serve client, as QUIET is the replicas'
    serve.start(proxy_location="Disabled", logging_config=QUIET)
    deployment = serve.deployment(
        EngineReplica,
        num_replicas=1,
        ray_actor_options={"num_gpus": gpus_each, "num_cpus": cpus_each},
        max_ongoing_requests=MAX_ONGOING_REQUESTS,
        health_check_period_s=HEALTH_CHECK_PERIOD_S,
        logging_config=QUIET,
    )
    replicas = []
    for index in range(count):
        name = f"{APPLICATION_PREFIX}{index}"
        handle = serve.run(deployment.bind(make_app), name=name, route_prefix=None)
        replicas.append(RayReplica(f"engine {index + 1} of {count}", handle))
    return replicas


def stop_replicas() -> None:
    """Delete the engine deployments (their models and sessions go with them)."""
    from ray import serve

    serve.shutdown()

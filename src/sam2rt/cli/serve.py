"""`sam2rt serve`: the live server and its browser app; the model is loaded once and shared by all sessions.

With --sam3 (or --sam3-checkpoint) the server also loads SAM 3 (detector, tracker, tokenizer from Meta's sam3.pt),
and the app's text box finds and tracks every instance of a phrase; without it a phrase is refused with a message
that says how to start the server.
"""

from __future__ import annotations

import dataclasses
import functools
from pathlib import Path
from typing import Optional

import typer

from ..serve.scheduler import DEFAULT_RELEASE_AFTER_S
from ..serve.ticks import DEFAULT_BATCH_WAIT_S
from .common import RunFailed, app, errors_as_messages
from .model_choice import MODEL_OPTIONS, ModelChoice, model_options

WS_MAX_BYTES = 64 * 1024 * 1024  # above the protocol's own caps, which answer with an error and keep the session


@app.command()
@model_options
def serve(
    host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on; any but loopback needs --token."),
    port: int = typer.Option(8000, "--port", min=0, max=65535, help="Port to listen on (0: any free port)."),
    media_root: Optional[Path] = typer.Option(
        None, "--media-root", help="Folder of videos the app may open; nothing outside it is readable."
    ),
    max_sessions: int = typer.Option(8, "--max-sessions", min=1, help="Sessions (browser tabs) at once."),
    token: Optional[str] = typer.Option(
        None, "--token", envvar="SAM2RT_TOKEN", help="Secret every request must carry (open /?token=...)."
    ),
    idle_timeout: float = typer.Option(
        600.0, "--idle-timeout", min=1.0, help="Seconds without a message from a client before its session ends."
    ),
    max_upload_mb: int = typer.Option(512, "--max-upload-mb", min=1, help="Largest video a browser may upload."),
    batch_wait_ms: float = typer.Option(
        DEFAULT_BATCH_WAIT_S * 1000,
        "--batch-wait-ms",
        min=0.0,
        max=1000.0,
        help="Longest a frame waits for other cameras' frames due to share its pass of the model (0: never).",
    ),  # fmt: skip
    release_after: float = typer.Option(
        DEFAULT_RELEASE_AFTER_S,
        "--release-memory-after",
        min=0.0,
        help="Seconds without a session after which the GPU memory kept for speed is given back (0: never).",
    ),
    ray: bool = typer.Option(
        False, "--ray", help="Run the engine as Ray Serve replicas behind this address (needs sam2rt[serve-ray])."
    ),
    replicas: Optional[int] = typer.Option(
        None, "--replicas", min=1, help="With --ray: engine replicas (default: one per GPU of the cluster, or 1)."
    ),
    ray_address: Optional[str] = typer.Option(
        None, "--ray-address", help="With --ray: the cluster to join (default: RAY_ADDRESS, else a local one)."
    ),
    sam3: bool = typer.Option(
        False,
        "--sam3",
        help="Also load SAM 3 (sam3.pt from the Hugging Face cache, downloaded when missing): the app's text box "
        "then tracks every instance of a phrase.",
    ),
    sam3_checkpoint: Optional[Path] = typer.Option(
        None,
        "--sam3-checkpoint",
        help="SAM 3 from this sam3.pt (Meta's; implies --sam3); its tokenizer's vocab.json and merges.txt are read "
        "from beside it when there.",
    ),
    model: ModelChoice = MODEL_OPTIONS,
) -> None:
    """Serve the browser app: track objects in live video (webcam, uploads, files, streams) by clicking on them,
    or (--sam3) every instance of a phrase typed in its text box."""
    import uvicorn

    from ..serve.app import ServerConfig, create_app
    from ..serve.scheduler import default_engine
    from ..serve.security import is_loopback

    model.check()
    for given, name in ((replicas, "--replicas"), (ray_address, "--ray-address")):
        if given is not None and not ray:
            raise typer.BadParameter("is for the engine replicas of --ray: give --ray too", param_hint=name)
    with errors_as_messages():
        if not is_loopback(host) and not token:
            raise RunFailed(f"--host {host} makes the server reachable from other machines: give --token too")
        if media_root is not None and not media_root.is_dir():
            raise RunFailed(f"--media-root {media_root} is not a folder")
        text_models = Sam3Choice(sam3_checkpoint) if sam3 or sam3_checkpoint is not None else None
        if text_models is not None and sam3_checkpoint is not None and not sam3_checkpoint.is_file():
            raise RunFailed(f"--sam3-checkpoint {sam3_checkpoint} is not a file")
        if not ray:
            loaded = model.load()
            concepts = text_models.load(model) if text_models is not None else None
    config = ServerConfig(
        token=token or None,
        media_root=media_root,
        max_sessions=max_sessions,
        idle_timeout_s=idle_timeout,
        max_upload_bytes=max_upload_mb * 1024 * 1024,
        batch_wait_s=batch_wait_ms / 1000.0,
        release_after_s=release_after,
        warm_up=True,  # the engine's graphs for --max-sessions streams before /healthz says ready (none: no-op)
    )
    if ray:
        with errors_as_messages():
            asgi_app, replica_count = _start_on_ray(model, config, replicas, ray_address, text_models)
        typer.echo(f"sam2rt serve: {replica_count} engine replica{'s' if replica_count > 1 else ''} on Ray Serve")
    else:
        asgi_app = create_app(default_engine(loaded), config, concepts)
    server = uvicorn.Server(
        uvicorn.Config(
            asgi_app,
            host=host,
            port=port,
            ws_max_size=WS_MAX_BYTES,
            ws_per_message_deflate=False,  # frames are JPEG already; deflate would only cost time
            log_level="warning",
        )
    )
    shown = "localhost" if is_loopback(host) else host
    typer.echo(f"sam2rt serve: open http://{shown}:{port}/{'?token=<token>' if token else ''}  (Ctrl+C stops)")
    try:
        server.run()
    finally:
        if ray:
            from ..serve.ray_replicas import stop_replicas

            stop_replicas()


@dataclasses.dataclass(frozen=True)
class Sam3Choice:
    """--sam3 and --sam3-checkpoint: SAM 3's models for the text box (None: sam3.pt from the Hugging Face cache)."""

    checkpoint: Optional[Path]

    def load(self, model: ModelChoice):
        """SAM 3's detector, tracker and tokenizer (serve.concepts.ConceptModels) on the SAM 2 model's device, with
        bf16 weights on CUDA under --fast."""
        from ..checkpoints.sam3 import load_sam3_video, load_text_tokenizer
        from ..runtime import optimize_concept_models
        from ..serve.concepts import ConceptModels

        device = model.target_device()
        detector, tracker = load_sam3_video(self.checkpoint, device)
        tokenizer = load_text_tokenizer(beside=self.checkpoint)
        if model.fast:
            optimize_concept_models(detector, tracker)  # on CUDA: bf16 parameters, CUDA graphs
        return ConceptModels(detector, tracker, tokenizer)

    def resolved(self) -> Sam3Choice:
        """With the checkpoint's path (the Hugging Face cache's, downloaded when missing): what replicas read."""
        from ..checkpoints.hub import SAM3_CHECKPOINT, fetch

        return self if self.checkpoint is not None else Sam3Choice(fetch(SAM3_CHECKPOINT))


def replica_app(model: ModelChoice, config, sam3: Optional[Sam3Choice] = None):
    """The app an engine replica serves: the single-process server's, on the models loaded in the replica."""
    from ..serve.app import create_app
    from ..serve.scheduler import default_engine

    concepts = sam3.load(model) if sam3 is not None else None
    return create_app(default_engine(model.load()), config, concepts)


def _start_on_ray(
    model: ModelChoice,
    config,
    replicas: Optional[int],
    address: Optional[str],
    sam3: Optional[Sam3Choice] = None,
):
    """The front's app over engine replicas started on Ray Serve, and how many there are."""
    from ..checkpoints import cached_checkpoint, load_model
    from ..serve.front import Front
    from ..serve.security import Guard

    try:
        import ray
        from ray import serve  # noqa: F401  (Ray Serve's own dependencies)
    except ImportError:
        raise RunFailed("--ray needs Ray Serve, which is not installed (pip install 'sam2rt[serve-ray]')") from None
    from ..serve.ray_replicas import start_replicas

    device = model.target_device()
    variant = model.variant_name()
    load_model(variant, model.checkpoint, "cpu", model.image_size)  # a bad or missing checkpoint fails here, once
    # Each replica sees its own GPU as "cuda" (Ray sets CUDA_VISIBLE_DEVICES), and reads the checkpoint checked here.
    in_replica = dataclasses.replace(
        model, variant=variant, checkpoint=model.checkpoint or cached_checkpoint(variant), device=device.type
    )
    if not ray.is_initialized():
        ray.init(address=address, log_to_driver=True, logging_level="WARNING")
    on_gpu = device.type == "cuda"
    resources = ray.cluster_resources()
    if replicas is None:
        replicas = int(resources.get("GPU", 0)) if on_gpu else 1
        if replicas == 0:
            raise RunFailed("the model runs on CUDA but the Ray cluster has no GPU: give --device cpu or --replicas")
    # The cluster's CPUs shared out: Ray gives each replica's torch as many threads as it has CPUs.
    cpus_each = max(1, int(resources.get("CPU", 1)) // replicas)
    try:
        make_app = functools.partial(replica_app, in_replica, config, sam3.resolved() if sam3 is not None else None)
        started = start_replicas(make_app, replicas, float(on_gpu), float(cpus_each))
    except Exception as error:  # Ray Serve's own errors: a replica that fails to start, resources never granted
        raise RunFailed(f"the engine replicas did not start on Ray Serve: {error}") from None
    front = Front(started, max_body_bytes=config.max_upload_bytes, token=config.token)
    return Guard(front, config.token), len(started)

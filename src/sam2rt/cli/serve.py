"""`sam2rt serve`: the live server and its browser app; the model is loaded once and shared by all sessions."""

from __future__ import annotations

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
    model: ModelChoice = MODEL_OPTIONS,
) -> None:
    """Serve the browser app: track objects in live video (webcam, uploads, files, streams) by clicking on them."""
    import uvicorn

    from ..serve.app import ServerConfig, create_app
    from ..serve.scheduler import default_engine
    from ..serve.security import is_loopback

    model.check()
    with errors_as_messages():
        if not is_loopback(host) and not token:
            raise RunFailed(f"--host {host} makes the server reachable from other machines: give --token too")
        if media_root is not None and not media_root.is_dir():
            raise RunFailed(f"--media-root {media_root} is not a folder")
        loaded = model.load()
    config = ServerConfig(
        token=token or None,
        media_root=media_root,
        max_sessions=max_sessions,
        idle_timeout_s=idle_timeout,
        max_upload_bytes=max_upload_mb * 1024 * 1024,
        batch_wait_s=batch_wait_ms / 1000.0,
        release_after_s=release_after,
    )
    server = uvicorn.Server(
        uvicorn.Config(
            create_app(default_engine(loaded), config),
            host=host,
            port=port,
            ws_max_size=WS_MAX_BYTES,
            ws_per_message_deflate=False,  # frames are JPEG already; deflate would only cost time
            log_level="warning",
        )
    )
    shown = "localhost" if is_loopback(host) else host
    typer.echo(f"sam2rt serve: open http://{shown}:{port}/{'?token=<token>' if token else ''}  (Ctrl+C stops)")
    server.run()

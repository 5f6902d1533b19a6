"""`sam2rt models` and `sam2rt download`: the variants, the cache, official checkpoints."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from .. import checkpoints
from ..model.variants import VARIANTS
from .common import PROGRESS, app, check_variant, errors_as_messages


@app.command()
def models() -> None:
    """The model variants, and which checkpoints are in the cache."""
    folder = checkpoints.cache_dir()
    typer.echo(f"cache: {folder}  (set SAM2RT_CACHE to move it)")
    typer.echo(f"{'variant':<24}{'cached':<10}{'size':>10}  file or download address")
    for name in VARIANTS:
        path = checkpoints.cached_checkpoint(name)
        part = path.with_name(path.name + ".part")
        if path.is_file():
            state, size, where = "yes", f"{path.stat().st_size / 2**20:.0f} MiB", str(path)
        elif part.is_file():
            state, size, where = (
                "partial",
                f"{part.stat().st_size / 2**20:.0f} MiB",
                f"`sam2rt download {name}` resumes",
            )
        else:
            state, size, where = "no", "", checkpoints.download_url(name)
        typer.echo(f"{name:<24}{state:<10}{size:>10}  {where}")


@app.command()
def download(
    variant: str = typer.Argument(..., help=f"One of: {', '.join(VARIANTS)}."),
    output: Optional[Path] = typer.Option(
        None, "--output", "-o", help="File or folder to save it to (default: the cache)."
    ),
    sha256: Optional[str] = typer.Option(
        None, "--sha256", help="Expected sha256; else <file>.sha256 beside it, if any."
    ),
    force: bool = typer.Option(False, "--force", help="Download again even if the file is there."),
    progress: Optional[bool] = PROGRESS,
) -> None:
    """Download an official checkpoint: resumable, verified (it must load as VARIANT), saved atomically."""
    check_variant(variant, "VARIANT")
    with errors_as_messages():
        destination = output if output is not None else checkpoints.cached_checkpoint(variant)
        if destination.is_dir():
            destination = destination / checkpoints.cached_checkpoint(variant).name
        if destination.is_file() and not force:
            typer.echo(f"{variant} is already at {destination} (--force downloads it again)")
            return
        path = checkpoints.download_checkpoint(variant, destination, sha256=sha256, progress=progress)
    typer.echo(f"{variant} saved to {path}")

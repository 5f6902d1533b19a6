"""Downloading official checkpoints: the release addresses (or a mirror), resumable transfers, verification.

The bytes go to `<file>.part` first and the download resumes from there when cut (HTTP Range); the file is
moved into place only once it loads strictly as its variant and matches its sha256, where one is known.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import re
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Optional, Union

from ..io.atomic import replace_with
from ..model.variants import get_variant
from .files import CheckpointError, cached_checkpoint, check_variant, read_state_dict

_RELEASE_URLS = {
    "sam2": "https://dl.fbaipublicfiles.com/segment_anything_2/072824",
    "sam2.1": "https://dl.fbaipublicfiles.com/segment_anything_2/092824",
    # EdgeTAM's checkpoint is published in its own repository (raw GitHub, main branch).
    "edgetam": "https://github.com/facebookresearch/EdgeTAM/raw/main/checkpoints",
}

# sha256 of the official files, by variant. Empty on purpose: a hash goes here only once it has been
# computed from the real file. Until then a user pins one with `sam2rt download --sha256` or a
# `<checkpoint>.sha256` file beside the checkpoint.
_SHA256: dict[str, str] = {}

DOWNLOAD_URL_ENV = "SAM2RT_DOWNLOAD_URL"  # a mirror holding the official file names, e.g. for offline networks
_SHA256_PATTERN = re.compile(r"^[0-9a-f]{64}$")


def checkpoint_url(variant: str) -> str:
    """The official download address of a variant's checkpoint."""
    spec = get_variant(variant)
    return f"{_RELEASE_URLS[spec.release]}/{spec.checkpoint_filename}"


def download_url(variant: str) -> str:
    """Where a variant's checkpoint is downloaded from: the official address, or the mirror $SAM2RT_DOWNLOAD_URL."""
    mirror = os.environ.get(DOWNLOAD_URL_ENV)
    if mirror:
        return f"{mirror.rstrip('/')}/{get_variant(variant).checkpoint_filename}"
    return checkpoint_url(variant)


def pinned_sha256(checkpoint: Union[str, Path]) -> Optional[str]:
    """The sha256 pinned in `<checkpoint>.sha256` (as `sha256sum` writes it), if that file exists."""
    pin = Path(f"{checkpoint}.sha256")
    if not pin.is_file():
        return None
    words = pin.read_text().split()
    return normalize_sha256(words[0] if words else "", str(pin))


def normalize_sha256(value: str, origin: str) -> str:
    digest = value.strip().lower()
    if not _SHA256_PATTERN.match(digest):
        raise CheckpointError(f"{origin}: {value!r} is not a sha256 (64 hexadecimal digits)")
    return digest


def file_sha256(path: Union[str, Path]) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def download_checkpoint(
    variant: str,
    destination: Union[str, Path, None] = None,
    *,
    sha256: Optional[str] = None,
    url: Optional[str] = None,
    progress: Optional[bool] = True,
    timeout: float = 30.0,
) -> Path:
    """Download a variant's official checkpoint to `destination` (the cache by default) and return its path.

    The bytes go to `<destination>.part` first, so that an interrupted download resumes where it
    stopped (HTTP Range). The file replaces `destination` only once it loads strictly as `variant`
    and matches the expected sha256: `sha256`, else a `<destination>.sha256` file, else the
    registry's. A rejected file is deleted. `progress`: a progress bar on stderr (None: when it is a terminal).
    """
    get_variant(variant)
    destination = Path(destination) if destination is not None else cached_checkpoint(variant)
    url = url or download_url(variant)
    expected = normalize_sha256(sha256, "--sha256") if sha256 else pinned_sha256(destination) or _SHA256.get(variant)
    part = destination.with_name(destination.name + ".part")
    try:
        destination.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise CheckpointError(f"cannot create the folder for {destination}: {error.strerror or error}") from None
    _fetch(url, part, progress, timeout)
    try:
        if expected is not None:
            actual = file_sha256(part)
            if actual != expected:
                raise CheckpointError(f"the file from {url} has sha256 {actual}, expected {expected}")
        check_variant(read_state_dict(part), variant, f"the file from {url}")
    except CheckpointError:
        part.unlink(missing_ok=True)  # never resume from a file that failed verification
        raise
    replace_with(part, destination)  # atomic: the cache holds whole, verified files only
    return destination


def _fetch(url: str, part: Path, progress: Optional[bool], timeout: float) -> None:
    """Bring `part` to the whole content of `url`, resuming from the bytes it already holds."""
    offset = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(url, headers={"Range": f"bytes={offset}-"} if offset else {})
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as error:
        if error.code == 416 and offset:  # nothing left to fetch past `offset`: the part is whole, or stale
            if _range_total(error.headers.get("Content-Range")) == offset:
                return
            part.unlink()
            return _fetch(url, part, progress, timeout)
        raise CheckpointError(f"downloading {url} failed: HTTP {error.code} {error.reason}") from None
    except (urllib.error.URLError, OSError) as error:
        reason = getattr(error, "reason", None) or error
        raise CheckpointError(f"cannot reach {url}: {reason}") from None
    with response:
        if offset and response.status != 206:
            offset = 0  # the server ignored the Range header: start over
        elif offset and _range_start(response.headers.get("Content-Range")) != offset:
            raise CheckpointError(f"downloading {url} failed: the server resumed at another byte than {offset}")
        length = response.headers.get("Content-Length")
        total = offset + int(length) if length is not None else None
        received = offset
        from tqdm import tqdm

        try:
            file = open(part, "ab" if offset else "wb")
        except OSError as error:
            raise CheckpointError(f"cannot write {part}: {error.strerror or error}") from None
        name = part.name.removesuffix(".part")
        disable = None if progress is None else not progress  # None: tqdm shows it on terminals only
        bar = tqdm(total=total, initial=offset, unit="B", unit_scale=True, desc=name, disable=disable, file=sys.stderr)
        try:
            with bar, file:
                while block := response.read(1 << 20):
                    file.write(block)
                    received += len(block)
                    bar.update(len(block))
        except (http.client.HTTPException, OSError) as error:
            raise CheckpointError(_cut_message(url, part, received, total, error)) from None
    if total is not None and received < total:  # the server closed the connection early
        raise CheckpointError(_cut_message(url, part, received, total, None))


def _range_total(content_range: Optional[str]) -> Optional[int]:
    """The full size in a Content-Range header such as `bytes */1234` or `bytes 0-99/1234`."""
    match = re.search(r"/(\d+)\s*$", content_range or "")
    return int(match.group(1)) if match else None


def _range_start(content_range: Optional[str]) -> Optional[int]:
    """The first byte in a Content-Range header such as `bytes 100-1233/1234`."""
    match = re.match(r"\s*bytes\s+(\d+)-", content_range or "")
    return int(match.group(1)) if match else None


def _cut_message(url: str, part: Path, received: int, total: Optional[int], error: Optional[Exception]) -> str:
    of_total = f" of {total}" if total is not None else ""
    cause = f" ({error})" if error is not None else ""
    return f"the download of {url} was cut after {received}{of_total} bytes{cause}; run it again to resume from {part}"

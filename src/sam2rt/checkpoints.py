"""Official checkpoints: where they come from, where they are cached, downloading, and strict loading.

A checkpoint is the official `.pt` format (`{"model": state_dict}`), a bare state dict, or a
`.safetensors` file. Loading is strict: a file of another variant, or one that is corrupt,
fails with one `CheckpointError` that names the problem. A download is accepted only once it
loads strictly as its variant (and matches its sha256, where one is known or pinned).
"""

from __future__ import annotations

import hashlib
import http.client
import os
import pickle
import re
import sys
import urllib.error
import urllib.request
import zipfile
from functools import lru_cache
from pathlib import Path
from typing import Optional, Union

import torch

from .model.sam2 import SAM2Model
from .variants import VARIANTS, ModelConfig, get_variant

_RELEASE_URLS = {
    "sam2": "https://dl.fbaipublicfiles.com/segment_anything_2/072824",
    "sam2.1": "https://dl.fbaipublicfiles.com/segment_anything_2/092824",
}

# sha256 of the official files, by variant. Empty on purpose: a hash goes here only once it has been
# computed from the real file. Until then a user pins one with `sam2rt download --sha256` or a
# `<checkpoint>.sha256` file beside the checkpoint.
_SHA256: dict[str, str] = {}

DOWNLOAD_URL_ENV = "SAM2RT_DOWNLOAD_URL"  # a mirror holding the official file names, e.g. for offline networks
_SHA256_PATTERN = re.compile(r"^[0-9a-f]{64}$")


class CheckpointError(ValueError):
    """A checkpoint that cannot be used: missing, unreadable, or of another variant."""


def checkpoint_url(variant: str) -> str:
    """The official download address of a variant's checkpoint."""
    spec = get_variant(variant)
    return f"{_RELEASE_URLS[spec.release]}/{spec.checkpoint_filename}"


def cache_dir() -> Path:
    """Where downloaded checkpoints live: $SAM2RT_CACHE, else $XDG_CACHE_HOME/sam2rt, else ~/.cache/sam2rt."""
    if os.environ.get("SAM2RT_CACHE"):
        return Path(os.environ["SAM2RT_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "sam2rt"


def cached_checkpoint(variant: str) -> Path:
    """The path a variant's checkpoint has in the cache (whether or not it is there)."""
    return cache_dir() / get_variant(variant).checkpoint_filename


def read_state_dict(path: Union[str, Path]) -> dict[str, torch.Tensor]:
    """The tensors of a checkpoint file, on the CPU."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint not found: {path}")
    if path.is_dir():
        raise CheckpointError(f"checkpoint path is a folder, not a file: {path}")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path), device="cpu")
        content = torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, EOFError, ValueError, pickle.UnpicklingError, zipfile.BadZipFile) as error:
        detail = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise CheckpointError(f"{path} is not a readable checkpoint (corrupt or truncated?): {detail}") from None
    except Exception as error:  # safetensors raises its own error types
        raise CheckpointError(f"{path} is not a readable checkpoint (corrupt or truncated?): {error}") from None
    if isinstance(content, dict) and isinstance(content.get("model"), dict):
        content = content["model"]
    if not isinstance(content, dict) or not all(isinstance(v, torch.Tensor) for v in content.values()):
        raise CheckpointError(f"{path} holds no SAM 2 state dict (expected {{'model': state_dict}} or a state dict)")
    return content


@lru_cache(maxsize=None)
def _signature(variant: str) -> dict[str, tuple[int, ...]]:
    """Key -> shape of a variant's state dict, from a model built on the meta device."""
    with torch.device("meta"):
        model = SAM2Model(ModelConfig(get_variant(variant)))
    return {key: tuple(value.shape) for key, value in model.state_dict().items()}


def identify_variant(state_dict: dict[str, torch.Tensor]) -> Optional[str]:
    """The official variant whose keys and shapes the state dict has exactly, if any."""
    shapes = {key: tuple(value.shape) for key, value in state_dict.items()}
    return next((name for name in VARIANTS if _signature(name) == shapes), None)


def _mismatch_summary(expected: dict[str, tuple[int, ...]], state_dict: dict[str, torch.Tensor]) -> str:
    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected))
    reshaped = [k for k in expected if k in state_dict and tuple(state_dict[k].shape) != expected[k]]
    parts = []
    for label, keys in (("missing", missing), ("unexpected", unexpected), ("with other shapes", reshaped)):
        if keys:
            shown = ", ".join(keys[:3]) + (f" and {len(keys) - 3} more" if len(keys) > 3 else "")
            parts.append(f"{len(keys)} keys {label} ({shown})")
    return "; ".join(parts)


def check_variant(state_dict: dict[str, torch.Tensor], variant: str, source: Union[str, Path]) -> None:
    """Fail with a CheckpointError naming what `source` holds unless its keys and shapes are exactly `variant`'s."""
    _check_shapes(state_dict, _signature(variant), variant, source)


def _check_shapes(
    state_dict: dict[str, torch.Tensor], expected: dict[str, tuple[int, ...]], variant: str, source: Union[str, Path]
) -> None:
    shapes = {key: tuple(value.shape) for key, value in state_dict.items()}
    if shapes == expected:
        return
    actual = identify_variant(state_dict)
    if actual is not None:
        raise CheckpointError(f"{source} is a {actual} checkpoint, not {variant}")
    summary = _mismatch_summary(expected, state_dict)
    raise CheckpointError(f"{source} does not match {variant} nor any other SAM 2 variant: {summary}")


def load_weights(model: SAM2Model, path: Union[str, Path]) -> None:
    """Load a checkpoint into `model` strictly, or fail with a CheckpointError that says what the file is."""
    state_dict = read_state_dict(path)
    # The model's own shapes: no second model has to be built for the comparison.
    expected = {key: tuple(value.shape) for key, value in model.state_dict().items()}
    _check_shapes(state_dict, expected, model.config.variant.name, path)
    model.load_state_dict(state_dict, strict=True)


def checkpoint_variant(path: Union[str, Path]) -> str:
    """The official variant a checkpoint file holds, read from its keys and shapes."""
    variant = identify_variant(read_state_dict(path))
    if variant is None:
        raise CheckpointError(f"{path} is not a checkpoint of any SAM 2 variant ({', '.join(VARIANTS)})")
    return variant


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def load_model(
    variant: str,
    checkpoint: Union[str, Path, None] = None,
    device: Union[str, torch.device, None] = None,
    image_size: int = 1024,
) -> SAM2Model:
    """A model of an official variant with its weights, in eval mode on `device` (CUDA when available).

    `checkpoint` is a `.pt` or `.safetensors` path; None takes the cached official checkpoint and
    downloads it first when it is not there.
    """
    model = SAM2Model(ModelConfig(get_variant(variant), image_size))
    if checkpoint is None:
        checkpoint = cached_checkpoint(variant)
        if not checkpoint.exists():
            try:
                download_checkpoint(variant, checkpoint)
            except CheckpointError as error:
                raise CheckpointError(
                    f"no checkpoint given and none cached for {variant}, and the download failed ({error}). "
                    f"Offline: download {checkpoint_url(variant)} elsewhere and put it at {checkpoint}, "
                    f"or pass checkpoint=<path>"
                ) from None
    load_weights(model, checkpoint)
    return model.to(device or default_device()).eval()


# Downloading


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
    os.replace(part, destination)  # atomic: the cache holds whole, verified files only
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

"""Downloading official checkpoints, against a local HTTP server: progress, resume, verification, pinned sha256."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch
from cli_support import assert_clean_error, make_checkpoint, run_sam2rt
from http_server import LocalServer
from PIL import Image

import sam2rt
from sam2rt.checkpoints import CheckpointError, download_checkpoint

VARIANT = "sam2.1_hiera_tiny"
FILE = f"/mirror/{VARIANT}.pt"


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> bytes:
    return make_checkpoint(tmp_path_factory.getbasetemp() / "checkpoints" / "tiny.pt").read_bytes()


@pytest.fixture
def server(weights):
    with LocalServer() as server:
        server.served.files[FILE] = weights
        yield server


def test_download_command_shows_progress_and_fills_the_cache(tmp_path, server, weights):
    env = {"SAM2RT_CACHE": str(tmp_path / "cache"), "SAM2RT_DOWNLOAD_URL": server.url("/mirror")}
    result = run_sam2rt("download", VARIANT, "--progress", env=env)
    assert result.returncode == 0, result.stderr
    cached = tmp_path / "cache" / f"{VARIANT}.pt"
    assert f"{VARIANT} saved to {cached}" in result.stdout
    assert "100%" in result.stderr and f"{VARIANT}.pt" in result.stderr  # the progress bar, on stderr
    assert cached.read_bytes() == weights
    assert sorted(p.name for p in cached.parent.iterdir()) == [cached.name]  # no .part left

    listing = run_sam2rt("models", env=env)
    assert listing.returncode == 0
    line = next(line for line in listing.stdout.splitlines() if line.startswith(VARIANT + " "))
    assert "yes" in line and str(cached) in line
    again = run_sam2rt("download", VARIANT, env=env)
    assert again.returncode == 0 and "already at" in again.stdout
    assert server.served.ranges == [None]  # the second command did not download


def test_resume_after_a_cut(tmp_path, server, weights):
    cut = len(weights) * 2 // 5
    server.served.cut_after, server.served.cuts_left = cut, 1
    destination = tmp_path / f"{VARIANT}.pt"
    part = tmp_path / f"{VARIANT}.pt.part"
    with pytest.raises(CheckpointError, match=f"was cut after {cut} of {len(weights)} bytes; run it again to resume"):
        download_checkpoint(VARIANT, destination, url=server.url(FILE), progress=False)
    assert part.stat().st_size == cut and not destination.exists()
    assert download_checkpoint(VARIANT, destination, url=server.url(FILE), progress=False) == destination
    assert server.served.ranges == [None, f"bytes={cut}-"]  # the second request asked only for the rest
    assert destination.read_bytes() == weights and not part.exists()


def test_a_whole_part_file_is_verified_without_downloading_again(tmp_path, server, weights):
    destination = tmp_path / f"{VARIANT}.pt"
    (tmp_path / f"{VARIANT}.pt.part").write_bytes(weights)
    download_checkpoint(VARIANT, destination, url=server.url(FILE), progress=False)
    assert server.served.ranges == [f"bytes={len(weights)}-"]  # answered 416: nothing left to send
    assert destination.read_bytes() == weights


def test_truncated_file_is_rejected(tmp_path, server, weights):
    server.served.files["/short.pt"] = weights[: len(weights) // 2]  # served whole, but the file itself is cut
    destination = tmp_path / f"{VARIANT}.pt"
    with pytest.raises(CheckpointError, match="is not a readable checkpoint \\(corrupt or truncated\\?\\)"):
        download_checkpoint(VARIANT, destination, url=server.url("/short.pt"), progress=False)
    assert list(tmp_path.iterdir()) == []  # neither the file nor a .part to resume from


def test_wrong_variant_is_rejected(tmp_path, server):
    other = tmp_path / "sam2_tiny.pt"
    torch.save({"model": sam2rt.build_model("sam2_hiera_tiny", image_size=128).state_dict()}, other)
    server.served.files["/other.pt"] = other.read_bytes()
    destination = tmp_path / "cache" / f"{VARIANT}.pt"
    url = server.url("/other.pt")
    with pytest.raises(CheckpointError, match=f"the file from {url} is a sam2_hiera_tiny checkpoint, not {VARIANT}"):
        download_checkpoint(VARIANT, destination, url=url, progress=False)
    assert list(destination.parent.iterdir()) == []


def test_pinned_checksum(tmp_path, server, weights):
    env = {"SAM2RT_CACHE": str(tmp_path / "cache"), "SAM2RT_DOWNLOAD_URL": server.url("/mirror")}
    wrong = "0" * 64
    result = run_sam2rt("download", VARIANT, "--sha256", wrong, env=env)
    actual = hashlib.sha256(weights).hexdigest()
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert f"error: the file from {server.url(FILE)} has sha256 {actual}, expected {wrong}" in result.stderr
    assert not list((tmp_path / "cache").iterdir())

    # A pin in a file beside the checkpoint, as `sha256sum` writes it.
    destination = tmp_path / "pinned" / f"{VARIANT}.pt"
    destination.parent.mkdir()
    pin = destination.with_name(destination.name + ".sha256")
    pin.write_text(f"{wrong}  {destination.name}\n")
    with pytest.raises(CheckpointError, match=f"has sha256 {actual}, expected {wrong}"):
        download_checkpoint(VARIANT, destination, url=server.url(FILE), progress=False)
    pin.write_text(f"{actual.upper()}  {destination.name}\n")
    download_checkpoint(VARIANT, destination, url=server.url(FILE), progress=False)
    assert destination.read_bytes() == weights
    with pytest.raises(CheckpointError, match="--sha256: 'abc' is not a sha256"):
        download_checkpoint(VARIANT, tmp_path / "x.pt", sha256="abc", url=server.url(FILE), progress=False)


def test_load_model_downloads_when_the_cache_is_empty(tmp_path, server, monkeypatch, weights):
    monkeypatch.setenv("SAM2RT_CACHE", str(tmp_path))
    monkeypatch.setenv("SAM2RT_DOWNLOAD_URL", server.url("/mirror"))
    model = sam2rt.load_model(VARIANT, device="cpu", image_size=128)
    assert (tmp_path / f"{VARIANT}.pt").read_bytes() == weights
    assert model.config.image_size == 128
    sam2rt.load_model(VARIANT, device="cpu", image_size=128)  # from the cache now
    assert server.served.ranges == [None]


def test_offline_says_where_to_put_the_file(tmp_path, monkeypatch):
    monkeypatch.setenv("SAM2RT_CACHE", str(tmp_path))
    monkeypatch.setenv("SAM2RT_DOWNLOAD_URL", "http://127.0.0.1:9")  # nothing listens there: as good as offline
    official = "https://dl.fbaipublicfiles.com/segment_anything_2/092824/sam2.1_hiera_tiny.pt"
    with pytest.raises(CheckpointError) as failure:
        sam2rt.load_model(VARIANT, device="cpu")
    message = str(failure.value)
    assert "cannot reach http://127.0.0.1:9/sam2.1_hiera_tiny.pt" in message
    assert f"download {official} elsewhere and put it at {tmp_path / 'sam2.1_hiera_tiny.pt'}" in message

    # The command says the same in one line.
    image = tmp_path / "image.png"
    Image.fromarray(np.zeros((32, 48, 3), np.uint8)).save(image)
    env = {"SAM2RT_CACHE": str(tmp_path), "SAM2RT_DOWNLOAD_URL": "http://127.0.0.1:9"}
    result = run_sam2rt("image", image, "--point", "5,5", "--variant", VARIANT, "--image-size", "128", env=env)
    assert_clean_error(result, f"put it at {tmp_path / 'sam2.1_hiera_tiny.pt'}")

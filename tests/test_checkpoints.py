"""Loading checkpoints: the official .pt format, bare state dicts, safetensors; clear errors for bad files."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

import sam2rt
from sam2rt.checkpoints.files import identify_variant, read_state_dict

VARIANT = "sam2.1_hiera_tiny"


@pytest.fixture(scope="module")
def weights():
    torch.manual_seed(0)
    return sam2rt.build_model(VARIANT).state_dict()


def _assert_loaded(model, weights):
    loaded = model.state_dict()
    assert all(torch.equal(loaded[k].cpu(), v) for k, v in weights.items())
    assert not model.training


def test_official_pt_format(tmp_path, weights):
    path = tmp_path / "sam2.1_hiera_tiny.pt"
    torch.save({"model": weights}, path)
    _assert_loaded(sam2rt.load_model(VARIANT, path, device="cpu"), weights)


def test_bare_state_dict_and_safetensors(tmp_path, weights):
    torch.save(weights, tmp_path / "bare.pt")
    _assert_loaded(sam2rt.load_model(VARIANT, tmp_path / "bare.pt", device="cpu"), weights)
    save_file({k: v.contiguous() for k, v in weights.items()}, str(tmp_path / "tiny.safetensors"))
    _assert_loaded(sam2rt.load_model(VARIANT, str(tmp_path / "tiny.safetensors"), device="cpu"), weights)


def test_image_size_does_not_change_the_checkpoint(tmp_path, weights):
    path = tmp_path / "tiny.pt"
    torch.save({"model": weights}, path)
    model = sam2rt.load_model(VARIANT, path, device="cpu", image_size=512)
    assert model.config.image_size == 512


@pytest.mark.parametrize("other", ["sam2.1_hiera_small", "sam2_hiera_tiny", "sam2.1_hiera_base_plus"])
def test_checkpoint_of_another_variant_is_named(tmp_path, other):
    path = tmp_path / "weights.pt"
    torch.save({"model": sam2rt.build_model(other).state_dict()}, path)
    with pytest.raises(sam2rt.CheckpointError, match=f"is a {other} checkpoint, not {VARIANT}"):
        sam2rt.load_model(VARIANT, path, device="cpu")


def test_identify_variant(weights):
    assert identify_variant(weights) == VARIANT
    assert identify_variant({"foo": torch.zeros(1)}) is None


def test_unrelated_state_dict(tmp_path, weights):
    partial = dict(weights)
    partial.pop("no_mem_embed")
    partial["extra.weight"] = torch.zeros(3)
    path = tmp_path / "odd.pt"
    torch.save({"model": partial}, path)
    with pytest.raises(sam2rt.CheckpointError, match="1 keys missing \\(no_mem_embed\\); 1 keys unexpected"):
        sam2rt.load_model(VARIANT, path, device="cpu")


@pytest.mark.parametrize("content", [b"", b"not a checkpoint at all" * 10])
def test_garbage_file(tmp_path, content):
    path = tmp_path / "garbage.pt"
    path.write_bytes(content)
    with pytest.raises(sam2rt.CheckpointError, match="not a readable checkpoint"):
        sam2rt.load_model(VARIANT, path, device="cpu")


def test_truncated_file(tmp_path, weights):
    whole = tmp_path / "whole.pt"
    torch.save({"model": weights}, whole)
    cut = tmp_path / "cut.pt"
    cut.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    with pytest.raises(sam2rt.CheckpointError, match="corrupt or truncated"):
        read_state_dict(cut)
    broken = tmp_path / "cut.safetensors"
    save_file({"a": torch.zeros(100)}, str(broken))
    broken.write_bytes(broken.read_bytes()[:-50])
    with pytest.raises(sam2rt.CheckpointError, match="corrupt or truncated"):
        read_state_dict(broken)


def test_pickled_objects_are_refused(tmp_path):
    path = tmp_path / "object.pt"
    torch.save({"model": {"layer": object()}}, path)
    with pytest.raises(sam2rt.CheckpointError, match="not a readable checkpoint"):
        read_state_dict(path)


def test_missing_path_and_folder(tmp_path):
    with pytest.raises(sam2rt.CheckpointError, match="not found"):
        sam2rt.load_model(VARIANT, tmp_path / "nope.pt", device="cpu")
    with pytest.raises(sam2rt.CheckpointError, match="is a folder"):
        sam2rt.load_model(VARIANT, tmp_path, device="cpu")


def test_no_checkpoint_and_empty_cache_says_where_to_put_it(tmp_path, monkeypatch):
    """The cache is empty and the download fails (nothing listens at the mirror): the error says where the file goes."""
    monkeypatch.setenv("SAM2RT_CACHE", str(tmp_path))
    monkeypatch.setenv("SAM2RT_DOWNLOAD_URL", "http://127.0.0.1:9")
    with pytest.raises(sam2rt.CheckpointError, match=f"put it at {tmp_path / 'sam2.1_hiera_tiny.pt'}"):
        sam2rt.load_model(VARIANT, device="cpu")

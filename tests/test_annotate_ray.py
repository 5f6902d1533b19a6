"""`sam2rt annotate --ray` on a local Ray cluster started here: the same files as one process; resuming."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from cli_support import clip_frames, invoke_in_process, model_args
from PIL import Image

ray = pytest.importorskip("ray", reason="the ray extra (pip install 'sam2rt[ray]') is not installed")


@pytest.fixture(scope="module")
def cluster():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_ray_writes_the_files_of_a_single_process_run_and_resumes(tmp_path, checkpoint, cluster, capsys):
    (tmp_path / "images").mkdir()
    (tmp_path / "labels").mkdir()
    for index, frame in enumerate(clip_frames(3)):
        Image.fromarray(frame).save(tmp_path / "images" / f"f{index}.png")
        (tmp_path / "labels" / f"f{index}.txt").write_text("0 0.3 0.4 0.3 0.4\n1 0.6 0.5 0.5 0.6\n")
    args = ("annotate", tmp_path / "images", "--labels", tmp_path / "labels", *model_args(checkpoint))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as each Ray worker of one CPU runs: the same arithmetic, the same masks
    try:
        local = invoke_in_process(capsys, *args, "-o", tmp_path / "local")
    finally:
        torch.set_num_threads(threads)
    assert local.returncode == 0, local.stderr
    distributed = invoke_in_process(capsys, *args, "-o", tmp_path / "ray", "--ray", "--workers", "2")
    assert distributed.returncode == 0, distributed.stderr
    expected = _files(tmp_path / "local")
    assert len(expected) == 11  # 3 images (hard links), 3 label files, 3 records, data.yaml, the COCO file
    assert _files(tmp_path / "ray") == expected

    # Interrupted after the first image: the rerun does the other two and ends with the same files.
    for name in ("f1", "f2"):
        (tmp_path / "ray" / ".parts" / f"{name}.json").unlink()
        (tmp_path / "ray" / "labels" / f"{name}.txt").unlink()
    (tmp_path / "ray" / "annotations.json").unlink()
    resumed = invoke_in_process(capsys, *args, "-o", tmp_path / "ray", "--ray", "--workers", "2")
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming: 1 of 3 images already done" in resumed.stdout and "f0.png" not in resumed.stdout
    assert _files(tmp_path / "ray") == expected


@pytest.mark.parametrize(
    ("given", "resolved", "worker"), [(None, "cpu", "cpu"), ("cuda:1", "cuda:1", "cuda"), (None, "cuda", "cuda")]
)
def test_workers_load_on_the_device_the_driver_resolved(checkpoint, monkeypatch, given, resolved, worker):
    """Without --device, workers take the driver's default (and reserve a GPU when it is CUDA); a CUDA
    index becomes plain "cuda": a worker sees only the GPU Ray assigned it."""
    from sam2rt.cli import annotate as annotate_cli
    from sam2rt.cli import model_choice

    asked = []
    monkeypatch.setattr(model_choice, "parse_device", lambda name: asked.append(name) or torch.device(resolved))
    spec = annotate_cli._model_spec(model_choice.ModelChoice(checkpoint, None, 64, given, True, False))
    assert asked == [given] and spec.device == worker and spec.variant == "sam2.1_hiera_tiny"

"""`sam2rt annotate --ray` on a local Ray cluster started here: the same files as one process; resuming."""

from __future__ import annotations

import json
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


def _single_process_run(capsys, *args):
    """`sam2rt annotate` in this process on one thread, as each Ray worker of one CPU runs: the same arithmetic,
    the same masks."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return invoke_in_process(capsys, *args)
    finally:
        torch.set_num_threads(threads)


def test_ray_writes_the_files_of_a_single_process_run_and_resumes(tmp_path, checkpoint, cluster, capsys):
    (tmp_path / "images").mkdir()
    (tmp_path / "labels").mkdir()
    for index, frame in enumerate(clip_frames(3)):
        Image.fromarray(frame).save(tmp_path / "images" / f"f{index}.png")
        (tmp_path / "labels" / f"f{index}.txt").write_text("0 0.3 0.4 0.3 0.4\n1 0.6 0.5 0.5 0.6\n")
    args = ("annotate", tmp_path / "images", "--labels", tmp_path / "labels", *model_args(checkpoint))
    local = _single_process_run(capsys, *args, "-o", tmp_path / "local")
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


def test_ray_keeps_coco_file_names_in_subfolders(tmp_path, checkpoint, cluster, capsys):
    """Two images of one name in two subfolders: each its own outputs, named as the input names them."""
    names = ["train/a/0001.png", "train/b/0001.png"]
    for name, frame in zip(names, clip_frames(2)):
        (tmp_path / "images" / name).parent.mkdir(parents=True)
        Image.fromarray(frame).save(tmp_path / "images" / name)
    images = [{"id": index + 1, "file_name": name} for index, name in enumerate(names)]
    boxes = [{"id": i, "image_id": i, "category_id": 1, "bbox": [40, 30, 50, 40]} for i in (1, 2)]
    detections = {"images": images, "annotations": boxes, "categories": [{"id": 1, "name": "square"}]}
    (tmp_path / "dets.json").write_text(json.dumps(detections))
    args = ("annotate", tmp_path / "images", "--coco", tmp_path / "dets.json", *model_args(checkpoint))
    local = _single_process_run(capsys, *args, "-o", tmp_path / "local")
    assert local.returncode == 0, local.stderr
    distributed = invoke_in_process(capsys, *args, "-o", tmp_path / "ray", "--ray", "--workers", "1")
    assert distributed.returncode == 0, distributed.stderr
    assert sorted(line for line in distributed.stdout.splitlines() if line.endswith(" masks")) == [
        f"{name}: 1 masks" for name in names
    ]  # the relative names, not the shared "0001.png"
    files = _files(tmp_path / "ray")
    assert files == _files(tmp_path / "local")
    for name in names:
        stem = name.removesuffix(".png")
        assert f"labels/{stem}.txt" in files and f".parts/{stem}.json" in files and f"images/{name}" in files
    coco = json.loads(files["annotations.json"])
    assert [image["file_name"] for image in coco["images"]] == names


def test_rows_carry_the_items_relative_name():
    from sam2rt.annotate.images import Detection, Item
    from sam2rt.annotate.ray import item_of_row, row_of_item

    items = [
        Item(
            Path("/data/images/train/a/0001.jpg"),
            detections=[Detection(2, (1.0, 2.0, 3.5, 4.0))],
            file_name="train/a/0001.jpg",
        ),
        Item(Path("/data/images/f0.png"), Path("/data/labels/f0.txt")),
    ]
    rebuilt = [item_of_row(**row_of_item(item)) for item in items]

    def fields(item: Item) -> tuple:
        return item.image, item.label_file, item.detections, item.relative_name

    assert [fields(item) for item in rebuilt] == [fields(item) for item in items]
    assert [item.relative_name for item in rebuilt] == ["train/a/0001.jpg", "f0.png"]
    assert [item.name for item in rebuilt] == ["train/a/0001", "f0"]


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

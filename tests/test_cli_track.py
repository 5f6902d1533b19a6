"""`sam2rt track` end to end, through the real command: every output read back and checked against the API."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from cli_support import (
    CLIP_RATE,
    CLIP_SIZE,
    IMAGE_SIZE,
    VARIANT,
    decode_video,
    invoke_in_process,
    model_args,
    polygon_expressible,
    run_sam2rt,
    write_clip,
)
from media import shared_path
from PIL import Image
from pycocotools import mask as mask_utils

import sam2rt
from sam2rt.io.sources import open_frames
from sam2rt.tracking.pooled_stream import PooledStream
from sam2rt.tracking.run import RunSummary

NUM_FRAMES = 6


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    return write_clip(tmp_path_factory.mktemp("clip") / "clip.mp4", NUM_FRAMES)


def _api_masks(checkpoint: Path, clip: Path, prompts: list[tuple[int, int, dict]]) -> list[dict[int, np.ndarray]]:
    """Per frame, object id -> mask logits (H, W), from the Python API given the same prompts."""
    model = sam2rt.load_model(VARIANT, checkpoint, device="cpu", image_size=IMAGE_SIZE)
    tracker = sam2rt.StreamTracker(model)
    frames = open_frames(clip)
    results = []
    for index in range(len(frames)):
        result = tracker.step(frames[index])
        for frame, obj_id, prompt in prompts:
            if frame == index:
                result = tracker.add_prompt(obj_id, **prompt)
        results.append({obj_id: logits.numpy() for obj_id, logits in zip(result.object_ids, result.mask_logits)})
    return results


def _label_map(logits: dict[int, np.ndarray]) -> np.ndarray:
    """The object id per pixel the PNGs should hold: the highest logit among positive ones."""
    if not logits:
        return np.zeros(CLIP_SIZE, dtype=np.int64)
    ids = np.array(list(logits))
    stacked = np.stack(list(logits.values()))  # (N, H, W)
    return np.where((stacked > 0).any(0), ids[stacked.argmax(0)], 0)


def _rasterise(polygons: list[np.ndarray], size: tuple[int, int]) -> np.ndarray:
    canvas = np.zeros(size, dtype=np.uint8)
    cv2.fillPoly(canvas, [np.round(p).astype(np.int32) for p in polygons], 1)
    return canvas.astype(bool)


def _yolo_polygons(path: Path, size: tuple[int, int]) -> dict[int, list[np.ndarray]]:
    """Object id -> its polygons in pixels, from a YOLO segmentation label file."""
    height, width = size
    polygons: dict[int, list[np.ndarray]] = {}
    for line in path.read_text().splitlines():
        values = line.split()
        coords = np.asarray(values[1:], dtype=np.float64).reshape(-1, 2) * [width, height]  # (P, 2) pixels
        assert (coords >= 0).all() and (coords <= [width, height]).all()
        polygons.setdefault(int(values[0]), []).append(coords)
    return polygons


def test_track_writes_every_output_and_they_match_the_api(tmp_path, checkpoint, clip):
    prompts_file = tmp_path / "prompts.json"
    prompts_file.write_text(
        json.dumps(
            [
                {"frame": 0, "obj_id": 1, "points": [[28, 50], [130, 100]], "labels": [1, 0]},
                {"frame": 2, "obj_id": 2, "box": [95, 75, 145, 115]},
            ]
        )
    )
    out = tmp_path / "out"
    result = run_sam2rt(
        "track", clip, "--prompts", prompts_file, "--point", "60,40", "--frame", "3", "--obj", "3",
        *model_args(checkpoint),
        "--overlay", out / "overlay.mp4", "--png-dir", out / "png", "--coco", out / "masks.json",
        "--yolo-dir", out / "yolo",
        env={"SAM2RT_CACHE": str(tmp_path / "empty-cache")},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert f"tracked {NUM_FRAMES} frames, 0 dropped, 3 objects" in result.stdout
    expected = _api_masks(
        checkpoint,
        clip,
        [
            (0, 1, {"points": [[28, 50], [130, 100]], "labels": [1, 0]}),
            (2, 2, {"box": [95, 75, 145, 115]}),
            (3, 3, {"points": [[60, 40]], "labels": [1]}),
        ],
    )
    assert [sorted(frame) for frame in expected] == [[1]] * 2 + [[1, 2]] + [[1, 2, 3]] * 3
    names = [f"{index:05d}" for index in range(NUM_FRAMES)]

    # Overlay: H.264 with the source's frame count, size and rate.
    assert decode_video(out / "overlay.mp4") == (NUM_FRAMES, CLIP_SIZE, CLIP_RATE)

    # PNG: DAVIS layout, pixel value = object id.
    assert sorted(p.name for p in (out / "png").iterdir()) == [f"{name}.png" for name in names]
    for name, logits in zip(names, expected):
        with Image.open(out / "png" / f"{name}.png") as png:
            assert png.mode == "P"
            np.testing.assert_array_equal(np.asarray(png), _label_map(logits))
    # Random weights give masks that cover most of the frame, so which object wins a pixel turns on
    # tiny logit differences that vary between CPUs: every id must win somewhere in the clip, not on a given frame.
    labels = set()
    for name in names:
        with Image.open(out / "png" / f"{name}.png") as png:
            labels |= set(np.unique(np.asarray(png)).tolist())
    assert labels == {0, 1, 2, 3}

    # COCO: the RLEs decode to the API's masks; an object is annotated exactly on the frames where it is visible.
    coco = json.loads((out / "masks.json").read_text())
    # Ids from 1; each entry says which frame of which video it is (the frames exist as no file of their own).
    assert [image["id"] for image in coco["images"]] == list(range(1, NUM_FRAMES + 1))
    assert [image["frame_index"] for image in coco["images"]] == list(range(NUM_FRAMES))
    assert {image["video"] for image in coco["images"]} == {str(clip)}
    assert [image["file_name"] for image in coco["images"]] == [f"{name}.jpg" for name in names]
    assert all((image["height"], image["width"]) == CLIP_SIZE for image in coco["images"])
    annotated = set()
    for annotation in coco["annotations"]:
        frame, obj_id = annotation["image_id"] - 1, annotation["object_id"]
        annotated.add((frame, obj_id))
        mask = mask_utils.decode(annotation["segmentation"]).astype(bool)
        np.testing.assert_array_equal(mask, expected[frame][obj_id] > 0)
        assert annotation["area"] == mask.sum()
        assert annotation["bbox"] == pytest.approx(mask_utils.toBbox(annotation["segmentation"]).tolist())
        assert 0 <= annotation["score"] <= 1
    visible = {(f, obj) for f, frame in enumerate(expected) for obj, logits in frame.items() if (logits > 0).any()}
    assert annotated == visible and len(visible) >= 12

    # YOLO: the polygons fill back to the masks, less the specks no polygon can hold.
    assert sorted(p.name for p in (out / "yolo").iterdir()) == [f"{name}.txt" for name in names]
    for name, logits in zip(names, expected):
        polygons = _yolo_polygons(out / "yolo" / f"{name}.txt", CLIP_SIZE)
        for obj_id, object_logits in logits.items():
            expressible = polygon_expressible(object_logits > 0)
            if expressible.sum() < 50:  # a hole's cut to its outline fills a few pixels: too many for a tiny mask
                continue
            filled = _rasterise(polygons[obj_id], CLIP_SIZE)
            iou = (filled & expressible).sum() / (filled | expressible).sum()
            assert iou > 0.9, f"frame {name} object {obj_id}: polygons fill to IoU {iou:.3f}"


def _track_with_lookahead(capsys, checkpoint: Path, clip: Path, lookahead: int, png_dir: Path):
    """`sam2rt track CLIP --point 28,50 --lookahead K --png-dir DIR`, in this process."""
    args = ("track", clip, "--point", "28,50", "--lookahead", lookahead, "--png-dir", png_dir)
    return invoke_in_process(capsys, *args, *model_args(checkpoint))


def test_lookahead_encodes_the_clip_in_groups_and_writes_what_one_by_one_writes(
    tmp_path, checkpoint, clip, capsys, monkeypatch
):
    groups: list[int] = []
    encode_ahead = PooledStream.encode_ahead

    def recording(self, frames, skip_refused=False):
        groups.append(len(frames))
        return encode_ahead(self, frames, skip_refused)

    monkeypatch.setattr(PooledStream, "encode_ahead", recording)
    labels = {}
    for lookahead in (1, 3):
        out = tmp_path / f"ahead{lookahead}"
        result = _track_with_lookahead(capsys, checkpoint, clip, lookahead, out)
        assert result.returncode == 0, result.stderr
        labels[lookahead] = [np.asarray(Image.open(out / f"{index:05d}.png")) for index in range(NUM_FRAMES)]
    assert groups == [3] * (NUM_FRAMES // 3)  # lookahead 1 encodes nothing ahead
    for ahead, alone in zip(labels[3], labels[1]):
        assert alone.any()
        # a batch may sum in another order than one frame: a logit within float noise of 0 may flip a pixel
        assert (ahead != alone).mean() < 1e-3


def test_lookahead_must_be_positive(tmp_path, checkpoint, clip, capsys):
    result = _track_with_lookahead(capsys, checkpoint, clip, 0, tmp_path / "png")
    assert result.returncode == 2 and "--lookahead" in result.stderr
    assert not (tmp_path / "png").exists()


def test_console_script_and_python_dash_m(tmp_path):
    """`pip install` puts a `sam2rt` script beside the interpreter; `python -m sam2rt` is the same command."""
    script = Path(sys.executable).with_name("sam2rt")
    if not script.exists():
        pytest.skip(f"{script} is not installed (pip install -e .)")
    env = dict(os.environ, SAM2RT_CACHE=str(tmp_path))
    result = subprocess.run([str(script), "models"], capture_output=True, text=True, timeout=120, env=env)
    assert result.returncode == 0, result.stderr
    assert f"cache: {tmp_path}" in result.stdout and len(result.stdout.splitlines()) == 2 + len(sam2rt.VARIANTS)
    assert run_sam2rt("models", env={"SAM2RT_CACHE": str(tmp_path)}).stdout == result.stdout


REAL_SOURCES = ["bedroom.mp4", "01_dog.mp4", "02_cups.mp4", "04_coffee.mp4", "06_pingpong.mp4", "08_driving.mp4",
                "21_biker.mp4", "bedroom"]  # fmt: skip


@pytest.mark.parametrize("name", REAL_SOURCES)
def test_real_clips(tmp_path, checkpoint, name):
    source = shared_path(f"videos/{name}")
    frames = open_frames(source)
    height, width = frames.size
    result = run_sam2rt(
        "track", source, "--point", f"{width // 2},{height // 2}", *model_args(checkpoint), "--max-frames", "2",
        "--overlay", tmp_path / "overlay.mp4", "--png-dir", tmp_path / "png", "--coco", tmp_path / "masks.json",
        "--yolo-dir", tmp_path / "yolo",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    count, size, rate = decode_video(tmp_path / "overlay.mp4")
    assert (count, size) == (2, (height, width))
    if frames.fps is not None:
        assert float(rate) == pytest.approx(frames.fps, rel=1e-3)
    pngs = sorted((tmp_path / "png").iterdir())
    assert len(pngs) == 2 and len(list((tmp_path / "yolo").iterdir())) == 2
    for png in pngs:
        with Image.open(png) as image:
            assert image.size == (width, height) and set(np.unique(np.asarray(image))) <= {0, 1}
    coco = json.loads((tmp_path / "masks.json").read_text())
    assert len(coco["images"]) == 2
    assert all(annotation["object_id"] == 1 for annotation in coco["annotations"])
    assert coco["annotations"], "random weights with objects judged present give non-empty masks"


@pytest.mark.parametrize(
    "frames, objects, expected",
    [(1, 1, "tracked 1 frame, 0 dropped, 1 object, "), (3, 2, "tracked 3 frames, 0 dropped, 2 objects, ")],
)
def test_the_summary_counts_in_words(frames, objects, expected):
    summary = RunSummary(frames, 0, objects, 1.0, [], None)
    assert summary.describe().startswith(expected)

"""`sam2rt eval --model` and run_vos_inference on a tiny VOS folder made here (2 short videos), tiny at 256.

- Against Meta's tools/vos_inference.py driving the official predictor with the same weights on the
  same input tensors: the same PNG files, palettes and labels.
- Through the command: the PNGs it writes are the VideoPredictor's masks (composed with the official
  put_per_obj_mask), and its scores are evaluate_folders' on them.
"""

from __future__ import annotations

import json
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
import torch
from cli_support import assert_clean_error, invoke_in_process
from oracle import oracle_model, our_model
from PIL import Image
from vos_data import import_reference, moving_objects, save_labels

import sam2rt
from sam2rt.evaluate import evaluate_folders, read_labels, run_vos_inference
from sam2rt.io.sources import ImageFolderFrames
from sam2rt.processing.images import as_rgb_tensor
from sam2rt.processing.preprocess import model_input

VARIANT = "sam2.1_hiera_tiny"
IMAGE_SIZE = 256
VIDEOS = {"alpha": ((72, 96), 3, 2), "beta": ((64, 88), 2, 2)}  # name: (height, width), frames, objects
OWN_PALETTE = [value for i in range(256) for value in ((37 * i) % 256, (91 * i) % 256, (13 * i) % 256)]


@pytest.fixture(scope="module")
def vos_root(tmp_path_factory) -> Path:
    """JPEGImages/<video>/<frame>.jpg and Annotations/<video>/<frame>.png: greyscale PNGs for alpha (predictions
    get DAVIS's palette), indexed ones with a palette of their own for beta (predictions get it too)."""
    root = tmp_path_factory.mktemp("vos")
    rng = np.random.default_rng(0)
    colours = rng.integers(60, 255, (4, 3))
    for seed, (name, (size, frames, objects)) in enumerate(VIDEOS.items()):
        background = rng.integers(0, 60, (*size, 3))
        for t, labels in enumerate(moving_objects(size, frames, objects, seed=10 + seed)):
            image = np.where(labels[..., None] > 0, colours[labels], background).astype(np.uint8)
            (root / "JPEGImages" / name).mkdir(parents=True, exist_ok=True)
            Image.fromarray(image).save(root / "JPEGImages" / name / f"{t:05d}.jpg", quality=95)
            path = root / "Annotations" / name / f"{t:05d}.png"
            if name == "beta":
                save_labels(path, labels, OWN_PALETTE)
            else:
                path.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(labels, mode="L").save(path)
    return root


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("checkpoint") / "tiny.pt"
    torch.save({"model": our_model(VARIANT, IMAGE_SIZE).state_dict()}, path)
    return path


@pytest.fixture(scope="module")
def vos_tool():
    return import_reference("tools/vos_inference.py", "vos_inference_tool")


def _png_folder(folder: Path) -> dict[str, tuple[np.ndarray, list]]:
    """file name -> (labels, palette) of every PNG in a folder."""
    out = {}
    for path in sorted(folder.glob("*.png")):
        with Image.open(path) as image:
            out[path.name] = (read_labels(path), image.getpalette())
    return out


def _official_frames_loader(video_path: str, image_size: int, **_):
    """The official loader's output, preprocessed as sam2rt's VideoPredictor does (Meta's PIL resize): the comparison is of the models."""
    frames = ImageFolderFrames(video_path)
    images = torch.cat(
        [
            model_input(as_rgb_tensor(frames[i]), image_size, "pil-bicubic", torch.device("cpu"))
            for i in range(len(frames))
        ]
    )
    return images, *frames.size


def test_vos_inference_equals_meta_vos_inference(vos_root, vos_tool, tmp_path):
    """Hole filling is off on both sides (the official one needs its CUDA extension); memories in bf16 on both."""
    ours = sam2rt.VideoPredictor(
        our_model(VARIANT, IMAGE_SIZE), fill_hole_area=0, non_overlap_masks=True, memory_dtype=torch.bfloat16
    )
    assert run_vos_inference(ours, vos_root / "JPEGImages", vos_root, tmp_path / "ours") == list(VIDEOS)

    official = oracle_model(VARIANT, IMAGE_SIZE, video=True, fill_hole_area=0, non_overlap_masks=True)
    with mock.patch("sam2.sam2_video_predictor.load_video_frames", _official_frames_loader):
        for name in VIDEOS:
            vos_tool.vos_inference(
                official,
                base_video_dir=str(vos_root / "JPEGImages"),
                input_mask_dir=str(vos_root / "Annotations"),
                output_mask_dir=str(tmp_path / "theirs"),
                video_name=name,
            )
    for name, (_, frames, _) in VIDEOS.items():
        mine, theirs = _png_folder(tmp_path / "ours" / name), _png_folder(tmp_path / "theirs" / name)
        assert list(mine) == list(theirs) == [f"{t:05d}.png" for t in range(frames)], name
        for file in mine:
            (labels, palette), (ref_labels, ref_palette) = mine[file], theirs[file]
            assert palette == ref_palette, (name, file)
            # logits agree to 1e-4, so a pixel may flip only where a logit is that close to 0
            assert (labels != ref_labels).mean() <= 1e-3, (name, file)
        assert all(labels.max() > 0 for labels, _ in mine.values()), f"{name}: nothing tracked, nothing compared"
        assert mine[file][1][:768] == (OWN_PALETTE if name == "beta" else list(vos_tool.DAVIS_PALETTE)), name


def _predictor_labels(predictor: sam2rt.VideoPredictor, vos_root: Path, vos_tool, name: str) -> list[np.ndarray]:
    """Each frame's labels from the VideoPredictor run here, composed with the official put_per_obj_mask."""
    state = predictor.init_state(str(vos_root / "JPEGImages" / name))
    first = read_labels(vos_root / "Annotations" / name / "00000.png").astype(np.uint8)
    for obj_id in np.unique(first)[1:]:
        predictor.add_new_mask(state, 0, int(obj_id), first == obj_id)
    height, width = first.shape
    return [
        vos_tool.put_per_obj_mask({i: (logits[k] > 0).numpy() for k, i in enumerate(ids)}, height, width)
        for _, ids, logits in predictor.propagate_in_video(state)
    ]


def test_eval_model_writes_the_predictors_masks_and_scores_them(vos_root, checkpoint, vos_tool, tmp_path, capsys):
    pred, out = tmp_path / "pred", tmp_path / "scores.json"
    args = ["--checkpoint", checkpoint, "--image-size", IMAGE_SIZE, "--device", "cpu"]
    done = invoke_in_process(capsys, "eval", vos_root, pred, "--model", "--json", out, "--all-frames", *args)
    assert done.returncode == 0, done.stderr
    assert f"wrote the predicted masks to {pred}" in done.stdout

    model = sam2rt.load_model(VARIANT, checkpoint, device="cpu", image_size=IMAGE_SIZE)
    predictor = sam2rt.VideoPredictor(model, non_overlap_masks=True)  # the official VOS settings
    for name in VIDEOS:
        written = _png_folder(pred / name)
        expected = _predictor_labels(predictor, vos_root, vos_tool, name)
        assert len(written) == len(expected)
        for (labels, _), reference in zip(written.values(), expected):
            assert np.array_equal(labels, reference), name
        assert written["00000.png"][0].max() > 0

    scores = json.loads(out.read_text())
    result = evaluate_folders(vos_root, pred, all_frames=True)
    assert (scores["J&F"], scores["J"], scores["F"]) == (result.scores.jf, result.scores.j, result.scores.f)
    assert scores["videos"]["beta"]["objects"].keys() == {"1", "2"}
    assert 0 < scores["J"] < 100  # random weights: partly right, the first frame aside


def test_eval_model_errors(vos_root, checkpoint, tmp_path, capsys):
    args = ["--model", "--checkpoint", checkpoint, "--image-size", IMAGE_SIZE, "--device", "cpu"]
    annotations = vos_root / "Annotations"
    assert_clean_error(
        invoke_in_process(capsys, "eval", tmp_path / "nope", *args), f"no such folder: {tmp_path / 'nope'}"
    )
    done = invoke_in_process(capsys, "eval", annotations, *args)
    assert_clean_error(done, f"{annotations} has no JPEGImages folder: give the frames' folder with --frames-dir")

    frames = tmp_path / "frames"
    (frames / "alpha").mkdir(parents=True)
    done = invoke_in_process(capsys, "eval", annotations, "--frames-dir", frames, *args)
    assert_clean_error(done, f"no JPEG frames in {frames / 'alpha'}")
    (frames / "alpha" / "00000.jpg").write_bytes((vos_root / "JPEGImages" / "alpha" / "00000.jpg").read_bytes())
    done = invoke_in_process(capsys, "eval", annotations, "--frames-dir", frames, *args)
    assert_clean_error(done, f"no frames for this video: {frames / 'beta'} is not a folder")

    gt = tmp_path / "gt"
    for t in (1, 2):  # the first frame's annotation is missing
        save_labels(gt / "alpha" / f"{t:05d}.png", np.ones((96, 128), np.uint8))
    done = invoke_in_process(capsys, "eval", gt, "--frames-dir", vos_root / "JPEGImages", *args)
    assert_clean_error(done, f"the first frame's ground truth {gt / 'alpha' / '00000.png'} is missing")

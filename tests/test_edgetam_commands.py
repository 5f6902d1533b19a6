"""`--variant edgetam` through the commands a user runs (image, everything, track, annotate, eval, train; serve and
export in their own test files), each in this process with the tests' torchvision stand-in (timm imports it)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from cli_support import EDGETAM_SIZE, clip_frames, invoke_in_process, make_checkpoint, model_args, write_clip
from PIL import Image
from visible import assert_nontrivial

import sam2rt
from sam2rt.train import OptimSettings, make_optimizer, make_synthetic_vos
from sam2rt.train.optim import trunk_layers

VARIANT = "edgetam"


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return make_checkpoint(tmp_path_factory.mktemp("edgetam") / "edgetam.pt", VARIANT)


@pytest.fixture(scope="module")
def vos_root(tmp_path_factory) -> Path:
    """JPEGImages/ and Annotations/ of two short synthetic videos."""
    background = np.random.default_rng(0).integers(0, 255, size=(80, 96, 3), dtype=np.uint8)
    return make_synthetic_vos(tmp_path_factory.mktemp("vos"), [background], 2, num_frames=3, size=64, seed=0)


def _run(capsys, *args):
    done = invoke_in_process(capsys, *args)
    assert done.returncode == 0, done.stderr
    return done


def test_image_everything_and_track(checkpoint, tmp_path, capsys):
    frame = tmp_path / "frame.png"
    Image.fromarray(clip_frames(1)[0]).save(frame)
    _run(capsys, "image", frame, "-p", "50,40", "-o", tmp_path / "mask.png", *model_args(checkpoint, VARIANT))
    assert_nontrivial(np.array(Image.open(tmp_path / "mask.png")) > 0, "image mask")

    _run(capsys, "image", frame, "--everything", "-o", tmp_path / "all.json", *model_args(checkpoint, VARIANT))
    coco = json.loads((tmp_path / "all.json").read_text())
    assert [image["file_name"] for image in coco["images"]] == ["frame.png"]

    clip = write_clip(tmp_path / "clip.mp4", 5)
    args = ("track", clip, "-p", "50,40", "--png-dir", tmp_path / "masks", *model_args(checkpoint, VARIANT))
    assert "tracked 5 frames" in _run(capsys, *args).stdout
    masks = [np.array(Image.open(path)) > 0 for path in sorted((tmp_path / "masks").glob("*.png"))]
    assert len(masks) == 5
    assert_nontrivial(np.stack(masks), "tracked masks")


def test_annotate_boxes_into_masks(checkpoint, tmp_path, capsys):
    (tmp_path / "images").mkdir()
    (tmp_path / "labels").mkdir()
    Image.fromarray(clip_frames(1)[0]).save(tmp_path / "images" / "f0.png")
    (tmp_path / "labels" / "f0.txt").write_text("0 0.3 0.4 0.3 0.4\n")
    args = ("annotate", tmp_path / "images", "--labels", tmp_path / "labels", "-o", tmp_path / "out")
    _run(capsys, *args, *model_args(checkpoint, VARIANT))
    coco = json.loads((tmp_path / "out" / "annotations.json").read_text())
    assert [annotation["category_id"] for annotation in coco["annotations"]] == [1]
    assert coco["annotations"][0]["area"] > 0


def test_eval_with_the_model(checkpoint, vos_root, tmp_path, capsys):
    scores = tmp_path / "scores.json"
    args = ("eval", vos_root, tmp_path / "pred", "--model", "--json", scores, *model_args(checkpoint, VARIANT))
    _run(capsys, *args)
    assert 0 <= json.loads(scores.read_text())["J&F"] <= 100
    assert len(list((tmp_path / "pred").rglob("*.png"))) >= 2


def test_train_keeps_batch_norm_statistics_and_decays_the_trunk_by_block(checkpoint, vos_root, tmp_path, capsys):
    args = ["train", vos_root, "--out", tmp_path / "run", "--frames", 2, "--steps", 2, "--precision", "fp32"]
    args += ["--no-progress", "--max-objects", 1, "--lr", 1e-3, "--activation-checkpointing"]
    _run(capsys, *args, *model_args(checkpoint, VARIANT))
    before = torch.load(checkpoint, weights_only=True)["model"]
    after = torch.load(tmp_path / "run" / "model.pt", weights_only=True)["model"]
    assert after.keys() == before.keys()  # the official checkpoint's keys: it loads as it came
    statistics = [key for key in before if key.endswith(("running_mean", "running_var"))]
    assert statistics and all(torch.equal(after[key], before[key]) for key in statistics)
    scales = [key for key in before if key.startswith("image_encoder.trunk.") and key.endswith("bn.weight")]
    assert any(not torch.equal(after[key], before[key]) for key in scales), "the trunk's BatchNorm scales train"

    model = sam2rt.build_model(VARIANT, image_size=EDGETAM_SIZE)
    layers, num_blocks = trunk_layers(model)
    assert num_blocks == 23  # RepViT m1: 2 + 2 + 14 + 2 blocks and 3 downsamplings, after the stem
    groups = make_optimizer(model, OptimSettings(vision_lr=1.0, layer_decay=0.5)).param_groups
    rate = {id(param): group["peak_lr"] for group in groups for param in group["params"]}
    named = dict(model.named_parameters())
    stem = next(name for name in named if name.startswith("image_encoder.trunk.body.stem."))
    last = next(name for name in named if name.startswith("image_encoder.trunk.body.stages_3.blocks.1."))
    assert (layers[stem], layers[last]) == (0, num_blocks)
    assert rate[id(named[stem])] == 0.5 ** (num_blocks + 1) and rate[id(named[last])] == 0.5
    assert rate[id(named["image_encoder.neck.convs.0.conv.weight"])] == 1.0

"""`sam2rt train` and the training API end to end: datasets, checkpoints, resume, logs, freezing, options."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from cli_support import VARIANT, assert_clean_error, invoke_in_process, make_checkpoint
from PIL import Image

import sam2rt
from sam2rt.train import ImageMaskDataset, PromptSettings, TrainConfig, VOSDataset, collate, make_synthetic_vos, train

SIZE = 64  # the smallest input that keeps every stage of the trunk; the tests check plumbing, not quality


def _backgrounds() -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [rng.integers(0, 255, size=(80, 96, 3), dtype=np.uint8)]


@pytest.fixture(scope="module")
def vos_root(tmp_path_factory) -> Path:
    return make_synthetic_vos(tmp_path_factory.mktemp("vos"), _backgrounds(), 3, num_frames=3, size=SIZE, seed=0)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return make_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny.pt")


def _log_rows(path: Path) -> list[dict]:
    with path.open() as file:
        return list(csv.DictReader(file))


def test_train_vos_writes_official_checkpoint_log_and_resumes(capsys, vos_root, checkpoint, tmp_path) -> None:
    out = tmp_path / "run"
    args = ["train", vos_root, "--out", out, "--checkpoint", checkpoint, "--image-size", SIZE, "--device", "cpu"]
    args += ["--frames", 2, "--save-every", 1, "--log-every", 1, "--precision", "fp32", "--freeze", "image_encoder"]
    args += ["--lr", 1e-3, "--no-progress", "--max-objects", 1]
    result = invoke_in_process(capsys, *args, "--steps", 2)
    assert result.returncode == 0, result.stderr
    assert "trained 2 steps" in result.stdout

    saved = torch.load(out / "model.pt", weights_only=True)
    assert set(saved) == {"model"}
    initial = torch.load(checkpoint, weights_only=True)["model"]
    assert set(saved["model"]) == set(initial)
    trunk = "image_encoder.trunk.blocks.0.attn.qkv.weight"
    assert torch.equal(saved["model"][trunk], initial[trunk]), "a frozen part changed"
    head = "sam_mask_decoder.iou_prediction_head.layers.0.weight"
    assert not torch.equal(saved["model"][head], initial[head]), "the decoder did not train"
    rows = _log_rows(out / "log.csv")
    assert [int(r["step"]) for r in rows] == [1, 2]
    assert all(math.isfinite(float(r["loss"])) and float(r["loss"]) > 0 for r in rows)
    assert torch.load(out / "last.pt", weights_only=False)["step"] == 2

    # An interrupted run is resumed from last.pt: one more step, the log continues.
    resumed = invoke_in_process(capsys, *args, "--steps", 3)
    assert resumed.returncode == 0, resumed.stderr
    assert "trained 1 steps" in resumed.stdout
    assert [int(r["step"]) for r in _log_rows(out / "log.csv")] == [1, 2, 3]
    model = sam2rt.load_model(VARIANT, out / "model.pt", device="cpu", image_size=SIZE)  # sam2rt loads it strictly
    assert torch.equal(model.state_dict()[head], torch.load(out / "last.pt", weights_only=False)["model"][head])

    pytest.importorskip("sam2")
    from oracle import config_path
    from sam2.build_sam import build_sam2

    reference = build_sam2(config_path(VARIANT), str(out / "model.pt"), device="cpu")  # Meta's strict loading
    assert torch.equal(reference.state_dict()[head], model.state_dict()[head])


def _write_image_dataset(root: Path) -> tuple[np.ndarray, dict]:
    """images/a.png with masks/a.png (ids 1 and 2), and the same objects as a COCO JSON (a polygon and an RLE)."""
    from pycocotools import mask as mask_utils

    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    image = np.random.default_rng(1).integers(0, 255, size=(48, 64, 3), dtype=np.uint8)
    Image.fromarray(image).save(root / "images" / "a.png")
    ids = np.zeros((48, 64), dtype=np.uint8)
    ids[8:24, 10:30] = 1
    ids[30:44, 40:60] = 2
    Image.fromarray(ids).save(root / "masks" / "a.png")
    rle = mask_utils.encode(np.asfortranarray(ids == 2))
    rle["counts"] = rle["counts"].decode()
    coco = {
        "images": [{"id": 1, "file_name": "images/a.png", "height": 48, "width": 64}],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 1, "iscrowd": 0, "segmentation": [[10, 8, 30, 8, 30, 24, 10, 24]]},
            {"id": 2, "image_id": 1, "category_id": 1, "iscrowd": 0, "segmentation": rle},
        ],
        "categories": [{"id": 1, "name": "thing"}],
    }
    (root / "coco.json").write_text(json.dumps(coco))
    return ids, coco


def test_image_datasets_and_an_image_training_step(tmp_path) -> None:
    import random

    from sam2rt.train.datasets import _resize_masks

    ids, _ = _write_image_dataset(tmp_path)
    resized = _resize_masks(np.stack([ids == 1, ids == 2]), 64)  # (2, 64, 64)
    expected = [{m.numpy().tobytes() for m in masks} for masks in (resized, resized.flip(-1))]
    for dataset in (ImageMaskDataset(tmp_path, 5), ImageMaskDataset(tmp_path, 5, coco_json=tmp_path / "coco.json")):
        sample = dataset.sample(random.Random(0), 64)
        assert sample.frames.shape == (1, 3, 64, 64) and sample.masks.shape == (1, 2, 64, 64)
        found = {m.numpy().tobytes() for m in sample.masks[0]}
        assert found in expected, "the masks are not the annotated objects"
    batch = collate([ImageMaskDataset(tmp_path, 5).sample(random.Random(s), 64) for s in range(2)])
    assert batch.image_index.tolist() == [[0, 0, 1, 1]]

    model = sam2rt.build_model(VARIANT, image_size=SIZE)
    before = model.sam_mask_decoder.iou_prediction_head.layers[0].weight.detach().clone()
    config = TrainConfig(
        out_dir=tmp_path / "run",
        steps=1,
        precision="fp32",
        progress=False,
        batch_size=2,
        prompts=PromptSettings(clicks_per_frame=1),
    )
    result = train(model, ImageMaskDataset(tmp_path, 2), config)
    assert math.isfinite(result.final_loss) and result.final_loss > 0
    assert not torch.equal(before, model.sam_mask_decoder.iou_prediction_head.layers[0].weight)


def test_activation_checkpointing_gives_the_same_gradients(vos_root) -> None:
    import random

    from sam2rt.train import clip_forward, clip_loss, enable_activation_checkpointing, plan_clip
    from sam2rt.train.loss import LossWeights

    batch = collate([VOSDataset(vos_root, 2, 1).sample(random.Random(0), SIZE)])
    grads = []
    for checkpointed in (False, True):
        torch.manual_seed(0)
        model = sam2rt.build_model(VARIANT, image_size=SIZE).train()
        if checkpointed:
            enable_activation_checkpointing(model)
        plan = plan_clip(PromptSettings(prob_points=1.0), 2, np.random.default_rng(0))
        torch.manual_seed(1)
        outputs = clip_forward(model, batch, plan, 1, True)
        clip_loss(outputs, batch.masks, LossWeights(), float(batch.num_objects)).total.backward()
        grads.append({n: p.grad for n, p in model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys()
    for name, grad in grads[0].items():
        torch.testing.assert_close(grads[1][name], grad, rtol=1e-4, atol=1e-6, msg=name)


def test_train_errors_are_one_line(capsys, vos_root, checkpoint, tmp_path) -> None:
    common = ["--out", tmp_path / "run", "--checkpoint", checkpoint, "--image-size", SIZE, "--device", "cpu"]
    common += ["--frames", 2]
    result = invoke_in_process(capsys, "train", tmp_path, *common)
    assert_clean_error(result, "is neither a VOS dataset")
    result = invoke_in_process(capsys, "train", vos_root, *common, "--freeze", "everything")
    assert_clean_error(result, "cannot freeze 'everything'")
    result = invoke_in_process(capsys, "train", vos_root, *common, "--frames", 9)  # the last --frames wins
    assert_clean_error(result, "no video with at least 9 annotated frames")
    result = invoke_in_process(capsys, "train", vos_root, *common, "--precision", "fp8")
    assert result.returncode == 2 and "Traceback" not in result.stderr

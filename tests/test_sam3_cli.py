"""`sam2rt image --text`: SAM 3's concept prompts from the command line.

With no SAM 3 checkpoint cached and no network, the user is told what to download and how (licence, token); a
SAM 2 checkpoint or variant with --text is refused with a clear error; and with a SAM 3 checkpoint in Meta's
format (a small one: the official sizes are patched to a test's, in this process) the command writes every
instance: a COCO file with a category per phrase, or a PNG of instance numbers, and an overlay, equal to
ConceptPredictor's answer.
"""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
from cli_support import assert_clean_error, invoke_in_process, make_checkpoint, run_sam2rt
from oracle_sam3 import SMALL_SPEC
from PIL import Image
from sam3_vocab import open_clip_bpe_path, write_clip_vocab

pytest.importorskip("huggingface_hub")
pytest.importorskip("tokenizers")


def _offline_env(tmp_path) -> dict:
    env = {key: value for key, value in os.environ.items() if not key.startswith("HF_")}
    env.update(HF_HOME=str(tmp_path / "empty-hf-home"), HF_HUB_OFFLINE="1")
    return env


@pytest.fixture
def image_file(tmp_path):
    path = tmp_path / "photo.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (60, 90, 3), dtype=np.uint8)).save(path)
    return path


def test_text_without_a_cached_checkpoint_says_what_to_download(tmp_path, image_file):
    done = run_sam2rt("image", image_file, "--text", "bottle", "--device", "cpu", env=_offline_env(tmp_path))
    assert_clean_error(done, "sam3.pt is not in the Hugging Face cache")
    error = done.stderr
    assert "https://huggingface.co/facebook/sam3" in error and "licence" in error
    assert "hf auth login" in error and "HF_TOKEN" in error and "--checkpoint" in error


def test_a_sam2_checkpoint_with_text_is_refused(tmp_path, image_file):
    checkpoint = make_checkpoint(tmp_path / "tiny.pt")
    done = run_sam2rt("image", image_file, "--text", "bottle", "--checkpoint", checkpoint, "--device", "cpu")
    assert_clean_error(done, "is a SAM 2 checkpoint (sam2.1_hiera_tiny); text prompts need SAM 3's")


def test_a_sam2_variant_with_text_is_a_usage_error(tmp_path, image_file):
    done = run_sam2rt("image", image_file, "--text", "bottle", "--variant", "sam2.1_hiera_tiny", "--device", "cpu")
    assert done.returncode == 2 and "--text needs SAM 3" in done.stderr


def test_text_usage_errors(tmp_path, image_file):
    for args, message in (
        (["--text", "car,,bus"], "comma-separated phrases"),
        (["--text", "car,car"], "given twice"),
        (["--text", "car", "--point", "3,4"], "--text takes no clicks"),
        (["--text", "car", "--score-threshold", "1.5"], "must be in [0, 1)"),
        (["--text", "car", "--cpu-bf16"], "SAM 3 runs fp32 on a CPU"),
    ):
        done = run_sam2rt("image", image_file, *args, "--device", "cpu", env=_offline_env(tmp_path))
        assert done.returncode == 2 and message in done.stderr, (args, done.stderr)


@pytest.fixture
def small_sam3(tmp_path, monkeypatch):
    """A small SAM 3 checkpoint in Meta's format (`detector.*` and a tracker key), CLIP's vocabulary beside it,
    and the command's SAM 3 sizes patched to its."""
    import sam2rt.checkpoints.sam3 as sam3_checkpoints
    from sam2rt.model.sam3.detector import Sam3Detector

    bpe = open_clip_bpe_path()
    if bpe is None:
        pytest.skip("the test's vocabulary is written from open_clip's BPE file: pip install --no-deps open_clip_torch")
    folder = tmp_path / "sam3"
    folder.mkdir()
    write_clip_vocab(bpe, folder)
    torch.manual_seed(0)
    detector = Sam3Detector(SMALL_SPEC, tracker_neck=True)
    generator = torch.Generator().manual_seed(1)
    weights = {
        f"detector.{k}": v + 0.05 * torch.randn(v.shape, generator=generator) for k, v in detector.state_dict().items()
    }
    weights["tracker.no_mem_embed"] = torch.zeros(1, 1, 256)  # the tracker's part, which the image command leaves
    torch.save({"model": weights}, folder / "sam3.pt")
    monkeypatch.setattr(sam3_checkpoints, "SAM3", SMALL_SPEC)
    return folder / "sam3.pt"


def test_text_writes_every_instance(capsys, tmp_path, image_file, small_sam3):
    from sam2rt.checkpoints.sam3 import load_sam3_detector, load_text_tokenizer
    from sam2rt.images.concepts import ConceptPredictor
    from sam2rt.io.rle import decode_rle

    coco, overlay, numbers = tmp_path / "found.json", tmp_path / "overlay.png", tmp_path / "numbers.png"
    predictor = ConceptPredictor(load_sam3_detector(small_sam3, "cpu"), load_text_tokenizer(beside=small_sam3), 0.0)
    rgb = np.asarray(Image.open(image_file).convert("RGB"))
    predictor.set_image(rgb)
    # random weights score every query alike: a threshold at the median keeps half
    threshold = f"{np.median(np.concatenate([f.scores for f in predictor.predict(['red car', 'person'])])):.4f}"
    predictor.score_threshold = float(threshold)
    expected = predictor.predict(["red car", "person"])
    assert 0 < sum(len(found) for found in expected) < 2 * SMALL_SPEC.queries  # some kept, some not

    args = ["image", image_file, "--text", "red car, person", "--checkpoint", small_sam3, "--device", "cpu"]
    done = invoke_in_process(capsys, *args, "--score-threshold", threshold, "-o", coco, "--overlay", overlay)
    assert done.returncode == 0, done.stderr
    assert "red car:" in done.stdout and "person:" in done.stdout

    written = json.loads(coco.read_text())
    assert [c["name"] for c in written["categories"]] == ["red car", "person"]
    for category, found in zip(written["categories"], expected):
        annotations = [a for a in written["annotations"] if a["category_id"] == category["id"]]
        assert len(annotations) == len(found)
        for annotation, mask, score in zip(annotations, found.masks, found.scores):
            assert np.array_equal(decode_rle(annotation["segmentation"]), mask)
            assert annotation["score"] == pytest.approx(float(score), abs=1e-6)
    drawn = np.asarray(Image.open(overlay))
    assert drawn.shape == rgb.shape and (drawn != rgb).any()

    done = invoke_in_process(capsys, *args, "--score-threshold", threshold, "-o", numbers)
    assert done.returncode == 0, done.stderr
    labels = np.asarray(Image.open(numbers))
    assert labels.shape == rgb.shape[:2] and labels.max() == sum(len(found) for found in expected)


def test_a_sam3_checkpoint_that_does_not_fit_is_named(capsys, tmp_path, image_file, small_sam3):
    weights = torch.load(small_sam3)["model"]
    del weights["detector.dot_prod_scoring.prompt_proj.weight"]
    broken = tmp_path / "broken.pt"
    torch.save({"model": weights}, broken)
    for name in ("vocab.json", "merges.txt"):
        (tmp_path / name).write_bytes((small_sam3.parent / name).read_bytes())
    done = invoke_in_process(capsys, "image", image_file, "--text", "car", "--checkpoint", broken, "--device", "cpu")
    assert done.returncode == 1
    assert "does not fit SAM 3's detector" in done.stderr and "missing" in done.stderr


def test_annotate_text_makes_a_dataset_named_by_the_phrases(capsys, tmp_path, small_sam3):
    images = tmp_path / "images"
    images.mkdir()
    rng = np.random.default_rng(3)
    for name in ("a.png", "b.jpg"):
        Image.fromarray(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)).save(images / name)
    output = tmp_path / "dataset"
    args = ["annotate", images, "--text", "red car,person", "-o", output, "--checkpoint", small_sam3, "--device", "cpu"]
    done = invoke_in_process(capsys, *args, "--score-threshold", "0.0")  # random weights: keep every instance
    assert done.returncode == 0, done.stderr
    written = json.loads((output / "annotations.json").read_text())
    assert [c["name"] for c in written["categories"]] == ["red car", "person"]
    per_class = SMALL_SPEC.queries  # threshold 0: every query of each phrase is an instance
    assert len(written["annotations"]) == 2 * 2 * per_class
    assert '0: "red car"' in (output / "data.yaml").read_text() and '1: "person"' in (output / "data.yaml").read_text()
    classes = {int(line.split()[0]) for line in (output / "labels" / "a.txt").read_text().splitlines() if line}
    assert classes <= {0, 1} and classes  # YOLO lines of both phrases' classes (specks may leave a class out)

    again = invoke_in_process(capsys, *args[:3], "person,red car", *args[4:])
    assert again.returncode == 1 and "resume with the same phrases" in again.stderr

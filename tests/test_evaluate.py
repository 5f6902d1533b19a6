"""`sam2rt eval` and evaluate_folders against Meta's sav_benchmark.py on test-made ground truth and predictions.

The dataset has several videos of odd sizes (a strip 3 pixels high among them: a boundary radius
larger than the image), perturbed predictions, an object the prediction never finds, one it makes
up, an object that appears late, frames empty on both sides, and a video in the SA-V layout (one
folder per object). Every J and F, per object and overall, must equal the official tool's within 1e-6.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from cli_support import assert_clean_error, invoke_in_process
from PIL import Image
from vos_data import import_reference, moving_objects, perturb, save_labels

from sam2rt.evaluate import EvalError, evaluate_folders
from sam2rt.evaluate.metrics import boundary_maps, boundary_radius, dilate_disk

TOLERANCE = 1e-6


@pytest.fixture(scope="module")
def official():
    pytest.importorskip("skimage", reason="Meta's sav_benchmark.py needs scikit-image (the `test` extra)")
    return import_reference("sav_dataset/utils/sav_benchmark.py", "sav_benchmark")


def _davis_video(gt_root: Path, pred_root: Path, name: str, size, frames: int, objects: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    for t, labels in enumerate(moving_objects(size, frames, objects, seed)):
        prediction = perturb(labels, rng)
        if seed % 2:  # the last object is never found, and an object no ground truth has is made up
            prediction[prediction == objects] = 0
            prediction[: size[0] // 4, : size[1] // 4] = objects + 3
        if t in (2, 3):  # the last object appears late
            labels[labels == objects] = 0
        if t == 4:  # nothing on either side
            labels[:], prediction[:] = 0, 0
        save_labels(gt_root / name / f"{t:05d}.png", labels)
        save_labels(pred_root / name / f"{t:05d}.png", prediction)
    save_labels(
        pred_root / name / "99999.png", prediction
    )  # sparse ground truth: predictions of other frames count not


def _sav_video(gt_root: Path, pred_root: Path, name: str, size, frames: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    maps = moving_objects(size, frames, 3, seed)
    for obj in range(1, 4):
        for t, labels in enumerate(maps):
            truth = labels == obj
            if obj == 3 and t not in (0, 1, 3):  # gone, back, gone again
                truth[:] = False
            save_labels(gt_root / name / f"{obj:03d}" / f"{t:05d}.png", truth)
            save_labels(pred_root / name / f"{obj:03d}" / f"{t:05d}.png", perturb(truth.astype(np.uint8), rng) > 0)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval")
    gt, pred = root / "gt", root / "pred"
    _davis_video(gt, pred, "bear", (37, 53), 7, 3, seed=1)
    _davis_video(gt, pred, "cows", (61, 45), 6, 2, seed=2)
    _davis_video(gt, pred, "strip", (3, 700), 6, 2, seed=3)
    _davis_video(gt, pred, "tall", (97, 31), 8, 4, seed=4)
    _sav_video(gt, pred, "sav_001", (40, 64), 6, seed=5)
    for t in range(4):  # an object on the first frame only: a video without objects unless all frames count
        save_labels(gt / "ghost" / f"{t:05d}.png", np.full((16, 24), 1 if t == 0 else 0, np.uint8))
        save_labels(pred / "ghost" / f"{t:05d}.png", np.full((16, 24), 1 if t < 2 else 0, np.uint8))
    return gt, pred


def _official_scores(official, gt: Path, pred: Path, all_frames: bool, tmp_path: Path):
    """Run the official benchmark on a copy of the predictions (it writes results.csv into them)."""
    copy = shutil.copytree(pred, tmp_path / "pred_copy")
    jf, j, f, objects = official.benchmark(
        [str(gt)], [str(copy)], num_processes=1, verbose=False, skip_first_and_last=not all_frames
    )
    return jf[0], j[0], f[0], objects[0]


@pytest.mark.parametrize("all_frames", [False, True], ids=["skip-first-last", "all-frames"])
def test_scores_equal_the_official_benchmark(official, dataset, tmp_path, capsys, all_frames):
    gt, pred = dataset
    jf, j, f, per_video = _official_scores(official, gt, pred, all_frames, tmp_path)

    result = evaluate_folders(gt, pred, all_frames)
    assert abs(result.scores.jf - jf) <= TOLERANCE and abs(result.scores.j - j) <= TOLERANCE
    assert abs(result.scores.f - f) <= TOLERANCE
    assert sorted(result.videos) == sorted(per_video)
    for name, (ious, boundaries) in per_video.items():
        ours = result.videos[name].objects
        assert sorted(ours) == sorted(str(obj) for obj in ious), name
        for obj in ious:
            assert abs(ours[str(obj)].j - ious[obj]) <= TOLERANCE, (name, obj)
            assert abs(ours[str(obj)].f - boundaries[obj]) <= TOLERANCE, (name, obj)
    # The made-up object 6 is not scored. Object 3, never found, scores 0 on the frames that have it
    # (all but 2, 3 and the empty 4) and 1 on those where neither side has it.
    assert "6" not in result.videos["bear"].objects
    missed = result.videos["bear"].objects["3"]
    assert missed.j == missed.f == pytest.approx(100 * 3 / 7 if all_frames else 100 * 3 / 5)

    # The command: the same numbers in the JSON, rounded ones in the table.
    out = tmp_path / "scores.json"
    args = ["eval", gt, pred, "--json", out] + (["--all-frames"] if all_frames else [])
    done = invoke_in_process(capsys, *args)
    assert done.returncode == 0, done.stderr
    scores = json.loads(out.read_text())
    assert abs(scores["J&F"] - jf) <= TOLERANCE and abs(scores["J"] - j) <= TOLERANCE
    assert abs(scores["F"] - f) <= TOLERANCE
    assert scores["all_frames"] is all_frames and scores["num_objects"] == result.num_objects
    for name, (ious, boundaries) in per_video.items():
        for obj in ious:
            entry = scores["videos"][name]["objects"][str(obj)]
            assert abs(entry["J"] - ious[obj]) <= TOLERANCE and abs(entry["F"] - boundaries[obj]) <= TOLERANCE
        video = result.videos[name].scores
        if video is not None:
            assert scores["videos"][name]["J&F"] == pytest.approx(video.jf, abs=TOLERANCE)
    assert (scores["videos"]["ghost"]["J&F"] is None) == (not all_frames)
    ghost_row = next(line.split() for line in done.stdout.splitlines() if line.startswith("ghost"))
    assert (ghost_row[1:] == ["0", "no", "object", "on", "the", "frames", "scored"]) == (not all_frames)
    global_row = [line for line in done.stdout.splitlines() if line.startswith("Global score")]
    assert global_row and global_row[0].split()[-3:] == [f"{jf:.1f}", f"{j:.1f}", f"{f:.1f}"]


def test_boundaries_and_dilation_equal_the_official_ones(official):
    """The two steps of F on random masks, against the official _seg2bmap and cv2.dilate with skimage's disk."""
    import cv2
    from skimage.morphology import disk

    rng = np.random.default_rng(0)
    for height, width in [(1, 9), (2, 40), (17, 5), (33, 47)]:
        masks = rng.random((3, height, width)) < 0.3
        edges = boundary_maps(masks)
        for mask, edge in zip(masks, edges):
            assert np.array_equal(edge, official._seg2bmap(mask.copy()).astype(bool))
        for radius in (0, 1, 3, boundary_radius(height, width)):
            kernel = disk(radius).astype(np.uint8)
            expected = np.stack([cv2.dilate(e.astype(np.uint8), kernel) > 0 for e in edges])
            assert np.array_equal(dilate_disk(edges, radius), expected), (height, width, radius)


# Errors, through the command: one `error:` line and exit 1 (2 for a wrong command line).


@pytest.fixture
def small(tmp_path):
    """One video of 4 frames, predictions equal to the ground truth."""
    gt, pred = tmp_path / "gt", tmp_path / "pred"
    for t, labels in enumerate(moving_objects((20, 30), 4, 2, seed=7)):
        save_labels(gt / "v" / f"{t:05d}.png", labels)
        save_labels(pred / "v" / f"{t:05d}.png", labels)
    return gt, pred


def test_perfect_predictions_score_100(sam2rt, small):
    result = evaluate_folders(*small)
    assert (result.scores.jf, result.scores.j, result.scores.f) == (100.0, 100.0, 100.0)
    assert "100.0" in sam2rt("eval", *small).stdout


def test_missing_folders(sam2rt, small, tmp_path):
    gt, pred = small
    assert_clean_error(sam2rt("eval", tmp_path / "nope", pred), f"no such folder: {tmp_path / 'nope'}")
    assert_clean_error(sam2rt("eval", gt, tmp_path / "nope"), f"no such folder: {tmp_path / 'nope'}")
    (gt / "w").mkdir()
    save_labels(gt / "w" / "00000.png", np.ones((20, 30), np.uint8))
    assert_clean_error(sam2rt("eval", gt, pred), f"{pred} has no predictions for 1 of the 2 videos: w")


def test_missing_prediction_frame(sam2rt, small):
    gt, pred = small
    (pred / "v" / "00002.png").unlink()
    assert_clean_error(sam2rt("eval", *small), f"prediction {pred / 'v' / '00002.png'} is missing")


def test_size_mismatch(sam2rt, small):
    gt, pred = small
    save_labels(pred / "v" / "00001.png", np.zeros((20, 31), np.uint8))
    message = f"{pred / 'v' / '00001.png'} is 31x20 pixels but the ground truth {gt / 'v' / '00001.png'} is 30x20"
    assert_clean_error(sam2rt("eval", *small), message)


def test_colour_png_is_refused(sam2rt, small):
    gt, pred = small
    Image.new("RGB", (30, 20), (128, 0, 0)).save(pred / "v" / "00001.png")
    assert_clean_error(sam2rt("eval", *small), "is a RGB image; masks must be indexed (palette) or greyscale PNGs")
    (pred / "v" / "00001.png").write_bytes(b"not a png")
    assert_clean_error(sam2rt("eval", *small), f"{pred / 'v' / '00001.png'} is not a readable image")


def test_greyscale_png_is_read_as_object_ids(small):
    gt, pred = small
    labels = np.asarray(Image.open(pred / "v" / "00001.png"))
    Image.fromarray(labels, mode="L").save(pred / "v" / "00001.png")
    assert evaluate_folders(gt, pred).scores.jf == 100.0


def test_empty_ground_truth(sam2rt, small, tmp_path):
    gt, pred = small
    empty = tmp_path / "empty"
    empty.mkdir()
    assert_clean_error(sam2rt("eval", empty, pred), f"no video folders in {empty}")
    (empty / "v").mkdir()
    assert_clean_error(sam2rt("eval", empty, pred), f"no PNG masks in the ground truth folder {empty / 'v'}")
    for t in range(3):  # an object on the first frame only: nothing on the scored frames
        save_labels(empty / "v" / f"{t:05d}.png", np.full((20, 30), 1 if t == 0 else 0, np.uint8))
    assert_clean_error(sam2rt("eval", empty, pred), "holds no object on the frames scored")
    with pytest.raises(EvalError, match="holds no object"):
        evaluate_folders(empty, pred)
    assert evaluate_folders(empty, pred, all_frames=True).num_objects == 1


def test_wrong_command_lines(sam2rt, small, tmp_path):
    gt, pred = small
    done = sam2rt("eval", gt)
    assert done.returncode == 2 and "give PRED_DIR, or --model" in done.stderr
    done = sam2rt("eval", gt, pred, "--checkpoint", tmp_path / "x.pt")
    assert done.returncode == 2 and "add --model" in done.stderr
    assert_clean_error(sam2rt("eval", gt, pred, "--json", tmp_path), f"cannot write {tmp_path}: it is a folder")

"""OnnxStreamTracker (numpy and onnxruntime only) against StreamTracker over one scripted stream, without PyTorch in
its process, and `sam2rt track --backend onnxruntime`."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from cli_support import IMAGE_SIZE, clip_frames, run_sam2rt, smallest_size, write_clip
from onnx_support import checkpoint, exported
from PIL import Image
from visible import assert_masks_match, visible_model

from sam2rt import StreamTracker
from sam2rt.export.onnx_tracker import OnnxStreamTracker


def _box_mask(box: tuple[int, int, int, int]) -> np.ndarray:
    """A mask (H, W) of the clip's frames, True inside box (x0, y0, x1, y1)."""
    mask = np.zeros(clip_frames(1)[0].shape[:2], dtype=bool)
    mask[box[1] : box[3], box[0] : box[2]] = True
    return mask


# Prompts after frame k is stepped: a click, a correction, a second object by its box, more clicks on it, and a
# mask that corrects the first object.
SCRIPT = {
    0: [dict(obj_id=1, points=[[30, 50]], labels=[1])],
    2: [dict(obj_id=1, points=[[40, 50], [100, 100]], labels=[1, 0])],
    3: [dict(obj_id=2, box=[100, 80, 140, 110])],
    5: [dict(obj_id=2, points=[[120, 95]], labels=[0], clear_old_points=False)],
    6: [dict(obj_id=1, mask=_box_mask((20, 35, 61, 70)))],
}
FRAMES = 8


def _session(tracker) -> list:
    results = []
    for index, frame in enumerate(clip_frames(FRAMES)):
        results.append(tracker.step(frame))
        for prompt in SCRIPT.get(index, []):
            results.append(tracker.add_prompt(**prompt))
    return results


@pytest.fixture(scope="module")
def folder():
    return exported()


@pytest.mark.parametrize("variant", ["sam2.1_hiera_tiny", "edgetam"])
def test_scripted_stream_matches_stream_tracker(variant):
    expected = _session(StreamTracker(visible_model(variant, image_size=smallest_size(variant))))
    got = _session(OnnxStreamTracker(exported(variant), threads=2))
    assert len(got) == len(expected)
    compared = 0
    for ours, theirs in zip(got, expected):
        assert (ours.frame_idx, ours.object_ids) == (theirs.frame_idx, theirs.object_ids)
        if not theirs.object_ids:
            continue
        logits = theirs.mask_logits.numpy()
        assert_masks_match(ours.mask_logits, logits, 0.99, f"frame {theirs.frame_idx}, objects {theirs.object_ids}")
        scale = max(1.0, float(np.abs(logits).max()))
        assert np.abs(ours.mask_logits - logits).max() <= 1e-4 * scale
        assert np.abs(ours.object_scores - theirs.object_scores.numpy()).max() <= 1e-4 * scale
        compared += len(theirs.object_ids)
    assert compared == 19  # every object on every frame and prompt after the first click: 2 objects from frame 3 on


def test_runner_imports_and_tracks_without_torch(folder, tmp_path):
    frames = np.stack(clip_frames(3))
    np.save(tmp_path / "frames.npy", frames)
    code = textwrap.dedent(
        f"""
        import sys

        class NoTorch:
            def find_spec(self, name, path=None, target=None):
                if name == "torch" or name.startswith("torch."):
                    raise ImportError("torch is blocked in this process")

        sys.meta_path.insert(0, NoTorch())
        import numpy as np
        from sam2rt.export.onnx_tracker import OnnxStreamTracker

        frames = np.load({str(tmp_path / "frames.npy")!r})
        tracker = OnnxStreamTracker({str(folder)!r}, threads=2)
        tracker.step(frames[0])
        tracker.add_prompt(1, points=[[30, 50]], labels=[1])
        result = tracker.step(frames[1])
        assert not any(name == "torch" or name.startswith("torch.") for name in sys.modules)
        print("area", result.masks.mean(), result.object_ids)
        """
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=os.environ)
    assert done.returncode == 0, done.stderr
    area = float(done.stdout.split()[1])
    assert 0 < area < 1, done.stdout


def _png_masks(folder: Path) -> np.ndarray:
    return np.stack([np.asarray(Image.open(path)) for path in sorted(folder.glob("*.png"))])


@pytest.mark.parametrize("prompt_kind", ["click", "mask"])
def test_track_command_with_onnxruntime_matches_torch(folder, tmp_path, prompt_kind):
    clip = write_clip(tmp_path / "clip.mp4", count=5)
    if prompt_kind == "click":
        prompt = ("-p", "30,50", "--box", "100,80,140,110", "--no-progress")
    else:
        Image.fromarray(_box_mask((20, 35, 61, 70)).astype(np.uint8) * 255).save(tmp_path / "mask.png")
        prompt = ("--mask", tmp_path / "mask.png", "--no-progress")
    torch_run = run_sam2rt("track", clip, *prompt, "-c", checkpoint(), "--image-size", IMAGE_SIZE,
                           "--png-dir", tmp_path / "torch")  # fmt: skip
    assert torch_run.returncode == 0, torch_run.stderr
    onnx_run = run_sam2rt("track", clip, *prompt, "--backend", "onnxruntime", "--onnx", folder,
                          "--png-dir", tmp_path / "onnx")  # fmt: skip
    assert onnx_run.returncode == 0, onnx_run.stderr
    assert "tracked 5 frames" in onnx_run.stdout
    expected, got = _png_masks(tmp_path / "torch"), _png_masks(tmp_path / "onnx")
    assert got.shape == expected.shape == (5, 120, 160)
    assert_masks_match(got == 1, expected == 1, 0.99, "object 1 through the command")

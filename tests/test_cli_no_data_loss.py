"""No input is ever overwritten, no output is ever half-written, and frames that change size reach every output.

Refused outputs are found before the model loads, so those runs are cheap (in this process).
"""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
from cli_support import (
    CLIP_SIZE,
    assert_clean_error,
    clip_frames,
    decode_video,
    model_args,
    write_clip,
)
from PIL import Image

from sam2rt.io.atomic import OutputError, write_atomically
from sam2rt.io.overlay import OverlayVideoWriter, fit_frame


def digest(path) -> str:
    """sha256 of a file, or of every file under a folder with its name."""
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    sha = hashlib.sha256()
    for file in files:
        sha.update(str(file.relative_to(path.parent)).encode() + file.read_bytes())
    return sha.hexdigest()


@pytest.fixture
def inputs(tmp_path, checkpoint):
    """A video, a folder of PNG frames, an image, a prompts file with a mask file, and the checkpoint."""
    video = write_clip(tmp_path / "clip.mp4", 3)
    frames = tmp_path / "frames"
    frames.mkdir()
    for index, frame in enumerate(clip_frames(3)):
        Image.fromarray(frame).save(frames / f"{index:05d}.png")
    mask = np.zeros(CLIP_SIZE, np.uint8)
    mask[30:70, 8:48] = 1
    Image.fromarray(mask).save(tmp_path / "00000.png")
    prompts = tmp_path / "prompts.json"
    prompts.write_text(json.dumps([{"obj_id": 1, "mask": "00000.png"}]))
    return {"video": video, "frames": frames, "mask": tmp_path / "00000.png", "prompts": prompts, "ckpt": checkpoint}


def _track_cases(tmp_path, paths):
    video, frames, mask, prompts, ckpt = (paths[k] for k in ("video", "frames", "mask", "prompts", "ckpt"))
    return [
        ([video, "--point", "5,5", "--overlay", video], f"--overlay {video} is the input video {video}: sam2rt does not overwrite its inputs, choose another path"),
        ([frames, "--point", "5,5", "--png-dir", frames], f"--png-dir {frames} is the input folder of frames {frames}: sam2rt does not overwrite its inputs"),
        ([frames, "--point", "5,5", "--yolo-dir", frames / "labels"], f"--yolo-dir {frames / 'labels'} is inside the input folder of frames {frames}: outputs there would mix with the input, choose a path outside it"),
        ([video, "--point", "5,5", "--coco", frames / ".." / "clip.mp4"], f"--coco {frames / '..' / 'clip.mp4'} is the input video {video}"),
        ([video, "--prompts", prompts, "--coco", prompts], f"--coco {prompts} is the prompts file {prompts}"),
        ([video, "--prompts", prompts, "--png-dir", tmp_path], f"--png-dir {tmp_path} holds the mask of prompts.json entry 1 {mask}, which the .png files written there could overwrite: choose another folder"),
        ([video, "--mask", mask, "--coco", mask], f"--coco {mask} is the --mask file {mask}"),
        ([video, "--point", "5,5", "--coco", ckpt], f"--coco {ckpt} is the checkpoint {ckpt}"),
        ([video, "--point", "5,5", "--png-dir", tmp_path / "out", "--yolo-dir", tmp_path / "out"], f"--png-dir and --yolo-dir are the same path {tmp_path / 'out'}: give each its own"),
    ]  # fmt: skip


def test_track_refuses_outputs_that_would_destroy_an_input(sam2rt, tmp_path, inputs):
    before = {name: digest(path) for name, path in inputs.items()}
    listing = sorted(tmp_path.rglob("*"))
    for arguments, message in _track_cases(tmp_path, inputs):
        assert_clean_error(sam2rt("track", *arguments, *model_args(inputs["ckpt"])), message)
    assert {name: digest(path) for name, path in inputs.items()} == before
    assert sorted(tmp_path.rglob("*")) == listing  # nothing created either


def test_track_refuses_a_symlinked_output_onto_the_input(sam2rt, tmp_path, inputs):
    link = tmp_path / "link.mp4"
    link.symlink_to(inputs["video"])
    before = digest(inputs["video"])
    result = sam2rt("track", inputs["video"], "--point", "5,5", "--overlay", link, *model_args(inputs["ckpt"]))
    assert_clean_error(result, f"--overlay {link} is the input video {inputs['video']}")
    assert digest(inputs["video"]) == before


def test_image_refuses_outputs_that_would_destroy_an_input(sam2rt, tmp_path, inputs):
    photo = inputs["frames"] / "00000.png"
    before = {name: digest(path) for name, path in inputs.items()}
    arguments = ["--point", "30,45", *model_args(inputs["ckpt"])]
    out = tmp_path / "out.png"
    for extra, message in [
        (["--output", photo], f"--output {photo} is the input image {photo}: sam2rt does not overwrite its inputs"),
        (["--overlay", photo], f"--overlay {photo} is the input image {photo}"),
        (["--output", inputs["mask"], "--mask", inputs["mask"]], f"--output {inputs['mask']} is the --mask file"),
        (["--output", out, "--overlay", out], f"--output and --overlay are the same path {out}: give each its own"),
    ]:
        assert_clean_error(sam2rt("image", photo, *arguments, *extra), message)
    assert {name: digest(path) for name, path in inputs.items()} == before
    assert not out.exists()


def test_atomic_write_keeps_the_old_file_when_writing_fails(tmp_path):
    path = tmp_path / "masks.json"
    path.write_text("old")

    def broken(temporary):
        temporary.write_text("half a fi")
        raise OSError(28, "No space left on device")

    def interrupted(temporary):
        temporary.write_text("half a fi")
        raise KeyboardInterrupt

    with pytest.raises(OutputError, match=f"cannot write {path}: No space left on device"):
        write_atomically(path, broken)
    with pytest.raises(KeyboardInterrupt):
        write_atomically(path, interrupted)
    assert path.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["masks.json"]
    write_atomically(path, lambda temporary: temporary.write_text("new"))
    assert path.read_text() == "new" and sorted(p.name for p in tmp_path.iterdir()) == ["masks.json"]


def test_overlay_is_written_beside_and_renamed_on_close(tmp_path):
    path = tmp_path / "overlay.mp4"
    path.write_bytes(b"a previous video")
    writer = OverlayVideoWriter(path, 25.0, (48, 64))
    writer.close()  # no frame: the path is left as it was, no temporary file remains
    assert path.read_bytes() == b"a previous video" and [p.name for p in tmp_path.iterdir()] == ["overlay.mp4"]
    assert "no overlay video" in writer.description


def test_fit_frame_keeps_the_aspect_on_black_bars():
    tall = np.full((100, 40, 3), 200, np.uint8)  # into 60 x 80: scaled by 0.6 to 60 x 24, centred
    fitted = fit_frame(tall, 60, 80)
    assert fitted.shape == (60, 80, 3)
    columns = np.nonzero(fitted[30, :, 0])[0]
    assert (columns[0], columns[-1]) == (28, 51)  # 24 columns in the middle
    assert fitted[:, :28].max() == 0 and fitted[:, 52:].max() == 0
    assert fit_frame(tall, 100, 40) is tall


def test_frames_that_change_size_reach_every_output(sam2rt, tmp_path, checkpoint):
    """A folder of frames of three sizes: the overlay keeps the first size, the other outputs each frame's own."""
    folder = tmp_path / "frames"
    folder.mkdir()
    sizes = [CLIP_SIZE, (180, 200), (90, 160)]
    for index, (frame, size) in enumerate(zip(clip_frames(3), sizes)):
        Image.fromarray(frame).resize(size[::-1]).save(folder / f"{index:05d}.png")
    out = tmp_path / "out"
    result = sam2rt(
        "track", folder, "--point", "30,45", *model_args(checkpoint),
        "--overlay", out / "overlay.mp4", "--png-dir", out / "png", "--coco", out / "masks.json", "--yolo-dir", out / "yolo",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "tracked 3 frames" in result.stdout
    assert f"overlay video {out / 'overlay.mp4'} (3 frames, 2 of another size scaled to 160x120)" in result.stdout
    assert decode_video(out / "overlay.mp4")[:2] == (3, CLIP_SIZE)
    for index, size in enumerate(sizes):
        with Image.open(out / "png" / f"{index:05d}.png") as png:
            assert png.size == size[::-1]
    coco = json.loads((out / "masks.json").read_text())
    assert [(image["height"], image["width"]) for image in coco["images"]] == sizes
    assert all(
        annotation["segmentation"]["size"] == list(sizes[annotation["image_id"] - 1])
        for annotation in coco["annotations"]
    )
    assert len(list((out / "yolo").iterdir())) == 3
    assert not [p for p in out.rglob("*") if ".partial" in p.name]

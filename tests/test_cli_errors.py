"""Bad input to `sam2rt`: one clear `error:` line and exit code 1 (2 for a wrong command line), never a traceback.

When the input breaks midway, the outputs written so far are closed and valid. A few cases run the
real command in a child process; the others run it in this process (`sam2rt` fixture), which saves
the interpreter's start-up and gives the same exit code and output.
"""

from __future__ import annotations

import json

import av
import numpy as np
import pytest
import torch
from cli_support import (
    assert_clean_error,
    clip_frames,
    damage_packet,
    decode_video,
    model_args,
    run_sam2rt,
    truncate_in_packet,
    write_clip,
)
from PIL import Image


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    return write_clip(tmp_path_factory.mktemp("clip") / "clip.mp4", 8)


# Sources


def test_missing_file(tmp_path, checkpoint):
    result = run_sam2rt("track", tmp_path / "nope.mp4", "--point", "5,5", *model_args(checkpoint))
    assert_clean_error(result, f"no such video file or folder: {tmp_path / 'nope.mp4'}")


def test_unreadable_file(sam2rt, tmp_path, checkpoint):
    path = tmp_path / "notes.mp4"
    path.write_bytes(b"these are not the frames you are looking for" * 20)
    result = sam2rt("track", path, "--point", "5,5", *model_args(checkpoint))
    assert_clean_error(result, f"{path} is not a readable video")


def test_zero_frame_video(sam2rt, tmp_path, checkpoint):
    path = tmp_path / "empty.avi"
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("mpeg4", rate=25)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        container.start_encoding()  # a header and a video stream, but not one frame
    result = sam2rt("track", path, "--point", "5,5", *model_args(checkpoint))
    assert_clean_error(result, f"{path} holds no video frames")


def test_camera_that_does_not_open(checkpoint):
    result = run_sam2rt("track", "57", "--point", "5,5", *model_args(checkpoint))
    assert_clean_error(result, "camera 57 could not be opened")


def test_stream_that_does_not_open(sam2rt, checkpoint):
    result = sam2rt("track", "http://127.0.0.1:9/live.mp4", "--point", "5,5", *model_args(checkpoint))
    assert_clean_error(result, "http://127.0.0.1:9/live.mp4 could not be opened")


def test_image_given_to_track(sam2rt, tmp_path, checkpoint):
    path = tmp_path / "photo.png"
    Image.fromarray(clip_frames(1)[0]).save(path)
    assert_clean_error(sam2rt("track", path, "--point", "5,5"), "is an image, not a video: use `sam2rt image")


# Prompts


def test_prompt_outside_the_frame(sam2rt, clip, checkpoint):
    result = sam2rt("track", clip, "--point", "170,30", *model_args(checkpoint))
    assert_clean_error(
        result, "the command line (object 1, frame 0): point (x=170, y=30) lies outside the 160x120 image"
    )
    result = sam2rt("track", clip, "--box", "10,10,50,121", "--obj", "4", *model_args(checkpoint))
    assert_clean_error(result, "(object 4, frame 0): box corner (x=50, y=121) lies outside the 160x120 image")


def test_prompt_on_a_frame_past_the_end(sam2rt, clip, checkpoint):
    result = sam2rt("track", clip, "--point", "30,30", "--frame", "8", *model_args(checkpoint))
    assert_clean_error(result, f"frame 8 is past the end, only frames 0-7 are tracked ({clip} has 8 frames)")
    result = sam2rt("track", clip, "--point", "30,30", "--frame", "5", "--max-frames", "4", *model_args(checkpoint))
    assert_clean_error(result, "frame 5 is past the end, only frames 0-3 are tracked (--max-frames 4)")


@pytest.mark.parametrize(
    "content, message",
    [
        ('[{"obj_id": 1, "points": [[10, 10]]', "is not valid JSON: Expecting ',' delimiter at line 1"),
        ('[{"obj_id": 1, "pionts": [[10, 10]]}]', "prompts.json entry 1: unknown key 'pionts'"),
    ],
)
def test_malformed_prompts_file(sam2rt, tmp_path, clip, content, message):
    """Every malformed case is in test_io_prompt_file.py; two here, through the command."""
    path = tmp_path / "prompts.json"
    path.write_text(content)
    assert_clean_error(sam2rt("track", clip, "--prompts", path), message)


def test_mask_prompt_of_another_size(sam2rt, tmp_path, clip, checkpoint):
    Image.fromarray(np.full((40, 30), 255, np.uint8)).save(tmp_path / "mask.png")
    result = sam2rt("track", clip, "--mask", tmp_path / "mask.png", *model_args(checkpoint))
    assert_clean_error(result, "the mask is 30x40 but the frames are 160x120")


# Checkpoints


def test_checkpoint_of_the_wrong_variant(clip, checkpoint):
    result = run_sam2rt(
        "track", clip, "--point", "30,30", "--checkpoint", checkpoint, "--variant", "sam2.1_hiera_small"
    )
    assert_clean_error(result, f"{checkpoint} is a sam2.1_hiera_tiny checkpoint, not sam2.1_hiera_small")


def test_missing_and_corrupt_checkpoint(sam2rt, tmp_path, clip, checkpoint):
    result = sam2rt("track", clip, "--point", "30,30", "--checkpoint", tmp_path / "none.pt")
    assert_clean_error(result, f"checkpoint not found: {tmp_path / 'none.pt'}")
    cut = tmp_path / "cut.pt"
    cut.write_bytes(checkpoint.read_bytes()[:100_000])
    result = sam2rt("track", clip, "--point", "30,30", "--checkpoint", cut)
    assert_clean_error(result, f"{cut} is not a readable checkpoint (corrupt or truncated?)")


def test_not_a_sam2_checkpoint(sam2rt, tmp_path, clip):
    path = tmp_path / "other.pt"
    torch.save({"model": {"weight": torch.zeros(3)}}, path)
    result = sam2rt("track", clip, "--point", "30,30", "--checkpoint", path)
    assert_clean_error(result, f"{path} is not a checkpoint of any SAM 2 variant")


# Outputs


def test_outputs_that_cannot_be_written(sam2rt, tmp_path, clip, checkpoint):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    for option, path, message in [  # more cases, in-process, in test_io_sinks.py
        ("--overlay", blocker / "overlay.mp4", f"cannot use {blocker} as a folder: it is a file"),
        ("--coco", tmp_path, f"cannot write {tmp_path}: it is a folder"),
        ("--yolo-dir", blocker / "labels", f"cannot create the folder {blocker / 'labels'}: {blocker} is a file"),
    ]:
        result = sam2rt("track", clip, "--point", "30,30", *model_args(checkpoint), option, path)
        assert_clean_error(result, message)
    assert blocker.read_text() == ""


# Usage errors: typer's message and exit code 2


@pytest.mark.parametrize(
    "args, message",
    [
        (["--point", "12"], "expected X,Y (pixels), got '12'"),
        (["--box", "1,2,3"], "expected X0,Y0,X1,Y1 (pixels), got '1,2,3'"),
        ([], "nothing to track"),
        (["--point", "5,5", "--variant", "sam3_huge"], "unknown variant 'sam3_huge'"),
    ],
)
def test_usage_errors(sam2rt, clip, args, message):
    result = sam2rt("track", clip, *args)
    assert result.returncode == 2, result.stderr
    assert message in " ".join(result.stderr.split())


def test_usage_error_from_the_real_command(clip):
    result = run_sam2rt("track", clip, "--point", "12")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "Invalid value for --point: expected X,Y (pixels), got '12'" in " ".join(result.stderr.split())


# Inputs that break midway: the outputs hold the frames before the break, and are valid files


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda clip, path: truncate_in_packet(clip, path, 5), "of 7 frames (truncated?)"),
        (lambda clip, path: damage_packet(clip, path, 4), "could not be decoded"),
    ],
    ids=["truncated", "corrupt"],
)
def test_video_that_breaks_midway(tmp_path, clip, checkpoint, damage, message):
    broken = damage(clip, tmp_path / "broken.mp4")
    out = tmp_path / "out"
    result = run_sam2rt(
        "track", broken, "--point", "30,45", *model_args(checkpoint), "--overlay", out / "overlay.mp4",
        "--png-dir", out / "png", "--coco", out / "masks.json", "--yolo-dir", out / "yolo",
    )  # fmt: skip
    assert_clean_error(result, message)
    # Where the decoder notices depends on its threads; what was tracked before is kept, whole.
    tracked = int(result.stdout.split()[1])
    frames = "1 frame" if tracked == 1 else f"{tracked} frames"
    assert 1 <= tracked < 8 and f"tracked {frames} (stopped early)" in result.stdout
    assert decode_video(out / "overlay.mp4")[:2] == (tracked, (120, 160))
    assert len(list((out / "png").iterdir())) == len(list((out / "yolo").iterdir())) == tracked
    coco = json.loads((out / "masks.json").read_text())
    assert [image["id"] for image in coco["images"]] == list(range(1, tracked + 1))


def test_folder_with_a_broken_frame(sam2rt, tmp_path, checkpoint):
    """Frames are read in the order of the numbers in their names; the outputs keep those names.

    A frame whose header cannot be read is refused before tracking starts (every header is read
    first); a frame whose data is cut short is found when it is decoded, and ends the run there."""
    folder = tmp_path / "frames"
    folder.mkdir()
    for index, frame in enumerate(clip_frames(4)):
        Image.fromarray(frame).save(folder / f"frame_{index * 5:03d}.jpg")
    whole = (folder / "frame_010.jpg").read_bytes()
    (folder / "frame_010.jpg").write_bytes(b"\xff\xd8 a JPEG that stops here")
    out = tmp_path / "out"
    args = ["track", folder, "--point", "30,45", *model_args(checkpoint), "--coco", out / "masks.json"]
    assert_clean_error(sam2rt(*args, "--png-dir", out / "png"), f"{folder / 'frame_010.jpg'} is not a readable image")
    assert not out.exists()
    (folder / "frame_010.jpg").write_bytes(whole[: len(whole) // 2])
    result = sam2rt(*args, "--png-dir", out / "png")
    assert_clean_error(result, f"{folder / 'frame_010.jpg'} could not be decoded")
    coco = json.loads((out / "masks.json").read_text())
    assert [image["file_name"] for image in coco["images"]] == ["frame_000.jpg", "frame_005.jpg"]
    assert sorted(p.name for p in (out / "png").iterdir()) == ["frame_000.png", "frame_005.png"]


# The image command


def test_image_errors(sam2rt, tmp_path, checkpoint):
    assert_clean_error(
        sam2rt("image", tmp_path / "none.jpg", "--point", "5,5", *model_args(checkpoint)),
        f"no such image file: {tmp_path / 'none.jpg'}",
    )
    result = sam2rt("image", tmp_path / "none.jpg", "--everything")  # a usage error: the file is not even looked at
    assert result.returncode == 2 and "--everything needs --output FILE.json" in result.stderr, result.stderr
    assert_clean_error(
        sam2rt("image", tmp_path / "none.jpg", "--everything", "-o", tmp_path / "masks.json"),
        f"no such image file or folder: {tmp_path / 'none.jpg'}",
    )

"""Helpers for the command-line tests: a checkpoint with visible masks, synthetic clips, running `sam2rt`."""

from __future__ import annotations

import os
import subprocess
import sys
from fractions import Fraction
from pathlib import Path
from typing import Optional

import av
import numpy as np
import torch
from visible import visible_state_dict

VARIANT = "sam2.1_hiera_tiny"
IMAGE_SIZE = 128  # small and fast; a checkpoint does not depend on the input size
CLIP_RATE = Fraction(30000, 1001)  # a rate that is not an integer, as NTSC cameras record
CLIP_SIZE = (120, 160)  # (height, width)


EDGETAM_SIZE = 256  # EdgeTAM's smallest input: its perceiver's grid needs a multiple of 256
STANDIN_SITE = Path(__file__).resolve().parent / "standin_site"


def smallest_size(variant: str) -> int:
    """The input side the tests run `variant` at."""
    return EDGETAM_SIZE if variant == "edgetam" else IMAGE_SIZE


def variant_env(variant: str) -> dict:
    """The environment of a command run with `variant`: for EdgeTAM, the tests' torchvision stand-in loaded at
    start-up (timm imports torchvision, and PyPI has no CPU build of it)."""
    if variant != "edgetam":
        return {}
    return {"PYTHONPATH": os.pathsep.join(filter(None, [str(STANDIN_SITE), os.environ.get("PYTHONPATH")]))}


def make_checkpoint(path: Path, variant: str = VARIANT) -> Path:
    """A checkpoint of `visible_state_dict`: random weights that give masks with area, pieces and holes."""
    if path.exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".tmp")
    torch.save({"model": visible_state_dict(variant, smallest_size(variant))}, temporary)
    os.replace(temporary, path)
    return path


def clip_frames(count: int, size: tuple[int, int] = CLIP_SIZE) -> list[np.ndarray]:
    """A red square moving right and a green rectangle, on a fixed noisy background."""
    height, width = size
    rng = np.random.default_rng(0)
    background = rng.integers(0, 80, size=(height, width, 3), dtype=np.uint8)
    frames = []
    for t in range(count):
        frame = background.copy()
        x = 8 + (4 * t) % (width - 50)
        frame[height // 4 : height // 4 + 40, x : x + 40] = (220, 40, 40)
        frame[height - 40 : height - 10, width - 60 : width - 20] = (40, 200, 60)
        frames.append(frame)
    return frames


def write_clip(path: Path, count: int = 10, size: tuple[int, int] = CLIP_SIZE, rate: Fraction = CLIP_RATE) -> Path:
    """An H.264 mp4 of `clip_frames`, its index first (faststart) so that it streams over HTTP."""
    container = av.open(str(path), mode="w", options={"movflags": "faststart"})
    stream = container.add_stream("libx264", rate=rate)
    stream.height, stream.width = size
    stream.pix_fmt = "yuv420p"
    for index, frame in enumerate(clip_frames(count, size)):
        video_frame = av.VideoFrame.from_ndarray(frame, format="rgb24")
        video_frame.pts = index
        for packet in stream.encode(video_frame):
            container.mux(packet)
    for packet in stream.encode(None):
        container.mux(packet)
    container.close()
    return path


def run_sam2rt(*args: object, env: Optional[dict] = None, timeout: float = 300) -> subprocess.CompletedProcess:
    """The real command, in a child process: `python -m sam2rt ARGS`."""
    return subprocess.run(
        [sys.executable, "-m", "sam2rt", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=dict(os.environ, **(env or {})),
    )


def assert_clean_error(result: subprocess.CompletedProcess, message: str, code: int = 1) -> None:
    """Exit `code`, and one `error:` line on stderr that contains `message`; no traceback."""
    assert result.returncode == code, f"exit {result.returncode}\nstdout: {result.stdout}\nstderr: {result.stderr}"
    assert "Traceback" not in result.stderr, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, result.stderr
    assert message in errors[0], errors[0]


def model_args(checkpoint: Path, variant: str = VARIANT) -> list[str]:
    size = str(smallest_size(variant))
    return ["--checkpoint", str(checkpoint), "--variant", variant, "--image-size", size, "--device", "cpu"]


def decode_video(path: Path) -> tuple[int, tuple[int, int], Fraction]:
    """Frames, (height, width) and average rate of a video file, by decoding every frame."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        count = sum(1 for _ in container.decode(stream))
        return count, (stream.height, stream.width), stream.average_rate


def _packet_spans(path: Path) -> list[tuple[int, int]]:
    """(byte offset, size) of each video packet of a file, in presentation order."""
    with av.open(str(path)) as container:
        packets = [p for p in container.demux(container.streams.video[0]) if p.size]
        return [(p.pos, p.size) for p in sorted(packets, key=lambda p: p.pts)]


def damage_packet(source: Path, target: Path, index: int) -> Path:
    """A copy of `source` whose packet `index` is overwritten with zeros: decoding fails there."""
    data = bytearray(source.read_bytes())
    offset, size = _packet_spans(source)[index]
    data[offset : offset + size] = bytes(size)
    target.write_bytes(bytes(data))
    return target


def truncate_in_packet(source: Path, target: Path, index: int) -> Path:
    """A copy of `source` cut in the middle of packet `index`, as an interrupted copy or recording leaves it."""
    offset, size = _packet_spans(source)[index]
    target.write_bytes(source.read_bytes()[: offset + size // 2])
    return target


def invoke_in_process(capsys, *args: object) -> subprocess.CompletedProcess:
    """`sam2rt ARGS` run in this process (no interpreter start-up): exit code and captured output.

    Anything but a clean exit (an exception escaping the command) fails the test with its traceback.
    """
    from sam2rt.cli import app

    capsys.readouterr()  # start from empty buffers
    try:
        app(args=[str(arg) for arg in args], prog_name="sam2rt")
        code = 0
    except SystemExit as exit:
        code = exit.code if isinstance(exit.code, int) else 1
    captured = capsys.readouterr()
    return subprocess.CompletedProcess(["sam2rt", *map(str, args)], code, captured.out, captured.err)


def polygon_expressible(mask: np.ndarray) -> np.ndarray:
    """The part of a mask (H, W) bool that YOLO polygons can hold: every piece whose outline has at least 3
    points. Single pixels and straight lines (outlines of 1 or 2 points) enclose no area and are left out;
    random weights scatter many such specks, so a fill of the polygons is compared with this."""
    import cv2

    count, labels = cv2.connectedComponents(mask.astype(np.uint8))
    kept = np.zeros(mask.shape, dtype=bool)
    for piece in range(1, count):
        region = labels == piece
        outline, _ = cv2.findContours(region.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        if len(outline[0]) >= 3:
            kept |= region
    return kept

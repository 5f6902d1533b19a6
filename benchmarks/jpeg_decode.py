"""JPEG decoding of camera frames: the server's CPU path (OpenCV), PIL, and torchvision's decoders, CPU and CUDA.

    python benchmarks/jpeg_decode.py --source ../shared/data/videos/bedroom --size 720x1280

`sam2rt serve` decodes each client's JPEG in a worker thread (OpenCV; PIL before), off the model thread; this measures
whether a GPU decoder would pay: milliseconds per frame, one frame at a time and in batches of 8 (a tick
of 8 cameras), for photographic frames (the clip, re-encoded at quality 90) and for noise (the worst case,
what the GPU benchmarks stream when the clip is absent). torchvision is not a dependency of sam2rt; this
script skips its rows where it is missing.
"""

from __future__ import annotations

import argparse
import io
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from sam2rt.io.sources import open_frames
from sam2rt.serve.protocol import decode_image


def encoded_frames(source: Path, count: int, size: tuple[int, int]) -> dict[str, list[bytes]]:
    height, width = size
    video = open_frames(source) if source.exists() else None
    rng = np.random.default_rng(0)
    kinds: dict[str, list[bytes]] = {"clip": [], "noise": []}
    for index in range(count):
        pictures = {"noise": rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)}
        if video is not None:
            pictures["clip"] = np.asarray(Image.fromarray(video[index % len(video)]).resize((width, height)))
        for kind, picture in pictures.items():
            buffer = io.BytesIO()
            Image.fromarray(picture).save(buffer, format="JPEG", quality=90)
            kinds[kind].append(buffer.getvalue())
    return {kind: frames for kind, frames in kinds.items() if frames}


def per_frame_ms(decode, frames: list[bytes], batch: int, device: str) -> float:
    """Mean ms per frame of `decode(list of payloads)`, in batches; after a warm-up batch."""
    decode(frames[:batch])
    if device == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    done = 0
    for first in range(0, len(frames) - batch + 1, batch):
        decode(frames[first : first + batch])
        done += batch
    if device == "cuda":
        torch.cuda.synchronize()
    return 1000 * (time.perf_counter() - start) / done


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--source", type=Path, default=Path(__file__).resolve().parents[2] / "shared/data/videos/bedroom"
    )
    parser.add_argument("--size", default="720x1280", help="HxW of the frames")
    parser.add_argument("--frames", type=int, default=64)
    args = parser.parse_args()
    size = tuple(map(int, args.size.split("x")))
    kinds = encoded_frames(args.source, args.frames, size)
    decoders = {
        "sam2rt serve (OpenCV), CPU": ("cpu", lambda payloads: [decode_image(p, "jpeg") for p in payloads]),
        "PIL, CPU": ("cpu", lambda payloads: [np.asarray(Image.open(io.BytesIO(p)).convert("RGB")) for p in payloads]),
    }
    try:
        from torchvision.io import decode_jpeg
    except ImportError:
        print("torchvision is not installed: its rows are skipped")
    else:

        def tensors(payloads: list[bytes]) -> list[torch.Tensor]:
            return [torch.frombuffer(bytearray(p), dtype=torch.uint8) for p in payloads]

        decoders["torchvision, CPU"] = ("cpu", lambda payloads: [decode_jpeg(t) for t in tensors(payloads)])
        if torch.cuda.is_available():
            decoders["torchvision, CUDA (nvJPEG)"] = (
                "cuda",
                lambda payloads: decode_jpeg(tensors(payloads), device="cuda"),
            )
    print(f"{size[1]}x{size[0]} JPEG (quality 90), {torch.get_num_threads()} torch threads, one thread decoding")
    print("| decoder | frames | KiB per frame | ms per frame, 1 at a time | ms per frame, batches of 8 |")
    print("|---|---|---|---|---|")
    for name, (device, decode) in decoders.items():
        for kind, frames in kinds.items():
            kib = sum(map(len, frames)) / len(frames) / 1024
            single, batched = (per_frame_ms(decode, frames, batch, device) for batch in (1, 8))
            print(f"| {name} | {kind} | {kib:.0f} | {single:.2f} | {batched:.2f} |")


if __name__ == "__main__":
    main()

"""What the server's frame decoding costs its model thread through the GIL, on the CPU, without a model.

    python benchmarks/decode_gil.py                       # 8 cameras at 20 frames/s, 720p JPEG
    python benchmarks/decode_gil.py --cameras 16 --rate 15

The server decodes frames on worker threads while one thread runs the model, which makes hundreds of short calls
into PyTorch a tick, each giving the GIL up and taking it back. A decoder that holds the GIL between pieces of
work (PIL's takes it back for every chunk of the file and copies the frame twice more in Python-held calls) makes
each of those calls wait; one that decodes in a single call without it (OpenCV's) does not. Here a stand-in model
thread makes 400 short PyTorch calls a tick (about 1 ms alone) beside --cameras threads decoding a 720p JPEG each at
--rate frames/s; the table gives its tick time, median and 95th percentile, with each decoder and with none.
"""

from __future__ import annotations

import argparse
import io
import statistics
import sys
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import torch
from PIL import Image

from sam2rt.serve.protocol import FORMAT_JPEG, decode_payload

ROOT = Path(__file__).resolve().parents[1]

CALLS_PER_TICK = 400


def jpeg_frame(source: Path) -> bytes:
    """A 720p JPEG (quality 85, as the app sends): the first frame of `source`, or a synthetic picture."""
    frames = sorted(source.glob("*.jpg")) if source.is_dir() else []
    if frames:
        rgb = np.asarray(Image.open(frames[0]).convert("RGB"))
    else:
        y, x = np.mgrid[0:720, 0:1280]
        rgb = np.stack([x % 256, y % 256, (x + y) % 256], axis=-1).astype(np.uint8)
    rgb = cv2.resize(rgb, (1280, 720), interpolation=cv2.INTER_AREA)
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, format="JPEG", quality=85)
    return buffer.getvalue()


def decoders(payload: bytes) -> dict:
    def pil() -> np.ndarray:  # the server's decoding before OpenCV took RGB frames
        with Image.open(io.BytesIO(payload)) as image:
            return np.asarray(image.convert("RGB"))

    return {
        "none": None,
        "PIL": pil,
        "sam2rt (OpenCV)": lambda: decode_payload(payload, FORMAT_JPEG, 0, 0),
    }


def model_tick(x: torch.Tensor) -> None:
    for _ in range(CALLS_PER_TICK):
        torch.add(x, 1)  # a short call into PyTorch: the GIL given up and taken back


def tick_times(decode, cameras: int, rate: float, seconds: float) -> tuple[float, float]:
    """The stand-in model thread's tick, median and 95th percentile ms, beside `cameras` decoding threads."""
    stop = threading.Event()

    def camera() -> None:
        due = time.perf_counter()
        while not stop.is_set():
            decode()
            due += 1 / rate
            time.sleep(max(0.0, due - time.perf_counter()))

    threads = [threading.Thread(target=camera, daemon=True) for _ in range(cameras)] if decode else []
    for thread in threads:
        thread.start()
    x = torch.zeros(64)
    times: list[float] = []
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        start = time.perf_counter()
        model_tick(x)
        times.append((time.perf_counter() - start) * 1000)
        time.sleep(0.005)  # the model thread waits for frames between ticks
    stop.set()
    for thread in threads:
        thread.join()
    times.sort()
    return statistics.median(times), times[int(0.95 * (len(times) - 1))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cameras", type=int, default=8)
    parser.add_argument("--rate", type=float, default=20.0, help="frames/s each camera's thread decodes")
    parser.add_argument("--seconds", type=float, default=4.0, help="per row")
    parser.add_argument("--source", type=Path, default=ROOT.parent / "shared" / "data" / "videos" / "bedroom")
    args = parser.parse_args()
    torch.set_num_threads(1)
    payload = jpeg_frame(args.source)
    print(
        f"stand-in model thread ({CALLS_PER_TICK} PyTorch calls a tick) beside {args.cameras} threads decoding a "
        f"720p JPEG ({len(payload) // 1024} KiB) at {args.rate:g} frames/s each; GIL switch interval "
        f"{sys.getswitchinterval() * 1000:g} ms"
    )
    print("| decoder | tick p50 ms | tick p95 ms |\n|---|---|---|")
    for name, decode in decoders(payload).items():
        p50, p95 = tick_times(decode, args.cameras, args.rate, args.seconds)
        print(f"| {name} | {p50:.2f} | {p95:.2f} |", flush=True)


if __name__ == "__main__":
    main()

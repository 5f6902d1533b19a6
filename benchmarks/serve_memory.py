"""Memory of `sam2rt serve` over sessions that come and go: does the server give back what a session took?

    python benchmarks/serve_memory.py --device cpu --threads 2 --image-size 256      # 30 sessions, one at a time
    python benchmarks/serve_memory.py --device cuda --cycles 10 --sessions 8          # 10 cycles of 8 at once
    python benchmarks/serve_memory.py --device cuda --release-memory-after 2          # and then idle 2 s

Each cycle opens `--sessions` WebSocket sessions at once; each streams `--frames` PNG frames with one
object clicked on its first frame, then closes. After each cycle, once the server has let go of every
session: the process's resident host memory (RSS) and, on a GPU, memory allocated and reserved by PyTorch.
With `--release-memory-after S`, a last row once the server has been idle S seconds and given back what it
keeps for speed (`sam2rt serve --release-memory-after`).
The server runs in this process (uvicorn in a thread, as `sam2rt serve` runs it), the clients in threads.
Random weights; noise frames (memory does not depend on either).
"""

from __future__ import annotations

import argparse
import gc
import io
import json
import threading
import time

import numpy as np
import torch
from PIL import Image

import sam2rt
from sam2rt.serve.protocol import FORMAT_PNG, frame_header


def resident_mib() -> float:
    """This process's resident memory, from /proc (Linux)."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def stream_one_session(url: str, payloads: list[bytes], click: list[int]) -> None:
    """One session: frames in lockstep (each result awaited), one object clicked on the first, then closed."""
    from websockets.sync.client import connect

    def result(frame_id: int, prompted: bool) -> None:
        while True:
            message = ws.recv(timeout=300)
            if isinstance(message, str):
                reply = json.loads(message)
                if reply["type"] == "result" and reply["frame"] == frame_id and reply["prompted"] == prompted:
                    return

    with connect(url, max_size=None, open_timeout=60) as ws:
        ws.send(payloads[0])
        result(0, False)
        ws.send(json.dumps({"type": "prompt", "frame": 0, "obj_id": 1, "points": [click], "labels": [1]}))
        result(0, True)
        for index, payload in enumerate(payloads[1:], start=1):
            ws.send(payload)
            result(index, False)


def png(frame_id: int, image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return frame_header(frame_id, FORMAT_PNG, image.shape[1], image.shape[0]) + buffer.getvalue()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--variant", default="sam2.1_hiera_tiny")
    parser.add_argument("--image-size", type=int, default=1024)
    parser.add_argument("--cycles", type=int, default=30)
    parser.add_argument("--sessions", type=int, default=1, help="sessions open at once in a cycle")
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--size", default="240x320", help="HxW of the frames")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--release-memory-after", type=float, default=0.0, help="seconds idle (0: never)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    import uvicorn

    from sam2rt.runtime import optimize
    from sam2rt.serve.app import ServerConfig, create_app
    from sam2rt.serve.scheduler import default_engine

    device = torch.device(args.device)
    model = sam2rt.build_model(args.variant, image_size=args.image_size).to(device).eval()
    if device.type == "cuda":
        model = optimize(model)
    height, width = map(int, args.size.split("x"))
    rng = np.random.default_rng(0)
    payloads = [png(i, rng.integers(0, 256, (height, width, 3), dtype=np.uint8)) for i in range(args.frames)]
    click = [width // 3, height // 2]
    config = ServerConfig(max_sessions=args.sessions + 1, release_after_s=args.release_memory_after)
    app = create_app(default_engine(model), config)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    url = f"ws://127.0.0.1:{server.servers[0].sockets[0].getsockname()[1]}/ws"
    sessions = app.app.state.server.scheduler.sessions

    def gpu() -> str:
        if device.type != "cuda":
            return ""
        torch.cuda.synchronize(device)
        return (
            f" | {torch.cuda.memory_allocated(device) / 2**20:.0f} | {torch.cuda.memory_reserved(device) / 2**20:.0f}"
        )

    print(f"{args.variant} at {args.image_size}, {device}, {torch.get_num_threads()} threads, {width}x{height} frames")
    print(
        "| cycle | sessions | RSS MiB"
        + (" | GPU allocated MiB | GPU reserved MiB |" if device.type == "cuda" else " |")
    )
    print("|---|---|---" + ("|---|---|" if device.type == "cuda" else "|"))
    print(f"| 0 | none yet | {resident_mib():.0f}{gpu()} |", flush=True)
    for cycle in range(1, args.cycles + 1):
        clients = [
            threading.Thread(target=stream_one_session, args=(url, payloads, click)) for _ in range(args.sessions)
        ]
        for client in clients:
            client.start()
        for client in clients:
            client.join()
        deadline = time.monotonic() + 30
        while sessions and time.monotonic() < deadline:  # the scheduler lets go of each closed session
            time.sleep(0.02)
        gc.collect()
        print(f"| {cycle} | {args.sessions} opened and closed | {resident_mib():.0f}{gpu()} |", flush=True)
    if args.release_memory_after > 0:
        time.sleep(args.release_memory_after + 1.0)  # the scheduler looks every 0.5 s
        gc.collect()
        print(f"| idle {args.release_memory_after:g} s | memory released | {resident_mib():.0f}{gpu()} |")
    server.should_exit = True
    thread.join(timeout=10)


if __name__ == "__main__":
    main()

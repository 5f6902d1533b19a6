"""`sam2rt serve` under load: N simulated clients stream a 720p clip over WebSocket, against the bare engine.

    python benchmarks/serve.py --device cuda                      # N = 1, 4, 8 at 1024, bf16 + CUDA graphs
    python benchmarks/serve.py --device cuda --exact --clients 1 --frames 100   # fp32, no graphs
    python benchmarks/serve.py --device cpu --image-size 256 --frames 6 --clients 1,2 --size 180x320

The server runs in this process (uvicorn in a thread, as `sam2rt serve` runs it); the clients run
in another process (one thread each), like the browser app: JPEG frames, at most two frames in
flight, one object clicked on the first frame. Per client: processed frames per second and the
p50 / p95 latency from frame sent to masks received. Two ways to stream:
- paced: each client sends at `--rate` frames/s (30, a camera); the server drops what it cannot keep;
- flat out: each client sends as soon as its window allows (the server's best rate).
`engine` is StreamTracker.step on the same decoded frames, masks fetched to the CPU each frame,
one object, in a thread of this process, before the server starts. Random weights (the speed does not depend on them).
The server warms up as `sam2rt serve` does (the graphs for the most clients captured before the first comes;
`--cold`: captured as the ticks need them).
With `--url ws://HOST:PORT/ws` the clients stream to a server started elsewhere (`sam2rt serve`, `--ray`
too: the front's /metrics sums its replicas' figures); its own `--batch-wait-ms` holds.

Each row runs with each `--batch-wait-ms` (how long a tick waits for frames due from other clients), and a
profile follows it, read from the server's /metrics: ms per stage (decode per frame, engine per tick, download
and publish per result), sessions per tick, ticks, CUDA graphs captured during the row, GPU memory.
"""

from __future__ import annotations

import argparse
import io
import json
import multiprocessing
import statistics
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from PIL import Image

import sam2rt
from sam2rt.io.sources import open_frames
from sam2rt.serve.protocol import FORMAT_JPEG, frame_header

ROOT = Path(__file__).resolve().parents[1]
CLIP = ROOT.parent / "shared" / "data" / "videos" / "bedroom.mp4"
IN_FLIGHT = 2


def load_frames(source: Path, count: int, size: tuple[int, int]) -> list[np.ndarray]:
    """`count` frames of a video file or folder of frames (looped), resized to `size` (H, W)."""
    height, width = size
    if source.exists():
        video = open_frames(source)
        frames = [video[i % len(video)] for i in range(count)]
    else:  # no media: noise frames
        rng = np.random.default_rng(0)
        frames = [rng.integers(0, 256, size=(540, 960, 3), dtype=np.uint8) for _ in range(count)]
    return [np.asarray(Image.fromarray(f).resize((width, height), Image.BILINEAR)) for f in frames]


def jpeg(frame: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(frame).save(buffer, format="JPEG", quality=85)
    return buffer.getvalue()


def engine_fps(model, frames: list[np.ndarray], click: tuple[int, int], warmup: int) -> float:
    tracker = sam2rt.StreamTracker(model)
    tracker.step(frames[0])
    tracker.add_prompt(1, points=[click], labels=[1])
    for frame in frames[1 : 1 + warmup]:
        tracker.step(frame).masks.cpu()
    start = time.perf_counter()
    for frame in frames[1 + warmup :]:
        tracker.step(frame).masks.cpu()  # the masks a user needs, on the CPU: one sync per frame
    return (len(frames) - 1 - warmup) / (time.perf_counter() - start)


# Clients (in their own process)


def run_client(url: str, payloads: list[bytes], click: tuple[int, int], rate: float, warmup: int, out: list) -> None:
    """One client: paced at `rate` frames/s, or flat out (rate 0)."""
    from websockets.sync.client import connect

    sent_at: dict[int, float] = {}
    latencies: list[float] = []
    answered = -1
    with connect(url, max_size=None, open_timeout=60) as ws:
        json.loads(ws.recv())  # the session message
        ws.send(payloads[0])
        sent_at[0] = time.perf_counter()

        def wait_result(prompted: bool) -> dict:
            while True:
                message = ws.recv(timeout=120)
                if isinstance(message, str):
                    reply = json.loads(message)
                    if reply["type"] == "result" and reply["prompted"] == prompted:
                        return reply

        wait_result(False)
        ws.send(json.dumps({"type": "prompt", "frame": 0, "obj_id": 1, "points": [list(click)], "labels": [1]}))
        wait_result(True)
        lock = threading.Lock()
        done = threading.Event()
        counts = {"results": 0, "first": None, "last": None}

        def receive() -> None:
            nonlocal answered
            while not done.is_set():
                try:
                    reply = json.loads(ws.recv(timeout=30))
                except Exception:
                    return
                if reply["type"] != "result" or reply["prompted"]:
                    continue
                now = time.perf_counter()
                with lock:
                    answered = max(answered, reply["frame"])
                    if reply["frame"] > warmup:
                        latencies.append(now - sent_at[reply["frame"]])
                        counts["results"] += 1
                        counts["first"] = counts["first"] or now
                        counts["last"] = now

        receiver = threading.Thread(target=receive, daemon=True)
        receiver.start()
        start = time.perf_counter()
        for index in range(1, len(payloads)):
            if rate:
                time.sleep(max(0.0, start + index / rate - time.perf_counter()))
            while True:
                with lock:
                    in_flight = sum(1 for i in sent_at if i > answered)
                if in_flight < IN_FLIGHT or rate:
                    break
                time.sleep(0.0005)
            if in_flight >= IN_FLIGHT:
                continue  # a camera frame the server has no room for: skipped, as the browser app does
            with lock:
                sent_at[index] = time.perf_counter()
            ws.send(payloads[index])
        deadline = time.perf_counter() + 30
        while answered < max(sent_at) and time.perf_counter() < deadline:
            time.sleep(0.005)
        done.set()
        span = (counts["last"] - counts["first"]) if counts["results"] > 1 else float("nan")
        fps = (counts["results"] - 1) / span if counts["results"] > 1 else 0.0
        out.append((fps, latencies))


def clients_process(url: str, count: int, payloads, click, rate: float, warmup: int, queue) -> None:
    results: list = []
    threads = [
        threading.Thread(target=run_client, args=(url, payloads, click, rate, warmup, results)) for _ in range(count)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    queue.put(results)


def scrape(base: str) -> dict[str, float]:
    """The server's /metrics: sample name (labels folded in) -> value; a front's replicas summed."""
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    text = urllib.request.urlopen(f"{base}/metrics", timeout=30).read().decode()
    samples: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f"{v}" for k, v in sorted(sample.labels.items()) if k != "replica")
            key = f"{sample.name}[{labels}]" if labels else sample.name
            samples[key] = samples.get(key, 0.0) + sample.value
    return samples


class LocalServer:
    """`sam2rt serve`'s app on a model built here, under uvicorn in a thread of this process."""

    def __init__(self, model, max_sessions: int, warm_up: bool = True) -> None:
        import uvicorn

        from sam2rt.serve.app import ServerConfig, create_app
        from sam2rt.serve.scheduler import default_engine

        self.model = model
        # warmed up as `sam2rt serve` is: the graphs for max_sessions streams captured before any client comes
        self.app = create_app(default_engine(model), ServerConfig(max_sessions=max_sessions, warm_up=warm_up))
        self.server = uvicorn.Server(
            uvicorn.Config(
                self.app,
                host="127.0.0.1",
                port=0,
                ws_max_size=64 * 2**20,
                ws_per_message_deflate=False,
                log_level="warning",
            )
        )
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        while not self.server.started:
            time.sleep(0.05)
        port = self.server.servers[0].sockets[0].getsockname()[1]
        self.base, self.url = f"http://127.0.0.1:{port}", f"ws://127.0.0.1:{port}/ws"
        start, scheduler = time.monotonic(), self.app.app.state.server.scheduler
        if not scheduler.ready.wait(timeout=600):
            raise SystemExit("the server did not warm up in 10 minutes")
        if warm_up:
            print(f"server warmed up for {max_sessions} sessions in {time.monotonic() - start:.1f} s", flush=True)

    def set_batch_wait(self, wait_ms: float) -> None:
        self.app.app.state.server.scheduler.batch_wait_s = wait_ms / 1000

    def graphs(self) -> int:
        from sam2rt.runtime.graphs import captured_graphs

        return captured_graphs(self.model)

    def stop(self) -> None:
        deadline = time.monotonic() + 10
        while self.app.app.state.server.sessions and time.monotonic() < deadline:  # every client gone: all freed
            time.sleep(0.1)
        if self.model.device.type == "cuda":
            torch.cuda.synchronize(self.model.device)
            after = torch.cuda.memory_allocated(self.model.device)
            print(f"GPU memory allocated after all sessions closed: {after / 2**20:.1f} MiB")
        self.server.should_exit = True
        self.thread.join(timeout=10)


class RemoteServer:
    """A server started elsewhere (`sam2rt serve`, with or without --ray), at a WebSocket URL."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.base = "http" + url.removeprefix("ws").removesuffix("/ws")

    def set_batch_wait(self, wait_ms: float) -> None:
        pass  # the server's own --batch-wait-ms

    def graphs(self) -> int:
        return 0  # not seen from here

    def stop(self) -> None:
        pass


def print_profiles(profiles: list) -> None:
    """Per row: mean ms of each stage, sessions per tick, ticks, graphs captured, GPU memory at its end."""
    stages = ("decode", "engine", "download", "publish")
    print("\n| clients | streaming | wait ms | " + " | ".join(f"{s} ms" for s in stages), end="")
    print(" | sessions/tick | ticks | graphs captured | GPU MiB alloc / reserved |")
    print("|---" * (len(stages) + 7) + "|")
    for count, rate, wait, before, after, graphs in profiles:

        def delta(name: str) -> float:
            return after.get(name, 0.0) - before.get(name, 0.0)

        means = []
        for stage in stages:
            calls = delta(f"sam2rt_stage_seconds_count[{stage}]")
            means.append(f"{1000 * delta(f'sam2rt_stage_seconds_sum[{stage}]') / calls:.1f}" if calls else "-")
        ticks = delta("sam2rt_tick_sessions_count")
        per_tick = delta("sam2rt_tick_sessions_sum") / ticks if ticks else float("nan")
        memory = [after.get(f"sam2rt_gpu_memory_{kind}_bytes", 0.0) / 2**20 for kind in ("allocated", "reserved")]
        mode = f"paced {rate:g}/s" if rate else "flat out"
        print(
            f"| {count} | {mode} | {wait:g} | " + " | ".join(means) + f" | {per_tick:.2f} | {ticks:.0f} | {graphs} | "
            f"{memory[0]:.0f} / {memory[1]:.0f} |"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--variant", default="sam2.1_hiera_tiny")
    parser.add_argument("--image-size", type=int, default=1024)
    parser.add_argument("--frames", type=int, default=150, help="frames each client streams")
    parser.add_argument("--clients", default="1,4,8")
    parser.add_argument("--size", default="720x1280", help="HxW of the streamed frames")
    parser.add_argument("--source", type=Path, default=CLIP, help="video file or folder of frames to stream")
    parser.add_argument("--exact", action="store_true", help="fp32 weights, no CUDA graphs")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--batch-wait-ms", default="0,20", help="tick waits to compare, e.g. 0,20")
    parser.add_argument("--rate", type=float, default=30.0, help="frames/s of each paced client (a camera)")
    parser.add_argument("--modes", default="flat,paced", help="flat (out), paced, or both")
    parser.add_argument("--cold", action="store_true", help="no warm-up: graphs captured as the ticks need them")
    parser.add_argument("--url", help="the /ws of a server started elsewhere (sam2rt serve, --ray too), not our own")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    from sam2rt.runtime import optimize

    height, width = map(int, args.size.split("x"))
    frames = load_frames(args.source, args.frames, (height, width))
    payloads = [frame_header(i, FORMAT_JPEG, width, height) + jpeg(f) for i, f in enumerate(frames)]
    click = (int(width * 0.22), int(height * 0.65))
    warmup = min(20, args.frames // 3)
    device = torch.device(args.device)
    model = sam2rt.build_model(args.variant, image_size=args.image_size).to(device).eval()
    model = model if args.exact else optimize(model)
    with ThreadPoolExecutor(1) as thread:  # a worker thread, as the server's scheduler (CPU thread pools differ)
        bare = thread.submit(engine_fps, model, frames, click, warmup).result()
    print(f"{args.variant} at {args.image_size}, {width}x{height} JPEG frames, {device}; engine {bare:.1f} frames/s")

    counts = [int(c) for c in args.clients.split(",")]
    server = RemoteServer(args.url) if args.url else LocalServer(model, max(counts) + 1, not args.cold)
    waits = [float(w) for w in args.batch_wait_ms.split(",")] if not args.url else [float("nan")]
    print(
        "| clients | streaming | wait ms | per-client FPS (mean) | all clients FPS | p50 latency ms | p95 latency ms "
        "| vs engine |"
    )
    print("|---|---|---|---|---|---|---|---|")
    profiles = []
    context = multiprocessing.get_context("spawn")
    rates = [0.0 if mode == "flat" else args.rate for mode in args.modes.split(",")]
    for rate, count, wait in [(r, c, w) for r in rates for c in counts for w in waits]:
        server.set_batch_wait(wait)
        before, graphs_before = scrape(server.base), server.graphs()
        queue = context.Queue()
        process = context.Process(
            target=clients_process, args=(server.url, count, payloads, click, rate, warmup, queue)
        )
        process.start()
        results = queue.get(timeout=600)
        process.join()
        profiles.append((count, rate, wait, before, scrape(server.base), server.graphs() - graphs_before))
        fps = [r[0] for r in results]
        latencies = sorted(1000 * x for r in results for x in r[1])
        p50 = statistics.median(latencies) if latencies else float("nan")
        p95 = latencies[int(0.95 * (len(latencies) - 1))] if latencies else float("nan")
        total = sum(fps)
        mode = f"paced {rate:g}/s" if rate else "flat out"
        print(
            f"| {count} | {mode} | {wait:g} | {statistics.mean(fps):.1f} | {total:.1f} | {p50:.0f} | {p95:.0f} | "
            f"{total / bare:.2f} |",
            flush=True,
        )
    print_profiles(profiles)
    server.stop()


if __name__ == "__main__":
    main()

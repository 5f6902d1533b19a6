"""Many live streams, long streams, heavy memories and a per-stage profile, on the GPU, with the official predictor.

    python benchmarks/streams.py                                    # every case, tiny at 1024
    python benchmarks/streams.py --cases profile                    # the profile alone (runs on older sam2rt too)
    python benchmarks/streams.py --cases cpu --device cpu --threads 2 --image-size 512 --frames 24

Same weights and frames on both sides (the bedroom clip, or noise frames without it), no hole
filling on either side. sam2rt runs with bf16 weights and CUDA graphs (sam2rt.runtime.optimize);
the official predictor under bf16 autocast with TF32 matmuls, as its own benchmark runs. Cases:
- streams: N streams x 1 object stepped together by a StreamPool, FPS per stream, against N
  official predictors (one model, N inference states) taking turns frame by frame;
- latency: p50 / p99 of one stream's step (1 object), each step synchronised;
- memory: GPU memory allocated over a long stream (1 object), sampled every 1000 frames;
- heavy: each object corrected on 8 frames (8 conditioning frames in its memory), 1 and 4 objects;
- live: one stream, 3 objects, one corrected every 60 frames, default hole filling (sam2rt only);
- profile: ms per frame by stage (CUDA events around the encoder, memory attention, decoder,
  memory encoder, memory gather, output upsampling; the rest of the step is "other"), each model step
  its own graph; then the step as it runs (the engine's tracking pass one graph);
- attention: the memory attention's cross-attention alone, per attention kernel and as the engine runs it
  (captured), values as wide as the keys and the memory's raw 64-wide values (what bounds a step);
- kernels: the GPU kernels of a 1-object step by time (torch.profiler, eager bf16);
- outside: the ops the host dispatches in a step, by sam2rt source line, without and with hole filling (with
  graphs: all but the replays; what further graphs could take in);
- cpu: 4 objects on the CPU, memory attention split per object or batched (and split with the memory's values
  projected before the attention), against the official loop, stepped in turns frame by frame.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import sys
import time
from collections import defaultdict
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from oracle import oracle_model, oracle_video_state, our_model  # noqa: E402
from tracking import CLICKS, load_frames, synchronize  # noqa: E402

import sam2rt  # noqa: E402
from sam2rt.runtime import optimize, to_inference_dtype  # noqa: E402


def _clicks(obj: int, correction: int = 0) -> list[tuple[int, int]]:
    x, y = CLICKS[obj % len(CLICKS)]
    return [(x + 3 * correction, y + 2 * correction)]


def _official_run(ref, frames, objects: int, corrections: int = 1):
    """An official session over `frames`, each object prompted on frames 0 .. corrections-1: its propagation."""
    # Frames preprocessed up front with the official loader's resize (speed does not depend on which).
    state = oracle_video_state(ref, frames, "pil-bicubic")
    for obj in range(objects):
        for t in range(corrections):
            ref.add_new_points_or_box(state, t, obj + 1, points=_clicks(obj, t), labels=[1])
    return ref.propagate_in_video(state)


def _official_fps_taking_turns(ref, frames, streams: int, objects: int, warmup: int, corrections: int = 1) -> float:
    """Frames per second of each of `streams` official sessions propagated in turns, one frame each."""
    runs = [_official_run(ref, frames, objects, corrections) for _ in range(streams)]
    for _ in range(max(warmup, corrections)):
        for run in runs:
            next(run)
    synchronize(ref.device)
    start, count = time.perf_counter(), 0
    for _ in range(len(frames) - max(warmup, corrections)):
        for run in runs:
            next(run)
        count += 1
    synchronize(ref.device)
    return count / (time.perf_counter() - start)


def _pool_fps(model, frames, streams: int, objects: int, warmup: int, corrections: int = 1) -> float:
    pool = sam2rt.StreamPool(model, fill_hole_area=0)
    members = [pool.open_stream() for _ in range(streams)]
    for t in range(corrections):  # each object prompted on frame 0, corrected on frames 1 .. corrections-1
        pool.step({stream: frames[t] for stream in members})
        for stream in members:
            for obj in range(objects):
                stream.add_prompt(obj + 1, points=_clicks(obj, t), labels=[1])
    for t in range(corrections, corrections + warmup):
        pool.step({stream: frames[t] for stream in members})
    synchronize(model.device)
    start = time.perf_counter()
    timed = frames[corrections:]
    for frame in timed:
        pool.step({stream: frame for stream in members})
    synchronize(model.device)
    return len(timed) / (time.perf_counter() - start)


def case_streams(model, ref, frames, args, autocast) -> None:
    ours = _pool_fps(model, frames, args.streams, 1, args.warmup)
    official = float("nan")
    if ref is not None:
        with autocast:  # the official side's precision; sam2rt's weights are bf16 already
            official = _official_fps_taking_turns(ref, frames, args.streams, 1, 5)
    print(
        f"streams: {args.streams} x 1 object: sam2rt pool {ours:.1f} FPS per stream ({ours * args.streams:.0f} in all)"
    )
    print(f"streams: {args.streams} official predictors taking turns: {official:.1f} FPS per stream")


def percentiles(ordered: list[float], *shares: float) -> list[float]:
    """The values at these shares (0.5: the median) of an ascending list."""
    return [ordered[min(len(ordered) - 1, int(share * len(ordered)))] for share in shares]


def case_latency(model, frames, args) -> None:
    tracker = sam2rt.StreamTracker(model, fill_hole_area=0)
    tracker.step(frames[0])
    tracker.add_prompt(1, points=_clicks(0), labels=[1])
    times = []
    for t in range(args.latency_steps + args.warmup):
        synchronize(model.device)
        start = time.perf_counter()
        tracker.step(frames[1 + t % (len(frames) - 1)])
        synchronize(model.device)
        times.append(1000 * (time.perf_counter() - start))
    times = sorted(times[args.warmup :])
    p50, p99 = percentiles(times, 0.5, 0.99)
    print(f"latency: one stream, 1 object, {len(times)} steps: p50 {p50:.2f} ms, p99 {p99:.2f} ms, max {times[-1]:.2f}")


def case_memory(model, frames, args) -> None:
    tracker = sam2rt.StreamTracker(model, fill_hole_area=0)
    tracker.step(frames[0])
    tracker.add_prompt(1, points=_clicks(0), labels=[1])
    samples = {}
    torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    for t in range(1, args.long_frames + 1):
        tracker.step(frames[t % len(frames)])
        if t % 1000 == 0 or t == 100:
            samples[t] = torch.cuda.memory_allocated()
    synchronize(model.device)
    elapsed = time.perf_counter() - start
    after_warmup = [v for t, v in samples.items() if t >= 1000]
    mib = 2**20
    print(
        f"memory: {args.long_frames} frames of one stream at {args.long_frames / elapsed:.1f} FPS; allocated MiB by "
        f"frame: {', '.join(f'{t}: {v / mib:.1f}' for t, v in samples.items())}; "
        f"spread after frame 1000: {(max(after_warmup) - min(after_warmup)) / mib:.2f} MiB; "
        f"peak {torch.cuda.max_memory_allocated() / mib:.0f} MiB"
    )


def case_heavy(model, ref, frames, args, autocast) -> None:
    for objects in (1, 4):
        ours = _pool_fps(model, frames, 1, objects, args.warmup, corrections=8)
        official = float("nan")
        if ref is not None:
            with autocast:
                official = _official_fps_taking_turns(ref, frames, 1, objects, 5, corrections=8)
        print(f"heavy: {objects} object(s) x 8 conditioning frames: sam2rt {ours:.1f} FPS, official {official:.1f} FPS")


LIVE_OBJECTS = 3
LIVE_CORRECTION_EVERY = 60  # frames between corrections, each a click on one object (a new conditioning frame)
LIVE_FILL_HOLE_AREA = 8  # the commands' default


def case_live(model, frames, args) -> None:
    """The live workload: one stream with the commands' default settings (hole filling 8), 3 objects clicked on its
    first frame and one of them corrected every LIVE_CORRECTION_EVERY frames, in turn. Timed over `--live-frames`
    (the clip looped) after `--warmup`, corrections included. Meta's predictor has no like-for-like row: a click
    after propagation has started restarts its propagation."""
    tracker = sam2rt.StreamTracker(model, fill_hole_area=LIVE_FILL_HOLE_AREA)
    tracker.step(frames[0])
    for obj in range(LIVE_OBJECTS):
        tracker.add_prompt(obj + 1, points=_clicks(obj), labels=[1])
    seconds, corrections = [], 0
    for t in range(1, args.warmup + args.live_frames + 1):
        start = time.perf_counter()
        tracker.step(frames[t % len(frames)])
        if t % LIVE_CORRECTION_EVERY == 0:
            corrections += 1
            obj = corrections % LIVE_OBJECTS
            tracker.add_prompt(obj + 1, points=_clicks(obj, corrections), labels=[1])
        synchronize(model.device)  # a camera's frame is done when its masks are
        seconds.append(time.perf_counter() - start)
    timed = sorted(seconds[args.warmup :])
    p50, p99 = (1000 * value for value in percentiles(timed, 0.5, 0.99))
    print(
        f"live: {LIVE_OBJECTS} objects, one corrected every {LIVE_CORRECTION_EVERY} frames ({corrections} in all), hole"
        f" filling {LIVE_FILL_HOLE_AREA}: {len(timed) / sum(timed):.1f} FPS over {len(timed)} frames,"
        f" p50 {p50:.2f} ms, p99 {p99:.2f} ms"
    )


class StageTimer:
    """CUDA events around the model's stages, summed per stage."""

    def __init__(self) -> None:
        self.spans: dict[str, list] = defaultdict(list)
        self.open: dict[str, torch.cuda.Event] = {}

    def begin(self, name: str) -> None:
        event = torch.cuda.Event(enable_timing=True)
        event.record()
        self.open[name] = event

    def end(self, name: str) -> None:
        event = torch.cuda.Event(enable_timing=True)
        event.record()
        self.spans[name].append((self.open.pop(name), event))

    def wrap(self, name: str, fn):
        def timed(*args, **kwargs):
            self.begin(name)
            out = fn(*args, **kwargs)
            self.end(name)
            return out

        return timed

    def totals(self) -> dict[str, float]:
        torch.cuda.synchronize()
        return {name: sum(a.elapsed_time(b) for a, b in spans) for name, spans in self.spans.items()}


# The model's steps by stage, each its heavy module with the glue around it (what a CUDA graph replays).
STEPS = {
    "encoder": "encode_image",
    "memory attention": "condition_on_memory",
    "decoder": "segment",
    "memory encoder": "encode_memory",
}


def wrap_steps(model, wrapper):
    """Replace each of the model's STEPS by `wrapper(stage, step)`; returns a function that undoes it."""
    own = {name: model.__dict__[name] for name in STEPS.values() if name in model.__dict__}  # graphed steps
    for stage, name in STEPS.items():
        setattr(model, name, wrapper(stage, getattr(model, name)))

    def restore() -> None:
        for name in STEPS.values():
            if name in own:
                setattr(model, name, own[name])
            else:
                delattr(model, name)

    return restore


@contextlib.contextmanager
def _steps_one_by_one():
    """The engine's tracking pass runs the model's steps one by one (each its own graph, so each can be timed)
    instead of replaying the whole pass as one graph; checkouts older than the whole-pass graph run so anyway."""
    from sam2rt.tracking import engine as engine_module

    whole = getattr(engine_module, "graphed_with_model", None)
    if whole is None:
        yield
        return
    engine_module.graphed_with_model = lambda model, fn: functools.partial(fn, model)
    try:
        yield
    finally:
        engine_module.graphed_with_model = whole


def _profiled_tracker(model, frames, objects: int, warmup: int):
    tracker = sam2rt.StreamTracker(model, fill_hole_area=0)
    tracker.step(frames[0])
    for obj in range(objects):
        tracker.add_prompt(obj + 1, points=_clicks(obj), labels=[1])
    for frame in frames[1 : 1 + warmup]:
        tracker.step(frame)
    return tracker


def _timed_steps(tracker, frames, timer: StageTimer) -> float:
    """Step through `frames` with the whole step timed on the GPU as "step"; returns the host's ms per frame."""
    host = 0.0
    for frame in frames:
        start = time.perf_counter()
        timer.begin("step")
        tracker.step(frame)
        timer.end("step")
        host += time.perf_counter() - start
    return 1000 * host / len(frames)


def case_profile(model, frames, args) -> None:
    from sam2rt.tracking import engine as engine_module

    timed = frames[1 + args.warmup :]
    for objects in (1, 4):
        timer = StageTimer()
        with _steps_one_by_one():
            tracker = _profiled_tracker(model, frames, objects, args.warmup)
            restore = wrap_steps(model, timer.wrap)
            gather, upsample = engine_module.gather, engine_module.TrackingEngine.to_video_resolution
            engine_module.gather = timer.wrap("memory gather", gather)
            engine_module.TrackingEngine.to_video_resolution = timer.wrap("output", upsample)
            try:
                host = _timed_steps(tracker, timed, timer)
                totals = timer.totals()
            finally:
                restore()
                engine_module.gather, engine_module.TrackingEngine.to_video_resolution = gather, upsample
        per_frame = {name: total / len(timed) for name, total in totals.items()}
        step = per_frame.pop("step")
        other = step - sum(per_frame.values())
        stages = ", ".join(f"{name} {ms:.2f}" for name, ms in per_frame.items())
        label = f"profile [{args.label}] tiny, {objects} object(s), ms/frame"
        print(f"{label}, steps one by one: step {step:.2f} (host {host:.2f}); {stages}, other {other:.2f}")
        # The step as it runs: the engine's tracking pass replayed as one graph, where the tree has it.
        timer = StageTimer()
        host = _timed_steps(_profiled_tracker(model, frames, objects, args.warmup), timed, timer)
        print(f"{label}, as it runs: step {timer.totals()['step'] / len(timed):.2f} (host {host:.2f})")


def _gpu_ms(fn, repeats: int = 20) -> float:
    """GPU milliseconds per call of `fn`, after 3 calls of warm-up."""
    for _ in range(3):
        fn()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(repeats):
        fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / repeats


def _captured(fn):
    """`fn` captured into a CUDA graph as the engine's pass is (cuDNN preferred, one row's keys sliced): its replay."""
    from sam2rt.runtime.kernels import attention_for_graphs

    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with attention_for_graphs():
        with torch.cuda.stream(stream):
            for _ in range(2):
                fn()
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            fn()
    return graph.replay


def case_attention(model, frames, args) -> None:
    attention_kernels(model.config, (1, 4))


def attention_kernels(config, object_counts) -> None:
    """The memory attention's cross-attention alone, per kernel and as the engine runs it (captured), with values
    projected first (as wide as the keys) and with the memory's raw values (projected after): 7 frames of memory
    and 16 pointers per object, for a batch of each of `object_counts` objects."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from sam2rt.runtime.kernels import attention

    tokens, width = config.feature_size**2, config.hidden_dim
    keys = (config.num_maskmem) * tokens + config.max_obj_ptrs * (width // config.memory_dim)
    for objects in object_counts:
        for value_width in (width, config.memory_dim):
            q, k = (torch.randn(objects, 1, n, width, device="cuda", dtype=torch.bfloat16) for n in (tokens, keys))
            v = torch.randn(objects, 1, keys, value_width, device="cuda", dtype=torch.bfloat16)
            flops = 2 * objects * tokens * keys * (width + value_width)
            timings = []
            for backend in (SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.CUDNN_ATTENTION):
                try:
                    with sdpa_kernel(backend):
                        ms = _gpu_ms(lambda: torch.nn.functional.scaled_dot_product_attention(q, k, v))
                    timings.append(f"{backend.name.lower()} {ms:.3f} ms ({flops / ms / 1e9:.0f} TFLOP/s)")
                except RuntimeError as error:
                    timings.append(f"{backend.name.lower()} unavailable ({str(error).splitlines()[0][:60]})")
            ms = _gpu_ms(_captured(lambda: attention(q, k, v)))
            timings.append(f"engine, captured {ms:.3f} ms ({flops / ms / 1e9:.0f} TFLOP/s)")
            print(
                f"attention: {objects} object(s), {tokens} queries x {keys} keys, width {width}, values {value_width}: "
                + "; ".join(timings)
            )
    print(f"  (x4 layers per frame, plus self-attention over {tokens} tokens)")


def case_kernels(model, frames, args) -> None:
    """The GPU kernels of a tracking step with 1 object, eager bf16 (the kernels a graph replays), by time."""
    from torch.profiler import ProfilerActivity, profile

    eager = to_inference_dtype(our_model(args.variant, args.image_size).to(model.device))
    tracker = sam2rt.StreamTracker(eager, fill_hole_area=0)
    tracker.step(frames[0])
    tracker.add_prompt(1, points=_clicks(0), labels=[1])
    for frame in frames[1:10]:
        tracker.step(frame)
    steps = 10
    with profile(activities=[ProfilerActivity.CUDA]) as trace:
        for frame in frames[10 : 10 + steps]:
            tracker.step(frame)
        torch.cuda.synchronize()
    rows = sorted(trace.key_averages(), key=lambda e: e.device_time_total, reverse=True)[:15]
    total = sum(e.device_time_total for e in trace.key_averages()) / steps / 1000
    print(f"kernels: 1 object, eager bf16, GPU busy {total:.2f} ms/frame; top kernels (ms/frame, calls/frame):")
    for e in rows:
        print(f"  {e.device_time_total / steps / 1000:7.3f} {e.count / steps:6.1f}  {e.key[:110]}")


def case_outside(model, frames, args) -> None:
    """Ops the host dispatches in a tracking step, by sam2rt source line: with graphs, everything but the
    replays (copies into and out of graphs included; views count, though they launch no kernel)."""
    import traceback
    from collections import Counter

    from torch.utils._python_dispatch import TorchDispatchMode

    class DispatchedOps(TorchDispatchMode):
        def __init__(self) -> None:
            super().__init__()
            self.lines: Counter = Counter()

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            ours = [f for f in traceback.extract_stack() if "sam2rt" in f.filename and "benchmarks" not in f.filename]
            where = f"{ours[-1].filename.split('sam2rt/')[-1]}:{ours[-1].lineno} {ours[-1].name}" if ours else "?"
            self.lines[where] += 1
            return func(*args, **(kwargs or {}))

    for fill_hole_area in (0, 8):
        for objects in (1, 4):
            tracker = sam2rt.StreamTracker(model, fill_hole_area=fill_hole_area)
            tracker.step(frames[0])
            for obj in range(objects):
                tracker.add_prompt(obj + 1, points=_clicks(obj), labels=[1])
            for frame in frames[1 : 1 + args.warmup]:
                tracker.step(frame)
            steps = frames[1 + args.warmup : 11 + args.warmup]
            with DispatchedOps() as counter:
                for frame in steps:
                    tracker.step(frame)
            total = sum(counter.lines.values()) / len(steps)
            print(f"outside: {objects} object(s), hole filling {fill_hole_area}: {total:.0f} ops a step; most:")
            for where, count in counter.lines.most_common(8):
                print(f"  {count / len(steps):6.1f}  {where}")


def case_cpu(model, ref, frames, args) -> None:
    """Contenders stepped in turns, frame by frame, in a rotating order: the noise of a shared machine falls
    on all alike. Timed once every object's memory is full (7 frames)."""
    from sam2rt.runtime import kernels
    from sam2rt.tracking.engine import TrackingEngine

    def ours(split: bool, values_after: bool):
        tracker = sam2rt.StreamTracker(model, fill_hole_area=0)
        tracker.step(frames[0])
        for obj in range(4):
            tracker.add_prompt(obj + 1, points=_clicks(obj), labels=[1])

        def step(frame) -> None:
            splits, chooses = TrackingEngine.split_cpu_attention, kernels.attends_raw_values
            TrackingEngine.split_cpu_attention = split
            if not values_after:
                kernels.attends_raw_values = lambda q, values_projection: False
            try:
                tracker.step(frame)
            finally:
                TrackingEngine.split_cpu_attention, kernels.attends_raw_values = splits, chooses

        return step

    contenders = {
        "split": ours(split=True, values_after=True),
        "batched": ours(split=False, values_after=True),
        "split, values projected first": ours(split=True, values_after=False),
    }
    if ref is not None:
        run = _official_run(ref, frames, objects=4)
        next(run)  # frame 0, prompted: no tracking
        contenders["official"] = lambda frame: next(run)
    names, full_memory = list(contenders), 7
    seconds = dict.fromkeys(names, 0.0)
    for t, frame in enumerate(frames[1:], start=1):
        for i in range(len(names)):
            name = names[(t + i) % len(names)]
            start = time.perf_counter()
            contenders[name](frame)
            if t > full_memory:
                seconds[name] += time.perf_counter() - start
    timed = len(frames) - 1 - full_memory
    for name in names:
        print(f"cpu: 4 objects, {torch.get_num_threads()} threads, {name}: {timed / seconds[name]:.3f} FPS")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", default="streams,latency,memory,heavy,live,profile,attention")
    parser.add_argument("--variant", default="sam2.1_hiera_tiny")
    parser.add_argument("--image-size", type=int, default=1024)
    parser.add_argument("--frames", type=int, default=100)
    parser.add_argument("--streams", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--latency-steps", type=int, default=500)
    parser.add_argument("--long-frames", type=int, default=10_000)
    parser.add_argument("--live-frames", type=int, default=600, help="frames timed in the live case")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--label", default="this tree", help="names the code under test in the profile lines")
    parser.add_argument("--frames-dir", type=Path, default=ROOT.parent / "shared" / "data" / "videos" / "bedroom")
    parser.add_argument("--skip-official", action="store_true")
    parser.add_argument("--compile", action="store_true", help="sam2rt with torch.compile under its CUDA graphs")
    args = parser.parse_args()

    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    cases = args.cases.split(",")
    frames = load_frames(args.frames_dir, args.frames)
    with torch.inference_mode():
        model = our_model(args.variant, args.image_size).to(device)
        model = optimize(model, compile=args.compile)  # bf16 weights and CUDA graphs on CUDA; unchanged on CPU
        ref = None
        if not args.skip_official and {"streams", "heavy", "cpu"} & set(cases):
            ref = oracle_model(args.variant, args.image_size, video=True, fill_hole_area=0).to(device)
        if device.type == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
        autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else contextlib.nullcontext()
        where = (
            torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
        )
        compiled = ", torch.compile under the graphs" if args.compile else ""
        print(f"{args.variant} at {args.image_size}, {len(frames)} frames, {where}{compiled}")
        for case in cases:
            start = time.perf_counter()
            if case == "streams":
                case_streams(model, ref, frames, args, autocast)
            elif case == "latency":
                case_latency(model, frames, args)
            elif case == "memory":
                case_memory(model, frames, args)
            elif case == "heavy":
                case_heavy(model, ref, frames, args, autocast)
            elif case == "live":
                case_live(model, frames, args)
            elif case == "profile":
                case_profile(model, frames, args)
            elif case == "attention":
                case_attention(model, frames, args)
            elif case == "kernels":
                case_kernels(model, frames, args)
            elif case == "cpu":
                case_cpu(model, ref, frames, args)
            elif case == "outside":
                case_outside(model, frames, args)
            else:
                raise SystemExit(f"error: unknown case {case!r}")
            print(f"  ({case}: {time.perf_counter() - start:.0f} s)", flush=True)


if __name__ == "__main__":
    main()

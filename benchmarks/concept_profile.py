"""Where a frame of concept tracking goes: ConceptTracker (as `sam2rt track --text` runs it) on a stream with N
instances of one phrase, its stages timed under torch.profiler, with the costliest kernels and host operations.

    python benchmarks/concept_profile.py --device cuda --instances 5          # SAM 3's size, bf16, 720p frames
    python benchmarks/concept_profile.py --device cpu --spec small --instances 2 --frames 3   # a smoke run

The stream is set up as benchmarks/concept_tracking.py's rows are (the same random weights, detection bars set so
that N instances start on the first frame); after --warmup frames, --frames are stepped once unprofiled (wall ms a
frame) and once under the profiler. Stages: each a ConceptTracker step's part (image encoding, detection, the
tracks' propagation, the frame's plan, memories written, new tracks, the results at the frame's size), with the
host time spent in it and the device time of the kernels it launched, per frame.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile, record_function

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT / "tests"))

from concept_tracking import (  # noqa: E402
    Ours,
    clip_frames,
    detection_bar,
    importing,
    make_weights,
    stream_options,
    tokenizer_and_vocabulary,
)
from concepts import synchronize_device  # noqa: E402

import sam2rt.tracking.concepts as concepts_module  # noqa: E402
from sam2rt.model.sam3.config import SAM3  # noqa: E402

# (owner, attribute, label): the tracker's own methods are patched on the instance, module functions on the module
TRACKER_STAGES = (
    ("encode", "image encoding"),
    ("_detect", "detection"),
    ("_write_tracked_memories", "memories written"),
    ("_add_tracks", "new tracks"),
    ("_result", "results"),
)
ENGINE_STAGES = (("propagate", "propagation"),)
MODULE_STAGES = (("plan_frame", "plan"),)


def labelled(function, label: str):
    def run(*args, **kwargs):
        with record_function(label):
            return function(*args, **kwargs)

    return run


def label_stages(tracker) -> list[str]:
    """Put each stage's calls under a profiler label (on this tracker and its engine; the plan on the module)."""
    labels = []
    for owner, stages in ((tracker, TRACKER_STAGES), (tracker.engine, ENGINE_STAGES)):
        for name, label in stages:
            setattr(owner, name, labelled(getattr(owner, name), label))
            labels.append(label)
    for name, label in MODULE_STAGES:
        setattr(concepts_module, name, labelled(getattr(concepts_module, name), label))
        labels.append(label)
    return labels


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--instances", type=int, default=5)
    parser.add_argument("--frames", type=int, default=10, help="frames timed, then profiled")
    parser.add_argument("--warmup", type=int, default=10, help="frames stepped first (tracks start on the first)")
    parser.add_argument("--source", default=str(ROOT.parent / "shared" / "data" / "videos" / "bedroom"))
    parser.add_argument("--phrase", default="person")
    parser.add_argument("--spec", choices=("full", "small"), default="full")
    parser.add_argument("--top", type=int, default=15, help="kernels and host operations listed")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if args.spec == "small":
        from test_concept_tracker import SPEC as spec
    else:
        spec = SAM3
    from oracle_sam3_hf import import_transformers_sam3_video

    hf = importing(import_transformers_sam3_video)
    tokenizer, _ = tokenizer_and_vocabulary(Path(tempfile.mkdtemp()))
    clip, clip_name = clip_frames(Path(args.source), args.warmup + 2 * args.frames)
    ours = Ours(make_weights(hf, spec), spec, tokenizer, args.phrase, device)
    options = stream_options(detection_bar(ours.scores(clip[0]), args.instances), args.instances)
    tracker = ours.concept_tracker(options)
    for frame in clip[: args.warmup]:
        tracker.step(frame)
    timed, profiled = clip[args.warmup : args.warmup + args.frames], clip[args.warmup + args.frames :]
    synchronize_device(device)
    start = time.perf_counter()
    for frame in timed:
        tracker.step(frame)
    synchronize_device(device)
    wall = (time.perf_counter() - start) * 1000 / len(timed)

    labels = label_stages(tracker)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as trace:
        for frame in profiled:
            tracker.step(frame)
        synchronize_device(device)
    events = {event.key: event for event in trace.key_averages()}
    frames = len(profiled)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {args.threads} threads"
    print(
        f"\nConcept tracking, {name}, {spec.vision.image_size} px, 720p frames of {clip_name}: "
        f"{len(tracker.object_ids)} tracks ({args.instances} asked); {wall:.1f} ms a frame unprofiled"
    )
    print(f"{'stage':<18}{'host ms':>9}{'device ms':>11}  (per frame; a stage's host time includes waits)")
    for label in labels:
        event = events.get(label)
        host = event.cpu_time_total / 1e3 / frames if event else 0.0
        gpu = event.device_time_total / 1e3 / frames if event else 0.0
        print(f"{label:<18}{host:>9.2f}{gpu:>11.2f}")
    if device.type == "cuda":
        kernels = [e for e in trace.key_averages() if e.device_type.name == "CUDA" and e.self_device_time_total > 0]
        total = sum(e.self_device_time_total for e in kernels) / 1e3 / frames
        print(f"\nkernels: {total:.2f} ms a frame of device time; the costliest:")
        for event in sorted(kernels, key=lambda e: -e.self_device_time_total)[: args.top]:
            share = event.self_device_time_total / 1e3 / frames
            print(f"  {share:7.3f} ms {event.count / frames:6.1f}x  {event.key[:110]}")
    host_ops = [e for e in trace.key_averages() if e.device_type.name == "CPU" and e.key not in labels]
    print("\nhost operations, self time (the costliest):")
    for event in sorted(host_ops, key=lambda e: -e.self_cpu_time_total)[: args.top]:
        print(f"  {event.self_cpu_time_total / 1e3 / frames:7.3f} ms {event.count / frames:6.1f}x  {event.key[:110]}")


if __name__ == "__main__":
    main()

"""SAM 3 concept tracking on a stream, one phrase with 1, 5 and 20 instances: sam2rt's ConceptTracker against Meta's
video model (`Sam3VideoInference`, `sam3` 0.1.4) and transformers' `Sam3VideoModel` (5.x), in the same run, on the
same 720p frames and the same weights.

    python benchmarks/concept_tracking.py --device cuda                         # bf16, SAM 3's size, 60 frames a row
    python benchmarks/concept_tracking.py --device cuda --impls none --long 3000    # ours alone: memory, 3,000 frames
    python benchmarks/concept_tracking.py --device cpu --spec small --frames 3 --warmup 1 --instances 1,5
                                                                                 # a CPU smoke run, the tests' size

Each row is one implementation streaming the clip a frame at a time, a fresh stream for each instance count (the
models are built once). A frame is what a live caller waits for: the frame resized and normalised, detection, the
tracks propagated, association, memories written, and every track's mask at the frame's size. Columns: instances
asked, tracks on the last frame, the detection bar used (see below), ms per frame (median over --frames after
--warmup untimed ones; tracks start on the first frame, a warm-up one), FPS (frames over their total time), and
the row's ms over ours' at the same count.

Rows: `ours` as `sam2rt track --text` runs it (on CUDA bf16 weights, the detector and the tracker replayed from
CUDA graphs by `runtime.optimize_concept_models`); `meta`, Meta's video model driven a frame
at a time (`_run_single_frame_inference`, then `_postprocess_output`: its predictor's work on a frame, without the
hotstart buffer a stream cannot have), under bf16 autocast on CUDA as its README runs it; `transformers`,
Sam3VideoModel's own streaming (`forward(frame=...)` through tests/oracle_sam3_hf.py's TransformersStream with
every switch off), bf16 weights and session on CUDA, its masks made at the frame's size as its processor makes
them. An implementation that cannot be imported or built here is skipped, with the reason. transformers runs its
hole filling with a kernel from the hub (CUDA only) and skips it when the kernel does not load: the output says
which; on the CPU it gets the tests' stand-in, as the tests run it.

Weights: random and the same in all three: transformers' own initialisation perturbed and shifted as the concept
tracking tests shift it (query scores far apart, tracked objects present, masks with edges), converted to ours
(`checkpoints.sam3_keys`, tests/oracle_sam3_hf.py) and from ours to Meta's sam3.pt names.

Instances: random weights find nothing above SAM 3's bars, and their masks cover most of the frame, overlapping.
So N instances are made to exist, the same way for all three: on the first frame each implementation's own video
detector scores the queries, in its own precision (the scores differ: transformers' video model reads the text
without the geometry encoder's token, and bf16 weights round otherwise than bf16 autocast); both detection bars
(score_threshold_detection, new_det_thresh) are set halfway between its N-th best score and its max(2N, N + 2)-th,
and max_num_objects to N, so that its N best start a track on the first frame; NMS is off (det_nms_thresh 0: the
random masks overlap, NMS would keep one) and so are hotstart removals (hotstart_delay 0: the random tracker does
not follow the detections, which would remove tracks on probation and start others), so the N tracks last. Every
other option is the official one. Each row says how many tracks its stream has on the last frame; a count other
than N is flagged.

`--long N`: ours alone over N frames (the clip looped) with --long-instances tracks, printing every --report-every
frames the GPU memory allocated and reserved (CUDA) or the process's resident memory (CPU), what our tracker holds
between frames, and the FPS since the previous report; then the growth from the first report to the last (SAM 3's
"memory flat over 3,000 frames").

`--spec small` is the concept tracking tests' SAM 3 (112 px, 12 queries: up to 11 instances), for a smoke run on
the CPU; its figures say nothing of SAM 3's speed. Meta's model is built at SAM 3's size on CUDA and at the small
size on the CPU (the tests' build, with their CPU redirects), and skipped otherwise.
"""

from __future__ import annotations

import argparse
import importlib.util
import itertools
import logging
import os
import statistics
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Callable, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # the oracles' helpers: the same weights into every implementation

from concepts import synchronize_device, timed  # noqa: E402  (benchmarks/concepts.py: the image predictor's)

from sam2rt.checkpoints.sam3 import tracker_config  # noqa: E402
from sam2rt.checkpoints.sam3_keys import META_PREFIX, detector_from_transformers  # noqa: E402
from sam2rt.checkpoints.sam3_tracker_keys import tracker_key  # noqa: E402
from sam2rt.io.sources import open_frames  # noqa: E402
from sam2rt.model.sam2 import SAM2Model  # noqa: E402
from sam2rt.model.sam3.config import SAM3, Sam3Spec  # noqa: E402
from sam2rt.model.sam3.detector import Sam3Detector  # noqa: E402
from sam2rt.processing.images import as_rgb_tensor  # noqa: E402
from sam2rt.processing.preprocess import SAM3_MEAN, SAM3_STD, model_input  # noqa: E402
from sam2rt.processing.text import TextTokenizer  # noqa: E402
from sam2rt.runtime import optimize_concept_models  # noqa: E402
from sam2rt.tracking.concept_plan import ConceptOptions  # noqa: E402
from sam2rt.tracking.concepts import ConceptTracker  # noqa: E402

FRAME_HW = (720, 1280)  # 720p, as cameras
SEED = 9
# the concept tracking tests' shifts (tests/test_concept_tracker_hf.py says what each does)
DETECTOR_SHIFT, SCORE_SPREAD, TRACKER_SHIFT, MASK_GAIN = 3.5, 4.0, 2.0, 10.0
# the options changed from the official ones (module docstring); Meta's and transformers' video models hold them as
# attributes of these names
CHANGED_OPTIONS = ("score_threshold_detection", "new_det_thresh", "det_nms_thresh", "hotstart_delay", "max_num_objects")
RESIZE = "bilinear-antialias"  # how ConceptTracker resizes a frame; the oracles get the same input
Step = Callable[[np.ndarray], int]  # run one frame; returns the stream's tracks after it


class Unavailable(ImportError):
    """An implementation that cannot run here (not installed, or not built for this device and size)."""


def importing(load):
    """`load()` of a tests/ helper; pytest's skip, its way of saying a package is missing, as Unavailable."""
    import pytest

    try:
        return load()
    except pytest.skip.Exception as skipped:
        raise Unavailable(str(skipped)) from None


def clip_frames(source: Path, count: int) -> tuple[list[np.ndarray], str]:
    """`count` 720p frames of the clip at `source`, looped (noise frames when there is none), and what they are."""
    if source.exists():
        frames, what = open_frames(source), f"{source.name}, looped"
        frames = [frames[i] for i in range(min(count, len(frames)))]
    else:
        rng = np.random.default_rng(0)
        frames = [rng.integers(0, 256, size=(540, 960, 3), dtype=np.uint8) for _ in range(min(count, 8))]
        what = f"noise ({source} not found)"
    import cv2

    resized = [cv2.resize(frame, FRAME_HW[::-1], interpolation=cv2.INTER_LINEAR) for frame in frames]
    return [resized[i % len(resized)] for i in range(count)], what


def normalised(frame: np.ndarray, image_size: int, device: torch.device) -> Tensor:
    """(1, 3, S, S) float32: the frame as ConceptTracker gives it to the model."""
    return model_input(as_rgb_tensor(frame), image_size, RESIZE, device, SAM3_MEAN, SAM3_STD)


def tokenizer_and_vocabulary(tmp: Path) -> tuple[TextTokenizer, Path]:
    """CLIP's tokenizer from open_clip's BPE vocabulary (no download), as the tests build it, and the vocabulary."""
    from sam3_vocab import open_clip_bpe_path, write_clip_vocab

    bpe = open_clip_bpe_path()
    if bpe is None:
        raise SystemExit("needs open_clip's BPE vocabulary: pip install --no-deps open_clip_torch")
    return TextTokenizer.from_files(*write_clip_vocab(bpe, tmp)), bpe


# Weights


class Weights(NamedTuple):
    """The one set of random weights, in each implementation's layout (all on the CPU, float32)."""

    transformers: torch.nn.Module  # transformers' Sam3VideoModel, loaded
    detector: dict[str, Tensor]  # ours (Meta's `detector.*` names without the prefix)
    tracker: dict[str, Tensor]  # ours (SAM2Model of SAM 3's tracker)


def make_weights(hf, spec: Sam3Spec) -> Weights:
    from oracle_sam3_hf import shifted_video_weights, tracker_from_transformers, video_config

    torch.manual_seed(0)
    theirs = hf.Sam3VideoModel(video_config(hf, spec)).eval()
    state = shifted_video_weights(theirs, SEED, DETECTOR_SHIFT, SCORE_SPREAD, TRACKER_SHIFT, MASK_GAIN)
    with torch.device("meta"):
        tracker_keys = SAM2Model(tracker_config(spec)).state_dict().keys()
    return Weights(
        theirs, detector_from_transformers(state, spec), tracker_from_transformers(state, spec, tracker_keys)
    )


def meta_state_dict(keys, weights: Weights) -> dict[str, Tensor]:
    """Meta's video model (sam3.pt's names) from ours: the tracker's keys and the shared vision backbone's through
    `tracker_key`, the detector's by their prefix."""
    state = {}
    for key in keys:
        ours = tracker_key(key)
        state[key] = weights.tracker[ours] if ours is not None else weights.detector[key[len(META_PREFIX) :]]
    return state


# Instances


def detection_bar(scores: Tensor, instances: int) -> float:
    """Halfway between the `instances`-th best score and the max(2 instances, instances + 2)-th (the last one when
    there are fewer queries): with max_num_objects = instances, the best `instances` start tracks, with room for
    the scores of the stream's first frame to differ a little from these."""
    ranked = scores.float().sort(descending=True).values.tolist()
    if instances >= len(ranked):
        raise SystemExit(f"{instances} instances asked of a detector with {len(ranked)} queries")
    below = ranked[min(max(2 * instances, instances + 2), len(ranked)) - 1]
    return (ranked[instances - 1] + below) / 2


def stream_options(bar: float, instances: int) -> ConceptOptions:
    """The official options but for those that make `instances` tracks exist and last (module docstring)."""
    return ConceptOptions(
        score_threshold_detection=bar,
        new_det_thresh=bar,
        det_nms_thresh=0.0,
        hotstart_delay=0,
        max_num_objects=instances,
    )


def set_options(model, options: ConceptOptions) -> None:
    for name in CHANGED_OPTIONS:
        setattr(model, name, getattr(options, name))


# The three implementations: each gives the first frame's detection scores and a fresh stream for some options


class Ours:
    def __init__(self, weights: Weights, spec: Sam3Spec, tokenizer: TextTokenizer, phrase: str, device):
        detector = Sam3Detector(spec).eval()
        detector.load_state_dict(weights.detector, strict=True)
        tracker = SAM2Model(tracker_config(spec)).eval()
        tracker.load_state_dict(weights.tracker, strict=True)
        detector.backbone.vision_backbone = tracker.image_encoder  # one module, as load_sam3_video makes it
        detector, tracker = detector.to(device), tracker.to(device)
        optimize_concept_models(detector, tracker)  # bf16 parameters and CUDA graphs; nothing off CUDA
        self.detector, self.tracker, self.tokenizer, self.phrase = detector, tracker, tokenizer, phrase

    def concept_tracker(self, options: ConceptOptions = ConceptOptions()) -> ConceptTracker:
        return ConceptTracker(self.detector, self.tracker, self.tokenizer, self.phrase, options)

    def scores(self, frame: np.ndarray) -> Tensor:
        tracker = self.concept_tracker()
        with torch.inference_mode():
            return tracker._detect(tracker.encode(frame).detector)[0]  # the scores its detection bars compare

    def stream(self, options: ConceptOptions, frames: list[np.ndarray]) -> Step:
        tracker = self.concept_tracker(options)

        def step(frame):
            tracker.step(frame)
            return len(tracker.object_ids)

        return step


class Meta:
    def __init__(self, weights: Weights, spec_name: str, bpe: Path, phrase: str, device):
        if importlib.util.find_spec("sam3") is None:
            raise Unavailable("Meta's sam3 package is not installed")
        if spec_name == "small" and device.type == "cpu":
            from oracle_sam3 import sam3_modules

            importing(sam3_modules)  # its CPU redirects and torchvision stand-in (the tests' build)
            from test_concept_tracker import meta_video_model

            model = meta_video_model()  # the tests' small SAM 3, official concept options
        elif spec_name == "full" and device.type == "cuda":
            from sam3.model_builder import build_sam3_video_model

            model = build_sam3_video_model(bpe_path=str(bpe), load_from_HF=False, device="cpu")
        else:
            raise Unavailable(
                f"Meta's model is built here at the small size on the CPU, SAM 3's on CUDA, not {spec_name}"
            )
        model.load_state_dict(meta_state_dict(model.state_dict().keys(), weights), strict=True)
        for name in [name for name in logging.root.manager.loggerDict if name.startswith("sam3")]:
            logging.getLogger(name).setLevel(logging.ERROR)  # its warning on each frame that max_num_objects is hit
        self.model, self.phrase, self.device = model.to(device).eval(), phrase, device

    def scores(self, frame: np.ndarray) -> Tensor:
        """Its video detector's score of every query on the frame, as its stream computes them."""
        from oracle_sam3 import meta_stream_state

        model, device = self.model, self.device
        set_options(model, stream_options(0.0, 1))  # every query above the bar: all of them returned
        state = meta_stream_state(model, normalised(frame, model.image_size, device), FRAME_HW, self.phrase)
        with torch.inference_mode(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            found = model.run_backbone_and_detection(
                frame_idx=0, num_frames=1, input_batch=state["input_batch"], reverse=False,
                geometric_prompt=state["constants"]["empty_geometric_prompt"], feature_cache=state["feature_cache"],
                allow_new_detections=True,
            )  # fmt: skip
        return found["scores"]

    def stream(self, options: ConceptOptions, frames: list[np.ndarray]) -> Step:
        """Meta's detector works one frame ahead: on frame t it also detects on frame t + 1 (its predictor holds
        the whole video), so frame t + 1 is written into its state on step t, which then pays for that frame's
        resizing: one frame's resizing and detection a step, as the others."""
        from oracle_sam3 import meta_stream_state

        model, device = self.model, self.device
        set_options(model, options)
        size = model.image_size
        state = meta_stream_state(model, torch.zeros(len(frames), 3, size, size, device=device), FRAME_HW, self.phrase)
        images, frame_indices = state["input_batch"].img_batch, itertools.count()
        on_cuda = device.type == "cuda"

        def step(frame):
            t = next(frame_indices)
            with torch.inference_mode():
                for ahead in (t, t + 1) if t == 0 else (t + 1,):
                    if ahead < len(frames):
                        images[ahead] = normalised(frames[ahead], size, device)[0]
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=on_cuda):
                    out = model._run_single_frame_inference(state, t, reverse=False)
                    removed, suppressed = out["removed_obj_ids"], out["suppressed_obj_ids"]
                    model._postprocess_output(state, out, removed, suppressed, out["unconfirmed_obj_ids"])
            return len(out["obj_id_to_mask"])

        return step


class Transformers:
    def __init__(self, hf, weights: Weights, spec: Sam3Spec, tokenizer: TextTokenizer, phrase: str, device):
        from oracle_sam3_hf import install_cv_utils_standin

        if device.type == "cuda":
            hf.modeling._load_cv_utils_kernel_once()  # from the hub; it warns, and skips hole filling, when not
            loaded = bool(hf.modeling.cv_utils_kernel)
            self.kernel = "hole filling by its hub kernel" if loaded else "its hub kernel did not load: no hole filling"
        else:
            importing(lambda: install_cv_utils_standin(hf))  # its kernel is for CUDA: the tests' CPU stand-in
            self.kernel = "hole filling by the tests' CPU stand-in of its hub kernel"
        self.dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
        self.model = weights.transformers.to(device, self.dtype).eval()
        self.ids = tokenizer([phrase], spec.text.context_length).to(device)
        self.hf, self.size, self.device = hf, spec.vision.image_size, device

    def pixels(self, frame: np.ndarray) -> Tensor:
        return normalised(frame, self.size, self.device).to(self.dtype)

    def scores(self, frame: np.ndarray) -> Tensor:
        """Its video model's detection scores, as `run_detection` makes them (the text alone, no geometry)."""
        with torch.inference_mode():
            out = self.model.detector_model(
                pixel_values=self.pixels(frame), input_ids=self.ids, attention_mask=(self.ids != 0).long()
            )
            return (out.pred_logits.sigmoid() * out.presence_logits.sigmoid())[0]

    def stream(self, options: ConceptOptions, frames: list[np.ndarray]) -> Step:
        from oracle_sam3_hf import TransformersStream

        set_options(self.model, options)
        stream = TransformersStream(
            self.hf, self.model, self.ids, FRAME_HW, cls_token=False, min_frames=None, streaming=True,
            memory_size_masks=False, device=self.device, dtype=self.dtype, record=False,
        )  # fmt: skip

        def step(frame):
            out = stream.step(self.pixels(frame))
            shown_masks(out)
            return len(out.object_ids)

        return step


def shown_masks(out) -> Tensor:
    """transformers' output of a frame -> the masks (K, H, W) bool its processor's `postprocess_outputs` shows:
    the low-resolution logits upsampled to the frame, empty and suppressed tracks hidden, each pixel to the likeliest
    track by tracker score (its boxes are left out: they need torchvision)."""
    ids = [i for i in sorted(out.obj_id_to_mask) if i not in (out.suppressed_obj_ids or ())]
    if not ids:
        return torch.zeros(0, *FRAME_HW, dtype=torch.bool)
    logits = torch.cat([out.obj_id_to_mask[i] for i in ids]).float()  # K x (1, h, w) -> (K, h, w)
    masks = F.interpolate(logits[:, None], size=FRAME_HW, mode="bilinear", align_corners=False)[:, 0] > 0
    scores = torch.tensor([out.obj_id_to_tracker_score.get(i, 0.0) for i in ids], device=masks.device)
    shown = masks.flatten(1).any(1)  # (K,)
    masks, scores = masks[shown], scores[shown]
    if len(masks) > 1:
        likeliest = torch.where(masks, scores[:, None, None], -10.0).argmax(0)  # (H, W)
        masks &= likeliest == torch.arange(len(masks), device=masks.device)[:, None, None]
    return masks


# Runs


class Row(NamedTuple):
    impl: str
    instances: int
    tracks: int  # on the last frame
    bar: float
    ms: float  # median
    fps: float


def memory_now(device: torch.device) -> dict[str, float]:
    """MiB: allocated and reserved on the GPU, or the process's resident memory."""
    if device.type == "cuda":
        return {
            "allocated": torch.cuda.memory_allocated(device) / 2**20,
            "reserved": torch.cuda.memory_reserved(device) / 2**20,
        }
    with open("/proc/self/statm") as statm:
        resident_pages = int(statm.read().split()[1])
    return {"RSS": resident_pages * os.sysconf("SC_PAGE_SIZE") / 2**20}


def long_run(ours: Ours, clip: list[np.ndarray], count: int, instances: int, every: int, device) -> None:
    """Ours alone over `count` frames of the looped clip: memory every `every` frames, then its growth."""
    options = stream_options(detection_bar(ours.scores(clip[0]), instances), instances)
    tracker = ours.concept_tracker(options)
    print(f"\nours alone over {count} frames, {instances} instances asked (the clip looped)")
    reports, last_time, last_frame = [], time.perf_counter(), 0
    for index in range(count):
        tracker.step(clip[index % len(clip)])
        if (index + 1) % every and index + 1 != count:
            continue
        synchronize_device(device)
        now = time.perf_counter()
        memory = memory_now(device)
        held = sum(t.numel() * t.element_size() for t in tracker.state_tensors()) / 2**20
        reports.append((index + 1, memory, held))
        listed = "  ".join(f"{name} {mib:8.1f} MiB" for name, mib in memory.items())
        fps = (index + 1 - last_frame) / (now - last_time)
        tracks = len(tracker.object_ids)
        print(f"frame {index + 1:>6}  {listed}  tracker state {held:6.1f} MiB  tracks {tracks:>3}  {fps:7.2f} FPS")
        last_time, last_frame = now, index + 1
    (first, start, held_start), (end, stop, held_end) = reports[0], reports[-1]
    growth = "  ".join(f"{name} {stop[name] - start[name]:+.1f} MiB" for name in start)
    print(f"growth from frame {first} to {end}: {growth}  tracker state {held_end - held_start:+.1f} MiB")


def print_rows(rows: list[Row], header: str) -> None:
    print(f"\n{header}")
    print(f"{'impl':<14}{'asked':>6}{'tracks':>8}{'bar':>8}{'ms/frame':>10}{'FPS':>8}{'x ours':>8}")
    ours = {row.instances: row for row in rows if row.impl == "ours"}
    flagged = False
    for row in rows:
        ratio = f"{row.ms / ours[row.instances].ms:.2f}" if row.instances in ours else "-"
        flag = "" if row.tracks == row.instances else "  <- not the count asked"
        flagged |= bool(flag)
        counts = f"{row.impl:<14}{row.instances:>6}{row.tracks:>8}{row.bar:>8.3f}"
        print(f"{counts}{row.ms:>10.1f}{row.fps:>8.2f}{ratio:>8}{flag}")
    if flagged:
        print("a flagged row tracked another number of instances than asked: its time is not comparable")
    for instances, mine in ours.items():
        others = [row for row in rows if row.instances == instances and row.impl != "ours"]
        if others:
            fastest = min(others, key=lambda row: row.ms)
            print(
                f"{instances} instances: ours {mine.fps:.2f} FPS, {fastest.ms / mine.ms:.2f}x the speed of the faster "
                f"other ({fastest.impl}, {fastest.fps:.2f} FPS; by median ms)"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--frames", type=int, default=60, help="timed frames a row")
    parser.add_argument("--warmup", type=int, default=5, help="untimed frames first (tracks start on the first)")
    parser.add_argument("--source", default=str(ROOT.parent / "shared" / "data" / "videos" / "bedroom"))
    parser.add_argument("--phrase", default="person")
    parser.add_argument("--instances", default="1,5,20", help="instance counts, comma-separated")
    parser.add_argument("--impls", default="ours,meta,transformers", help="rows, comma-separated ('none': no rows)")
    parser.add_argument(
        "--spec", choices=("full", "small"), default="full", help="SAM 3's size, or the tests' small one"
    )
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--long", type=int, default=0, help="then ours alone over this many frames (0: not)")
    parser.add_argument("--long-instances", type=int, default=5)
    parser.add_argument("--report-every", type=int, default=500, help="frames between the long run's reports")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    counts = [int(n) for n in args.instances.split(",")]
    impls = [name for name in args.impls.split(",") if name not in ("", "none")]
    unknown = set(impls) - {"ours", "meta", "transformers"}
    if unknown:
        raise SystemExit(f"unknown implementations: {', '.join(sorted(unknown))}")
    total = args.warmup + args.frames
    clip, clip_name = clip_frames(Path(args.source), max(total, min(args.long, 200)))

    if args.spec == "small":
        from test_concept_tracker import SPEC as spec
    else:
        spec = SAM3
    try:
        from oracle_sam3_hf import import_transformers_sam3_video

        hf = importing(import_transformers_sam3_video)
    except ImportError as error:
        raise SystemExit(f"the shared random weights start as transformers' Sam3VideoModel's: {error}") from None
    from transformers.utils import logging as transformers_logging

    transformers_logging.set_verbosity_error()  # its warning on each frame that max_num_objects is hit
    tokenizer, bpe = tokenizer_and_vocabulary(Path(tempfile.mkdtemp()))
    start = time.perf_counter()
    weights = make_weights(hf, spec)
    print(f"weights made in {time.perf_counter() - start:.0f} s", flush=True)
    ours = Ours(weights, spec, tokenizer, args.phrase, device) if "ours" in impls or args.long else None

    rows, notes = [], []
    for impl in impls:
        try:
            if impl == "ours":
                runner = ours
            elif impl == "meta":
                runner = Meta(weights, args.spec, bpe, args.phrase, device)
            else:
                runner = Transformers(hf, weights, spec, tokenizer, args.phrase, device)
                notes.append(f"transformers: {runner.kernel}")
            scores = runner.scores(clip[0])
        except ImportError as error:
            print(f"{impl}: skipped ({error})")
            continue
        except Exception as error:
            traceback.print_exc()
            print(f"{impl}: failed ({type(error).__name__}: {error})", flush=True)
            continue
        for instances in counts:
            bar = detection_bar(scores, instances)
            try:
                step = runner.stream(stream_options(bar, instances), clip[:total])
                times, tracks = timed(step, clip[:total], device, args.warmup)
            except Exception as error:  # one implementation's failure costs its rows, not the others'
                traceback.print_exc()
                print(f"{impl}, {instances} instances: failed ({type(error).__name__}: {error})", flush=True)
                break
            rows.append(Row(impl, instances, tracks, bar, statistics.median(times) * 1000, len(times) / sum(times)))
            print(f"{impl}, {instances} instances: {rows[-1].ms:.1f} ms a frame, {tracks} tracks", flush=True)
        if impl == "meta" and device.type == "cpu":
            from oracle_sam3 import remove_cpu_redirects

            remove_cpu_redirects()
        if impl != "ours":
            runner.model.to("cpu")
            del runner
        if device.type == "cuda":
            torch.cuda.empty_cache()

    dtype = "bf16" if device.type == "cuda" else "fp32"
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {args.threads} threads"
    size = "SAM 3's size" if args.spec == "full" else "the tests' small SAM 3, not SAM 3's speed"
    vision = spec.vision
    if rows:
        print_rows(
            rows,
            f"SAM 3 concept tracking, one stream: {name}, {dtype}, {size} ({vision.image_size} px, {spec.queries} "
            f"queries), 720p frames of {clip_name}, phrase {args.phrase!r}, {args.frames} timed frames after "
            f"{args.warmup}",
        )
        for note in notes:
            print(note)
    if args.long:
        long_run(ours, clip, args.long, args.long_instances, args.report_every, device)


if __name__ == "__main__":
    main()

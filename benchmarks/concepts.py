"""SAM 3 concept prompts on every frame of a clip: sam2rt's ConceptPredictor against Meta's Sam3Processor and
transformers' Sam3Model, in the same run, on the same frames and weights.

    python benchmarks/concepts.py --device cuda                    # bf16, 60 frames of the bedroom clip
    python benchmarks/concepts.py --device cuda --impls ours,ours-bf16     # the detector from CUDA graphs or not
    python benchmarks/concepts.py --device cuda --frames 200 --impls ours,meta
    python benchmarks/concepts.py --device cpu --frames 2 --impls ours   # a smoke run (about 20 s a frame)

Each frame: encode the image, detect one phrase, keep the instances above the threshold with masks at the
frame's size (what concept tracking does on a frame where the detector runs). Random weights, the same in all
three (ours perturbed, converted to each format). Meta's runs under bf16 autocast, as its README does; ours and
transformers' with bf16 weights on CUDA, fp32 on the CPU, ours with its detector replayed from CUDA graphs as the
commands run it (`ours-bf16`: without them). Columns: ms per frame (median), FPS, and the ratio
of ours to each. Meta's needs `sam3` (and torchvision, present on the GPU machines); transformers' needs 5.x.
Instances found are also printed: with random weights the scores sit near 0.25, so the threshold is set low
enough that masks are made and upsampled, as they are with real weights.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT / "tests"))

from tracking import load_frames  # noqa: E402

from sam2rt.images.concepts import ConceptPredictor  # noqa: E402
from sam2rt.model.sam3.config import SAM3  # noqa: E402
from sam2rt.model.sam3.detector import Sam3Detector  # noqa: E402
from sam2rt.runtime import optimize_detector, to_inference_dtype  # noqa: E402

THRESHOLD = 0.2  # random weights score near 0.25: low enough that instances are kept and their masks made


def synchronize_device(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(run_frame, frames: list[np.ndarray], device: torch.device, warmup: int) -> tuple[list[float], int]:
    """Seconds of each frame after `warmup` untimed ones, and the instances of the last."""
    found = 0
    for frame in frames[:warmup]:
        run_frame(frame)
    times = []
    for frame in frames[warmup:]:
        synchronize_device(device)
        start = time.perf_counter()
        found = run_frame(frame)
        synchronize_device(device)
        times.append(time.perf_counter() - start)
    return times, found


def tokenizer_for_benchmark(tmp: Path):
    """CLIP's tokenizer from open_clip's vocabulary (no download), as the tests build it."""
    from sam3_vocab import open_clip_bpe_path, write_clip_vocab

    from sam2rt.processing.text import TextTokenizer

    bpe = open_clip_bpe_path()
    if bpe is None:
        raise SystemExit("needs open_clip's BPE vocabulary: pip install --no-deps open_clip_torch")
    return TextTokenizer.from_files(*write_clip_vocab(bpe, tmp)), bpe


def ours(weights, tokenizer, device, phrase, graphs: bool = True):
    """ConceptPredictor as the commands run it (on CUDA: bf16 weights, its image encoding and detection replayed
    from CUDA graphs, `runtime.optimize_detector`), or without the graphs (`ours-bf16`)."""
    model = Sam3Detector(SAM3).eval()
    model.load_state_dict(weights, strict=True)
    model = model.to(device)
    if graphs:
        optimize_detector(model)  # nothing off CUDA
    elif device.type == "cuda":
        to_inference_dtype(model)
    predictor = ConceptPredictor(model, tokenizer, THRESHOLD)

    def run(frame):
        predictor.set_image(frame)
        return len(predictor.predict(phrase)[0])

    return run


def meta(weights, bpe: Path, device, phrase):
    import importlib.util

    if importlib.util.find_spec("torchvision") is None:
        raise ImportError("Meta's processor resizes with torchvision, which is not installed here")
    from sam3.model.sam3_image_processor import Sam3Processor
    from sam3.model_builder import build_sam3_image_model

    model = build_sam3_image_model(bpe_path=str(bpe), device=device.type, load_from_HF=False)
    model.load_state_dict(weights, strict=True)
    processor = Sam3Processor(model, device=device.type, confidence_threshold=THRESHOLD)

    def run(frame):
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            state = processor.set_image(torch.from_numpy(frame).permute(2, 0, 1))
            state = processor.set_text_prompt(phrase, state)
        return len(state["scores"])

    return run


def transformers_model(tokenizer, device, phrase):
    import torch.nn.functional as F
    from transformers import Sam3Config, Sam3Model

    from sam2rt.processing.preprocess import concept_model_input

    model = Sam3Model(Sam3Config()).eval()  # its own random weights: the time does not depend on them
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    model = model.to(device, dtype)
    ids = tokenizer([phrase], 32).to(device)

    def run(frame):
        with torch.inference_mode():
            pixels = concept_model_input(torch.from_numpy(frame).permute(2, 0, 1), 1008, device).to(dtype)
            out = model(pixel_values=pixels, input_ids=ids, attention_mask=(ids != 0).long())
            scores = out.pred_logits.sigmoid() * out.presence_logits.sigmoid()
            kept = scores[0] > THRESHOLD
            masks = F.interpolate(out.pred_masks[:, kept].float(), size=frame.shape[:2], mode="bilinear")
            return int((masks > 0).shape[1])

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--frames", type=int, default=60)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--source", default=str(ROOT.parent / "shared" / "data" / "videos" / "bedroom"))
    parser.add_argument("--phrase", default="person")
    parser.add_argument("--impls", default="ours,ours-bf16,meta,transformers")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    import cv2

    clip = load_frames(Path(args.source), args.frames + args.warmup)
    frames = [cv2.resize(frame, (1280, 720), interpolation=cv2.INTER_LINEAR) for frame in clip]  # 720p, as cameras
    frames = [frames[i % len(frames)] for i in range(args.frames + args.warmup)]
    tokenizer, bpe = tokenizer_for_benchmark(Path(tempfile.mkdtemp()))
    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(1)
    weights = {
        key: value + 0.02 * torch.randn(value.shape, generator=generator) if value.is_floating_point() else value
        for key, value in Sam3Detector(SAM3).state_dict().items()
    }
    rows = []
    for impl in args.impls.split(","):
        try:
            if impl in ("ours", "ours-bf16"):
                run = ours(weights, tokenizer, device, args.phrase, graphs=impl == "ours")
            elif impl == "meta":
                run = meta(weights, bpe, device, args.phrase)
            elif impl == "transformers":
                run = transformers_model(tokenizer, device, args.phrase)
            else:
                raise SystemExit(f"unknown implementation {impl!r}")
        except ImportError as error:
            print(f"{impl}: skipped ({error})")
            continue
        times, found = timed(run, frames, device, args.warmup)
        rows.append((impl, statistics.median(times) * 1000, len(times) / sum(times), found))
        del run
        if device.type == "cuda":
            torch.cuda.empty_cache()
    dtype = "bf16" if device.type == "cuda" else "fp32"
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {args.threads} threads"
    print(f"\nSAM 3 concept prompt on every frame: {name}, {dtype}, 720p frames, phrase {args.phrase!r}")
    print(f"{'impl':<14}{'ms/frame':>10}{'FPS':>8}{'ours x':>8}{'found':>7}")
    mine = next((row for row in rows if row[0] == "ours"), None)
    for impl, ms, fps, found in rows:
        ratio = f"{ms / mine[1]:.2f}" if mine else "-"
        print(f"{impl:<14}{ms:>10.1f}{fps:>8.2f}{ratio:>8}{found:>7}")


if __name__ == "__main__":
    main()

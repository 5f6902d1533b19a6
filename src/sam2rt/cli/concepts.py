"""`--text`: concept prompts with SAM 3 (every instance of a phrase), shared by the commands that take them.

SAM 3's checkpoint is Meta's `sam3.pt` (facebook/sam3 on the Hugging Face hub, gated); its tokenizer's two files
come from the same repository: beside `--checkpoint` when they are there (`hf download facebook/sam3 sam3.pt
vocab.json merges.txt --local-dir DIR`), else from the hub's cache, downloaded when missing.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import typer

from .model_choice import ModelChoice

SAM3_VARIANT = "sam3"
TEXT = typer.Option(
    None,
    "--text",
    "-t",
    help="Concept prompt: every instance of these phrases, comma-separated (SAM 3), e.g. 'car,person'.",
)
SCORE_THRESHOLD = typer.Option(0.5, "--score-threshold", help="--text: least score of an instance kept (0 to 1).")


def parse_phrases(text: str) -> list[str]:
    """`"car, red car"` -> ["car", "red car"]; a usage error for an empty phrase."""
    phrases = [part.strip() for part in text.split(",")]
    if not all(phrases):
        raise typer.BadParameter(f"expected comma-separated phrases, got {text!r}", param_hint="--text")
    if len(set(phrases)) != len(phrases):
        raise typer.BadParameter(f"a phrase is given twice in {text!r}", param_hint="--text")
    return phrases


def check_threshold(value: float) -> float:
    if not 0.0 <= value < 1.0:
        raise typer.BadParameter(f"must be in [0, 1), got {value}", param_hint="--score-threshold")
    return value


def check_sam3_choice(model: ModelChoice) -> None:
    """Usage errors of the model options with --text: another variant, --image-size, --compile, --cpu-bf16."""
    if model.variant is not None and model.variant != SAM3_VARIANT:
        raise typer.BadParameter(
            f"--text needs SAM 3 ('--variant {SAM3_VARIANT}' or SAM 3's checkpoint); {model.variant} has no text "
            "prompts",
            param_hint="--variant",
        )
    if model.image_size != 1024:  # the option's default, SAM 2's size: SAM 3 has one
        raise typer.BadParameter(
            "SAM 3 runs at its own size (1008 px); leave --image-size out", param_hint="--image-size"
        )
    if model.compile:
        raise typer.BadParameter("--compile is not available for SAM 3 yet", param_hint="--compile")
    if model.cpu_bf16:
        raise typer.BadParameter("SAM 3 runs fp32 on a CPU (bf16 on CUDA under --fast)", param_hint="--cpu-bf16")


def load_concept_predictor(model: ModelChoice, score_threshold: float):
    """SAM 3's ConceptPredictor with the options' checkpoint and device (bf16 weights on CUDA under --fast)."""
    from ..checkpoints.sam3 import load_sam3_detector, load_text_tokenizer
    from ..images.concepts import ConceptPredictor
    from ..runtime import optimize_detector

    check_sam3_choice(model)
    device = model.target_device()
    detector = load_sam3_detector(model.checkpoint, device)
    tokenizer = load_text_tokenizer(beside=model.checkpoint)
    if model.fast and device.type == "cuda":
        optimize_detector(detector)  # bf16 parameters (the rotary tables keep their precision), CUDA graphs
    return ConceptPredictor(detector, tokenizer, score_threshold)


def load_concept_tracks(model: ModelChoice, phrases: list[str], score_threshold: float):
    """SAM 3's detector and tracker from the options' checkpoint and device (bf16 weights on CUDA under --fast),
    as a ConceptTracker per phrase (`PhraseTracks`); `score_threshold` is the detections' (Meta's
    score_threshold_detection)."""
    from ..checkpoints.sam3 import load_sam3_video, load_text_tokenizer
    from ..runtime import optimize_concept_models
    from ..tracking.concept_plan import ConceptOptions
    from ..tracking.concept_run import PhraseTracks
    from ..tracking.concepts import ConceptTracker

    check_sam3_choice(model)
    device = model.target_device()
    detector, tracker_model = load_sam3_video(model.checkpoint, device)
    tokenizer = load_text_tokenizer(beside=model.checkpoint)
    if model.fast:
        optimize_concept_models(detector, tracker_model)  # on CUDA: bf16 parameters, CUDA graphs
    options = ConceptOptions(score_threshold_detection=score_threshold)
    return PhraseTracks([ConceptTracker(detector, tracker_model, tokenizer, phrase, options) for phrase in phrases])


def write_label_png(masks: np.ndarray, shape: tuple[int, int], path: Path) -> None:
    """Instances as one PNG of their numbers (8-bit up to 255 instances, else 16-bit)."""
    from PIL import Image

    from ..io.atomic import write_atomically
    from .everything import labels_of

    labels = labels_of(masks) if len(masks) else np.zeros(shape, np.int32)
    pixels = labels.astype(np.uint8 if labels.max(initial=0) < 256 else np.uint16)
    write_atomically(path, lambda temporary: Image.fromarray(pixels).save(temporary, format="PNG"))


def coco_of(found: list, image_name: str, shape: tuple[int, int], description: str):
    """A COCO dataset of one image: a category per phrase (ids from 1), an annotation per instance with its score."""
    from pycocotools import mask as mask_utils

    from ..io.coco import CocoDataset
    from ..io.rle import encode_rle

    dataset = CocoDataset([instances.phrase for instances in found], {"description": description})
    image_id = dataset.add_image(image_name, *shape)
    for category, instances in enumerate(found):
        if not len(instances):
            continue
        rles = encode_rle(instances.masks)
        for rle, area, box, score in zip(rles, mask_utils.area(rles), mask_utils.toBbox(rles), instances.scores):
            dataset.add_annotation(image_id, category, rle, box, area, float(score))
    return dataset


def summary(found: list) -> str:
    """`bottle: 3 (0.91, 0.85, 0.62); cup: none`"""
    parts = []
    for instances in found:
        scores = ", ".join(f"{score:.2f}" for score in instances.scores[:8]) + (", ..." if len(instances) > 8 else "")
        parts.append(
            f"{instances.phrase}: {len(instances)} ({scores})" if len(instances) else f"{instances.phrase}: none"
        )
    return "; ".join(parts)

"""SAM 3's checkpoint: Meta's `sam3.pt` (`detector.*` and `tracker.*` keys), or transformers' format
(`sam3_keys.py`), loaded strictly into our detector, and the text tokenizer from the same repository; for video,
the detector and the tracker (`load_sam3_video`) from one sam3.pt, sharing one vision backbone.

The detector's part of `sam3.pt` is its `detector.*` subtree; it holds the shared vision backbone's second neck
(`sam2_convs`, what the tracker reads), which an image-only detector leaves out on purpose. Anything else missing,
unexpected or of another shape is a `CheckpointError` that says so.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import NamedTuple, Optional, Union

import torch

from ..model.sam2 import SAM2Model
from ..model.sam3.config import SAM3, Sam3Spec
from ..model.sam3.detector import Sam3Detector
from ..model.variants import SAM3_TRACKER, ModelConfig
from ..processing.text import TextTokenizer
from .files import CheckpointError, _mismatch_summary, identify_variant, read_state_dict
from .hub import SAM3_CHECKPOINT, SAM3_REPO, TOKENIZER_FILES, fetch
from .sam3_keys import META_PREFIX, checkpoint_format, detector_from_transformers
from .sam3_tracker_keys import tracker_state_dict

TRACKER_NECK = "backbone.vision_backbone.sam2_convs."  # the shared backbone's neck for the tracker


def detector_state_dict(
    state_dict: dict[str, torch.Tensor], source: Union[str, Path], spec: Sam3Spec
) -> dict[str, torch.Tensor]:
    """The detector's tensors of a SAM 3 checkpoint (Meta's `sam3.pt`, transformers' format, or our detector's own
    keys), under our (Meta's `Sam3Image`) names."""
    try:
        kind = checkpoint_format(state_dict)
    except CheckpointError:
        variant = identify_variant(state_dict)
        if variant is not None:
            raise CheckpointError(
                f"{source} is a SAM 2 checkpoint ({variant}); text prompts need SAM 3's "
                f"({SAM3_CHECKPOINT} of {SAM3_REPO})"
            ) from None
        raise CheckpointError(f"{source} is not a SAM 3 checkpoint (no `detector.*` keys)") from None
    if kind == "meta":
        return {key[len(META_PREFIX) :]: value for key, value in state_dict.items() if key.startswith(META_PREFIX)}
    if kind == "detector":
        return state_dict
    try:
        return detector_from_transformers(state_dict, spec)
    except CheckpointError as error:
        raise CheckpointError(f"{source}: {error}") from None


def load_detector_weights(model: Sam3Detector, state_dict: dict[str, torch.Tensor], source: Union[str, Path]) -> None:
    """Load the detector's part of a SAM 3 state dict strictly into `model`, or fail saying what does not fit."""
    weights = detector_state_dict(state_dict, source, model.spec)
    expected = {key: tuple(value.shape) for key, value in model.state_dict().items()}
    if not any(key.startswith(TRACKER_NECK) for key in expected):
        weights = {key: value for key, value in weights.items() if not key.startswith(TRACKER_NECK)}
    if {key: tuple(value.shape) for key, value in weights.items()} != expected:
        raise CheckpointError(f"{source} does not fit SAM 3's detector: {_mismatch_summary(expected, weights)}")
    model.load_state_dict(weights, strict=True)


def load_sam3_detector(
    checkpoint: Union[str, Path, None] = None,
    device: Union[str, torch.device, None] = None,
    token: Optional[str] = None,
    spec: Optional[Sam3Spec] = None,
    tracker_neck: bool = False,
) -> Sam3Detector:
    """SAM 3's detector with the weights of `checkpoint` (None: `sam3.pt` from the Hugging Face cache, downloaded
    with `token` when missing), in eval mode on `device` (CUDA when available). `spec`: the official sizes
    unless given; `tracker_neck` keeps the second neck that the tracker reads."""
    path = Path(checkpoint) if checkpoint is not None else fetch(SAM3_CHECKPOINT, token)
    state_dict = read_state_dict(path)
    model = Sam3Detector(spec or SAM3, tracker_neck=tracker_neck)  # about 4 s to build on a CPU, then overwritten
    load_detector_weights(model, state_dict, path)
    device = (
        torch.device(device) if device is not None else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    )
    return model.to(device).eval()


class Sam3Video(NamedTuple):
    """SAM 3's two video models from one sam3.pt; `detector.backbone.vision_backbone` is `tracker.image_encoder`."""

    detector: Sam3Detector
    tracker: SAM2Model  # SAM 3's tracker: a SAM2Model of a sam3 variant


def tracker_config(spec: Sam3Spec) -> ModelConfig:
    """The tracker's configuration over the vision backbone of `spec` (the official one: SAM3_TRACKER at 1008)."""
    return ModelConfig(dataclasses.replace(SAM3_TRACKER, trunk=spec.vision), spec.vision.image_size)


def tracker_weights(state_dict: dict[str, torch.Tensor], source: Union[str, Path]) -> dict[str, torch.Tensor]:
    """The tracker's tensors of Meta's sam3.pt under our names (its image encoder: the detector's vision backbone);
    transformers' format is refused (no map of its tracker yet), as is a file without a tracker."""
    try:
        kind = checkpoint_format(state_dict)
    except CheckpointError:
        detector_state_dict(state_dict, source, SAM3)  # raises the detector's error: a SAM 2 or unknown checkpoint
        raise
    if kind == "transformers_video":
        raise CheckpointError(
            f"{source} is in transformers' format, whose tracker sam2rt does not read yet: tracking with text needs "
            f"Meta's {SAM3_CHECKPOINT} (of {SAM3_REPO})"
        )
    if kind != "meta":
        raise CheckpointError(
            f"{source} holds SAM 3's image model only, no tracker: tracking with text needs Meta's {SAM3_CHECKPOINT} "
            f"(of {SAM3_REPO})"
        )
    return tracker_state_dict(state_dict)


def load_tracker_weights(model: SAM2Model, weights: dict[str, torch.Tensor], source: Union[str, Path]) -> None:
    """Load `tracker_weights(...)` strictly into `model`, or fail saying what does not fit."""
    expected = {key: tuple(value.shape) for key, value in model.state_dict().items()}
    if {key: tuple(value.shape) for key, value in weights.items()} != expected:
        raise CheckpointError(f"{source} does not fit SAM 3's tracker: {_mismatch_summary(expected, weights)}")
    model.load_state_dict(weights, strict=True)


def load_sam3_video(
    checkpoint: Union[str, Path, None] = None,
    device: Union[str, torch.device, None] = None,
    token: Optional[str] = None,
    spec: Optional[Sam3Spec] = None,
) -> Sam3Video:
    """SAM 3's detector (with the tracker's neck) and tracker with the weights of `checkpoint` (Meta's sam3.pt;
    None: from the Hugging Face cache, downloaded with `token` when missing), both strict, in eval mode on
    `device` (CUDA when available), sharing one vision backbone. `spec`: the official sizes unless given."""
    spec = spec or SAM3  # read here, not at import: tests patch the module's SAM3
    path = Path(checkpoint) if checkpoint is not None else fetch(SAM3_CHECKPOINT, token)
    state_dict = read_state_dict(path)
    weights = tracker_weights(state_dict, path)  # a file of another kind is refused before anything is built
    tracker = SAM2Model(tracker_config(spec))
    load_tracker_weights(tracker, weights, path)
    detector = Sam3Detector(spec, tracker_neck=True)
    load_detector_weights(detector, state_dict, path)
    detector.backbone.vision_backbone = tracker.image_encoder  # the same weights: one module, one copy in memory
    device = (
        torch.device(device) if device is not None else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    )
    return Sam3Video(detector.to(device).eval(), tracker.to(device).eval())


def load_text_tokenizer(
    token: Optional[str] = None, local_only: bool = False, beside: Union[str, Path, None] = None
) -> TextTokenizer:
    """SAM 3's CLIP tokenizer from facebook/sam3's `vocab.json` and `merges.txt`: those in the folder of `beside`
    (a checkpoint downloaded with them) when both are there, else the hub's cached or downloaded ones."""
    folder = Path(beside).parent if beside is not None else None
    if folder is not None and all((folder / name).is_file() for name in TOKENIZER_FILES):
        vocab, merges = (folder / name for name in TOKENIZER_FILES)
    else:
        vocab, merges = (fetch(name, token, local_only) for name in TOKENIZER_FILES)
    return TextTokenizer.from_files(vocab, merges)

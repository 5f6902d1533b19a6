"""ConceptPredictor: every instance of a phrase ("bottle", "red car") or of exemplar boxes in an image, with SAM 3.

    predictor = ConceptPredictor(load_sam3_detector(), load_text_tokenizer())
    predictor.set_image(rgb)
    found = predictor.predict(["bottle", "cup"])     # one Instances per phrase
    found[0].masks, found[0].boxes, found[0].scores

The image is encoded once per `set_image`; each call of `predict` runs the detector for all its phrases in one
batch. Results are Meta's `Sam3Processor`'s: instances scoring above the threshold (the query's score times the
presence score), their masks upsampled bilinearly to the image, their boxes in its pixels.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Optional, Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ..model.sam3.detector import ImageFeatures, Sam3Detector
from ..model.sam3.geometry import GeometricPrompt
from ..model.sam3.text import TextFeatures
from ..processing.images import ImageLike, as_rgb_tensor, to_host
from ..processing.preprocess import concept_model_input
from ..processing.text import TextTokenizer

BOXES_ONLY_PHRASE = "visual"  # the phrase Meta's processor pairs with exemplar boxes given without text
DEFAULT_SCORE_THRESHOLD = 0.5
TEXTS_KEPT = 16  # sets of phrases whose encodings a predictor keeps


@dataclass(frozen=True)
class Instances:
    """The instances found for one prompt, best first."""

    phrase: str
    masks: np.ndarray  # (N, H, W) bool
    boxes: np.ndarray  # (N, 4) float32 x0, y0, x1, y1 in the image's pixels
    scores: np.ndarray  # (N,) float32 in (threshold, 1]

    def __len__(self) -> int:
        return len(self.scores)


class ConceptPredictor:
    """Concept prompts on one image at a time: `set_image`, then `predict` as often as wanted."""

    def __init__(
        self, model: Sam3Detector, tokenizer: TextTokenizer, score_threshold: float = DEFAULT_SCORE_THRESHOLD
    ) -> None:
        if not 0.0 <= score_threshold < 1.0:
            raise ValueError(f"score_threshold must be in [0, 1), got {score_threshold}")
        self.model = model
        self.tokenizer = tokenizer
        self.score_threshold = score_threshold
        self._features: Optional[ImageFeatures] = None
        self._size: Optional[tuple[int, int]] = None
        # The phrases' encodings, kept: the same phrases come back image after image (a folder, a video's frames),
        # and the text encoder is 24 eager layers (its weights do not change under a predictor).
        self._texts: OrderedDict[tuple[str, ...], TextFeatures] = OrderedDict()

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @torch.inference_mode()
    def set_image(self, image: ImageLike) -> None:
        """Encode an RGB image (H x W x 3 uint8 or float in [0, 1], or PIL) for the prompts that follow."""
        rgb = as_rgb_tensor(image)  # (3, H, W)
        pixels = concept_model_input(rgb, self.model.spec.image_size, self.device)
        dtype = next(self.model.parameters()).dtype
        self._features = self.model.encode_image(pixels.to(dtype))
        self._size = (int(rgb.shape[1]), int(rgb.shape[2]))

    @torch.inference_mode()
    def predict(
        self,
        text: Union[str, Sequence[str], None] = None,
        boxes: Optional[Sequence[Sequence[float]]] = None,
        box_labels: Optional[Sequence[int]] = None,
    ) -> list[Instances]:
        """The instances of each phrase of `text` (with the exemplar `boxes`, if given, in every prompt), or of the
        boxes alone: boxes are x0, y0, x1, y1 in the image's pixels, labels 1 (more like this) or 0 (not this)."""
        if self._features is None or self._size is None:
            raise RuntimeError("call set_image before predict")
        phrases = _phrases(text, boxes)
        geometry = None
        if boxes is not None:
            geometry = _exemplars(boxes, box_labels, self._size, len(phrases), self.device)
        found = self.model.detect(self._features, self._encoded_text(phrases), geometry)
        scores = found.scores.float()  # (B, Q)
        return [
            self._instances(phrase, scores[row], found.boxes[row], found.mask_logits[row])
            for row, phrase in enumerate(phrases)
        ]

    def _encoded_text(self, phrases: list[str]) -> TextFeatures:
        """The text encoder's output for `phrases`, from the last TEXTS_KEPT sets of phrases asked or encoded now."""
        key = tuple(phrases)
        if key not in self._texts:
            ids = self.tokenizer(phrases, self.model.spec.text.context_length).to(self.device)
            self._texts[key] = self.model.encode_text(ids)
            if len(self._texts) > TEXTS_KEPT:
                self._texts.popitem(last=False)
        self._texts.move_to_end(key)
        return self._texts[key]

    def _instances(self, phrase: str, scores: Tensor, boxes: Tensor, mask_logits: Tensor) -> Instances:
        """One prompt's queries above the threshold, best first: scores (Q,), boxes (Q, 4) cx, cy, w, h in [0, 1],
        mask logits (Q, h, w) -> masks, boxes and scores in the image's frame."""
        height, width = self._size
        kept = torch.nonzero(scores > self.score_threshold).squeeze(1)
        kept = kept[scores[kept].argsort(descending=True)]
        cx, cy, w, h = boxes[kept].float().unbind(-1)
        corners = torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], dim=-1)
        corners = corners * corners.new_tensor([width, height, width, height])
        logits = F.interpolate(mask_logits[kept][:, None].float(), size=(height, width), mode="bilinear")
        return Instances(
            phrase,
            to_host(logits[:, 0] > 0),  # sigmoid > 0.5, as Meta's processor thresholds its probabilities
            to_host(corners).astype(np.float32),
            to_host(scores[kept]).astype(np.float32),
        )


def _phrases(text: Union[str, Sequence[str], None], boxes) -> list[str]:
    if text is None:
        if boxes is None:
            raise ValueError("give a text prompt, exemplar boxes, or both")
        return [BOXES_ONLY_PHRASE]
    phrases = [text] if isinstance(text, str) else list(text)
    if not phrases or not all(isinstance(p, str) and p.strip() for p in phrases):
        raise ValueError(f"text prompts must be non-empty strings, got {text!r}")
    return [p.strip() for p in phrases]


def _exemplars(
    boxes: Sequence[Sequence[float]],
    labels: Optional[Sequence[int]],
    size: tuple[int, int],
    count: int,
    device: torch.device,
) -> GeometricPrompt:
    """Pixel boxes (N, 4) x0, y0, x1, y1 -> the geometry prompt of `count` prompts: each the same N boxes as
    normalised centre x, centre y, width, height."""
    corners = torch.as_tensor(np.asarray(boxes, dtype=np.float32)).reshape(-1, 4)
    height, width = size
    if (corners[:, 2] <= corners[:, 0]).any() or (corners[:, 3] <= corners[:, 1]).any():
        raise ValueError("an exemplar box needs x0 < x1 and y0 < y1")
    x0, y0, x1, y1 = corners.unbind(-1)
    normalised = torch.stack([(x0 + x1) / 2 / width, (y0 + y1) / 2 / height, (x1 - x0) / width, (y1 - y0) / height], -1)
    if labels is None:
        labels = [1] * len(normalised)
    label_tensor = torch.as_tensor(list(labels), dtype=torch.long)
    if label_tensor.shape != (len(normalised),) or not bool(((label_tensor == 0) | (label_tensor == 1)).all()):
        raise ValueError(f"box_labels must be one 0 or 1 per box, got {list(labels)}")
    normalised = normalised[None].expand(count, -1, -1).to(device)  # (count, N, 4)
    return GeometricPrompt.of_boxes(normalised, label_tensor[None].expand(count, -1).to(device))

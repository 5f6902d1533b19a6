"""SAM 3's video masks tidied as Meta's video model tidies them: small holes and specks of the masks it outputs, and
the memory masks of tracks that overlapping tracks would all but cover."""

from __future__ import annotations

import torch
from torch import Tensor

from ..processing.masks import keep_highest_object, small_components

SHRINK_KEPT = 0.3  # a track keeps its memory mask if resolving overlaps leaves at least this share of its area
HOLE_VALUE, SPRINKLE_VALUE = 0.1, -0.1


def tidy_masks(logits: Tensor, max_area: int) -> Tensor:
    """Meta's hole filling of SAM 3's video masks, logits (N, h, w): background regions of at most `max_area`
    pixels become 0.1, then foreground regions of at most min(`max_area`, half the mask's area) become -0.1."""
    if max_area <= 0 or logits.shape[0] == 0:
        return logits
    holes = small_components((logits <= 0)[:, None], max_area)[:, 0]
    logits = torch.where(holes, HOLE_VALUE, logits)
    foreground = logits > 0
    limits = (foreground.flatten(1).sum(1) // 2).clamp(max=max_area).tolist()  # per mask
    sprinkles = torch.stack(
        [small_components(foreground[i : i + 1, None], limit)[0, 0] for i, limit in enumerate(limits)]
    )  # (N, h, w)
    return torch.where(sprinkles, SPRINKLE_VALUE, logits)


def suppress_shrunk_masks(masks: Tensor) -> Tensor:
    """Masks (N, 1, H, W) logits for memory: a mask that resolving pixel-wise overlaps (the highest logit wins)
    would shrink below SHRINK_KEPT of its area is cleared (capped at -10); the others stay as they are."""
    if masks.shape[0] <= 1:
        return masks
    area = (masks > 0).flatten(1).sum(1)
    area_after = (keep_highest_object(masks) > 0).flatten(1).sum(1)
    kept = area_after / area.clamp(min=1) >= SHRINK_KEPT  # (N,)
    return torch.where(kept[:, None, None, None], masks, masks.clamp(max=-10.0))

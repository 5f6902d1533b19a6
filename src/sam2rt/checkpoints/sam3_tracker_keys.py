"""The keys of Meta's sam3.pt as our SAM 3 tracker model (`SAM2Model` of `variants.SAM3_TRACKER`) names them.

sam3.pt holds the detector (`detector.*`) and the tracker (`tracker.*`). The tracker's heads are SAM 2.1's
with three parts named otherwise: its memory attention (`tracker.transformer.encoder.*`, our
`memory_attention.*`), its memory encoder (`tracker.maskmem_backbone.*`, our `memory_encoder.*`), and the MLPs
of the mask decoder's two-way transformer, SAM 1's `lin1`/`lin2` (ReLU between them, as in SAM 2's `layers.0`/
`layers.1`). The tracker has no image encoder of its own: it reads the detector's vision backbone
(`detector.backbone.vision_backbone.*`, our `image_encoder.*`, the same keys below that prefix).
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from torch import Tensor

VISION_BACKBONE = "detector.backbone.vision_backbone."
TRACKER = "tracker."
# Prefixes of the tracker's keys (after `tracker.`) that our model names otherwise.
RENAMED = (
    ("transformer.encoder.", "memory_attention."),
    ("maskmem_backbone.", "memory_encoder."),
)
# sam_mask_decoder.transformer.layers.<i>.mlp.lin1.weight -> ...mlp.layers.0.weight (lin2: layers.1)
DECODER_MLP = re.compile(r"^(sam_mask_decoder\.transformer\.layers\.\d+\.mlp\.)lin([12])\.")


def tracker_key(key: str) -> str | None:
    """Our model's name for a key of sam3.pt, or None for a key the tracker does not use (the detector's own)."""
    if key.startswith(VISION_BACKBONE):
        return "image_encoder." + key[len(VISION_BACKBONE) :]
    if not key.startswith(TRACKER):
        return None
    key = key[len(TRACKER) :]
    for theirs, ours in RENAMED:
        if key.startswith(theirs):
            return ours + key[len(theirs) :]
    return DECODER_MLP.sub(lambda match: f"{match[1]}layers.{int(match[2]) - 1}.", key)


def tracker_state_dict(checkpoint: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """sam3.pt's state dict (or the `{"model": state_dict}` it is saved as) -> the SAM 3 tracker's state dict,
    for `load_state_dict(..., strict=True)`."""
    state = checkpoint.get("model", checkpoint)
    if not isinstance(state, Mapping):
        raise ValueError("expected sam3.pt's state dict, or a dict with it under 'model'")
    mapped = {}
    for key, value in state.items():
        ours = tracker_key(key)
        if ours is not None:
            mapped[ours] = value
    return mapped

"""SAM 3's weights in Hugging Face `transformers` format -> the state dict of our detector (`Sam3Detector`).

Our detector's keys are those of Meta's `Sam3Image` (the `detector.*` keys of the official `sam3.pt`). The
`facebook/sam3` repository also publishes `model.safetensors` for transformers: its `Sam3VideoModel` keys
(`detector_model.*` for the image model, `tracker_model.*` and `tracker_neck.*` for the tracker), or, saved from
an image model alone, its `Sam3Model` keys (no prefix). The two formats differ in:

- names: every module is renamed (`detr_decoder.layers.0.vision_cross_attn` is `transformer.decoder.layers.0
  .cross_attn`; MLP layers count from 1 in transformers, `layer1`, and from 0 in Meta's, `layers.0`);
- packing: transformers splits each attention's input projection into `q_proj`, `k_proj`, `v_proj`, where Meta
  packs them (`in_proj_weight`, the ViT's `qkv`): concatenated here in that order;
- layout: CLIP's pooled text projection is a Linear in transformers (out, in) and a matrix used as `x @ P` in
  Meta's (in, out): transposed; the ViT's pretraining position embedding has no class-token entry in
  transformers: a zero row is put in front (the trunk drops that entry, so its value is never read);
- what is stored: Meta's checkpoint holds each ViT block's rotary table (`attn.freqs_cis`, complex); transformers
  recomputes its tables (non-persistent buffers, absent from the file): computed here from the spec;
- what exists: transformers' geometry encoder takes boxes only, so the point-prompt projections of Meta's
  (`geometry_encoder.points_*`) are not in its file: filled with zeros (`POINT_PROMPT_KEYS`). SAM 3's image
  model prompts with boxes; a point prompt to the detector with these weights would be meaningless.

Every key of the input is used or deliberately dropped (the tracker's, and transformers' non-persistent buffers
should a file carry them); anything else, or a key of ours left unfilled, or a shape that differs, is a
`CheckpointError` that names it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from functools import lru_cache
from typing import Optional

import torch
from torch import Tensor

from ..model.positional import rotary_tables
from ..model.sam3.config import SAM3, Sam3Spec
from ..model.sam3.detector import Sam3Detector
from .files import CheckpointError

META_PREFIX = "detector."  # Meta's sam3.pt: the image model's keys behind this, the tracker's behind "tracker."
VIDEO_DETECTOR_PREFIX = "detector_model."  # transformers' Sam3VideoModel: its Sam3Model behind this prefix
VIDEO_TRACKER_PREFIXES = ("tracker_model.", "tracker_neck.")  # the tracker's, not the detector's: dropped
# transformers' non-persistent buffers (rotary frequencies, position ids): recomputed by both models, so dropped
# if a file carries them (an older save may)
BUFFER_SUFFIXES = (".position_ids", ".inv_freq", ".original_inv_freq")
POINT_PROMPT_KEYS = tuple(
    f"geometry_encoder.points_{name}_project.{param}"
    for name in ("direct", "pool", "pos_enc")
    for param in ("weight", "bias")
)

_VISION = "backbone.vision_backbone."
_TEXT = "backbone.language_backbone."
# A marker key of each format
_MARKERS = {
    "transformers": "vision_encoder.backbone.embeddings.patch_embeddings.projection.weight",
    "detector": _VISION + "trunk.patch_embed.proj.weight",
}


def checkpoint_format(keys: Iterable[str]) -> str:
    """Which format a SAM 3 state dict is in, from its keys: "meta" (the official `sam3.pt`, `detector.*` and
    `tracker.*`), "transformers_video" (transformers' Sam3VideoModel, `detector_model.*`), "transformers"
    (transformers' Sam3Model, no prefix) or "detector" (our detector's keys, Meta's `Sam3Image`'s)."""
    keys = set(keys)
    if any(key.startswith(VIDEO_DETECTOR_PREFIX) for key in keys):
        return "transformers_video"
    if any(key.startswith(META_PREFIX) for key in keys):
        return "meta"
    if _MARKERS["transformers"] in keys:
        return "transformers"
    if _MARKERS["detector"] in keys:
        return "detector"
    raise CheckpointError(
        "not a SAM 3 state dict: none of Meta's `detector.*` keys, transformers' `detector_model.*` keys, nor "
        f"{_MARKERS['transformers']!r} or {_MARKERS['detector']!r}"
    )


# Where a transformers module lives in ours: (section pattern, our prefix, {their path: our path}). A key is
# `<section><path>.<param>`; a path to a tuple is a packed attention: (the packed parameter's name with `{}` for
# weight/bias, which of q/k/v). Paths absent from a section's table keep their name.
_Leaf = dict[str, object]


def _mlp_layers(theirs: str, ours: str, count: int = 3) -> _Leaf:
    """transformers' `layer1..n` -> Meta's `layers.0..n-1` of one MLP."""
    return {f"{theirs}.layer{n}": f"{ours}.layers.{n - 1}" for n in range(1, count + 1)}


def _packed(theirs: str, ours: str, param_format: str) -> _Leaf:
    """An attention's q/k/v/o: the three input projections into one packed parameter, the output renamed."""
    table: _Leaf = {f"{theirs}.{part}_proj": (f"{ours}.{param_format}", part) for part in "qkv"}
    table[f"{theirs}.o_proj"] = f"{ours}.out_proj"
    return table


def _mha(theirs: str, ours: str) -> _Leaf:
    """transformers' Sam3Attention -> Meta's nn.MultiheadAttention (`in_proj_weight`, `out_proj`)."""
    return _packed(theirs, ours, "in_proj_{}")


# Meta's pre-norm encoder layer (the fusion encoder's and the geometry encoder's)
_ENCODER_LAYER: _Leaf = {
    "layer_norm1": "norm1",
    "layer_norm2": "norm2",
    "layer_norm3": "norm3",
    "mlp.fc1": "linear1",
    "mlp.fc2": "linear2",
    **_mha("self_attn", "self_attn"),
    **_mha("cross_attn", "cross_attn_image"),
}
_DECODER_LAYER: _Leaf = {
    "self_attn_layer_norm": "norm2",
    "text_cross_attn_layer_norm": "catext_norm",
    "vision_cross_attn_layer_norm": "norm1",
    "mlp_layer_norm": "norm3",
    "mlp.fc1": "linear1",
    "mlp.fc2": "linear2",
    **_mha("self_attn", "self_attn"),
    **_mha("text_cross_attn", "ca_text"),
    **_mha("vision_cross_attn", "cross_attn"),
}
_VIT_BLOCK: _Leaf = {
    "layer_norm1": "norm1",
    "layer_norm2": "norm2",
    **_packed("attention", "attn", "qkv.{}"),
}
_VIT_BLOCK["attention.o_proj"] = "attn.proj"
_TEXT_BLOCK: _Leaf = {
    "layer_norm1": "ln_1",
    "layer_norm2": "ln_2",
    "mlp.fc1": "mlp.c_fc",
    "mlp.fc2": "mlp.c_proj",
    **_packed("self_attn", "attn", "in_proj_{}"),
}
_TEXT_BLOCK["self_attn.out_proj"] = "attn.out_proj"  # CLIP names it out_proj, not o_proj
del _TEXT_BLOCK["self_attn.o_proj"]


def _neck_level(scale: float) -> _Leaf:
    """One pyramid level: transformers numbers the up/down-sampling layers with the GELU between (0, 1, 2)."""
    table: _Leaf = {"proj1": "conv_1x1", "proj2": "conv_3x3"}
    if scale == 4.0:
        table.update({"scale_layers.0": "dconv_2x2_0", "scale_layers.2": "dconv_2x2_1"})
    elif scale == 2.0:
        table["scale_layers.0"] = "dconv_2x2"
    return table


def _sections(spec: Sam3Spec) -> list[tuple[re.Pattern, str, _Leaf]]:
    """The renaming, section by section, most specific first."""
    sections = [
        (r"vision_encoder\.backbone\.layers\.(\d+)\.", _VISION + "trunk.blocks.{}.", _VIT_BLOCK),
        (
            r"vision_encoder\.backbone\.",
            _VISION + "trunk.",
            {
                "embeddings.patch_embeddings.projection": "patch_embed.proj",
                "embeddings.position_embeddings": "pos_embed",
                "layer_norm": "ln_pre",
            },
        ),
        (
            r"text_encoder\.text_model\.encoder\.layers\.(\d+)\.",
            _TEXT + "encoder.transformer.resblocks.{}.",
            _TEXT_BLOCK,
        ),
        (
            r"text_encoder\.text_model\.",
            _TEXT + "encoder.",
            {
                "embeddings.token_embedding": "token_embedding",
                "embeddings.position_embedding.weight": "positional_embedding",
                "final_layer_norm": "ln_final",
            },
        ),
        (r"text_encoder\.", _TEXT + "encoder.", {"text_projection.weight": "text_projection"}),
        (r"text_projection\.", _TEXT + "resizer.", {}),
        (r"geometry_encoder\.layers\.(\d+)\.", "geometry_encoder.encode.{}.", _ENCODER_LAYER),
        (
            r"geometry_encoder\.",
            "geometry_encoder.",
            {"vision_layer_norm": "img_pre_norm", "prompt_layer_norm": "norm", "output_layer_norm": "encode_norm"},
        ),
        (r"detr_encoder\.layers\.(\d+)\.", "transformer.encoder.layers.{}.", _ENCODER_LAYER),
        (r"detr_decoder\.layers\.(\d+)\.", "transformer.decoder.layers.{}.", _DECODER_LAYER),
        (
            r"detr_decoder\.",
            "transformer.decoder.",
            {
                "output_layer_norm": "norm",
                "presence_layer_norm": "presence_token_out_norm",
                **_mlp_layers("box_head", "bbox_embed"),
                **_mlp_layers("presence_head", "presence_token_head"),
                **_mlp_layers("ref_point_head", "ref_point_head", 2),
                **_mlp_layers("box_rpb_embed_x", "boxRPB_embed_x", 2),
                **_mlp_layers("box_rpb_embed_y", "boxRPB_embed_y", 2),
            },
        ),
        (
            r"mask_decoder\.",
            "segmentation_head.",
            {
                "mask_embedder.layers": "mask_predictor.mask_embed.layers",
                "instance_projection": "instance_seg_head",
                "semantic_projection": "semantic_seg_head",
                "prompt_cross_attn_norm": "cross_attn_norm",
                **_mha("prompt_cross_attn", "cross_attend_prompt"),
            },
        ),
        (
            r"dot_product_scoring\.",
            "dot_prod_scoring.",
            {
                **_mlp_layers("text_mlp", "prompt_mlp", 2),
                "text_mlp_out_norm": "prompt_mlp.out_norm",
                "text_proj": "prompt_proj",
                "query_proj": "hs_proj",
            },
        ),
    ]
    # the neck's levels: which layers a level has depends on its scale
    levels = [
        (rf"vision_encoder\.neck\.fpn_layers\.({i})\.", _VISION + "convs.{}.", _neck_level(scale))
        for i, scale in enumerate(spec.neck_scales)
    ]
    return [(re.compile(pattern), prefix, table) for pattern, prefix, table in levels + sections]


def _rename(key: str, sections: list[tuple[re.Pattern, str, _Leaf]]) -> Optional[tuple[str, Optional[str]]]:
    """A transformers key -> (our key, None), or (our packed key, "q"/"k"/"v") for a part of a packed attention;
    None when no section knows it."""
    for pattern, prefix, table in sections:
        match = pattern.match(key)
        if match is None:
            continue
        rest = key[match.end() :]
        ours_prefix = prefix.format(*match.groups())
        if isinstance(table.get(rest), str):  # a parameter renamed as a whole
            return ours_prefix + table[rest], None
        path, _, param = rest.rpartition(".")
        # the longest table entry that is the path or a module above it
        for their_path in sorted(table, key=len, reverse=True):
            if path == their_path or path.startswith(their_path + "."):
                target = table[their_path]
                if isinstance(target, tuple):
                    if path != their_path:
                        return None
                    param_format, part = target
                    return ours_prefix + param_format.format(param), part
                return ours_prefix + target + path[len(their_path) :] + "." + param, None
        return ours_prefix + rest, None
    return None


@lru_cache(maxsize=8)
def _detector_shapes(spec: Sam3Spec) -> dict[str, tuple[int, ...]]:
    """Key -> shape of our detector's state dict, from a model built on the meta device."""
    with torch.device("meta"):
        model = Sam3Detector(spec)
    return {key: tuple(value.shape) for key, value in model.state_dict().items()}


def _rotary_tables(spec: Sam3Spec) -> dict[str, Tensor]:
    """Each ViT block's `attn.freqs_cis`, as Meta's checkpoint holds it: window blocks over a window's grid,
    global blocks over the whole grid with positions squeezed by window / grid."""
    vision = spec.vision
    head_dim = vision.width // vision.heads
    scale = vision.window_size / vision.grid
    window = torch.complex(*rotary_tables(head_dim, vision.window_size))  # (window*window, head_dim // 2)
    whole = torch.complex(*rotary_tables(head_dim, vision.grid, position_scale=scale))  # (grid*grid, head_dim // 2)
    return {
        f"{_VISION}trunk.blocks.{i}.attn.freqs_cis": whole if i in vision.global_blocks else window
        for i in range(vision.depth)
    }


def _listing(keys: Iterable[str], limit: int = 8) -> str:
    keys = sorted(keys)
    more = f" and {len(keys) - limit} more" if len(keys) > limit else ""
    return ", ".join(keys[:limit]) + more


def detector_from_transformers(state_dict: Mapping[str, Tensor], spec: Sam3Spec = SAM3) -> dict[str, Tensor]:
    """transformers' SAM 3 weights -> our detector's state dict (loads with `strict=True` into
    `Sam3Detector(spec)`).

    `state_dict`: the keys of transformers' `Sam3Model.state_dict()`, or of its `Sam3VideoModel` (the
    `model.safetensors` of facebook/sam3: `detector_model.*` used, `tracker_model.*` and `tracker_neck.*`
    dropped). `spec` gives what the keys do not say: which ViT blocks are global (their rotary tables) and the
    neck's scales. Tensors are not copied where only renamed.
    """
    kind = checkpoint_format(state_dict)
    if kind == "transformers_video":
        unknown = [
            key
            for key in state_dict
            if not key.startswith(VIDEO_DETECTOR_PREFIX) and not key.startswith(VIDEO_TRACKER_PREFIXES)
        ]
        if unknown:
            raise CheckpointError(f"transformers' SAM 3 video weights with unexpected keys: {_listing(unknown)}")
        state_dict = {
            key[len(VIDEO_DETECTOR_PREFIX) :]: value
            for key, value in state_dict.items()
            if key.startswith(VIDEO_DETECTOR_PREFIX)
        }
    elif kind != "transformers":
        raise CheckpointError(f"expected SAM 3 weights in transformers' format, got {kind!r} keys")

    sections = _sections(spec)
    converted: dict[str, Tensor] = {}
    packed: dict[str, dict[str, Tensor]] = {}
    unexpected = []
    for key, value in state_dict.items():
        if key.endswith(BUFFER_SUFFIXES):
            continue
        renamed = _rename(key, sections)
        if renamed is None:
            unexpected.append(key)
            continue
        ours, part = renamed
        if part is None:
            converted[ours] = value
        else:
            packed.setdefault(ours, {})[part] = value
    for ours, parts in packed.items():
        if set(parts) != {"q", "k", "v"}:
            unexpected.append(f"{ours} (only {'/'.join(sorted(parts))} of q/k/v)")
            continue
        converted[ours] = torch.cat([parts["q"], parts["k"], parts["v"]], dim=0)  # (3C, C) or (3C,)

    trunk = _VISION + "trunk."
    if trunk + "pos_embed" in converted:  # (1, P*P, C) -> (1, 1 + P*P, C): the unused class-token entry first
        patches = converted[trunk + "pos_embed"]
        converted[trunk + "pos_embed"] = torch.cat([patches.new_zeros(1, 1, patches.shape[-1]), patches], dim=1)
    projection = _TEXT + "encoder.text_projection"
    if projection in converted:  # a Linear's weight (out, in) -> Meta's matrix (in, out)
        converted[projection] = converted[projection].t().contiguous()
    converted.update(_rotary_tables(spec))
    reference = converted.get(_VISION + "trunk.patch_embed.proj.weight")
    for key in POINT_PROMPT_KEYS:
        if key not in converted:
            shape = _detector_shapes(spec)[key]
            converted[key] = torch.zeros(shape, dtype=reference.dtype if reference is not None else torch.float32)

    expected = _detector_shapes(spec)
    unexpected += [key for key in converted if key not in expected]
    missing = [key for key in expected if key not in converted]
    if unexpected or missing:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)} of the detector's keys: {_listing(missing)}")
        if unexpected:
            parts.append(f"{len(unexpected)} keys with no place in the detector: {_listing(unexpected)}")
        raise CheckpointError("transformers' SAM 3 weights do not fit the detector: " + "; ".join(parts))
    wrong = [
        f"{key} {tuple(value.shape)} (expected {expected[key]})"
        for key, value in converted.items()
        if tuple(value.shape) != expected[key]
    ]
    if wrong:
        raise CheckpointError(f"transformers' SAM 3 weights of another size than the spec's: {_listing(wrong, 4)}")
    return {key: converted[key] for key in expected}  # in the detector's own order

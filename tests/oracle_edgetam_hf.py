"""Hugging Face transformers' EdgeTAM (`EdgeTamModel`, `EdgeTamVideoModel`) as a second reference for EdgeTAM.

The models are built at the official EdgeTAM architecture (edgetam.yaml of Meta's fork) for a given input size, and
carry the perturbed official weights of oracle_edgetam.py, renamed to transformers' keys by `transformers_state`.

transformers' RepViT is timm's, behind its TimmWrapper, which transformers builds only when it finds torchvision.
The suite's torchvision stand-in (oracle.py) answers that, but it has no version, and one of transformers' auto
modules parses torchvision's version when imported: that module is imported first with the stand-in out of
`sys.modules` (transformers then sees no torchvision there), and the rest with it back. Only transformers' answers
of whether torchvision and timm are there are recomputed; nothing of the suite's is changed.

transformers' processors are not used: they resize with torchvision. Frames go in as the tensors sam2rt makes,
and prompts are put in the inference session the way `Sam2VideoProcessor.add_inputs_to_inference_session` puts
them (its coordinate scaling, written here).
"""

from __future__ import annotations

import importlib
import re
import sys
from types import SimpleNamespace

import pytest
import torch
from hf_sam2_heads import head_key
from oracle import install_torchvision_standin
from oracle_edgetam import perturbed_weights

TRUNK_CHANNELS = [384, 192, 96, 48]  # RepViT-M1's stages, coarsest first (the neck's order)


def _forget_backend_answers() -> None:
    from transformers.utils import import_utils

    for check in ("is_torchvision_available", "is_timm_available", "is_torchvision_v2_available"):
        getattr(import_utils, check).cache_clear()
    import_utils.is_torchvision_greater_or_equal.cache_clear()


def import_transformers_edgetam() -> SimpleNamespace:
    """transformers' EdgeTAM classes, importable on a CPU torch (see above); skips without transformers."""
    pytest.importorskip("transformers", reason="the second oracle is Hugging Face transformers' EdgeTAM")
    install_torchvision_standin()  # timm imports torchvision
    standin = {name: module for name, module in sys.modules.items() if name.split(".")[0] == "torchvision"}
    for name in standin:
        del sys.modules[name]
    try:
        _forget_backend_answers()
        importlib.import_module("transformers.models.auto.image_processing_auto")  # its version check, without it
    finally:
        sys.modules.update(standin)
        _forget_backend_answers()
    from transformers import (
        EdgeTamConfig,
        EdgeTamModel,
        EdgeTamVideoConfig,
        EdgeTamVideoModel,
        EdgeTamVisionConfig,
        TimmWrapperConfig,
    )
    from transformers.models.edgetam_video.modeling_edgetam_video import EdgeTamVideoInferenceSession

    return SimpleNamespace(
        EdgeTamConfig=EdgeTamConfig,
        EdgeTamModel=EdgeTamModel,
        EdgeTamVideoConfig=EdgeTamVideoConfig,
        EdgeTamVideoModel=EdgeTamVideoModel,
        EdgeTamVisionConfig=EdgeTamVisionConfig,
        TimmWrapperConfig=TimmWrapperConfig,
        InferenceSession=EdgeTamVideoInferenceSession,
    )


def _vision_config(hf: SimpleNamespace, image_size: int):
    trunk = hf.TimmWrapperConfig(
        architecture="repvit_m1",  # the fork's repvit_m1.dist_in1k: the same network, named by its weights
        model_args={"in_chans": 3, "features_only": True, "out_indices": [0, 1, 2, 3]},
    )
    side = image_size // 16
    return hf.EdgeTamVisionConfig(
        backbone_config=trunk,
        backbone_channel_list=TRUNK_CHANNELS,
        backbone_feature_sizes=[[4 * side, 4 * side], [2 * side, 2 * side], [side, side]],
        fpn_top_down_levels=[2, 3],  # the two coarsest levels get the top-down path, as edgetam.yaml says
    )


def image_config(hf: SimpleNamespace, image_size: int):
    return hf.EdgeTamConfig(
        vision_config=_vision_config(hf, image_size), prompt_encoder_config={"image_size": image_size}
    )


def video_config(hf: SimpleNamespace, image_size: int):
    side = image_size // 16
    return hf.EdgeTamVideoConfig(
        vision_config=_vision_config(hf, image_size),
        prompt_encoder_config={"image_size": image_size},
        image_size=image_size,
        # EdgeTAM is SAM 2.0-like: no temporal encoding of the object pointers (add_tpos_enc_to_obj_ptrs: false)
        # and no learned embedding of an occluded frame's memory (no no_obj_embed_spatial in its checkpoint).
        enable_temporal_pos_encoding_for_object_pointers=False,
        enable_occlusion_spatial_embedding=False,
        # the rotary grid of the queries: the stride-16 map (64 x 64 at 1024 px); the keys' 16 x 16 is fixed
        memory_attention_rope_feat_sizes=[side, side],
    )


# EdgeTAM's own parts (the heads' are hf_sam2_heads'): the official key -> transformers' key, by renaming each part.
_RENAMES = [
    (r"^image_encoder\.trunk\.body\.", "vision_encoder.backbone.timm_model."),
    (r"^image_encoder\.neck\.convs\.(\d+)\.conv\.", r"vision_encoder.neck.convs.\1."),
    (r"^memory_attention\.layers\.(\d+)\.linear1\.", r"memory_attention.layers.\1.mlp.up_proj."),
    (r"^memory_attention\.layers\.(\d+)\.linear2\.", r"memory_attention.layers.\1.mlp.down_proj."),
    # spatial perceiver
    (r"^spatial_perceiver\.latents$", "spatial_perceiver.latents_1d"),
    (r"^spatial_perceiver\.norm\.", "spatial_perceiver.layer_norm."),
    (r"\.attn\.norm_x\.", ".layer_norm_input."),
    (r"\.attn\.norm_latents\.", ".layer_norm_latents."),
    (r"\.attn\.to_q\.", ".cross_attention.q_proj."),
    (r"\.attn\.to_out\.", ".cross_attention.o_proj."),
    (r"\.self_attn\.norm\.", ".layer_norm_self."),
    (r"^(spatial_perceiver\.layers\.\d+)\.self_attn\.to_q\.", r"\1.self_attention.q_proj."),
    (r"^(spatial_perceiver\.layers\.\d+)\.self_attn\.to_out\.", r"\1.self_attention.o_proj."),
    (r"\.(self_)?ff\.0\.", r".\1mlp.layer_norm."),  # the feed-forward Sequential: norm, linear, GELU, linear
    (r"\.(self_)?ff\.1\.", r".\1mlp.up_proj."),
    (r"\.(self_)?ff\.3\.", r".\1mlp.down_proj."),
]


def transformers_key(key: str) -> str:
    """An official EdgeTAM state-dict key as transformers' EdgeTamVideoModel names it (see `transformers_state`
    for the three that are not a plain rename)."""
    return head_key(key, _RENAMES)


def transformers_state(official: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """An official EdgeTAM state dict as EdgeTamVideoModel's (of `video_config`), every official tensor used.

    Beyond renaming: the prompt encoder's four point embeddings (1, C) are one (4, C) table; the perceiver's key and
    value projections, one (2 * inner, C) matrix officially, are two; and the prompt encoder's random Fourier
    matrix is held twice by transformers (its prompt encoder's copy and the model's `shared_image_embedding`, for
    the image-wide positions): both get it. No transformers tensor lacks an official one: the two SAM 2.1 tensors
    transformers has beside EdgeTAM's (the object pointers' temporal projection, the occlusion embedding) are
    not built by `video_config`, as EdgeTAM has neither.
    """
    state: dict[str, torch.Tensor] = {}
    points = {}
    for key, value in official.items():
        point = re.fullmatch(r"sam_prompt_encoder\.point_embeddings\.(\d)\.weight", key)
        if point:
            points[int(point[1])] = value
            continue
        new_key = transformers_key(key)
        key_value = re.fullmatch(r"(spatial_perceiver\.layers\.\d+)\.(attn|self_attn)\.to_kv\.weight", key)
        if key_value:
            attention = "cross_attention" if key_value[2] == "attn" else "self_attention"
            keys, values = value.chunk(2, dim=0)  # the official forward splits its output in two halves
            state[f"{key_value[1]}.{attention}.k_proj.weight"] = keys
            state[f"{key_value[1]}.{attention}.v_proj.weight"] = values
            continue
        if new_key == "prompt_encoder.pe_layer.positional_encoding_gaussian_matrix":
            state["prompt_encoder.shared_embedding.positional_embedding"] = value
            state["shared_image_embedding.positional_embedding"] = value
            continue
        assert new_key not in state, f"two official keys make {new_key}"
        state[new_key] = value
    state["prompt_encoder.point_embed.weight"] = torch.cat([points[i] for i in sorted(points)])  # (4, C)
    return state


def _with_weights(model, state: dict[str, torch.Tensor]):
    model.load_state_dict(state, strict=True)
    return model.eval()


def video_model(image_size: int, object_score_shift: float):
    """EdgeTamVideoModel carrying oracle_edgetam's perturbed weights."""
    hf = import_transformers_edgetam()
    model = hf.EdgeTamVideoModel(video_config(hf, image_size))
    return _with_weights(model, transformers_state(perturbed_weights(image_size, object_score_shift)))


# The official tensors EdgeTamModel (an image model) has no use for: the memory's and the tracking's.
VIDEO_ONLY = r"^(memory_|mask_downsample\.|spatial_perceiver\.|object_pointer_proj\.|no_memory_positional|no_object)"


def image_model(image_size: int, object_score_shift: float):
    """EdgeTamModel carrying oracle_edgetam's perturbed weights (all of them but the video-only ones)."""
    hf = import_transformers_edgetam()
    model = hf.EdgeTamModel(image_config(hf, image_size))
    state = transformers_state(perturbed_weights(image_size, object_score_shift))
    image_state = {key: value for key, value in state.items() if not re.match(VIDEO_ONLY, key)}
    return _with_weights(model, image_state)


def new_session(hf: SimpleNamespace, frame_hw: tuple[int, int]):
    """A streaming inference session (frames given one at a time) for frames of (height, width)."""
    return hf.InferenceSession(video_height=frame_hw[0], video_width=frame_hw[1], dtype=torch.float32)


def _scaled(coords: list, session, image_size: int) -> torch.Tensor:
    """Pixels of the frame -> pixels of the model input, as the processor scales them (x by S / W, y by S / H)."""
    coords = torch.tensor(coords, dtype=torch.float32).reshape(-1, 2)
    coords[:, 0] *= image_size / session.video_width
    coords[:, 1] *= image_size / session.video_height
    return coords


def add_points(session, image_size: int, frame_idx: int, obj_id: int, points, labels, clear_old: bool = True):
    """Clicks on an object on a frame, as the processor's add_inputs_to_inference_session adds them."""
    obj_idx = session.obj_id_to_idx(obj_id)
    coords = _scaled(points, session, image_size)[None, None]  # (1, 1, N, 2)
    point_labels = torch.tensor(labels, dtype=torch.int32)[None, None]  # (1, 1, N)
    existing = session.point_inputs_per_obj[obj_idx].get(frame_idx)
    if not clear_old and existing is not None:
        coords = torch.cat([existing["point_coords"], coords], dim=2)
        point_labels = torch.cat([existing["point_labels"], point_labels], dim=2)
    session.add_point_inputs(obj_idx, frame_idx, {"point_coords": coords, "point_labels": point_labels})
    session.remove_mask_inputs(obj_idx, frame_idx)
    session.obj_with_new_inputs = [obj_id]


def add_box(session, image_size: int, frame_idx: int, obj_id: int, box):
    """A box on an object: its two corners as points labelled 2 and 3, as the processor adds a box."""
    obj_idx = session.obj_id_to_idx(obj_id)
    corners = _scaled([box[:2], box[2:]], session, image_size)[None, None]  # (1, 1, 2, 2)
    labels = torch.tensor([2, 3], dtype=torch.int32)[None, None]  # (1, 1, 2)
    session.add_point_inputs(obj_idx, frame_idx, {"point_coords": corners, "point_labels": labels})
    session.remove_mask_inputs(obj_idx, frame_idx)
    session.obj_with_new_inputs = [obj_id]


def add_mask(session, image_size: int, frame_idx: int, obj_id: int, mask):
    """A mask (H, W) bool of the frame, as the processor adds one: resized to S x S unless it is (bilinear with
    antialiasing) and thresholded at 0.5."""
    obj_idx = session.obj_id_to_idx(obj_id)
    mask = torch.as_tensor(mask, dtype=torch.float32)[None, None]  # (1, 1, H, W)
    if tuple(mask.shape[-2:]) != (image_size, image_size):
        resized = torch.nn.functional.interpolate(
            mask, size=(image_size, image_size), mode="bilinear", align_corners=False, antialias=True
        )
        mask = (resized >= 0.5).float()
    session.add_mask_inputs(obj_idx, frame_idx, mask)
    session.remove_point_inputs(obj_idx, frame_idx)
    session.obj_with_new_inputs = [obj_id]

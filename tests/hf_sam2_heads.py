"""The SAM 2 family's heads (pointers, prompt encoder, mask decoder, memory attention, memory encoder) as
transformers' SAM 2-family video models name them: the part of the key conversions that the EdgeTAM and the SAM 3
tracker oracles share (tests/oracle_edgetam_hf.py, tests/oracle_sam3_hf.py)."""

from __future__ import annotations

import re
from typing import Sequence

# Our (the official) key -> transformers' key, by renaming each part (applied in order, every rule that matches).
HEAD_RENAMES = [
    (r"^maskmem_tpos_enc$", "memory_temporal_positional_encoding"),
    (r"^no_mem_embed$", "no_memory_embedding"),
    (r"^no_mem_pos_enc$", "no_memory_positional_encoding"),
    (r"^no_obj_ptr$", "no_object_pointer"),
    (r"^no_obj_embed_spatial$", "occlusion_spatial_embedding_parameter"),
    (r"^obj_ptr_tpos_proj\.", "temporal_positional_encoding_projection_layer."),
    (r"^obj_ptr_proj\.", "object_pointer_proj."),
    # prompt encoder: the mask path's Sequential (conv, norm, GELU, conv, norm, GELU, conv) by name
    (r"^sam_prompt_encoder\.", "prompt_encoder."),
    (r"mask_downscaling\.0\.", "mask_embed.conv1."),
    (r"mask_downscaling\.1\.", "mask_embed.layer_norm1."),
    (r"mask_downscaling\.3\.", "mask_embed.conv2."),
    (r"mask_downscaling\.4\.", "mask_embed.layer_norm2."),
    (r"mask_downscaling\.6\.", "mask_embed.conv3."),
    # mask decoder
    (r"^sam_mask_decoder\.", "mask_decoder."),
    (r"output_upscaling\.0\.", "upscale_conv1."),
    (r"output_upscaling\.1\.", "upscale_layer_norm."),
    (r"output_upscaling\.3\.", "upscale_conv2."),
    (r"transformer\.layers\.(\d+)\.mlp\.layers\.0\.", r"transformer.layers.\1.mlp.proj_in."),
    (r"transformer\.layers\.(\d+)\.mlp\.layers\.1\.", r"transformer.layers.\1.mlp.proj_out."),
    (r"\.norm_final_attn\.", ".layer_norm_final_attn."),
    (r"(attn\w*)\.out_proj\.", r"\1.o_proj."),  # every attention of the decoder and of the memory attention
    (r"^((mask_decoder\.transformer|memory_attention)\.layers\.\d+)\.norm(\d)\.", r"\1.layer_norm\3."),
    (r"^memory_attention\.norm\.", "memory_attention.layer_norm."),
    # memory encoder: the mask downsampler's Sequential of (conv, norm, GELU) x 4 then a 1 x 1 conv, by name
    (r"mask_downsampler\.encoder\.12\.", "mask_downsampler.final_conv."),
    (r"^memory_encoder\.pix_feat_proj\.", "memory_encoder.feature_projection."),
    (r"^memory_encoder\.out_proj\.", "memory_encoder.projection."),
    (r"^memory_encoder\.fuser\.", "memory_encoder.memory_fuser."),
    (r"memory_fuser\.layers\.(\d+)\.gamma$", r"memory_fuser.layers.\1.scale"),
    (r"memory_fuser\.layers\.(\d+)\.dwconv\.", r"memory_fuser.layers.\1.depthwise_conv."),
    (r"memory_fuser\.layers\.(\d+)\.norm\.", r"memory_fuser.layers.\1.layer_norm."),
    (r"memory_fuser\.layers\.(\d+)\.pwconv(\d)\.", r"memory_fuser.layers.\1.pointwise_conv\2."),
]
# Our MLP's layers 0, 1, 2 of a three-layer head are transformers' proj_in, layers.0, proj_out.
_THREE_LAYER_HEADS = r"(output_hypernetworks_mlps\.\d+|iou_prediction_head|pred_obj_score_head|object_pointer_proj)"
_HEAD_LAYERS = {"0": "proj_in", "1": "layers.0", "2": "proj_out"}
_DOWNSAMPLER_PARTS = {0: "conv", 1: "layer_norm"}  # each stage's conv and norm (the GELU, 2, has no weights)


def head_key(key: str, renames: Sequence[tuple[str, str]] = ()) -> str:
    """A key as transformers names it: `renames` (a model's own parts) first, then the heads' HEAD_RENAMES, the
    three-layer heads' layers and the mask downsampler's stages."""
    for pattern, replacement in (*renames, *HEAD_RENAMES):
        key = re.sub(pattern, replacement, key)
    key = re.sub(_THREE_LAYER_HEADS + r"\.layers\.(\d)\.", lambda m: f"{m[1]}.{_HEAD_LAYERS[m[2]]}.", key)
    stage = re.search(r"mask_downsampler\.encoder\.(\d+)\.", key)
    if stage:  # indices 3i, 3i + 1 of the Sequential are stage i's conv and norm
        index = int(stage[1])
        key = key.replace(stage[0], f"mask_downsampler.layers.{index // 3}.{_DOWNSAMPLER_PARTS[index % 3]}.")
    return key

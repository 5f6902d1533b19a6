"""`sam2rt export`: the steps of a tracking pass (image encoder, decoder, memory attention, memory encoder) and a
mask prompt's, written as ONNX graphs, with a manifest.

The graphs are made by torch.onnx's dynamo exporter (torch.export, then onnxscript): the TorchScript
exporter is deprecated and traces Python-side shapes into constants, where torch.export keeps the object
and point counts symbolic and refuses, at export time, any graph whose shapes would depend on data.
Shapes: the object count and the point count are dynamic; everything else, the memory's slots
included, is fixed by the model and the manifest, so the graphs never change shape as a stream grows.
"""

from __future__ import annotations

import copy
import logging
import warnings
from pathlib import Path
from typing import Union

import torch
from torch import Tensor, nn
from torch.export import Dim

from ..model.repvit import RepVit
from ..model.sam2 import SAM2Model
from ..tracking.options import STREAM_OPTIONS
from .manifest import (
    IMAGE_ENCODER,
    MASK_DECODER,
    MASK_DECODER_SINGLE,
    MASK_PROMPT,
    MEMORY_ENCODER,
    ExportManifest,
)
from .onnx_steps import ImageEncoderStep, MaskDecoderStep, MaskPromptStep, MemoryAttentionStep, MemoryEncoderStep

# onnxruntime's current releases (1.2x) run every opset up to 23; 18 is the newest whose operators our graphs
# need (LayerNormalization, ScaledDotProductAttention lowered to MatMul/Softmax) and that TensorRT 8.6+ parses.
OPSET = 18
# Example sizes to trace with: above 1, which torch.export would take as a constant.
EXAMPLE_OBJECTS, EXAMPLE_POINTS = 2, 3


def export_onnx(
    model: SAM2Model, folder: Union[str, Path], max_cond_frames: int = STREAM_OPTIONS.max_cond_frames
) -> ExportManifest:
    """Write the model's tracking steps (fp32, on the CPU) and their manifest into `folder`."""
    if max_cond_frames < 1:
        raise ValueError("max_cond_frames must be at least 1")
    config = model.config
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    model = copy.deepcopy(model).float().cpu().eval()  # the caller's model stays as it is
    if isinstance(model.image_encoder.trunk, RepVit):
        model.image_encoder.trunk.fold_batch_norms()  # the graph of inference: BatchNorms folded into convolutions
    full = [max_cond_frames + config.num_maskmem - 1, max_cond_frames + config.max_obj_ptrs - 1]
    one_prompt = [config.num_maskmem, config.max_obj_ptrs]  # the memory of a stream prompted on one frame
    manifest = ExportManifest(
        variant=config.variant.name,
        image_size=config.image_size,
        feature_size=config.feature_size,
        memory_tokens=config.memory_tokens,
        hidden_dim=config.hidden_dim,
        memory_dim=config.memory_dim,
        num_maskmem=config.num_maskmem,
        max_obj_ptrs=config.max_obj_ptrs,
        max_cond_frames=max_cond_frames,
        memory_frames=full[0],
        pointer_slots=full[1],
        memory_capacities=[one_prompt, full] if one_prompt != full else [full],
        opset=OPSET,
    )
    examples = _examples(manifest)
    objects, points = Dim("objects", min=1), Dim("points", min=1)
    frames = Dim("frames", min=1)
    per_object = {0: objects}
    _export(ImageEncoderStep(model), examples["image_encoder"], ({0: frames},), folder / IMAGE_ENCODER,
            ["images"], ["embed", "embed_without_memory", "high_res_s4", "high_res_s8"])  # fmt: skip
    decoder_shapes = (per_object, None, None, {0: objects, 1: points}, {0: objects, 1: points}, per_object, per_object)
    decoder_names = ["embed", "high_res_s4", "high_res_s8", "coords", "labels", "mask_logits", "has_mask"]
    decoder_outputs = ["best_mask", "obj_ptr", "object_score_logits"]
    for multimask, name in ((True, MASK_DECODER), (False, MASK_DECODER_SINGLE)):
        _export(MaskDecoderStep(model, multimask), examples["mask_decoder"], decoder_shapes, folder / name,
                decoder_names, decoder_outputs)  # fmt: skip
    for frames_slots, pointer_slots in manifest.memory_capacities:
        _export(MemoryAttentionStep(model), memory_example(manifest, frames_slots, pointer_slots),
                (None,) + (per_object,) * 6, folder / manifest.memory_attention(frames_slots, pointer_slots),
                ["embed", "spatial", "spatial_tpos", "spatial_valid", "pointers", "pointer_positions", "pointer_valid"],
                ["conditioned"])  # fmt: skip
    _export(MemoryEncoderStep(model), examples["memory_encoder"], (None, per_object, per_object, per_object),
            folder / MEMORY_ENCODER, ["embed", "mask_logits", "object_score_logits", "binarize"], ["memory"])  # fmt: skip
    _export(MaskPromptStep(model), examples["mask_prompt"], (None, None, None, per_object), folder / MASK_PROMPT,
            ["embed", "high_res_s4", "high_res_s8", "mask"], ["best_mask", "obj_ptr", "object_score_logits"])  # fmt: skip
    manifest.write(folder)
    return manifest


def _examples(manifest: ExportManifest) -> dict[str, tuple[Tensor, ...]]:
    """Inputs to trace each step with, of the shapes the runner gives them (random: only shapes matter); memory
    attention's of the full capacity."""
    generator = torch.Generator().manual_seed(0)
    b, n, s, h = EXAMPLE_OBJECTS, EXAMPLE_POINTS, manifest.image_size, manifest.feature_size
    c = manifest.hidden_dim

    def randn(*shape: int) -> Tensor:
        return torch.randn(shape, generator=generator)

    embed = randn(1, c, h, h)
    high_res = (randn(1, c // 8, 4 * h, 4 * h), randn(1, c // 4, 2 * h, 2 * h))
    flags = torch.tensor([True, False])
    return {
        "image_encoder": (randn(b, 3, s, s),),
        "mask_decoder": (
            randn(b, c, h, h),
            *high_res,
            torch.rand(b, n, 2, generator=generator) * s,
            torch.tensor([[1, 0, -1], [2, 3, 1]], dtype=torch.int32),
            randn(b, 1, 4 * h, 4 * h),
            flags,
        ),  # fmt: skip
        "memory_attention": memory_example(manifest, manifest.memory_frames, manifest.pointer_slots),
        "memory_encoder": (embed, randn(b, 1, 4 * h, 4 * h), randn(b, 1), flags),
        "mask_prompt": (embed, *high_res, (torch.rand(b, 1, s, s, generator=generator) > 0.5).float()),
    }


def memory_example(manifest: ExportManifest, frames: int, pointers: int) -> tuple[Tensor, ...]:
    """Inputs of the memory attention graph with `frames` spatial and `pointers` pointer slots (random)."""
    generator = torch.Generator().manual_seed(1)
    b, c, h = EXAMPLE_OBJECTS, manifest.hidden_dim, manifest.feature_size
    return (
        torch.randn(1, c, h, h, generator=generator),
        torch.randn(b, frames, manifest.memory_tokens, manifest.memory_dim, generator=generator),
        torch.zeros(b, frames, dtype=torch.long),
        torch.ones(b, frames, dtype=torch.bool),
        torch.randn(b, pointers, c, generator=generator),
        torch.rand(b, pointers, generator=generator),
        torch.ones(b, pointers, dtype=torch.bool),
    )


def _export(
    step: nn.Module,
    example: tuple[Tensor, ...],
    dynamic_shapes: tuple,
    path: Path,
    input_names: list[str],
    output_names: list[str],
) -> None:
    # Traced with autograd on, as the engine never runs: the CPU's blockwise attention (a Python loop over
    # objects, in place) serves inference only, so the trace takes scaled_dot_product_attention, one operator.
    # The exporter logs a warning per torchvision operator it cannot register; sam2rt has none of them.
    logging.getLogger("torch.onnx._internal.exporter._registration").setLevel(logging.ERROR)
    with torch.enable_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporter's notes on its own internals, nothing a user can act on
        program = torch.onnx.export(
            step,
            example,
            dynamic_shapes=dynamic_shapes,
            input_names=input_names,
            output_names=output_names,
            opset_version=OPSET,
            dynamo=True,
            external_data=False,
            verbose=False,
        )
    program.save(str(path))

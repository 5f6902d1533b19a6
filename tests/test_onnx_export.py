"""`sam2rt export`: each exported step against the PyTorch module it was made from (onnxruntime, CPU, fp32), the
object count dynamic, and the export folder's checks."""

from __future__ import annotations

import json
import os

import numpy as np
import onnxruntime
import pytest
import torch
from cli_support import IMAGE_SIZE, assert_clean_error, run_sam2rt, smallest_size, write_clip
from onnx_support import exported
from visible import visible_model

from sam2rt.export import manifest as files
from sam2rt.export.manifest import ExportError, ExportManifest
from sam2rt.export.onnx_export import _examples, memory_example
from sam2rt.export.onnx_steps import (
    ImageEncoderStep,
    MaskDecoderStep,
    MaskPromptStep,
    MemoryAttentionStep,
    MemoryEncoderStep,
)

TOLERANCE = 1e-4  # of max(1, |largest expected value|)


@pytest.fixture(scope="module")
def folder():
    return exported()


@pytest.fixture(scope="module")
def model():
    return visible_model(image_size=IMAGE_SIZE)  # the weights of the exported checkpoint


def _with_objects(inputs: tuple, objects: int, shared: tuple[int, ...]) -> tuple:
    """The example inputs with `objects` rows: row 0 repeated, except the inputs at `shared` (batch 1 for all)."""
    return tuple(x if i in shared else x[:1].expand(objects, *x.shape[1:]).contiguous() for i, x in enumerate(inputs))


def _assert_step_matches(folder, name: str, step: torch.nn.Module, inputs: tuple) -> float:
    session = onnxruntime.InferenceSession(str(folder / name), providers=["CPUExecutionProvider"])
    got = session.run(None, {arg.name: x.numpy() for arg, x in zip(session.get_inputs(), inputs)})
    with torch.inference_mode():
        expected = step(*inputs)
    expected = expected if isinstance(expected, tuple) else (expected,)
    worst = 0.0
    for output, want in zip(got, expected):
        want = want.numpy()
        assert output.shape == want.shape, f"{name}: shape {output.shape} != {want.shape}"
        worst = max(worst, float(np.abs(output - want).max() / max(1.0, np.abs(want).max())))
    assert worst <= TOLERANCE, f"{name}: max difference {worst:.2e} of the scale"
    return worst


# SAM 2.1's other sizes export in 1-3 minutes each on 2 cores: checked on request (SAM2RT_EXPORT_ALL_SIZES=1).
ALL_SIZES = os.environ.get("SAM2RT_EXPORT_ALL_SIZES") == "1"
OTHER_SIZES = [
    pytest.param(variant, marks=pytest.mark.skipif(not ALL_SIZES, reason="SAM2RT_EXPORT_ALL_SIZES=1 exports it"))
    for variant in ("sam2.1_hiera_small", "sam2.1_hiera_base_plus", "sam2.1_hiera_large")
]


@pytest.mark.parametrize("variant", ["sam2.1_hiera_tiny", "edgetam", *OTHER_SIZES])
def test_each_step_matches_pytorch_for_1_2_and_7_objects(variant):
    folder, model = exported(variant), visible_model(variant, image_size=smallest_size(variant))
    manifest = ExportManifest.read(folder)
    examples = _examples(manifest)
    cases = [
        (files.IMAGE_ENCODER, ImageEncoderStep(model), examples["image_encoder"], ()),
        (files.MASK_DECODER, MaskDecoderStep(model, True), examples["mask_decoder"], (1, 2)),
        (files.MASK_DECODER_SINGLE, MaskDecoderStep(model, False), examples["mask_decoder"], (1, 2)),
        (files.MEMORY_ENCODER, MemoryEncoderStep(model), examples["memory_encoder"], (0,)),
        (files.MASK_PROMPT, MaskPromptStep(model), examples["mask_prompt"], (0, 1, 2)),
    ]
    assert len(manifest.memory_capacities) == 2  # one prompted frame, and max_cond_frames of them
    for frames, pointers in manifest.memory_capacities:
        memory = list(memory_example(manifest, frames, pointers))
        generator = torch.Generator().manual_seed(1)
        memory[3] = torch.rand(memory[3].shape, generator=generator) > 0.4  # empty spatial slots among full ones
        memory[3][:, 0] = True  # every object has a prompted frame
        memory[6] = torch.rand(memory[6].shape, generator=generator) > 0.5
        memory[2] = torch.randint(0, model.config.num_maskmem, memory[2].shape, generator=generator)
        cases.append((manifest.memory_attention(frames, pointers), MemoryAttentionStep(model), tuple(memory), (0,)))
    for name, step, inputs, shared in cases:
        _assert_step_matches(folder, name, step, inputs)
        if name != files.IMAGE_ENCODER:
            for objects in (1, 7):
                _assert_step_matches(folder, name, step, _with_objects(inputs, objects, shared))


def test_manifest_describes_fixed_memory(folder, model):
    manifest = ExportManifest.read(folder)
    config = model.config
    assert (manifest.variant, manifest.image_size) == (config.variant.name, IMAGE_SIZE)
    assert manifest.memory_frames == manifest.max_cond_frames + config.num_maskmem - 1
    assert manifest.pointer_slots == manifest.max_cond_frames + config.max_obj_ptrs - 1
    one_prompt, full = [config.num_maskmem, config.max_obj_ptrs], [manifest.memory_frames, manifest.pointer_slots]
    assert manifest.memory_capacities == [one_prompt, full]
    assert manifest.memory_attention(*full) == files.MEMORY_ATTENTION
    # The memory's slots are fixed in each graph: only the object count is free.
    for frames, pointers in manifest.memory_capacities:
        graph = folder / manifest.memory_attention(frames, pointers)
        inputs = {
            arg.name: arg.shape
            for arg in onnxruntime.InferenceSession(str(graph), providers=["CPUExecutionProvider"]).get_inputs()
        }
        assert isinstance(inputs["spatial"][0], str)
        assert inputs["spatial"][1:] == [frames, manifest.memory_tokens, manifest.memory_dim]
        assert inputs["pointers"][1:] == [pointers, manifest.hidden_dim]


def test_incomplete_or_foreign_folders_are_refused(tmp_path, folder):
    with pytest.raises(ExportError, match="no ONNX export folder"):
        ExportManifest.read(tmp_path / "missing")
    with pytest.raises(ExportError, match="holds no sam2rt_onnx.json"):
        ExportManifest.read(tmp_path)
    fields = json.loads((folder / files.MANIFEST_NAME).read_text())
    (tmp_path / files.MANIFEST_NAME).write_text(json.dumps(fields))
    with pytest.raises(ExportError, match="lacks image_encoder.onnx"):
        ExportManifest.read(tmp_path)
    (tmp_path / files.MANIFEST_NAME).write_text(json.dumps(dict(fields, format_version=99)))
    with pytest.raises(ExportError, match="format version 99"):
        ExportManifest.read(tmp_path)


def test_track_refuses_a_missing_or_mismatched_export(tmp_path, folder):
    clip = write_clip(tmp_path / "clip.mp4", count=2)
    args = ("track", clip, "-p", "30,50", "--png-dir", tmp_path / "masks", "--backend", "onnxruntime")
    assert_clean_error(run_sam2rt(*args, "--onnx", tmp_path / "none"), "no ONNX export folder")
    assert_clean_error(run_sam2rt(*args, "--onnx", folder, "--variant", "sam2.1_hiera_small"), "not of --variant")
    missing = run_sam2rt(*args)
    assert missing.returncode == 2 and "--onnx" in missing.stderr
    assert_clean_error(run_sam2rt("export", "--image-size", IMAGE_SIZE, "-o", clip), "is a file, not a folder")


# Operators whose output shape depends on the data, or that hold control flow: TensorRT and CoreML want none.
DATA_DEPENDENT = {"If", "Loop", "Scan", "NonZero", "Unique", "NonMaxSuppression", "TopK", "Compress"}
DYNAMIC_DIMS = {"objects", "points", "frames"}


@pytest.mark.parametrize("variant", ["sam2.1_hiera_tiny", "edgetam"])
def test_graphs_have_no_data_dependent_shapes_or_control_flow(variant):
    import onnx

    folder = exported(variant)
    for name in ExportManifest.read(folder).graphs():
        model = onnx.load(str(folder / name))
        onnx.checker.check_model(model, full_check=True)  # shapes inferred through every node
        operators = {node.op_type for node in model.graph.node}
        assert not operators & DATA_DEPENDENT, f"{name}: {sorted(operators & DATA_DEPENDENT)}"
        assert not any(node.op_type.startswith("Sequence") for node in model.graph.node), f"{name}: sequences"
        for value in [*model.graph.input, *model.graph.output]:
            dims = value.type.tensor_type.shape.dim
            free = {d.dim_param for d in dims if not d.HasField("dim_value")}
            assert free <= DYNAMIC_DIMS, f"{name}: {value.name} has free dimensions {free - DYNAMIC_DIMS}"

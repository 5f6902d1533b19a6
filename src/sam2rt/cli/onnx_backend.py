"""`sam2rt track --backend onnxruntime`: the ONNX runner behind the tracker's interface that `tracking.run` takes."""

from __future__ import annotations

import enum
import importlib.util
from pathlib import Path

import torch

from ..tracking.stream import FrameResult
from .common import RunFailed
from .model_choice import ModelChoice


class Backend(str, enum.Enum):
    torch = "torch"
    onnxruntime = "onnxruntime"


class OnnxBackedTracker:
    """An OnnxStreamTracker whose results come as the PyTorch tracker's (tensors), for the writers of `track`."""

    def __init__(self, runner) -> None:
        self.runner = runner

    def step(self, frame) -> FrameResult:
        return _as_tensors(self.runner.step(frame))

    def add_prompt(self, obj_id: int, **prompt) -> FrameResult:
        return _as_tensors(self.runner.add_prompt(obj_id, **prompt))


def onnx_tracker(folder: Path, model: ModelChoice) -> OnnxBackedTracker:
    """The runner of an export folder; RunFailed when the folder is missing, incomplete or not the model asked for."""
    if importlib.util.find_spec("onnxruntime") is None:
        raise RunFailed("--backend onnxruntime needs onnxruntime: pip install 'sam2rt[onnx]'")
    from ..export.manifest import ExportError, ExportManifest
    from ..export.onnx_tracker import OnnxStreamTracker

    try:
        manifest = ExportManifest.read(folder)
    except ExportError as error:
        raise RunFailed(str(error)) from None
    if model.variant is not None and model.variant != manifest.variant:
        raise RunFailed(f"the export in {folder} is of {manifest.variant}, not of --variant {model.variant}")
    if model.checkpoint is not None:
        raise RunFailed(f"--checkpoint is not read with --backend onnxruntime: the weights are those of {folder}")
    return OnnxBackedTracker(OnnxStreamTracker(folder))


def _as_tensors(result) -> FrameResult:
    return FrameResult(
        result.frame_idx,
        result.object_ids,
        torch.from_numpy(result.mask_logits),
        torch.from_numpy(result.object_scores),
    )

"""sam2rt: SAM 2 for live video.

The public names are imported when first used (PEP 562), so that `sam2rt.export.onnx_tracker`, the ONNX runner,
imports without PyTorch.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

_PUBLIC = {
    "CameraPredictor": ".tracking.camera",
    "CheckpointError": ".checkpoints",
    "FrameResult": ".tracking.stream",
    "GeneratedMasks": ".images.mask_generator",
    "ImagePredictor": ".images.predictor",
    "InferenceState": ".tracking.video",
    "MaskGenerator": ".images.mask_generator",
    "ModelConfig": ".model.variants",
    "PooledStream": ".tracking.pooled_stream",
    "SAM2Model": ".model.sam2",
    "StreamPool": ".tracking.pool",
    "StreamTracker": ".tracking.stream",
    "TrackerOptions": ".tracking.options",
    "VARIANTS": ".model.variants",
    "Variant": ".model.variants",
    "VideoPredictor": ".tracking.video",
    "build_model": ".model.sam2",
    "get_variant": ".model.variants",
    "load_model": ".checkpoints",
}

__all__ = [
    "CameraPredictor",
    "CheckpointError",
    "FrameResult",
    "GeneratedMasks",
    "ImagePredictor",
    "InferenceState",
    "MaskGenerator",
    "ModelConfig",
    "PooledStream",
    "SAM2Model",
    "StreamPool",
    "StreamTracker",
    "TrackerOptions",
    "VARIANTS",
    "Variant",
    "VideoPredictor",
    "build_model",
    "get_variant",
    "load_model",
]

if TYPE_CHECKING:
    from .checkpoints import CheckpointError, load_model
    from .images.mask_generator import GeneratedMasks, MaskGenerator
    from .images.predictor import ImagePredictor
    from .model.sam2 import SAM2Model, build_model
    from .model.variants import VARIANTS, ModelConfig, Variant, get_variant
    from .tracking.camera import CameraPredictor
    from .tracking.options import TrackerOptions
    from .tracking.pool import StreamPool
    from .tracking.pooled_stream import PooledStream
    from .tracking.stream import FrameResult, StreamTracker
    from .tracking.video import InferenceState, VideoPredictor


def __getattr__(name: str) -> Any:
    if name not in _PUBLIC:
        raise AttributeError(f"module 'sam2rt' has no attribute {name!r}")
    value = getattr(import_module(_PUBLIC[name], __name__), name)
    globals()[name] = value  # once imported, a plain attribute
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_PUBLIC))

"""sam2rt: SAM 2 for live video."""

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

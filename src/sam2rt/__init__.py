"""sam2rt: SAM 2 for live video."""

from .image_predictor import ImagePredictor
from .model.sam2 import SAM2Model, build_model
from .variants import VARIANTS, ModelConfig, Variant, get_variant

__all__ = ["ImagePredictor", "SAM2Model", "build_model", "VARIANTS", "ModelConfig", "Variant", "get_variant"]

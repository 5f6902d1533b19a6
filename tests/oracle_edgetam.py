"""Meta's EdgeTAM code (`../shared/oracles/edgetam`, a fork of sam2) as the reference for EdgeTAM's numbers.

The fork's import name is `sam2`, like the installed `sam2==1.1.0` that the other parity tests read. It is
imported with the fork's folder first on sys.path and every `sam2` module set aside, and both are put back
afterwards: the models built keep the fork's classes, and the other oracle stays as it was. Its trunk asks
timm for pretrained weights, which cannot be downloaded here: it is built without them (random weights,
then perturbed like the other oracle's).
"""

from __future__ import annotations

import contextlib
import inspect
import sys
from functools import lru_cache
from pathlib import Path
from typing import Iterator

import torch
from oracle import install_torchvision_standin, set_options

import sam2rt

FORK = Path(__file__).resolve().parents[2] / "shared" / "oracles" / "edgetam"
CONFIG = "configs/edgetam.yaml"
OBJECT_SCORE_BIAS = "sam_mask_decoder.pred_obj_score_head.layers.2.bias"
NOISE = 0.05  # on every floating-point tensor, as oracle.perturbed_weights does


def _is_sam2(name: str) -> bool:
    return name == "sam2" or name.startswith("sam2.")


@contextlib.contextmanager
def edgetam_modules() -> Iterator[None]:
    """Within: `import sam2` is Meta's EdgeTAM fork. The installed sam2's modules are restored on exit."""
    install_torchvision_standin()  # timm imports torchvision, which cannot load beside the CPU torch
    set_aside = {name: sys.modules.pop(name) for name in list(sys.modules) if _is_sam2(name)}
    sys.path.insert(0, str(FORK))
    try:
        import sam2.modeling.backbones.timm as timm_backbone

        create_model = timm_backbone.create_model

        def without_download(*args, pretrained: bool = False, **kwargs):
            return create_model(*args, pretrained=False, **kwargs)

        timm_backbone.create_model = without_download
        yield
    finally:
        sys.path.remove(str(FORK))
        for name in [name for name in sys.modules if _is_sam2(name)]:
            del sys.modules[name]
        sys.modules.update(set_aside)


def _overrides(image_size: int) -> list[str]:
    side = image_size // 16
    # The cross-attention's query rotary table is built for a fixed grid (64 x 64 at 1024 px).
    return [
        f"++model.image_size={image_size}",
        f"++model.memory_attention.layer.cross_attention.q_sizes=[{side},{side}]",
    ]


def _build(image_size: int, video: bool):
    with edgetam_modules():
        from sam2.build_sam import build_sam2, build_sam2_video_predictor

        build = build_sam2_video_predictor if video else build_sam2
        with contextlib.redirect_stdout(None):  # the fork's builder prints its progress
            return build(CONFIG, None, device="cpu", hydra_overrides_extra=_overrides(image_size))


@lru_cache(maxsize=None)
def perturbed_weights(image_size: int, object_score_shift: float, seed: int = 0) -> dict[str, torch.Tensor]:
    """The fork's own initialisation plus Gaussian noise on every floating-point tensor (BatchNorm statistics
    included), and `object_score_shift` added to the object-score bias."""
    torch.manual_seed(seed)
    reference = _build(image_size, video=False)
    generator = torch.Generator().manual_seed(seed + 1)
    weights = {
        key: value + NOISE * torch.randn(value.shape, generator=generator) if value.is_floating_point() else value
        for key, value in reference.state_dict().items()
    }
    weights[OBJECT_SCORE_BIAS] = weights[OBJECT_SCORE_BIAS] + object_score_shift
    return weights


def oracle_model(image_size: int, object_score_shift: float, video: bool = False, **attributes):
    """The fork's SAM2Base (or its SAM2VideoPredictor) for edgetam.yaml, carrying the perturbed weights."""
    model = _build(image_size, video)
    model.load_state_dict(perturbed_weights(image_size, object_score_shift), strict=True)
    set_options(model, attributes)
    if video:
        _promote_memory_to_fp32(model.memory_attention)
    return model.eval()


def _promote_memory_to_fp32(memory_attention: torch.nn.Module) -> None:
    """As oracle._promote_memory_to_fp32: the predictor keeps memories in bf16 and counts on CUDA autocast; on
    CPU they are cast to fp32 where the concatenation with the pointers does not do it."""
    forward = memory_attention.forward

    def promoted(curr, memory, curr_pos=None, memory_pos=None, num_obj_ptr_tokens=0, num_spatial_mem=-1):
        return forward(curr, memory.float(), curr_pos, memory_pos.float(), num_obj_ptr_tokens, num_spatial_mem)

    memory_attention.forward = promoted


def our_model(image_size: int, object_score_shift: float) -> sam2rt.SAM2Model:
    install_torchvision_standin()
    model = sam2rt.build_model("edgetam", image_size=image_size)
    model.load_state_dict(perturbed_weights(image_size, object_score_shift), strict=True)
    return model.eval()


def oracle_video_state(predictor, frames: list, resize: str) -> dict:
    """The fork's init_state over frames preprocessed exactly as sam2rt preprocesses them (see oracle.py)."""
    from unittest import mock

    from sam2rt.processing.images import as_rgb_tensor
    from sam2rt.processing.preprocess import model_input

    size, device = predictor.image_size, predictor.device
    images = torch.cat([model_input(as_rgb_tensor(frame), size, resize, device) for frame in frames])
    height, width = frames[0].shape[:2]
    # The fork's module is no longer in sys.modules: patched through init_state's own globals.
    module_globals = inspect.unwrap(type(predictor).init_state).__globals__

    def load_video_frames(**_):
        return images, height, width

    with mock.patch.dict(module_globals, {"load_video_frames": load_video_frames}):
        return predictor.init_state(video_path="<frames>")

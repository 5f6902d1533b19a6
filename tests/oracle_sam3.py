"""Meta's SAM 3 package (`sam3==0.1.4`) as the reference for SAM 3's numbers, on a CPU.

The package names CUDA in a few places and imports torchvision, which PyPI has for CUDA torch only. Before
it is imported, `sam3_modules()` makes `Tensor.cuda` and `Tensor.pin_memory` return the tensor, turns
`device="cuda"` of the tensor factories into the CPU, and registers the torchvision stand-in of `oracle.py`
with the one more operator SAM 3 calls, RoIAlign (written here the textbook way, a sample at a time).
Tests skip when the package is not installed.
"""

from __future__ import annotations

import contextlib
import functools
import math
import sys

import pytest
import torch
from oracle import install_torchvision_standin
from torch import nn

from sam2rt.model.sam3.config import Sam3Spec, TextSpec, VisionSpec

# A SAM 3 small enough for a CPU test: 112 px in patches of 14 (an 8 x 8 grid), windows of 4 with one global block,
# pyramid levels of 32, 16 and 8; every part of the detector, narrow and shallow.
SMALL_SPEC = Sam3Spec(
    vision=VisionSpec(
        image_size=112, width=64, depth=3, heads=4, window_size=4, global_blocks=(2,), pretrain_image_size=56
    ),
    text=TextSpec(width=64, heads=4, layers=2),
    d_model=32,
    heads=4,
    feedforward=64,
    geometry_layers=2,
    encoder_layers=2,
    decoder_layers=2,
    queries=12,
)

_FACTORIES = ("zeros", "ones", "arange", "empty", "tensor", "full", "linspace", "randn", "rand", "as_tensor")


def _cpu_device(device):
    if device is None:
        return None
    text = str(device)
    return "cpu" if text.startswith("cuda") else device


def _on_cpu(factory):
    @functools.wraps(factory)
    def wrapped(*args, **kwargs):
        if "device" in kwargs:
            kwargs["device"] = _cpu_device(kwargs["device"])
        return factory(*args, **kwargs)

    wrapped._sam3_cpu = True
    return wrapped


def _bilinear(feature: torch.Tensor, y: float, x: float) -> torch.Tensor:
    """torchvision's roi_align sample: bilinear between the four neighbours, zero beyond one pixel outside."""
    channels, height, width = feature.shape
    if y < -1.0 or y > height or x < -1.0 or x > width:
        return feature.new_zeros(channels)
    y, x = max(y, 0.0), max(x, 0.0)
    y_low, x_low = int(y), int(x)
    if y_low >= height - 1:
        y_low = y_high = height - 1
        y = float(y_low)
    else:
        y_high = y_low + 1
    if x_low >= width - 1:
        x_low = x_high = width - 1
        x = float(x_low)
    else:
        x_high = x_low + 1
    ly, lx = y - y_low, x - x_low
    hy, hx = 1.0 - ly, 1.0 - lx
    return (
        hy * hx * feature[:, y_low, x_low]
        + hy * lx * feature[:, y_low, x_high]
        + ly * hx * feature[:, y_high, x_low]
        + ly * lx * feature[:, y_high, x_high]
    )


def reference_roi_align(
    features: torch.Tensor, boxes, output_size, spatial_scale: float = 1.0, sampling_ratio: int = -1, aligned=False
) -> torch.Tensor:
    """torchvision.ops.roi_align, a sample at a time: boxes (K, 5) as (batch index, x0, y0, x1, y1) or a list of
    (Ki, 4) per image; returns (K, C, out_h, out_w)."""
    if isinstance(boxes, (list, tuple)):
        boxes = torch.cat(
            [torch.cat([torch.full((len(b), 1), float(i), dtype=b.dtype), b], dim=1) for i, b in enumerate(boxes)]
        )
    out_h, out_w = (output_size, output_size) if isinstance(output_size, int) else output_size
    offset = 0.5 if aligned else 0.0
    pooled = features.new_zeros(len(boxes), features.shape[1], out_h, out_w)
    for k, (index, x0, y0, x1, y1) in enumerate(boxes.tolist()):
        feature = features[int(index)]
        x0, y0, x1, y1 = (v * spatial_scale - offset for v in (x0, y0, x1, y1))
        roi_w, roi_h = x1 - x0, y1 - y0
        if not aligned:
            roi_w, roi_h = max(roi_w, 1.0), max(roi_h, 1.0)
        bin_h, bin_w = roi_h / out_h, roi_w / out_w
        grid_h = sampling_ratio if sampling_ratio > 0 else math.ceil(roi_h / out_h)
        grid_w = sampling_ratio if sampling_ratio > 0 else math.ceil(roi_w / out_w)
        count = max(grid_h * grid_w, 1)
        for ph in range(out_h):
            for pw in range(out_w):
                total = features.new_zeros(features.shape[1])
                for iy in range(grid_h):
                    y = y0 + ph * bin_h + (iy + 0.5) * bin_h / grid_h
                    for ix in range(grid_w):
                        x = x0 + pw * bin_w + (ix + 0.5) * bin_w / grid_w
                        total = total + _bilinear(feature, y, x)
                pooled[k, :, ph, pw] = total / count
    return pooled


class _RoIAlign(nn.Module):
    def __init__(self, output_size, spatial_scale, sampling_ratio, aligned=False):
        super().__init__()
        self.output_size, self.spatial_scale = output_size, spatial_scale
        self.sampling_ratio, self.aligned = sampling_ratio, aligned

    def forward(self, features, boxes):
        return reference_roi_align(
            features, boxes, self.output_size, self.spatial_scale, self.sampling_ratio, self.aligned
        )


def _install_triton_kernel_standins() -> None:
    """The package's Triton kernels (EDT, NMS, connected components) are defined at import and run on CUDA
    only; their modules become placeholders (a `triton` stand-in would mislead torch's own Triton probes)."""
    import types

    from oracle import _placeholders

    for name in ("sam3.model.edt", "sam3.perflib.triton.connected_components", "sam3.perflib.triton.nms"):
        sys.modules.setdefault(name, _placeholders(types.ModuleType(name)))


_ORIGINALS: dict = {}  # what the redirects replaced, while they are installed


def _install_cpu_redirects() -> None:
    if _ORIGINALS:
        return
    _ORIGINALS.update({name: getattr(torch, name) for name in _FACTORIES})
    _ORIGINALS["Tensor.cuda"], _ORIGINALS["Tensor.pin_memory"] = torch.Tensor.cuda, torch.Tensor.pin_memory
    torch.Tensor.cuda = lambda self, *args, **kwargs: self
    torch.Tensor.pin_memory = lambda self, *args, **kwargs: self
    for name in _FACTORIES:
        setattr(torch, name, _on_cpu(_ORIGINALS[name]))


def remove_cpu_redirects() -> None:
    """Put torch back as it was: the redirects would break other tests (torch.jit cannot script a wrapped
    `torch.tensor`, which the official SAM 2 predictor's transforms do). conftest.py calls this after each test
    module; a module that runs Meta's SAM 3 calls `sam3_modules()` again, which installs them again."""
    if not _ORIGINALS:
        return
    torch.Tensor.cuda, torch.Tensor.pin_memory = _ORIGINALS.pop("Tensor.cuda"), _ORIGINALS.pop("Tensor.pin_memory")
    for name in _FACTORIES:
        setattr(torch, name, _ORIGINALS.pop(name))


@contextlib.contextmanager
def without_cpu_redirects():
    """torch as it is meanwhile, for our models on CUDA in a module whose Meta models run on the CPU: the redirects
    would put what our code makes with `device="cuda"` on the CPU (and make `pin_memory` do nothing)."""
    installed = bool(_ORIGINALS)
    remove_cpu_redirects()
    try:
        yield
    finally:
        if installed:
            _install_cpu_redirects()


@contextlib.contextmanager
def on_meta_device():
    """`torch.device("meta")` for building Meta's SAM 3 at its official size without memory: its ViT reads its
    drop-path rates with `.item()` from a `torch.linspace`, which on the meta device has no values, so linspace is
    made on the CPU meanwhile (an explicit device is left alone by the meta device's mode)."""
    linspace = torch.linspace

    def cpu_linspace(*args, **kwargs):
        kwargs.setdefault("device", "cpu")
        return linspace(*args, **kwargs)

    torch.linspace = cpu_linspace
    try:
        with torch.device("meta"):
            yield
    finally:
        torch.linspace = linspace


def sam3_modules():
    """Import Meta's `sam3` with the CPU redirects and the torchvision stand-in; skip when it is absent."""
    pytest.importorskip("einops", reason="Meta's sam3 package needs einops (pip install einops ftfy regex)")
    install_torchvision_standin()
    import torchvision.ops.roi_align as roi_module  # the stand-in's placeholder submodule

    roi_module.RoIAlign = _RoIAlign
    roi_module.roi_align = reference_roi_align
    # after the submodule's import, which binds its name on the package over any function set before
    sys.modules["torchvision.ops"].roi_align = reference_roi_align
    _install_triton_kernel_standins()
    _install_cpu_redirects()
    import sam3

    return sam3


def meta_stream_state(meta, images: torch.Tensor, frame_hw: tuple[int, int], phrase: str) -> dict:
    """Meta's video state (`Sam3VideoInference`) over frames already normalised, `images` (T, 3, S, S) on the
    model's device, with `phrase` set as its `add_prompt` sets a text prompt (no inference yet); `frame_hw` is the
    original frames' size. Frames are then run one at a time (`_run_single_frame_inference`); a stream writes each
    frame into `state["input_batch"].img_batch` before running it."""
    state = {
        "image_size": images.shape[-1],
        "num_frames": images.shape[0],
        "orig_height": frame_hw[0],
        "orig_width": frame_hw[1],
        "constants": {},
    }
    meta._construct_initial_input_batch(state, images)
    state.update(
        tracker_inference_states=[], tracker_metadata={}, feature_cache={}, cached_frame_outputs={},
        action_history=[], is_image_only=False, text_prompt=phrase,
    )  # fmt: skip
    state["input_batch"].find_text_batch[0] = phrase
    for stage in state["input_batch"].find_inputs:
        stage.text_ids[...] = 0
    return state


def perturbed(module: nn.Module, seed: int = 0, scale: float = 0.05) -> dict[str, torch.Tensor]:
    """The module's own initialisation plus Gaussian noise on every floating tensor (no zero or one init hides a
    wrong path); loaded into the module and returned."""
    generator = torch.Generator().manual_seed(seed)
    weights = {
        key: value + scale * torch.randn(value.shape, generator=generator) if value.is_floating_point() else value
        for key, value in module.state_dict().items()
    }
    module.load_state_dict(weights)
    return weights


def meta_image_model(spec, bpe_path: str):
    """Meta's `Sam3Image` as `build_sam3_image_model` assembles it (eval mode, no instance interactivity), with
    the sizes of `spec` (a `sam2rt.model.sam3.config.Sam3Spec`): the official model at `SAM3`, small ones for
    tests. Weights are Meta's own initialisation."""
    from sam3.model import decoder, encoder, geometry_encoders, maskformer_segmentation, model_misc, necks, vitdet
    from sam3.model.position_encoding import PositionEmbeddingSine
    from sam3.model.sam3_image import Sam3Image
    from sam3.model.text_encoder_ve import VETextEncoder
    from sam3.model.tokenizer_ve import SimpleTokenizer
    from sam3.model.vl_combiner import SAM3VLBackbone

    d, heads, ffn, vision = spec.d_model, spec.heads, spec.feedforward, spec.vision

    def sine(resolution=None):
        return PositionEmbeddingSine(
            num_pos_feats=d, normalize=True, temperature=10000, precompute_resolution=resolution
        )

    def attention(batch_first):
        return model_misc.MultiheadAttentionWrapper(embed_dim=d, num_heads=heads, dropout=0.1, batch_first=batch_first)

    trunk = vitdet.ViT(
        img_size=vision.image_size, pretrain_img_size=vision.pretrain_image_size, patch_size=vision.patch_size,
        embed_dim=vision.width, depth=vision.depth, num_heads=vision.heads, mlp_ratio=vision.mlp_ratio,
        norm_layer="LayerNorm", drop_path_rate=0.1, qkv_bias=True, use_abs_pos=True, tile_abs_pos=True,
        global_att_blocks=vision.global_blocks, rel_pos_blocks=(), use_rope=True, use_interp_rope=True,
        window_size=vision.window_size, pretrain_use_cls_token=True, retain_cls_token=False, ln_pre=True,
        ln_post=False, return_interm_layers=False, bias_patch_embed=False,
    )  # fmt: skip
    neck = necks.Sam3DualViTDetNeck(
        position_encoding=sine(vision.image_size), d_model=d, scale_factors=list(spec.neck_scales), trunk=trunk
    )
    text = VETextEncoder(
        tokenizer=SimpleTokenizer(bpe_path=bpe_path), d_model=d, width=spec.text.width, heads=spec.text.heads,
        layers=spec.text.layers,
    )  # fmt: skip
    fusion_layer = encoder.TransformerEncoderLayer(
        activation="relu", d_model=d, dim_feedforward=ffn, dropout=0.1, pos_enc_at_attn=True,
        pos_enc_at_cross_attn_keys=False, pos_enc_at_cross_attn_queries=False, pre_norm=True,
        self_attention=attention(True), cross_attention=attention(True),
    )  # fmt: skip
    fusion = encoder.TransformerEncoderFusion(
        layer=fusion_layer, num_layers=spec.encoder_layers, d_model=d, num_feature_levels=1, frozen=False,
        use_act_checkpoint=False, add_pooled_text_to_img_feat=False, pool_text_with_mask=True,
    )  # fmt: skip
    decoder_layer = decoder.TransformerDecoderLayer(
        activation="relu", d_model=d, dim_feedforward=ffn, dropout=0.1, cross_attention=attention(False),
        n_heads=heads, use_text_cross_attention=True,
    )  # fmt: skip
    detr = decoder.TransformerDecoder(
        layer=decoder_layer, num_layers=spec.decoder_layers, num_queries=spec.queries, return_intermediate=True,
        box_refine=True, num_o2m_queries=0, dac=True, boxRPB="log", d_model=d, frozen=False, interaction_layer=None,
        dac_use_selfatt_ln=True, resolution=vision.image_size, stride=vision.patch_size, use_act_checkpoint=False,
        presence_token=True,
    )  # fmt: skip
    scoring = model_misc.DotProductScoring(
        d_model=d, d_proj=d,
        prompt_mlp=model_misc.MLP(
            input_dim=d, hidden_dim=ffn, output_dim=d, num_layers=2, dropout=0.1, residual=True,
            out_norm=nn.LayerNorm(d),
        ),
    )  # fmt: skip
    segmentation = maskformer_segmentation.UniversalSegmentationHead(
        hidden_dim=d, upsampling_stages=spec.upsampling_stages, aux_masks=False, presence_head=False,
        dot_product_scorer=None, act_ckpt=False,
        cross_attend_prompt=model_misc.MultiheadAttentionWrapper(num_heads=heads, dropout=0, embed_dim=d),
        pixel_decoder=maskformer_segmentation.PixelDecoder(
            num_upsampling_stages=spec.upsampling_stages, interpolation_mode="nearest", hidden_dim=d
        ),
    )  # fmt: skip
    geometry_layer = encoder.TransformerEncoderLayer(
        activation="relu", d_model=d, dim_feedforward=ffn, dropout=0.1, pos_enc_at_attn=False, pre_norm=True,
        self_attention=attention(False), pos_enc_at_cross_attn_queries=False, pos_enc_at_cross_attn_keys=True,
        cross_attention=attention(False),
    )  # fmt: skip
    geometry = geometry_encoders.SequenceGeometryEncoder(
        pos_enc=sine(), encode_boxes_as_points=False, points_direct_project=True, points_pool=True,
        points_pos_enc=True, boxes_direct_project=True, boxes_pool=True, boxes_pos_enc=True, d_model=d,
        num_layers=spec.geometry_layers, layer=geometry_layer, use_act_ckpt=False, add_cls=True,
        add_post_encode_proj=True, roi_size=spec.roi_size,
    )  # fmt: skip
    model = Sam3Image(
        backbone=SAM3VLBackbone(visual=neck, text=text, scalp=1),
        transformer=model_misc.TransformerWrapper(encoder=fusion, decoder=detr, d_model=d),
        input_geometry_encoder=geometry, segmentation_head=segmentation, num_feature_levels=1, o2m_mask_predict=True,
        dot_prod_scoring=scoring, use_instance_query=False, multimask_output=True, inst_interactive_predictor=None,
        matcher=None,
    )  # fmt: skip
    # Meta leaves these two uninitialised (torch.empty): give them values, as a checkpoint would
    nn.init.normal_(text.encoder.positional_embedding, std=0.01)
    nn.init.normal_(text.encoder.text_projection, std=spec.text.width**-0.5)
    return model.eval()

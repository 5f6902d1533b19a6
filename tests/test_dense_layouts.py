"""The residual streams of the image trunk and the memory attention stay dense: a transposed view's layout, once
in a sum, is inherited by every later sum, and each layer norm then copies its input first (on an H100 at 16
objects, 1.2 ms a step of such copies, and the sums on PyTorch's slower kernels for strided tensors)."""

from __future__ import annotations

import numpy as np
from torch import nn

import sam2rt


def test_every_layer_norm_of_a_tracking_step_reads_a_dense_tensor():
    model = sam2rt.build_model("sam2.1_hiera_tiny", image_size=256)
    seen: list[tuple[str, bool]] = []
    for name, module in model.named_modules():
        if isinstance(module, nn.LayerNorm) and name.startswith(("image_encoder", "memory_attention")):
            module.register_forward_pre_hook(lambda _, args, name=name: seen.append((name, args[0].is_contiguous())))
    tracker = sam2rt.StreamTracker(model, fill_hole_area=0)
    frames = [np.random.default_rng(t).integers(0, 256, (120, 160, 3), dtype=np.uint8) for t in range(3)]
    tracker.step(frames[0])
    tracker.add_prompt(1, points=[(80, 60)], labels=[1])
    for frame in frames[1:]:
        tracker.step(frame)
    names = {name for name, _ in seen}
    assert any(n.startswith("memory_attention") for n in names) and any(n.startswith("image_encoder") for n in names)
    assert sorted({name for name, dense in seen if not dense}) == []

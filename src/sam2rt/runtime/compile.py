"""torch.compile as a runtime option: inductor's fused kernels for the modules that do a tracking step's work,
under CUDA graphs or without them."""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from .graphs import GRAPHED_METHODS, GraphedCallable

COMPILE_MODES = ("default", "max-autotune-no-cudagraphs")  # inductor's own CUDA graphs would clash with ours
# The memory attention meets a new memory length on each of the first frames of an object (1 to 7 frames of
# memory plus conditioning frames, up to 16 pointers), with and without padded slots, for each object
# count: beyond dynamo's default of 8 compiles per function it would run eager from then on, with only a log warning.
RECOMPILE_LIMIT = 64


def use_compile(
    model: nn.Module, mode: str = "default", dynamic: Optional[bool] = None, backend: str = "inductor"
) -> nn.Module:
    """Run the image encoder, memory attention, mask decoder and memory encoder through torch.compile.

    Call it before `use_cuda_graphs` to replay the compiled kernels from graphs. `dynamic=None` is
    dynamo's automatic choice: a first compile for the shapes seen, then one with the sizes that changed
    (the memory length, the object count) made symbolic; `dynamic=False` compiles once per shape.
    Raises dynamo's recompile limit, a process-wide setting, to at least RECOMPILE_LIMIT. `backend`
    "eager" traces without generating code (for tests). Compiling happens on each first call.
    """
    if mode not in COMPILE_MODES:
        raise ValueError(f"compile mode must be one of {', '.join(COMPILE_MODES)}; got {mode!r}")
    if any(isinstance(getattr(model, name), GraphedCallable) for name in GRAPHED_METHODS):
        raise ValueError("compile the model before use_cuda_graphs, not after: graphs replay the compiled code")
    import torch._dynamo.config as dynamo_config

    dynamo_config.recompile_limit = max(dynamo_config.recompile_limit, RECOMPILE_LIMIT)
    for module in _heavy_modules(model):
        module.forward = torch.compile(module.forward, mode=mode, dynamic=dynamic, backend=backend)
    return model


def _heavy_modules(model: nn.Module) -> tuple[nn.Module, ...]:
    """The four modules that do a tracking step's work, which compile speeds up."""
    return (model.image_encoder, model.memory_attention, model.sam_mask_decoder, model.memory_encoder)

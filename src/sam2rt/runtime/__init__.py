"""The runtime: how the model runs, applied from outside the model's code.

- `kernels`: the kernels behind the model's operations (attention, depthwise conv, rotary encoding, residual
  sums with their layer norms, the downsampler's norms and GELU, linear + relu) and the choice among them, the
  one seam the model calls; the model's maths does not depend on which runs. `triton_kernels` holds the
  hand-written Triton kernels it chooses on CUDA at inference (training keeps PyTorch's forms).
- `to_inference_dtype` casts the parameters to bf16 (or fp16), which is faster than autocast:
  autocast converts weights and activations on every call. Positional tables and the prompt
  encoder's random Fourier matrix stay in fp32, and mask logits come back in fp32. On a CPU it is an
  opt-in (`optimize(..., cpu_bf16=True)`): about twice the FPS where the CPU has bf16 matrix instructions
  (`cpu_has_native_bf16`), slower where it has not.
- `graphs.use_cuda_graphs` replays the model's steps (encoding images, decoding prompts, segmenting for
  tracking, conditioning on memory, encoding memory: each heavy module with the glue around it) from
  CUDA graphs, one graph per input shape (a batch of frames, a number of objects, of clicks), captured
  on first use. Code around the model can join in: `graphed_with_model` replays a function (the tracking
  engine's whole pass over a frame's objects) from graphs too.
- `compile.use_compile` runs the same four module forwards through torch.compile (inductor's fused kernels),
  under CUDA graphs or without them; `optimize(model, compile=True)` does bf16, compile and graphs.
  It is an option, not the default: about a third more FPS on an H200, for 30 to 60 s of compiling before
  the first masks and more while the memory fills (benchmarks/tracking.py --compile; the README's table).

The model is passed as an nn.Module (a SAM2Model): the runtime sits below the model, which calls its kernels.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import torch
from torch import nn

from .compile import use_compile
from .graphs import DETECTOR_METHODS, TRACKER_METHODS, graphed_with_model, use_cuda_graphs

__all__ = [
    "cpu_has_native_bf16",
    "graphed_with_model",
    "optimize",
    "optimize_concept_models",
    "optimize_detector",
    "to_inference_dtype",
    "use_compile",
    "use_cuda_graphs",
    "with_speed_options",
]


@torch.no_grad()
def to_inference_dtype(model: nn.Module, dtype: torch.dtype = torch.bfloat16) -> nn.Module:
    """Cast the model's parameters (not its buffers) to `dtype`, in place; returns the model."""
    if dtype not in (torch.float32, torch.bfloat16, torch.float16):
        raise ValueError(f"dtype must be float32, bfloat16 or float16, got {dtype}")
    for param in model.parameters():
        param.data = param.data.to(dtype)
    return model


# The /proc/cpuinfo flags of bf16 matrix instructions: Intel's AMX (Sapphire Rapids on) and AVX512-BF16 (Intel
# Cooper Lake on, AMD Zen 4 on). Elsewhere oneDNN emulates bf16 from fp32 and runs slower than fp32.
NATIVE_BF16_FLAGS = frozenset({"amx_bf16", "avx512_bf16"})


def cpu_has_native_bf16(cpuinfo: Optional[str] = None) -> bool:
    """Whether this CPU (or the given /proc/cpuinfo text) reports bf16 matrix instructions; False where Linux's
    /proc/cpuinfo is absent (other systems: not known, so not claimed)."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            return False
    flags = {
        flag for line in cpuinfo.splitlines() if line.startswith("flags") for flag in line.split(":", 1)[-1].split()
    }
    return bool(flags & NATIVE_BF16_FLAGS)


def optimize(model: nn.Module, compile: bool = False, cpu_bf16: bool = False) -> nn.Module:
    """On CUDA, bf16 parameters and CUDA graphs, and with `compile` torch.compile under the graphs. Elsewhere
    the model keeps fp32 parameters unless `cpu_bf16` (bf16 on the CPU: no graphs there), and `compile` is
    refused: it is set up and measured for CUDA (on CPU inductor needs a C++ compiler, and tiny's memory attention
    alone took 30 to 40 s to compile on 2 cores; `use_compile` does it if asked). Returns the model."""
    if model.device.type != "cuda":
        if compile:
            raise ValueError(f"compile needs the model on a CUDA device, not {model.device.type}")
        return to_inference_dtype(model) if cpu_bf16 and model.device.type == "cpu" else model
    to_inference_dtype(model)
    if compile:
        use_compile(model)
    return use_cuda_graphs(model)


def optimize_detector(detector: nn.Module) -> nn.Module:
    """SAM 3's detector on CUDA: bf16 parameters (not buffers: its rotary tables keep their precision) and its
    image encoding and detection pass replayed from CUDA graphs; elsewhere left as it is. Returns the detector.

    The commands' setting under --fast: a frame's encoding and one phrase's detection took 27.5 ms against 36.0
    with bf16 alone, and a whole frame of `benchmarks/concepts.py` 34.8 against 51.4 (H100)."""
    if next(detector.parameters()).device.type != "cuda":
        return detector
    to_inference_dtype(detector)
    return use_cuda_graphs(detector, DETECTOR_METHODS)


def optimize_concept_models(detector: nn.Module, tracker: nn.Module) -> tuple[nn.Module, nn.Module]:
    """SAM 3's detector and tracker (a SAM2Model whose image encoder is the detector's vision backbone) on CUDA:
    bf16 parameters; the detector's steps and the tracker's tracking steps (propagation, memory encoding,
    prompts) replayed from CUDA graphs (the tracker's own image encoding is not graphed: the concept tracker runs
    the shared backbone once a frame for both pyramids). Elsewhere both are left as they are. Returns (detector,
    tracker)."""
    if next(tracker.parameters()).device.type != "cuda":
        return detector, tracker
    optimize_detector(detector)  # the rotary tables of the shared backbone keep their precision
    to_inference_dtype(tracker)
    return detector, use_cuda_graphs(tracker, TRACKER_METHODS)


def with_speed_options(model: nn.Module, fast: bool, compile: bool, cpu_bf16: bool = False) -> nn.Module:
    """The commands' --fast/--exact, --compile and --cpu-bf16: `optimize(model, compile, cpu_bf16)` when fast,
    else only compile if asked (fp32 weights, no graphs). Returns the model."""
    if fast:
        return optimize(model, compile, cpu_bf16)
    return use_compile(model) if compile else model

"""Speed settings applied from outside the model code.

The model code stays plain PyTorch; this module changes how it runs:

- `to_inference_dtype` casts the parameters to bf16 (or fp16), which is faster than autocast:
  autocast converts weights and activations on every call. Positional tables and the prompt
  encoder's random Fourier matrix stay in fp32, and mask logits come back in fp32.
- `use_cuda_graphs` replays the image encoder, the memory attention, the mask decoder and the memory
  encoder from CUDA graphs, one graph per input shape (a batch of frames, a number of objects, of
  clicks), captured on first use. A tracking step launches about a thousand small
  kernels; replaying them from a graph takes the launch cost off the CPU, which otherwise
  bounds the frame rate of the small variants. Captured code uses cuDNN's attention kernels
  on batches, the fastest there on Hopper, whose per-call CPU cost a graph pays only once.
- `use_compile` runs the same four module forwards through torch.compile (inductor's fused kernels),
  under CUDA graphs or without them; `optimize(model, compile=True)` does bf16, compile and graphs.
  It is an option, not the default: about a third more FPS on an H200, for 30 to 60 s of compiling before
  the first masks and more while the memory fills (benchmarks/tracking.py --compile; the README's table).
"""

from __future__ import annotations

from typing import Callable, NamedTuple, Optional

import torch
from torch import Tensor

from .model.layers import attention_for_graphs
from .model.sam2 import SAM2Model


@torch.no_grad()
def to_inference_dtype(model: SAM2Model, dtype: torch.dtype = torch.bfloat16) -> SAM2Model:
    """Cast the model's parameters (not its buffers) to `dtype`, in place; returns the model."""
    if dtype not in (torch.float32, torch.bfloat16, torch.float16):
        raise ValueError(f"dtype must be float32, bfloat16 or float16, got {dtype}")
    for param in model.parameters():
        param.data = param.data.to(dtype)
    return model


class _Graph(NamedTuple):
    graph: torch.cuda.CUDAGraph
    inputs: dict[str, Tensor]  # static copies of the tensor arguments, by argument name
    output: object  # the static output structure


def _signature(arguments: dict) -> tuple:
    return tuple(
        (name, tuple(a.shape), a.dtype, a.device) if isinstance(a, Tensor) else (name, a)
        for name, a in arguments.items()
    )


def _is_tensor_tuple(value) -> bool:
    return isinstance(value, tuple) and len(value) > 0 and all(isinstance(v, Tensor) for v in value)


def _flatten(arguments: dict) -> dict:
    """Arguments with each tuple of tensors spread into one entry per tensor ("name.0", ...)."""
    flat = {}
    for name, value in arguments.items():
        if _is_tensor_tuple(value):
            flat.update({f"{name}.{i}": v for i, v in enumerate(value)})
        else:
            flat[name] = value
    return flat


def _bind(name: str, value, inputs: dict[str, Tensor]):
    """The static copy standing for argument `name` in the graph (a tuple of them for a tuple of tensors)."""
    if _is_tensor_tuple(value):
        return tuple(inputs[f"{name}.{i}"] for i in range(len(value)))
    return inputs.get(name, value)


def _clone_tree(value):
    """Copy graph outputs out of the graph's memory, which the next replay overwrites."""
    if isinstance(value, Tensor):
        return value.clone()
    if isinstance(value, tuple) and hasattr(value, "_fields"):  # NamedTuple
        return type(value)(*(_clone_tree(v) for v in value))
    if isinstance(value, (list, tuple)):
        return type(value)(_clone_tree(v) for v in value)
    return value


class GraphedCallable:
    """`fn(*args)` replayed from a CUDA graph captured per signature (shapes, dtypes, non-tensor values)."""

    def __init__(self, fn: Callable, pool=None, warmup: int = 2) -> None:
        self.fn = fn
        self.pool = pool if pool is not None else torch.cuda.graph_pool_handle()
        self.warmup = warmup
        self.graphs: dict[tuple, _Graph] = {}

    def __call__(self, *args, **kwargs):
        arguments = {**{str(i): a for i, a in enumerate(args)}, **kwargs}
        flat = _flatten(arguments)
        key = _signature(flat)
        entry = self.graphs.get(key)
        if entry is None:
            entry = self.graphs[key] = self._capture(arguments, flat, len(args))
        for name, static in entry.inputs.items():
            static.copy_(flat[name], non_blocking=True)
        entry.graph.replay()
        return _clone_tree(entry.output)

    def _capture(self, arguments: dict, flat: dict, num_positional: int) -> _Graph:
        inputs = {name: a.clone() for name, a in flat.items() if isinstance(a, Tensor)}
        bound = {name: _bind(name, a, inputs) for name, a in arguments.items()}
        names = list(bound)
        args = [bound[n] for n in names[:num_positional]]
        kwargs = {n: bound[n] for n in names[num_positional:]}
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with attention_for_graphs():
            with torch.cuda.stream(stream):  # warm-up outside the graph: lazy initialisations, kernel choices
                for _ in range(self.warmup):
                    self.fn(*args, **kwargs)
            torch.cuda.current_stream().wait_stream(stream)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=self.pool):
                output = self.fn(*args, **kwargs)
        return _Graph(graph, inputs, output)


def _heavy_modules(model: SAM2Model) -> tuple[torch.nn.Module, ...]:
    """The four modules that do a tracking step's work, which graphs and compile speed up."""
    return (model.image_encoder, model.memory_attention, model.sam_mask_decoder, model.memory_encoder)


def optimize(model: SAM2Model, compile: bool = False) -> SAM2Model:
    """On CUDA, bf16 parameters and CUDA graphs, and with `compile` torch.compile under the graphs; elsewhere
    the model is left as it is, and `compile` is refused: it is set up and measured for CUDA (on CPU inductor
    needs a C++ compiler, and tiny's memory attention alone took 30 to 40 s to compile on 2 cores; `use_compile`
    does it if asked). Returns the model."""
    if model.device.type != "cuda":
        if compile:
            raise ValueError(f"compile needs the model on a CUDA device, not {model.device.type}")
        return model
    to_inference_dtype(model)
    if compile:
        use_compile(model)
    return use_cuda_graphs(model)


def with_speed_options(model: SAM2Model, fast: bool, compile: bool) -> SAM2Model:
    """The commands' --fast/--exact and --compile: `optimize(model, compile)` when fast, else only compile if
    asked (fp32 weights, no graphs). Returns the model."""
    if fast:
        return optimize(model, compile)
    return use_compile(model) if compile else model


def use_cuda_graphs(model: SAM2Model) -> SAM2Model:
    """Replay the image encoder, memory attention, mask decoder and memory encoder from CUDA graphs
    (the model must be on CUDA)."""
    if model.device.type != "cuda":
        raise ValueError("CUDA graphs need the model on a CUDA device")
    pool = torch.cuda.graph_pool_handle()
    for module in _heavy_modules(model):
        module.forward = GraphedCallable(module.forward, pool)
    return model


COMPILE_MODES = ("default", "max-autotune-no-cudagraphs")  # inductor's own CUDA graphs would clash with ours
# The memory attention meets a new memory length on each of the first frames of an object (1 to 7 frames of
# memory plus conditioning frames, up to 16 pointers), with and without padded slots, for each object
# count: beyond dynamo's default of 8 compiles per function it would run eager from then on, with only a log warning.
RECOMPILE_LIMIT = 64


def use_compile(
    model: SAM2Model, mode: str = "default", dynamic: Optional[bool] = None, backend: str = "inductor"
) -> SAM2Model:
    """Run the image encoder, memory attention, mask decoder and memory encoder through torch.compile.

    Call it before `use_cuda_graphs` to replay the compiled kernels from graphs. `dynamic=None` is
    dynamo's automatic choice: a first compile for the shapes seen, then one with the sizes that changed
    (the memory length, the object count) made symbolic; `dynamic=False` compiles once per shape.
    Raises dynamo's recompile limit, a process-wide setting, to at least RECOMPILE_LIMIT. `backend`
    "eager" traces without generating code (for tests). Compiling happens on each first call.
    """
    if mode not in COMPILE_MODES:
        raise ValueError(f"compile mode must be one of {', '.join(COMPILE_MODES)}; got {mode!r}")
    modules = _heavy_modules(model)
    if any(isinstance(module.forward, GraphedCallable) for module in modules):
        raise ValueError("compile the model before use_cuda_graphs, not after: graphs replay the compiled code")
    import torch._dynamo.config as dynamo_config

    dynamo_config.recompile_limit = max(dynamo_config.recompile_limit, RECOMPILE_LIMIT)
    for module in modules:
        module.forward = torch.compile(module.forward, mode=mode, dynamic=dynamic, backend=backend)
    return model

"""Speed settings applied from outside the model code.

The model code stays plain PyTorch; this module changes how it runs:

- `to_inference_dtype` casts the parameters to bf16 (or fp16), which is faster than autocast:
  autocast converts weights and activations on every call. Positional tables and the prompt
  encoder's random Fourier matrix stay in fp32, and mask logits come back in fp32.
- `use_cuda_graphs` replays the model's steps (encoding images, decoding prompts, segmenting for
  tracking, conditioning on memory, encoding memory: each heavy module with the glue around it) from
  CUDA graphs, one graph per input shape (a batch of frames, a number of objects, of clicks), captured
  on first use. A tracking step launches about a thousand small kernels; replaying them from a graph
  takes the launch cost off the CPU, which otherwise bounds the frame rate of the small variants.
  Captured code uses cuDNN's attention kernels on batches, the fastest there on Hopper, whose
  per-call CPU cost a graph pays only once. Code around the model can join in: `graphed_with_model`
  replays a function (the tracking engine's whole pass over a frame's objects) from graphs too.
- `use_compile` runs the same four module forwards through torch.compile (inductor's fused kernels),
  under CUDA graphs or without them; `optimize(model, compile=True)` does bf16, compile and graphs.
  It is an option, not the default: about a third more FPS on an H200, for 30 to 60 s of compiling before
  the first masks and more while the memory fills (benchmarks/tracking.py --compile; the README's table).
"""

from __future__ import annotations

import functools
from typing import Callable, Iterator, NamedTuple, Optional

import torch
from torch import Tensor

from .model.layers import attention_for_graphs, capturing_graphs
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
    inputs: list[Tensor]  # static copies of the tensors among the arguments, in _flatten order
    output: object  # the static output structure


def _flatten(value, tensors: list[Tensor]) -> object:
    """The key a graph is captured for: tensors by shape, dtype and device; tuples (NamedTuples too) element
    by element; any other value (None, a flag, a size) as it is. Appends the tensors to `tensors`, depth first."""
    if isinstance(value, Tensor):
        tensors.append(value)
        return (tuple(value.shape), value.dtype, value.device)
    if isinstance(value, tuple):
        return (type(value), tuple(_flatten(v, tensors) for v in value))
    return value


def _rebuild(value, tensors: Iterator[Tensor]):
    """`value` with each of its tensors replaced by the next of `tensors` (the graph's static copies)."""
    if isinstance(value, Tensor):
        return next(tensors)
    if isinstance(value, tuple):
        items = [_rebuild(v, tensors) for v in value]
        return type(value)(*items) if hasattr(value, "_fields") else tuple(items)  # NamedTuple or tuple
    return value


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
    """`fn(*args, **kwargs)` replayed from a CUDA graph captured per key (shapes, dtypes, other values).

    Called while another graphed callable warms up or is being captured, it runs `fn` as it is: the
    outer graph takes its kernels in (a graph cannot be replayed inside a capture).
    """

    def __init__(self, fn: Callable, pool=None, warmup: int = 2) -> None:
        self.fn = fn
        self.pool = pool if pool is not None else torch.cuda.graph_pool_handle()
        self.warmup = warmup
        self.graphs: dict[object, _Graph] = {}

    def __call__(self, *args, **kwargs):
        if capturing_graphs():
            return self.fn(*args, **kwargs)
        arguments = (args, tuple(sorted(kwargs.items())))
        tensors: list[Tensor] = []
        key = _flatten(arguments, tensors)
        entry = self.graphs.get(key)
        if entry is None:
            entry = self.graphs[key] = self._capture(arguments, tensors)
        for static, tensor in zip(entry.inputs, tensors):
            static.copy_(tensor, non_blocking=True)
        entry.graph.replay()
        return _clone_tree(entry.output)

    def _capture(self, arguments: tuple, tensors: list[Tensor]) -> _Graph:
        inputs = [t.clone() for t in tensors]
        args, kwargs = _rebuild(arguments, iter(inputs))
        kwargs = dict(kwargs)
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
    """The four modules that do a tracking step's work, which compile speeds up."""
    return (model.image_encoder, model.memory_attention, model.sam_mask_decoder, model.memory_encoder)


# The model's steps, each a graph: its heavy module with the glue around it (positional encodings, pointers,
# the padding point, the mask's resizing), which would otherwise run op by op from the CPU.
GRAPHED_METHODS = ("encode_image", "decode", "segment", "condition_on_memory", "encode_memory")


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


class _ModelGraphs:
    """What `use_cuda_graphs` leaves on a model: the memory pool of its graphs, and the functions of code
    around the model graphed with it (`graphed_with_model`)."""

    def __init__(self, pool) -> None:
        self.pool = pool
        self.functions: dict[Callable, GraphedCallable] = {}


def use_cuda_graphs(model: SAM2Model) -> SAM2Model:
    """Replay the model's GRAPHED_METHODS from CUDA graphs (the model must be on CUDA), and leave `model._graphs`
    for `graphed_with_model`: the tracking engine's whole pass over a frame's objects then replays as one graph."""
    if model.device.type != "cuda":
        raise ValueError("CUDA graphs need the model on a CUDA device")
    pool = torch.cuda.graph_pool_handle()
    for name in GRAPHED_METHODS:
        setattr(model, name, GraphedCallable(getattr(model, name), pool))
    model._graphs = _ModelGraphs(pool)
    return model


def graphed_with_model(model: SAM2Model, fn: Callable) -> Callable:
    """`fn(model, ...)` as a function of the other arguments: replayed from CUDA graphs when `use_cuda_graphs`
    graphed the model (its steps called inside run in fn's graph), else run as it is.

    Kept on the model, one per fn: every tracker of a model shares the graphs, captured once. `fn` must be
    a module-level function: a new closure or lambda on each call would capture new graphs each time.
    """
    graphs: Optional[_ModelGraphs] = model.__dict__.get("_graphs")
    if graphs is None:
        return functools.partial(fn, model)
    if fn not in graphs.functions:
        graphs.functions[fn] = GraphedCallable(functools.partial(fn, model), graphs.pool)
    return graphs.functions[fn]


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
    if any(isinstance(getattr(model, name), GraphedCallable) for name in GRAPHED_METHODS):
        raise ValueError("compile the model before use_cuda_graphs, not after: graphs replay the compiled code")
    import torch._dynamo.config as dynamo_config

    dynamo_config.recompile_limit = max(dynamo_config.recompile_limit, RECOMPILE_LIMIT)
    for module in _heavy_modules(model):
        module.forward = torch.compile(module.forward, mode=mode, dynamic=dynamic, backend=backend)
    return model

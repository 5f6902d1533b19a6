"""CUDA graphs: the model's steps, and code around the model, replayed from graphs captured once per input shape.

A tracking step launches about a thousand small kernels; replaying them from a graph takes the launch cost
off the CPU, which otherwise bounds the frame rate of the small variants. Captured code uses cuDNN's attention
kernels on batches (`kernels.attention_for_graphs`), the fastest there on Hopper, whose per-call CPU cost a
graph pays only once.
"""

from __future__ import annotations

import functools
import logging
from collections import OrderedDict
from typing import Callable, Iterator, NamedTuple, Optional

import torch
from torch import Tensor, nn

from .kernels import attention_for_graphs, capturing_graphs

log = logging.getLogger("sam2rt.runtime")

MAX_GRAPHS = 64  # per graphed callable; a shape past it takes the place of the least recently replayed


class _Graph(NamedTuple):
    graph: torch.cuda.CUDAGraph
    inputs: list[Tensor]  # static copies of the tensors among the arguments, in _flatten order
    output: object  # the static output structure


def _flatten(value, tensors: list[Tensor]) -> object:
    """The key a graph is captured for: tensors by shape, dtype and device; tuples (NamedTuples too) and lists
    element by element; any other value (None, a flag, a size) as it is. Appends the tensors to `tensors`, depth first."""
    if isinstance(value, Tensor):
        tensors.append(value)
        return (tuple(value.shape), value.dtype, value.device)
    if isinstance(value, (tuple, list)):
        return (type(value), tuple(_flatten(v, tensors) for v in value))
    return value


def call_key(args: tuple, kwargs: dict) -> tuple[tuple, object, list[Tensor]]:
    """A call's arguments as a graph replays them, the key its graph is captured for, and its tensors in key order."""
    arguments = (args, tuple(sorted(kwargs.items())))
    tensors: list[Tensor] = []
    return arguments, _flatten(arguments, tensors), tensors


def _rebuild(value, tensors: Iterator[Tensor]):
    """`value` with each of its tensors replaced by the next of `tensors` (the graph's static copies)."""
    if isinstance(value, Tensor):
        return next(tensors)
    if isinstance(value, (tuple, list)):
        items = [_rebuild(v, tensors) for v in value]
        return type(value)(*items) if hasattr(value, "_fields") else type(value)(items)  # NamedTuple, tuple, list
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


@functools.lru_cache(maxsize=None)
def _warmup_stream(device: int) -> torch.cuda.Stream:
    """The one side stream of a device that every capture warms up on. cuBLAS keeps a workspace (32 MiB on
    Hopper) for each stream it has run on, so a new stream per capture would hold one more each time."""
    return torch.cuda.Stream(device)


class GraphedCallable:
    """`fn(*args, **kwargs)` replayed from a CUDA graph captured per key (shapes, dtypes, other values).

    Called while another graphed callable warms up or is being captured, it runs `fn` as it is: the
    outer graph takes its kernels in (a graph cannot be replayed inside a capture).
    """

    def __init__(self, fn: Callable, pool=None, warmup: int = 2, max_graphs: int = MAX_GRAPHS) -> None:
        self.fn = fn
        self.pool = pool if pool is not None else torch.cuda.graph_pool_handle()
        self.warmup = warmup
        self.max_graphs = max_graphs
        self.name = getattr(getattr(fn, "func", fn), "__name__", "a function")  # fn, or the function of a partial
        self.graphs: OrderedDict[object, _Graph] = OrderedDict()  # least recently replayed first

    def __call__(self, *args, **kwargs):
        if capturing_graphs():
            return self.fn(*args, **kwargs)
        arguments, key, tensors = call_key(args, kwargs)
        entry = self.graphs.get(key)
        if entry is None:
            entry = self.graphs[key] = self._capture(arguments, tensors)
            self._bound()
        self.graphs.move_to_end(key)
        for static, tensor in zip(entry.inputs, tensors):
            static.copy_(tensor, non_blocking=True)
        entry.graph.replay()
        return _clone_tree(entry.output)

    def _bound(self) -> None:
        log.info("captured a CUDA graph of %s: %d held", self.name, len(self.graphs))
        if len(self.graphs) > self.max_graphs:
            self.graphs.popitem(last=False)
            log.warning(
                "more than %d shapes of %s: its least recently replayed graph is dropped (captured again if needed)",
                self.max_graphs,
                self.name,
            )

    def _capture(self, arguments: tuple, tensors: list[Tensor]) -> _Graph:
        inputs = [t.clone() for t in tensors]
        args, kwargs = _rebuild(arguments, iter(inputs))
        kwargs = dict(kwargs)
        stream = _warmup_stream(torch.cuda.current_device())
        stream.wait_stream(torch.cuda.current_stream())
        with attention_for_graphs():
            with torch.cuda.stream(stream):  # warm-up outside the graph: lazy initialisations, kernel choices
                for _ in range(self.warmup):
                    self.fn(*args, **kwargs)
            torch.cuda.current_stream().wait_stream(stream)
            graph = torch.cuda.CUDAGraph()
            # thread_local: other threads may wait on the GPU meanwhile (the server's publisher waits for masks'
            # copies); in the default, global mode such a wait from any thread breaks the capture.
            with torch.cuda.graph(graph, pool=self.pool, capture_error_mode="thread_local"):
                output = self.fn(*args, **kwargs)
        return _Graph(graph, inputs, output)


# The model's steps, each a graph: its heavy module with the glue around it (positional encodings, pointers,
# the padding point, the mask's resizing), which would otherwise run op by op from the CPU.
GRAPHED_METHODS = ("encode_image", "decode", "segment", "condition_on_memory", "encode_memory")
# SAM 3's detector: its image encoding and its detection pass for a batch of prompts (every shape fixed by the
# image size, the text context and the queries): several thousand launches a frame otherwise.
DETECTOR_METHODS = ("encode_image", "detect")
# SAM 3's tracker: its image encoder is the detector's backbone, which the concept tracker runs as the detector's.
TRACKER_METHODS = tuple(name for name in GRAPHED_METHODS if name != "encode_image")


class _ModelGraphs:
    """What `use_cuda_graphs` leaves on a model: the memory pool of its graphs, and the functions of code
    around the model graphed with it (`graphed_with_model`)."""

    def __init__(self, pool, methods: tuple[str, ...]) -> None:
        self.pool = pool
        self.methods = methods
        self.functions: dict[Callable, GraphedCallable] = {}


def use_cuda_graphs(model: nn.Module, methods: tuple[str, ...] = GRAPHED_METHODS) -> nn.Module:
    """Replay the model's `methods` (a SAM2Model's GRAPHED_METHODS; DETECTOR_METHODS for SAM 3's detector) from
    CUDA graphs (the model must be on CUDA), and leave `model._graphs` for `graphed_with_model`: the tracking
    engine's whole pass over a frame's objects then replays as one graph."""
    if next(model.parameters()).device.type != "cuda":
        raise ValueError("CUDA graphs need the model on a CUDA device")
    pool = torch.cuda.graph_pool_handle()
    for name in methods:
        setattr(model, name, GraphedCallable(getattr(model, name), pool))
    model._graphs = _ModelGraphs(pool, methods)
    return model


def has_cuda_graphs(model: nn.Module) -> bool:
    """Whether `use_cuda_graphs` graphed the model's steps."""
    return "_graphs" in model.__dict__


def captured_graphs(model: nn.Module) -> int:
    """How many CUDA graphs the model's graphed steps and functions hold (each a shape seen): 0 without graphs."""
    return sum(len(graphed.graphs) for graphed in _graphed_callables(model))


def release_graphs(model: nn.Module) -> int:
    """Drop every CUDA graph the model holds (each is captured again when its shape comes again) and give the
    allocator's cached blocks, theirs included, back to the device. Returns how many graphs were dropped."""
    released = 0
    for graphed in _graphed_callables(model):
        released += len(graphed.graphs)
        graphed.graphs.clear()
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()  # no replay still running on what is freed
        clear_workspaces = getattr(torch._C, "_cuda_clearCublasWorkspaces", None)
        if clear_workspaces is not None:  # cuBLAS' per-stream workspaces sit in the allocator as allocated blocks
            clear_workspaces()
        torch.cuda.empty_cache()
    return released


def _graphed_callables(model: nn.Module) -> list[GraphedCallable]:
    graphs: Optional[_ModelGraphs] = model.__dict__.get("_graphs")
    if graphs is None:
        return []
    callables = [getattr(model, name) for name in graphs.methods] + list(graphs.functions.values())
    return [graphed for graphed in callables if isinstance(graphed, GraphedCallable)]


def graphed_with_model(model: nn.Module, fn: Callable) -> Callable:
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

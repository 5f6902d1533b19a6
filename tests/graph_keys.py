"""The CUDA-graph keys a model's graphed steps meet, found on the CPU: each key is a capture on a GPU.

`record_graph_keys(model)` puts a `KeyRecorder` where `runtime.use_cuda_graphs` puts its graphed callables (and
where `graphed_with_model` makes them): it runs each step eagerly and records the key it would be captured under
(`runtime.graphs.call_key`: shapes, dtypes, which inputs are given), with the label of the moment it came. The model
then counts as graphed, so the engine pads batches to buckets and memory to slots as it does under graphs.
Steps called inside another recorded step are no keys of their own: on a GPU the outer graph takes them in.
"""

from __future__ import annotations

from sam2rt.runtime import graphs
from sam2rt.tracking.engine import TrackingEngine


class KeyRecorder:
    """A GraphedCallable's stand-in: runs `fn` eagerly, records each new key in `new_keys` with `moment`."""

    depth = 0  # recorded calls under way
    moment = ""  # what is running, as `new_keys` labels it
    new_keys: list[tuple[str, str, list[tuple[int, ...]]]] = []  # (moment, step, its tensors' shapes)

    def __init__(self, fn, pool=None, **_) -> None:
        self.fn = fn
        self.name = getattr(getattr(fn, "func", fn), "__name__", "a function")
        self.graphs: set[object] = set()  # the keys met, as GraphedCallable's graphs (len, clear)

    def __call__(self, *args, **kwargs):
        if KeyRecorder.depth:
            return self.fn(*args, **kwargs)
        _, key, tensors = graphs.call_key(args, kwargs)  # the key GraphedCallable captures under
        if key not in self.graphs:
            self.graphs.add(key)
            KeyRecorder.new_keys.append((KeyRecorder.moment, self.name, [tuple(t.shape) for t in tensors]))
        KeyRecorder.depth += 1
        try:
            return self.fn(*args, **kwargs)
        finally:
            KeyRecorder.depth -= 1


def record_graph_keys(model, patch=setattr):
    """The model with its graphed steps recorded, not captured. `patch(owner, name, value)` replaces the graphs
    module's GraphedCallable and the CPU's per-object split of the tracking pass (which a GPU never takes): a
    test passes `monkeypatch.setattr`, so that both come back after it."""
    KeyRecorder.new_keys = []
    patch(graphs, "GraphedCallable", KeyRecorder)  # graphed_with_model makes its callables from this name
    patch(TrackingEngine, "_splits_attention", lambda self, objects: False)
    for name in graphs.GRAPHED_METHODS:
        setattr(model, name, KeyRecorder(getattr(model, name)))
    model._graphs = graphs._ModelGraphs(None, graphs.GRAPHED_METHODS)  # has_cuda_graphs: buckets and slots
    return model

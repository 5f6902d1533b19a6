"""StreamPool: many live streams tracked in one batched pass per tick.

Each stream has its own frame size, objects, prompts and pace. `pool.step({stream: frame, ...})`
steps the streams given (the others wait) with one image-encoder call on the batch of their new
frames and one memory-attention, decoder and memory-encoder call over all their objects; each
stream's results equal those of a StreamTracker fed the same frames and prompts. A StreamTracker
is a pool of one.
"""

from __future__ import annotations

from typing import Any, Mapping, Optional

import numpy as np
import torch
from torch import Tensor

from ..model.sam2 import SAM2Model
from ..processing.images import ImageLike
from ..runtime.graphs import captured_graphs, has_cuda_graphs, release_graphs
from .engine import EncodedFrame, TrackingEngine
from .memory_arena import MemoryArena
from .object_batches import bucket
from .options import STREAM_OPTIONS, TrackerOptions, tracker_options
from .pooled_stream import FrameResult, PooledStream


class StreamPool:
    """Streams that share one model and are stepped together.

    Options (tracking/options.py): `options`, else StreamTracker's defaults, changed by keywords of their
    names; they hold for every stream.
    """

    def __init__(self, model: SAM2Model, options: Optional[TrackerOptions] = None, **changes: Any) -> None:
        options = tracker_options(STREAM_OPTIONS, options, changes)
        self.model = model
        self.engine = TrackingEngine(model, options, cached_frames=0)
        # Every object's memory slots, of all streams: a batch of objects is gathered in one indexing call.
        engine = self.engine
        placement = lambda: (engine.memory_dtype, engine.storage_device)  # noqa: E731 - read when slots are made
        threshold = options.mf_threshold if options.use_memory_selection else None
        self.arena = MemoryArena(model.config, options.max_cond_frames, placement, threshold)

    def open_stream(self) -> PooledStream:
        """A new stream, with no frame and no object yet."""
        return PooledStream(self)

    def close_stream(self, stream: PooledStream) -> None:
        """Remove a stream and free its memory; using it afterwards raises an error."""
        self._check_member(stream)
        stream.detach()

    def release_memory(self) -> int:
        """Give back what the model keeps for speed: its CUDA graphs (captured again as shapes come again) and
        the allocator's cached blocks. For a pool that has gone idle; returns how many graphs were dropped."""
        self.arena.reclaim()
        return release_graphs(self.model)

    def warm_up(self, max_streams: int, frame_size: tuple[int, int] = (720, 1280), steps: Optional[int] = None) -> int:
        """Capture ahead the CUDA graphs that up to `max_streams` live streams of one object each will replay, so
        that no live tick waits for a capture (0.2 s each on an H100). For each count of `warm_up_counts`: that many
        streams of `frame_size` (H, W) frames, a click on each, `steps` tracked ticks, then closed. By default the
        ticks go on until every memory slot and pointer slot is full: full memories drop the validity masks, which
        is another shape (and a live capture for each count, as the 8-camera benchmark saw). Other counts of
        objects, and other frame sizes where the output depends on it, are captured when they come. Returns the
        graphs captured; without graphs, nothing is done."""
        if not has_cuda_graphs(self.model):
            return 0
        height, width = frame_size
        frame = np.full((height, width, 3), 127, np.uint8)
        before = captured_graphs(self.model)
        steps = self.engine.config.max_obj_ptrs + 1 if steps is None else steps  # the pointers fill last
        for count in warm_up_counts(max_streams, self.engine.objects_per_chunk):
            streams = [self.open_stream() for _ in range(count)]
            try:
                self.step({stream: frame for stream in streams})
                for stream in streams:
                    stream.add_prompt(1, points=[(width // 2, height // 2)], labels=[1])
                for _ in range(steps):
                    self.step({stream: frame for stream in streams})
            finally:
                for stream in streams:
                    self.close_stream(stream)
        return captured_graphs(self.model) - before

    @torch.inference_mode()
    def step(self, frames: Mapping[PooledStream, ImageLike]) -> dict[PooledStream, FrameResult]:
        """Add the next frame of each stream given and track all their objects in one batched pass.

        frames: {stream: H x W x 3 RGB frame}; streams not given are not stepped. Returns {stream: result}.
        """
        if not isinstance(frames, Mapping):
            raise TypeError(f"pool.step takes a dict {{stream: frame}}, got {type(frames).__name__}")
        for stream in frames:
            self._check_member(stream)
        # Every frame is checked before any stream changes: a refused step leaves all streams as they were.
        ahead = {stream: stream.encoded_ahead(frame) for stream, frame in frames.items()}
        rgbs = {stream: stream.to_rgb(frame) for stream, frame in frames.items() if ahead[stream] is None}
        ready = {stream: encoded for stream, encoded in ahead.items() if encoded is not None}
        return self._step(list(frames), rgbs, ready) if frames else {}

    def _step(
        self, order: list[PooledStream], rgbs: dict[PooledStream, Tensor], ahead: dict[PooledStream, EncodedFrame]
    ) -> dict[PooledStream, FrameResult]:
        """Step the streams of `rgbs` (new frames to encode) and of `ahead` (frames they encoded ahead);
        results in the streams' `order`."""
        streams = [*rgbs, *ahead]
        engine = self.engine
        # The prompts on each stream's newest frame become memory: one memory-encoder call for all.
        pending = [(stream, obj) for stream in streams for obj in stream.pending_objects()]
        if pending:
            engine.encode_prompted([stream.frame for stream, _ in pending], [obj.pending.output for _, obj in pending])
            for stream in streams:
                stream.commit_pending()
        # The new frames: one image-encoder call for those not encoded ahead.
        if rgbs:
            encoded = engine.encode_batch([(stream.frame_idx + 1, rgb) for stream, rgb in rgbs.items()])
            for stream, frame in zip(rgbs, encoded):
                stream.take_frame(frame)
        for stream, frame in ahead.items():
            stream.take_frame(frame)
        # Every object of every stream: one memory attention, one decoder and one memory-encoder call.
        tracked = [(stream, obj) for stream in streams for obj in stream.tracked_objects()]
        if tracked:
            outputs = engine.track(
                [stream.frame for stream, _ in tracked],
                [obj.memory for _, obj in tracked],
                reverse=False,
                num_frames=None,
            )
            for (stream, obj), output in zip(tracked, outputs):
                stream.take_tracked(obj, output)
        return {stream: stream.result() for stream in order}

    def _check_member(self, stream: PooledStream) -> None:
        if not isinstance(stream, PooledStream):
            raise TypeError(f"expected a stream from pool.open_stream(), got {type(stream).__name__}")
        if stream.closed:
            raise RuntimeError("this stream was closed: open a new one with pool.open_stream()")
        if stream.pool is not self:
            raise ValueError("this stream belongs to another pool")


def warm_up_counts(max_streams: int, chunk: Optional[int]) -> list[int]:
    """The fewest counts of one-object streams whose ticks bring every pair of padded batches (frames to encode:
    `bucket(n)`; objects to track: `bucket(n, chunk)`) that 1 to `max_streams` such streams bring: each bucket
    up to `max_streams`, and `max_streams` itself for the buckets past it (40 streams in chunks of 16: 64 frames,
    48 objects)."""
    sizes = {bucket(n) for n in range(1, max_streams + 1)} | {bucket(n, chunk) for n in range(1, max_streams + 1)}
    return sorted({min(size, max_streams) for size in sizes})

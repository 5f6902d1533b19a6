"""The tracking engine under StreamPool, StreamTracker, VideoPredictor and CameraPredictor.

It runs the model in batched passes: the image encoder over a batch of frames, tracking all
objects that need it (one memory attention, one decoder, one memory encoder call, each object on
its own frame: several streams step together), a prompt on one object, and the memory encoding
of prompted frames. Which memories each object sees is the memory bank's job;
where outputs are kept is the caller's; how a batch of objects is padded to a
fixed shape and run in chunks is object_batches.py's.
"""

from __future__ import annotations

from collections import OrderedDict
from functools import partial
from typing import Callable, NamedTuple, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from ..model.sam2 import ImageFeatures, MaskPrediction, MemoryTokens, SAM2Model
from ..processing.masks import keep_highest_object
from ..processing.preprocess import IMAGENET_MEAN, IMAGENET_STD, SAM3_MEAN, SAM3_STD, model_input
from ..runtime.graphs import graphed_with_model, has_cuda_graphs
from .memory_gather import gather
from .memory_selection import MemoryScore, object_scores
from .object_batches import (
    bucket,
    each_tensor,
    filled,
    padded_in_chunks,
    padded_objects,
    padded_rows,
    propagate_conditioned,
    propagate_on_memory,
    stored_memory,
    track_conditioned,
    track_on_memory,
)
from .object_memory import MemoryView, ObjectOutput
from .options import TrackerOptions

OBJECTS_PER_CHUNK = 16
PROMPT_MASK_LOGIT_CLAMP = 32.0  # previous logits fed back with new clicks are clamped for numerical safety


class EncodedFrame(NamedTuple):
    index: int
    features: ImageFeatures
    size: tuple[int, int]  # original (height, width)


class TrackingEngine:
    split_cpu_attention = True  # on CPU, memory attention runs one call per object (faster there than a batch)
    # A batched pass runs its objects this many at a time (None: all at once): past some batch a larger one
    # gains no speed, while the activations of memory attention grow with it (about 220 MB an object at 1024).
    objects_per_chunk: Optional[int] = OBJECTS_PER_CHUNK

    def __init__(self, model: SAM2Model, options: TrackerOptions, cached_frames: int = 2) -> None:
        self.model = model
        self.options = options
        self.config = model.config
        self.cached_frames = cached_frames
        self._cache: OrderedDict[int, EncodedFrame] = OrderedDict()
        # With CUDA graphs, a pass is captured once per shape: batches are padded to a bucket (1, 2, 3, 4, 6, 8, ...,
        # then whole chunks) and the memory to full slots from a stream's first tracked frame (empty slots masked),
        # then to the most slots seen yet, so that streams of any age and number share a few shapes. Each shape's
        # graph holds its own copy of its inputs (470 MB of memory at 128 objects). Set when the model's steps
        # are graphed (runtime.optimize before the trackers).
        self.shape_buckets = has_cuda_graphs(model)
        self._slots = (0, 0)  # (memory frames, pointers): the most any gathered memory has had

    @property
    def device(self) -> torch.device:
        return self.model.device

    @property
    def storage_device(self) -> torch.device:
        return torch.device("cpu") if self.options.offload_state_to_cpu else self.device

    @property
    def memory_dtype(self) -> torch.dtype:
        if self.options.memory_dtype is not None:
            return self.options.memory_dtype
        return torch.bfloat16 if self.device.type == "cuda" else torch.float32

    # Frames

    def model_input(self, rgb: Tensor) -> Tensor:
        """A frame (3, H, W) as the model's normalised input (1, 3, S, S): resized as `options.resize` says,
        normalised as the model was trained (SAM 3: mean and std 0.5; SAM 2: ImageNet's)."""
        sam3 = self.config.variant.is_sam3
        mean, std = (SAM3_MEAN, SAM3_STD) if sam3 else (IMAGENET_MEAN, IMAGENET_STD)
        return model_input(rgb, self.config.image_size, self.options.resize, self.device, mean, std)

    def encode(self, index: int, load: Callable[[], Tensor]) -> EncodedFrame:
        """The features of frame `index`, from the cache or by encoding `load()`, an RGB (3, H, W) tensor."""
        if index in self._cache:
            self._cache.move_to_end(index)
            return self._cache[index]
        rgb = load()
        frame = EncodedFrame(index, self.model.encode_image(self.model_input(rgb)), (rgb.shape[1], rgb.shape[2]))
        self._cache[index] = frame
        while len(self._cache) > self.cached_frames:
            self._cache.popitem(last=False)
        return frame

    def encode_batch(self, frames: Sequence[tuple[int, Tensor]]) -> list[EncodedFrame]:
        """Encode (index, RGB (3, H, W)) frames of any sizes in one image-encoder call; nothing is cached."""
        images = torch.cat([self.model_input(rgb) for _, rgb in frames])  # (B, 3, S, S)
        if self.shape_buckets:
            images = padded_rows(images, bucket(len(frames)))  # (B', 3, S, S), the last image repeated
        features = self.model.encode_image(images)
        return [
            EncodedFrame(
                index,
                ImageFeatures(
                    features.embed[row : row + 1], tuple(h[row : row + 1] for h in features.high_res), features.pos
                ),
                (rgb.shape[1], rgb.shape[2]),
            )
            for row, (index, rgb) in enumerate(frames)
        ]

    def encode_into_cache(self, frames: Sequence[tuple[int, Callable[[], Tensor]]]) -> None:
        """Encode (index, load) frames in one image-encoder call into the cache, unless one is cached already
        (the others then come one by one through `encode`: no batch of another size to capture) or one
        fails to load (its error then comes through `encode` in its turn, after the frames before it)."""
        if len(frames) > self.cached_frames or any(index in self._cache for index, _ in frames):
            return
        try:
            rgbs = [(index, load()) for index, load in frames]
        except Exception:  # noqa: BLE001 - raised again, in order, when that frame is encoded alone
            return
        for frame in self.encode_batch(rgbs):
            self._cache[frame.index] = frame
        while len(self._cache) > self.cached_frames:
            self._cache.popitem(last=False)

    def clear_cache(self) -> None:
        self._cache.clear()

    def cached_tensors(self) -> list[Tensor]:
        return [t for frame in self._cache.values() for t in (frame.features.embed, *frame.features.high_res)]

    # Model steps

    def track(
        self, frames: Sequence[EncodedFrame], views: list[MemoryView], reverse: bool, num_frames: Optional[int]
    ) -> list[ObjectOutput]:
        """Track every object of `views` on its frame in `frames` (one per view, or one for all) in one
        batched pass; outputs carry their new memory."""
        features = _per_object(frames, len(views))
        fill_hole_area, memory_dtype = self.options.fill_hole_area, self.memory_dtype
        if self._splits_attention(len(views)):
            conditioned = self._with_memory(frames, features.embed, views, reverse, num_frames)
            tracked = track_conditioned(
                self.model, fill_hole_area, memory_dtype, features.embed, features.high_res, conditioned
            )
        else:
            embed, high_res, memory = self._pass_inputs(frames, views, features, reverse, num_frames)
            # One graph for the pass when the model's steps are graphed: the glue between them replays too.
            graphed_pass = graphed_with_model(self.model, track_on_memory)
            tracked = graphed_pass(fill_hole_area, memory_dtype, self.objects_per_chunk, embed, high_res, memory)
        masks = tracked.masks.to(self.storage_device, non_blocking=True)
        memories = self._to_storage(tracked.memories)
        scores = self._memory_scores(tracked.memory_scores, len(views))
        return [
            ObjectOutput(masks[row], tracked.pointers[row], tracked.object_scores[row], memories[row], scores[row])
            for row in range(len(views))
        ]

    def propagate(self, frames: Sequence[EncodedFrame], views: list[MemoryView]) -> list[ObjectOutput]:
        """Track every object of `views` on its frame (one per view, or one for all) without encoding its memory:
        outputs with the best mask's raw logits (1, 4h, 4w) (no hole filling), pointer and object score; their
        memory is None, for the caller to encode from masks it decides on (`encode_masks`), as SAM 3's video
        model does. Forward in time; batched and replayed from a CUDA graph as `track` is."""
        features = _per_object(frames, len(views))
        if self._splits_attention(len(views)):
            conditioned = self._with_memory(frames, features.embed, views, False, None)  # (B, C, h, w)
            propagated = propagate_conditioned(self.model, features.high_res, conditioned)
        else:
            embed, high_res, memory = self._pass_inputs(frames, views, features, False, None)
            graphed_pass = graphed_with_model(self.model, propagate_on_memory)
            propagated = graphed_pass(self.objects_per_chunk, embed, high_res, memory)
        masks = propagated.masks.to(self.storage_device, non_blocking=True)  # (B, 1, 4h, 4w)
        scores = self._memory_scores(propagated.memory_scores, len(views))
        return [
            ObjectOutput(masks[row], propagated.pointers[row], propagated.object_scores[row], None, scores[row])
            for row in range(len(views))
        ]

    def encode_masks(
        self, frames: Sequence[EncodedFrame], masks: Tensor, object_scores: Tensor, binarize: bool
    ) -> Tensor:
        """Spatial memories (B, N, C_mem), in the storage dtype and device, of given masks: (B, 1, s, s) logits at
        the low resolution, the model's input size or the memory encoder's own size, one per object on its frame
        (one frame per mask, or one for all), with their object scores (B, 1); `binarize` thresholds the masks at
        0 instead of taking their sigmoid."""
        if masks.shape[0] == 0:
            return masks.new_zeros(0, self.config.memory_tokens, self.config.memory_dim)
        embed = _per_object(frames, masks.shape[0]).embed
        flags = torch.full((masks.shape[0],), binarize, dtype=torch.bool, device=self.device)
        return self._store_memory(self._encode(embed, masks.to(self.device), object_scores.to(self.device), flags))

    def prompt_points(
        self,
        frame: EncodedFrame,
        coords: Tensor,
        labels: Tensor,
        memory: Optional[MemoryView],
        previous_logits: Optional[Tensor],
        reverse: bool,
        num_frames: Optional[int],
    ) -> ObjectOutput:
        """Segment one object from clicks (1, N, 2) in model pixels with labels (1, N).

        Without `memory` the frame is a first prompt and is segmented without memory; otherwise the
        clicks correct the tracked object, with its previous logits (1, 1, 4h, 4w) as a mask prompt.
        """
        features = frame.features
        coords = coords.to(self.device, non_blocking=True)
        labels = labels.to(self.device, non_blocking=True)
        if memory is None:
            embed = self.model.without_memory(features.embed)
        else:
            embed = self._with_memory([frame], features.embed, [memory], reverse, num_frames)
        if previous_logits is not None:
            previous_logits = previous_logits.to(self.device).clamp(-PROMPT_MASK_LOGIT_CLAMP, PROMPT_MASK_LOGIT_CLAMP)
        multimask = coords.shape[1] <= 1  # one click is ambiguous; more clicks or a box are not
        prediction = self.model.segment(embed, features.high_res, coords, labels, previous_logits, multimask)
        return self._outputs(prediction)[0]

    def prompt_mask(self, frame: EncodedFrame, mask: Tensor) -> ObjectOutput:
        """Take a binary mask (1, 1, S, S) as one object's segmentation of `frame`."""
        features = frame.features
        prediction = self.model.mask_as_output(features.embed, features.high_res, mask.to(self.device))
        return self._outputs(prediction)[0]

    def masks_as_outputs(self, frame: EncodedFrame, masks: Tensor) -> MaskPrediction:
        """Take binary masks (K, 1, S, S) as K objects' segmentations of `frame` (their pointers from the decoder), a
        chunk at a time and, under shape buckets, padded as the tracking pass is: a few graphs, not one per count."""
        run = partial(self.model.mask_as_output, frame.features.embed, frame.features.high_res)
        masks = masks.to(self.device)
        return padded_in_chunks(run, masks.shape[0], self.objects_per_chunk, self.shape_buckets, masks)  # each (K, ...)

    def encode_prompted(self, frames: Sequence[EncodedFrame], outputs: list[ObjectOutput]) -> None:
        """Give prompted outputs of `frames` (one per output, or one for all) their memory, with the masks
        binarised as the user shaped them."""
        if not outputs:
            return
        embed = _per_object(frames, len(outputs)).embed
        masks = torch.stack([out.mask_logits.to(self.device) for out in outputs])  # (B, 1, 4h, 4w)
        scores = torch.stack([out.object_score.to(self.device) for out in outputs])  # (B, 1)
        binarize = torch.ones(len(outputs), dtype=torch.bool, device=self.device)
        for output, spatial in zip(outputs, self._store_memory(self._encode(embed, masks, scores, binarize))):
            output.memory = spatial

    def to_video_resolution(self, mask_logits: Tensor, size: tuple[int, int]) -> Tensor:
        """Low-resolution logits (N, 1, 4h, 4w) -> (N, 1, H, W) at the frame's size."""
        logits = mask_logits.to(self.device)
        if tuple(logits.shape[-2:]) != tuple(size):
            logits = F.interpolate(logits, size=size, mode="bilinear", align_corners=False)
        if self.options.non_overlap_masks:
            logits = keep_highest_object(logits)
        return logits

    def _pass_inputs(
        self,
        frames: Sequence[EncodedFrame],
        views: list[MemoryView],
        features: ImageFeatures,
        reverse: bool,
        num_frames: Optional[int],
    ) -> tuple[Tensor, tuple[Tensor, ...], MemoryTokens]:
        """A batched pass's inputs for the objects of `views`: their features and gathered memory, under shape
        buckets padded to their bucket, the last object repeated (its copies' outputs are dropped); one frame's
        features shared by all stay batch 1."""
        embed, high_res = features.embed, features.high_res
        memory = self._gather(frames, views, reverse, num_frames)
        if not self.shape_buckets:
            return embed, high_res, memory
        pad = partial(padded_objects, rows=bucket(len(views), self.objects_per_chunk))
        return each_tensor(pad, (embed, high_res, memory))

    def _encode(self, embed: Tensor, masks: Tensor, scores: Tensor, binarize: Tensor) -> Tensor:
        """Memories (B, N, C_mem) of masks (B, 1, s, s) with their object scores (B, 1) and flags (B,), on `embed`
        (1 or B, C, h, w): a chunk at a time and, under shape buckets, padded as the tracking pass is (a few batch
        shapes, not one graph per count of masks)."""
        args = (masks.shape[0], self.objects_per_chunk, self.shape_buckets, embed, masks, scores, binarize)
        return padded_in_chunks(self.model.encode_memory, *args)  # (B, N, C_mem)

    def _with_memory(
        self,
        frames: Sequence[EncodedFrame],
        embed: Tensor,
        views: list[MemoryView],
        reverse: bool,
        num_frames: Optional[int],
    ) -> Tensor:
        """Features `embed` (1 or B, C, h, w) of each object's frame conditioned on its memory: (B, C, h, w)."""
        if self._splits_attention(len(views)):
            # PyTorch's CPU attention runs a batch of objects slower than one call per object.
            own_frames = list(frames) if len(frames) == len(views) else [frames[0]] * len(views)
            rows = [embed[i : i + 1] if embed.shape[0] > 1 else embed for i in range(len(views))]
            conditioned = [
                self._with_memory([frame], row, [view], reverse, num_frames)
                for frame, row, view in zip(own_frames, rows, views)
            ]
            return torch.cat(conditioned)  # (B, C, h, w)
        return self.model.condition_on_memory(embed, self._gather(frames, views, reverse, num_frames))

    def _splits_attention(self, objects: int) -> bool:
        return self.split_cpu_attention and self.device.type == "cpu" and objects > 1

    def _gather(
        self, frames: Sequence[EncodedFrame], views: list[MemoryView], reverse: bool, num_frames: Optional[int]
    ) -> MemoryTokens:
        """The memory each object of `views` sees on its frame (one frame per view, or one for all)."""
        indices = [frame.index for frame in frames] if len(frames) == len(views) else [frames[0].index] * len(views)
        slots = None
        if self.shape_buckets:  # at least one prompted frame's and full recent slots: every stream's once 16 frames old
            seen_frames, seen_pointers = self._slots
            slots = (max(seen_frames, self.config.num_maskmem), max(seen_pointers, self.config.max_obj_ptrs))
        limit, options = self.options.max_cond_frames_in_attn, self.options
        threshold = options.mf_threshold if options.use_memory_selection else None
        memory = gather(views, indices, reverse, self.config, self.device, limit, num_frames, slots, threshold)
        if self.shape_buckets:
            self._slots = (memory.spatial.shape[1], memory.pointers.shape[1])
        return memory

    def _memory_scores(self, factors: Tensor, count: int) -> list[Optional[MemoryScore]]:
        """Each of `count` tracked objects' memory score from the score factors (B, 2) of a pass, kept on the device
        for memory selection to read when it plans the next frame; None each without memory selection."""
        if not self.options.use_memory_selection:
            return [None] * count
        return object_scores(factors[:count])

    def _outputs(self, prediction: MaskPrediction) -> list[ObjectOutput]:
        masks = filled(prediction.best_mask, self.options.fill_hole_area).to(self.storage_device, non_blocking=True)
        return [
            ObjectOutput(masks[row], prediction.obj_ptr[row], prediction.object_score_logits[row])
            for row in range(masks.shape[0])
        ]

    def _store_memory(self, memories: Tensor) -> Tensor:
        """(B, N, C_mem) -> the same in the storage dtype and device."""
        return self._to_storage(stored_memory(memories, self.memory_dtype))

    def _to_storage(self, memories: Tensor) -> Tensor:
        # Offloaded, the copy must have landed before the host copies it into its slot: no non_blocking.
        return memories.to(self.storage_device)


def _per_object(frames: Sequence[EncodedFrame], batch: int) -> ImageFeatures:
    """The features each of `batch` objects works on, from one frame per object or one for all.

    One frame for all: its features as they are, batch 1 (the pass broadcasts them). Several frames
    (objects of several streams): their rows are gathered, (B, ...).
    """
    first = frames[0].features
    if all(frame is frames[0] for frame in frames):
        return first
    if len(frames) != batch:
        raise ValueError(f"expected one frame per object ({batch}), got {len(frames)}")
    embed = torch.cat([frame.features.embed for frame in frames])  # (B, C, h, w)
    levels = len(first.high_res)
    high_res = tuple(torch.cat([frame.features.high_res[i] for frame in frames]) for i in range(levels))
    return ImageFeatures(embed, high_res, first.pos)

"""A session's phrase: SAM 3 finds and tracks every instance of it on the session's frames (the app's text box).

The server loads SAM 3's detector, tracker and tokenizer once (`ConceptModels`); a session that sends a phrase
gets a ConceptTracker of its own over those shared models (its tracks, memory and state). Its results go out as
the clicked objects' do: each visible track under a small id of the session (1, 2, ... in the order tracks are
first seen; after MAX_OBJECT_ID the ids of tracks gone are given again), so that the page, its colours and the
exports take them unchanged.

The sessions with a phrase that have a new frame in one tick share one backbone pass, the biggest part of a
frame's work (SAM 3's ViT at 1008 px): `encoding_groups` puts together the sessions whose trackers encode alike
(at most PHRASE_FRAMES_PER_PASS a pass), `encode_frames` runs the trunk once over their frames (of any sizes), and
each session's tracker steps on its own frame's part (`SessionPhrase.step_encoded`): the scheduler runs a tick's
phrase sessions through `phrase_groups` and `step_phrase_group`, and publishes each result. The rest of a step (the
detector, propagation, association, memory) still runs one session at a time: batching it too would need a pool of
concept streams, the detector over a batch of (frame, phrase) pairs and one propagation over every session's
tracks with their memory rings in one arena, while ConceptTracker steps one stream.
"""

from __future__ import annotations

import json
import logging
from typing import Any, Callable, Iterator, NamedTuple, Optional, Sequence

import torch

from ..tracking.concepts import ConceptFrame, ConceptTracker, EncodedConceptFrame
from ..tracking.download import PendingFrame, start_copies
from .protocol import MAX_OBJECT_ID, ProtocolError, ReceivedFrame, error_message
from .sessions import Session

NO_SAM3 = (
    "this server has no SAM 3 model, so it cannot find objects by text: start it with `sam2rt serve --sam3` "
    "(SAM 3's sam3.pt from the Hugging Face cache) or `--sam3-checkpoint sam3.pt`"
)

log = logging.getLogger("sam2rt.serve")


# A pass's frames stay encoded until its last session has stepped (about 66 MB a frame at 1008 px in bf16), and the
# trunk's activations grow with its batch: 8 keeps what one pass holds near half a gigabyte.
PHRASE_FRAMES_PER_PASS = 8


class ConceptModels(NamedTuple):
    """SAM 3's models, loaded once and shared by every session's ConceptTracker (only the scheduler runs them)."""

    detector: Any  # Sam3Detector (its vision backbone is the tracker's image encoder)
    tracker: Any  # SAM2Model of SAM 3's tracker variant
    tokenizer: Any  # TextTokenizer


class SessionIds:
    """A session's wire ids of its phrase's tracks: small (1 to MAX_OBJECT_ID, as the exports hold them), given in
    the order tracks are first visible; once all were given, those of tracks removed are given again."""

    def __init__(self) -> None:
        self._wire: dict[int, int] = {}  # the tracker's id -> the session's id
        self._next = 1

    def wire_id(self, track_id: int) -> Optional[int]:
        """The session's id of a track, given on first asking; None when every id is held by a live track."""
        if track_id not in self._wire:
            if self._next <= MAX_OBJECT_ID:
                self._wire[track_id], self._next = self._next, self._next + 1
            else:
                free = sorted(set(range(1, MAX_OBJECT_ID + 1)) - set(self._wire.values()))
                if not free:
                    return None
                self._wire[track_id] = free[0]
        return self._wire[track_id]

    def held(self, wire_id: int) -> bool:
        """Whether a live track has this session id."""
        return wire_id in self._wire.values()

    def forget(self, track_ids: list[int]) -> set[int]:
        """Tracks removed: their session ids are returned, free to be given again once all were given."""
        return {wire for wire in (self._wire.pop(track_id, None) for track_id in track_ids) if wire is not None}

    def clear(self) -> None:
        self._wire.clear()
        self._next = 1


class SessionPhrase:
    """A session's phrase and its ConceptTracker (the scheduler's thread alone touches it)."""

    def __init__(self, models: ConceptModels, phrase: str) -> None:
        self.phrase = phrase
        self.tracker = ConceptTracker(models.detector, models.tracker, models.tokenizer, phrase)
        self.ids = SessionIds()
        self.hidden: set[int] = set()  # session ids the user removed: still tracked, not shown
        self.last: Optional[ConceptFrame] = None  # the newest frame's tracks, to show again when one is hidden

    def reset(self) -> None:
        """Forget every track: the phrase's instances are found again from the next frame."""
        self.tracker.reset()
        self.ids.clear()
        self.hidden.clear()
        self.last = None

    def step(self, image) -> tuple[int, PendingFrame]:
        """Track the phrase on the next frame (H, W, 3) uint8 RGB: the tracker's frame index and the visible tracks'
        masks on their way to the CPU, under the session's ids."""
        return self._published(self.tracker.step(image))

    def step_encoded(self, encoded: EncodedConceptFrame) -> tuple[int, PendingFrame]:
        """`step` on the next frame already encoded (`encode_frames`, by a tracker that encodes like this one)."""
        return self._published(self.tracker.step_encoded(encoded))

    def shown(self, pixels: Callable[[], Any]) -> tuple[int, PendingFrame]:
        """`step`'s result for the frame shown: a new phrase's tracker steps on it (`pixels()`, its (H, W, 3) uint8
        RGB); a phrase already tracked there gives it again (after an object is hidden)."""
        if self.last is None:  # nothing tracked yet: this frame is its first
            return self.step(pixels())
        return self.last.frame_idx, self.pending(self.last)

    def _published(self, found: ConceptFrame) -> tuple[int, PendingFrame]:
        """The tracker's newest frame, kept to show again and turned into the publisher's result."""
        self.last = found
        pending = self.pending(found)
        self.hidden -= self.ids.forget(found.removed_ids)  # removed on this frame: hidden on it already
        return found.frame_idx, pending

    def pending(self, found: ConceptFrame) -> PendingFrame:
        """A ConceptFrame's visible tracks, not hidden by the user, as the publisher takes a result: session ids,
        masks (K, H, W) bool, each pixel's owner (H, W) and detection scores (K,), copies to the CPU started."""
        track_ids, masks = found.visible_masks()
        rows = torch.nonzero(found.visible).flatten().tolist()
        kept = []  # (position among the visible, session id)
        for position, track_id in enumerate(track_ids):
            wire = self.ids.wire_id(track_id)
            if wire is not None and wire not in self.hidden:
                kept.append((position, wire))
        if not kept:
            return PendingFrame([])
        positions = [position for position, _ in kept]
        masks = masks[positions]  # (K, H, W) bool, without overlaps (ConceptTracker resolves them)
        scores = found.scores[[rows[p] for p in positions]].float()  # (K,) on the CPU
        # One owner per pixel: masks do not overlap, so the first (only) mask that has the pixel.
        owners = torch.where(masks.any(0), masks.int().argmax(0) + 1, 0).to(torch.uint8)  # (H, W)
        return start_copies([wire for _, wire in kept], masks, owners, scores)

    def hide(self, wire_id: int) -> bool:
        """Stop showing one of the phrase's objects (it is still tracked, so it does not come back as new);
        False if no track has that id."""
        if not self.ids.held(wire_id):
            return False
        self.hidden.add(wire_id)
        return True


def set_phrase(session: Session, models: Optional[ConceptModels], phrase: Optional[str]) -> bool:
    """Track a phrase's instances on a session instead of its clicked objects (which are forgotten), or clear the
    phrase (None), and tell the session. Returns whether the frame shown must be published again: not for a clear
    without a phrase, which leaves the clicked objects as they are."""
    if phrase is not None and models is None:
        raise ProtocolError(NO_SAM3)
    had_phrase = session.phrase is not None
    if phrase is not None:
        session.stream.reset()
        session.phrase = SessionPhrase(models, phrase)
    else:
        session.phrase = None
    session.deliver(json.dumps({"type": "text", "phrase": phrase}), None)
    return phrase is not None or had_phrase


def encoding_groups(phrases: Sequence[SessionPhrase]) -> list[list[int]]:
    """The positions of `phrases` whose frames one backbone pass encodes: each group's trackers encode alike (the
    same model and resizing), at most PHRASE_FRAMES_PER_PASS, every position once, in order within a group."""
    groups: list[list[int]] = []
    for position, phrase in enumerate(phrases):
        for group in groups:
            if len(group) < PHRASE_FRAMES_PER_PASS and phrases[group[0]].tracker.encodes_like(phrase.tracker):
                group.append(position)
                break
        else:
            groups.append([position])
    return groups


def encode_frames(phrases: Sequence[SessionPhrase], images: Sequence[Any]) -> list[EncodedConceptFrame]:
    """Each phrase's frame (H_i, W_i, 3) uint8 RGB, encoded in one backbone pass (one of `encoding_groups`' groups):
    their EncodedConceptFrames, in order, for each phrase's `step_encoded`."""
    first = phrases[0].tracker
    if not all(first.encodes_like(phrase.tracker) for phrase in phrases):
        raise ValueError("one backbone pass serves trackers that encode alike only (see encoding_groups)")
    return first.encode_batch(images)


def phrase_groups(frames: dict[Session, ReceivedFrame]) -> list[dict[Session, ReceivedFrame]]:
    """A tick's sessions with a phrase and their new frames, in the groups that one backbone pass encodes each
    (`encoding_groups`)."""
    sessions = list(frames)
    groups = encoding_groups([session.phrase for session in sessions])
    return [{sessions[i]: frames[sessions[i]] for i in group} for group in groups]


def step_phrase_group(
    group: dict[Session, ReceivedFrame],
) -> Iterator[tuple[Session, ReceivedFrame, int, PendingFrame]]:
    """One backbone pass over a group's frames (one of `phrase_groups`), then each session's step on its part: the
    session, its frame, the tracker's frame index and the masks on their way to the CPU, yielded before the next
    session steps so that the caller publishes each at once. A pass that fails (a frame that is not an image, memory)
    leaves each session to encode its own frame, so that a failure is told to its session alone (and not yielded)
    and the others' results go out as they would."""
    encoded: list[Any] = [None] * len(group)  # None: the session's step encodes its frame itself
    if len(group) > 1:
        try:
            encoded = encode_frames([session.phrase for session in group], [f.image for f in group.values()])
        except Exception:
            log.warning("encoding %d sessions' frames in one pass failed: one by one", len(group), exc_info=True)
    for (session, frame), own in zip(group.items(), encoded):
        try:
            phrase = session.phrase
            index, pending = phrase.step(frame.image) if own is None else phrase.step_encoded(own)
        except Exception:
            log.exception("tracking the phrase of session %s failed", session.id[:6])
            session.deliver(error_message("internal error while tracking the phrase (see the server log)"), None)
            continue
        yield session, frame, index, pending

"""Results on their way out: RLE-encoded, recorded for export and sent, in threads beside the scheduler.

The scheduler hands over each frame's masks as their copies to the CPU start, and goes on with the next
tick; here a thread JPEG-encodes a server-side frame for its client (the `encode` stage), waits for the
copies (the `download` stage), then encodes the masks (COCO RLE), records and writes the JSON.

Several lanes, each a thread and a queue, share the sessions: a session's results all go through one lane, in
order, while other sessions' go on beside them. With one lane, every result waited behind the others' copies
and encodings: on an H100, 16 cameras at 15 frames/s wanted 175 results a second at 5.5 ms each of that
thread's time, and the thread, not the GPU, set the delivered rate.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
import weakref
from dataclasses import dataclass
from typing import TYPE_CHECKING, Optional

import numpy as np

from ..io.rle import encode_rle
from ..tracking.download import PendingFrame
from .protocol import FORMAT_JPEG, ReceivedFrame, encode_jpeg, frame_header
from .sessions import Session

if TYPE_CHECKING:
    from .scheduler import TickObserver

log = logging.getLogger("sam2rt.serve")

PUBLISH_LANES = 4  # threads; what they do between waits holds the GIL, so more would mostly wait for it


@dataclass(frozen=True)
class Outgoing:
    session: Session
    generation: int  # the session's source when the frame was tracked: a newer source drops it
    frame: ReceivedFrame  # encoded as received, or a server-side frame's pixels (encoded to JPEG here)
    masks: PendingFrame  # masks, scores and owners on their way to the CPU
    size: tuple[int, int]  # (height, width) of the frame
    index: int  # the stream's frame index
    prompted: bool
    stats: dict
    phrase: Optional[str] = None  # the session's phrase, when its objects are the phrase's instances (SAM 3)


class Publisher:
    def __init__(self, observer: Optional[TickObserver] = None, lanes: int = PUBLISH_LANES) -> None:
        if lanes < 1:
            raise ValueError(f"the publisher needs at least one lane, not {lanes}")
        self.observer = observer  # told how long each result took to send
        self._queues: list[queue.Queue[Optional[Outgoing]]] = [queue.Queue() for _ in range(lanes)]
        self._threads = [
            threading.Thread(target=self._run, args=(q,), name=f"sam2rt publisher {i}", daemon=True)
            for i, q in enumerate(self._queues)
        ]
        self._lanes: weakref.WeakKeyDictionary[Session, int] = weakref.WeakKeyDictionary()  # a session's lane
        self._lanes_lock = threading.Lock()

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def stop(self) -> None:
        for lane in self._queues:
            lane.put(None)
        for thread in self._threads:
            thread.join(timeout=10.0)

    def submit(self, item: Outgoing) -> None:
        self._queues[self._lane(item.session)].put(item)

    def _lane(self, session: Session) -> int:
        """The session's lane: given on its first result, the one with the fewest sessions then, and kept."""
        with self._lanes_lock:
            lane = self._lanes.get(session)
            if lane is None:
                taken = [0] * len(self._queues)
                for other, index in self._lanes.items():
                    taken[index] += not other.released.is_set()
                lane = self._lanes[session] = taken.index(min(taken))
            return lane

    def _run(self, lane: queue.Queue[Optional[Outgoing]]) -> None:
        while (item := lane.get()) is not None:
            try:
                self._send(item)
            except Exception:  # one bad result must not stop the others'
                log.exception("publishing a result of session %s failed", item.session.id[:6])
            # not held while the lane waits: a closed session's last result (its masks, the session) would live on
            del item

    def _observe(self, stage: str, since: float) -> float:
        now = time.monotonic()
        if self.observer is not None:
            self.observer.observe_stage(stage, now - since)
        return now

    def _send(self, item: Outgoing) -> None:
        session, frame = item.session, item.frame
        if item.generation != session.generation or session.released.is_set():
            return  # the session started another source, or ended, since this frame was tracked
        start = time.monotonic()
        picture: Optional[bytes] = None  # the frame's image message, before the result: server-side frames'
        if frame.encoded is None:  # a server-side frame, JPEG-encoded here rather than on the model's thread
            frame = session.keep_encoded(frame, encode_jpeg(frame.image), FORMAT_JPEG)
            if not item.prompted:  # the client has the frame of a prompt already
                picture = frame_header(frame.frame_id, FORMAT_JPEG, item.size[1], item.size[0]) + frame.encoded
            start = self._observe("encode", start)
        no_image = np.broadcast_to(np.zeros(1, np.uint8), (*item.size, 3))  # the recorder keeps the encoded frame
        tracked = item.masks.tracked(frame.frame_id, f"{frame.frame_id:05d}", no_image)
        start = self._observe("download", start)
        rles = encode_rle(tracked.masks) if tracked.object_ids else []
        if tracked.object_ids or session.recorder.frames:
            session.recorder.add(frame.frame_id, frame.encoded, frame.format, tracked, rles)
        objects = [
            {"id": obj_id, "score": round(float(score), 4), "rle": rle}
            for obj_id, score, rle in zip(tracked.object_ids, tracked.scores, rles)
        ]
        if item.phrase is not None:
            for found in objects:
                found["label"] = item.phrase
        message = {
            "type": "result",
            "frame": frame.frame_id,
            "index": item.index,
            "prompted": item.prompted,
            "objects": objects,
            "stats": {**item.stats, "recorded": session.recorder.frames},
        }
        if item.phrase is not None:
            message["phrase"] = item.phrase
        session.deliver(json.dumps(message), picture)
        self._observe("publish", start)
        if self.observer is not None and not item.prompted:
            self.observer.observe_frame(time.monotonic() - frame.arrived)

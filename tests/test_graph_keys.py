"""The CUDA-graph keys the engine meets, checked on the CPU (tests/graph_keys.py): each key is a capture of 0.1-0.2 s
on a GPU, on the frame that meets it. `StreamPool.warm_up` is there so that a server's live ticks meet none."""

from __future__ import annotations

import numpy as np
from graph_keys import KeyRecorder, record_graph_keys
from visible import visible_model

import sam2rt

SIZE = (96, 128)  # (height, width) of the streams' frames


def _frame(t: int) -> np.ndarray:
    frame = np.random.default_rng(t).integers(0, 80, size=(*SIZE, 3), dtype=np.uint8)
    frame[30:60, 10 + t % 60 : 50 + t % 60] = (220, 40, 40)
    return frame


def test_after_the_warm_up_out_of_phase_streams_meet_no_new_graph(monkeypatch):
    """Streams of one object each, opened one after another and stepped in changing groups (paced cameras out of
    phase), through their memory filling and past it, up to the warm-up's count: every key was met in the warm-up."""
    pool = sam2rt.StreamPool(record_graph_keys(visible_model(image_size=128), monkeypatch.setattr))
    KeyRecorder.moment = "warm-up"
    pool.warm_up(3, frame_size=SIZE)
    warmed = len(KeyRecorder.new_keys)
    assert warmed >= 6, KeyRecorder.new_keys  # the test must be able to fail: the warm-up met many keys
    streams = []
    for t in range(30):
        if t in (0, 4, 9):  # a camera joins
            streams.append(pool.open_stream())
            joined = True
        else:
            joined = False
        # Out of phase: each tick steps the streams whose frame is due, not always all of them.
        due = [stream for index, stream in enumerate(streams) if (t + index) % 3 or joined]
        KeyRecorder.moment = f"tick {t}"
        pool.step({stream: _frame(t) for stream in due})
        if joined:
            streams[-1].add_prompt(1, points=[(30, 45)], labels=[1])
    assert KeyRecorder.new_keys[warmed:] == [], KeyRecorder.new_keys[warmed:]

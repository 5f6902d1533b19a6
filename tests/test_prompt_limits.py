"""Prompts beyond the limits, or of the wrong shape: refused early, with the file and entry named; never a traceback.

The API (read_prompts_file, make_prompt) and the command (`sam2rt track --prompts`, the flags) give
the same messages; the command's runs stop before the model is loaded, so they are cheap.
"""

from __future__ import annotations

import json
import tracemalloc

import pytest
from cli_support import assert_clean_error, invoke_in_process, model_args, write_clip

from sam2rt.io.prompt_file import MAX_POINTS, MAX_PROMPTS, PromptError, make_prompt, read_prompts_file
from sam2rt.io.prompt_json import MAX_FILE_BYTES


def _write(tmp_path, text: str):
    path = tmp_path / "prompts.json"
    path.write_text(text)
    return path


BIG = str(2**31)

CASES = [
    # ids and frames: int32 in every output; integers too large for a float; 5000 digits (int() refuses those)
    (f'[{{"obj_id": {BIG}, "points": [[1, 1]]}}]', f"prompts.json entry 1: obj_id must be an integer from 1 to {2**31 - 1}, got {BIG}"),
    ('[{"obj_id": 1, "frame": 1e400, "points": [[1, 1]]}]', "prompts.json entry 1: frame must be an integer from 0 to 2147483647, got inf"),
    ('[{"obj_id": 1, "points": [[' + "9" * 39 + ', 1]]}]', "prompts.json entry 1: points must be finite numbers within +-16777216 (pixels), got 9999"),
    ('[{"obj_id": 1, "points": [[' + "1" * 5000 + ', 1]]}]', "prompts.json: the number 111111111111... has 5000 digits; numbers in it have at most 40"),
    ('[{"obj_id": 1, "points": [[10, NaN]]}]', "prompts.json entry 1: points must be finite numbers within +-16777216 (pixels), got nan"),
    ('[{"obj_id": 1, "box": [0, 0, Infinity, 5]}]', "prompts.json entry 1: box must be finite numbers within +-16777216 (pixels), got inf"),
    ('[{"obj_id": 1, "points": [[1, 1]]}, {"obj_id": -Infinity, "box": [1, 1, 2, 2]}]', "prompts.json entry 2: obj_id must be an integer from 1 to 2147483647, got -inf"),
    # strict shapes: nothing is flattened into points or a box
    ('[{"obj_id": 1, "points": [[[10, 20, 30], 40]]}]', "prompts.json entry 1: points must be a list of [x, y] pairs of numbers, got [[[10, 20, 30], 40]]"),
    ('[{"obj_id": 1, "points": [[10, 20, 30]]}]', "prompts.json entry 1: points must be a non-empty list of [x, y] pairs, got [[10, 20, 30]]"),
    ('[{"obj_id": 1, "box": [[1, 2], [3, 4]]}]', "prompts.json entry 1: box must be [x0, y0, x1, y1], got [[1, 2], [3, 4]]"),
    ('[{"obj_id": 1, "points": [[1, 1]], "labels": [[1]]}]', "prompts.json entry 1: labels must be a list of 1 (object) and 0 (background), got [[1]]"),
    # nesting, repeated keys
    ("[" * 20 + "]" * 20, "prompts.json: JSON nested deeper than 16 levels"),
    ("[" * 100_000 + "]" * 100_000, "prompts.json: JSON nested deeper than 16 levels"),
    ('[{"obj_id": 1, "points": [[1, 1]], "obj_id": 2}]', "prompts.json entry 1: key 'obj_id' is given twice"),
]  # fmt: skip


@pytest.mark.parametrize("text, message", CASES)
def test_api_refuses_with_the_entry_named(tmp_path, text, message):
    with pytest.raises(PromptError) as caught:
        read_prompts_file(_write(tmp_path, text))
    assert message in str(caught.value)
    assert len(str(caught.value)) < 300  # the offending value is shown shortened, whatever its size


def test_counts_are_limited(tmp_path):
    many_points = [{"obj_id": 1, "points": [[1, 1]] * (MAX_POINTS + 1)}]
    with pytest.raises(
        PromptError, match=f"prompts.json entry 1: {MAX_POINTS + 1} points; a prompt takes at most {MAX_POINTS}$"
    ):
        read_prompts_file(_write(tmp_path, json.dumps(many_points)))
    many_prompts = [{"obj_id": i + 1, "box": [1, 1, 2, 2]} for i in range(MAX_PROMPTS + 1)]
    with pytest.raises(PromptError, match=f"{MAX_PROMPTS + 1} prompts; a prompts file holds at most {MAX_PROMPTS}$"):
        read_prompts_file(_write(tmp_path, json.dumps(many_prompts)))
    with pytest.raises(PromptError, match="the command line: 1001 points; a prompt takes at most 1000"):
        make_prompt(0, 1, [[1.0, 1.0]] * 1001, None, None, None, "the command line")
    with pytest.raises(PromptError, match="obj_id must be an integer from 1 to 2147483647, got 1000000000000000000000"):
        make_prompt(0, 10**21, [[1.0, 1.0]], None, None, None, "the command line")
    with pytest.raises(
        PromptError, match="points must be finite numbers within \\+-16777216 \\(pixels\\), got 1000000"
    ):
        make_prompt(0, 1, [[10**400, 1]], None, None, None, "api")  # too large for a float: compared exactly


def test_millions_of_points_are_refused_by_size_before_parsing(tmp_path):
    """The file that grew to 15 GB: refused from its first MAX_FILE_BYTES + 1 bytes, in little memory."""
    path = tmp_path / "prompts.json"
    with open(path, "w") as file:
        file.write('[{"obj_id": 1, "points": [')
        file.write("[100, 200], " * 2_000_000)
        file.write("[1, 1]]}]")
    assert path.stat().st_size > 2 * MAX_FILE_BYTES
    tracemalloc.start()
    try:
        with pytest.raises(PromptError) as caught:
            read_prompts_file(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert str(caught.value) == f"prompts file {path} is larger than 8 MiB, the most a prompts file may be"
    assert peak < 2.5 * MAX_FILE_BYTES, f"peak {peak / 2**20:.0f} MiB"


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    return write_clip(tmp_path_factory.mktemp("clip") / "clip.mp4", 4)


@pytest.mark.parametrize("text, message", [CASES[0], CASES[3], CASES[4], CASES[7], CASES[12], CASES[13]])
def test_command_refuses_with_one_line(capsys, tmp_path, clip, checkpoint, text, message):
    path = _write(tmp_path, text)
    result = invoke_in_process(capsys, "track", clip, "--prompts", path, *model_args(checkpoint))
    assert_clean_error(result, message)


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--obj", BIG, "--point", "5,5"], f"the command line: obj_id must be an integer from 1 to 2147483647, got {BIG}"),
        (["--frame", "9" * 30, "--point", "5,5"], "the command line: frame must be an integer from 0 to 2147483647"),
        (["--point", "1e39,5"], "the command line: points must be finite numbers within +-16777216 (pixels), got 1e+39"),
    ],
)  # fmt: skip
def test_flags_are_limited_too(capsys, clip, checkpoint, flags, message):
    result = invoke_in_process(capsys, "track", clip, *flags, *model_args(checkpoint))
    assert_clean_error(result, message)

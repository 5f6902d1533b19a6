"""The prompts file of `sam2rt track`: the documented schema parses; every malformed entry is named in the error."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from sam2rt.io.prompt_file import PromptError, check_prompts, read_prompts_file


def _write(tmp_path, content) -> object:
    path = tmp_path / "prompts.json"
    path.write_text(content if isinstance(content, str) else json.dumps(content))
    return path


def test_the_readme_example_parses(tmp_path):
    (tmp_path / "masks").mkdir()
    mask = np.zeros((120, 160), np.uint8)
    mask[10:30, 20:60] = 255
    Image.fromarray(mask).save(tmp_path / "masks" / "cup.png")
    prompts = read_prompts_file(
        _write(
            tmp_path,
            [
                {"frame": 0, "obj_id": 1, "points": [[10, 35], [25, 22]], "labels": [1, 0]},
                {"frame": 0, "obj_id": 2, "box": [30, 0, 50, 40]},
                {"frame": 40, "obj_id": 3, "mask": "masks/cup.png"},
                {"obj_id": 4, "points": [[5, 5]], "box": [0, 0, 20, 20]},
            ],
        )
    )
    first, second, third, fourth = prompts
    assert (first.frame, first.obj_id) == (0, 1)
    np.testing.assert_array_equal(first.points, [[10, 35], [25, 22]])
    np.testing.assert_array_equal(first.labels, [1, 0])
    np.testing.assert_array_equal(second.box, [30, 0, 50, 40])
    assert second.points is None and second.mask is None
    assert third.frame == 40 and third.mask.shape == (120, 160) and third.mask.sum() == 20 * 40
    assert fourth.frame == 0 and fourth.labels.tolist() == [1]  # labels default to 1, frame to 0
    check_prompts(prompts, (120, 160), 41, "the video has 41 frames")
    with pytest.raises(PromptError, match="prompts.json entry 3 \\(object 3, frame 40\\): frame 40 is past the end"):
        check_prompts(prompts, (120, 160), 40, "the video has 40 frames")
    with pytest.raises(PromptError, match="entry 2 \\(object 2, frame 0\\): box corner \\(x=50, y=40\\) lies outside"):
        check_prompts(prompts, (36, 160), None, "")


def test_indexed_png_mask_uses_the_palette_indices(tmp_path):
    mask = np.zeros((8, 8), np.uint8)
    mask[2:4, 2:4] = 3
    image = Image.fromarray(mask)
    image.putpalette([0, 0, 0] * 256)  # every colour black: the indices must be read, not the colours
    image.save(tmp_path / "indexed.png")
    (prompt,) = read_prompts_file(_write(tmp_path, [{"obj_id": 1, "mask": "indexed.png"}]))
    assert prompt.mask.sum() == 4


@pytest.mark.parametrize(
    "content, message",
    [
        ('[{"obj_id": 1, "points": [[10, 10]]', "is not valid JSON: Expecting ',' delimiter at line 1, column 36"),
        ({"obj_id": 1, "points": [[10, 10]]}, "expected a JSON list of prompts, got dict"),
        ([], "the list of prompts is empty"),
        ([[1, 2]], "entry 1: expected an object like"),
        ([{"obj_id": 1, "pionts": [[10, 10]]}], "entry 1: unknown key 'pionts' \\(known: frame, obj_id, points"),
        ([{"points": [[10, 10]]}], "entry 1: obj_id is missing"),
        ([{"obj_id": 0, "points": [[10, 10]]}], "entry 1: obj_id must be an integer from 1 to 2147483647, got 0"),
        ([{"obj_id": "a", "points": [[10, 10]]}], "entry 1: obj_id must be an integer from 1 to 2147483647, got 'a'"),
        ([{"obj_id": True, "points": [[10, 10]]}], "entry 1: obj_id must be an integer from 1 to 2147483647, got True"),
        (
            [{"obj_id": 1, "frame": -2, "box": [1, 1, 5, 5]}],
            "entry 1: frame must be an integer from 0 to 2147483647, got -2",
        ),
        (
            [{"obj_id": 1, "frame": 1.5, "box": [1, 1, 5, 5]}],
            "entry 1: frame must be an integer from 0 to 2147483647, got 1.5",
        ),
        ([{"obj_id": 1, "points": [[10, 10], [20, 20]], "labels": [1]}], "entry 1: 2 points but 1 labels"),
        ([{"obj_id": 1, "points": [10, 10]}], "entry 1: points must be a non-empty list of \\[x, y\\] pairs"),
        ([{"obj_id": 1, "points": []}], "entry 1: points must be a non-empty list of \\[x, y\\] pairs"),
        ([{"obj_id": 1, "points": [[10, "a"]]}], "entry 1: points must be a list of \\[x, y\\] pairs"),
        ('[{"obj_id": 1, "points": [[10, NaN]]}]', "entry 1: points must be finite numbers"),
        (
            [{"obj_id": 1, "points": [[10, 10]], "labels": [2]}],
            "entry 1: labels must be a list of 1 \\(object\\) and 0",
        ),
        ([{"obj_id": 1, "points": [[10, 10]], "labels": [True]}], "entry 1: labels must be a list of 1"),
        ([{"obj_id": 1, "labels": [1]}], "entry 1: labels were given without points"),
        ([{"obj_id": 1, "box": [50, 10, 20, 40]}], "entry 1: box must be \\[x0, y0, x1, y1\\] with x0 <= x1"),
        ([{"obj_id": 1, "box": [1, 2, 3]}], "entry 1: box must be \\[x0, y0, x1, y1\\], got \\[1, 2, 3\\]"),
        ([{"obj_id": 1}], "entry 1: a prompt needs points, a box or a mask"),
        ([{"obj_id": 1, "mask": 3}], "entry 1: mask must be the path of an image file, got 3"),
        ([{"obj_id": 1, "mask": "missing.png"}], "entry 1: mask file .*missing.png not found"),
        ([{"obj_id": 1, "mask": "prompts.json"}], "entry 1: mask file .*prompts.json is not a readable image"),
        (
            [{"obj_id": 1, "box": [1, 1, 5, 5]}, {"obj_id": 1, "box": [2, 2, 6, 6]}],
            "entry 2 prompts object 1 on frame 0",
        ),
    ],
)
def test_malformed_entries_are_named(tmp_path, content, message):
    with pytest.raises(PromptError, match=message):
        read_prompts_file(_write(tmp_path, content))


def test_mask_with_points_and_empty_mask(tmp_path):
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "empty.png")
    Image.fromarray(np.full((8, 8), 255, np.uint8)).save(tmp_path / "full.png")
    with pytest.raises(PromptError, match="entry 1: mask .*empty.png is empty"):
        read_prompts_file(_write(tmp_path, [{"obj_id": 1, "mask": "empty.png"}]))
    with pytest.raises(PromptError, match="entry 1: a mask prompt stands alone"):
        read_prompts_file(_write(tmp_path, [{"obj_id": 1, "mask": "full.png", "points": [[1, 1]]}]))


def test_missing_prompts_file(tmp_path):
    with pytest.raises(PromptError, match="prompts file .*none.json not found"):
        read_prompts_file(tmp_path / "none.json")

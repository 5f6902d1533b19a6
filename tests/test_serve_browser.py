"""The browser app of `sam2rt serve` in a real browser: Debian's Chromium driven by Playwright, a fake webcam.

Chromium plays a clip (from ../shared/data/videos, or synthetic frames without it) as its webcam.
The test clicks an object, checks on the page's pixels that its mask is drawn over the frame in its
colour, corrects it, removes it, exports COCO JSON; then the same with an uploaded video; then, on a server
with a small SAM 3 (tests/test_serve_text.py's), types a phrase into the text box and sees its instances drawn
and named. It keeps screenshots (in $SAM2RT_SCREENSHOT_DIR when set: the README's picture comes from there).
"""

from __future__ import annotations

import json
import os
import shutil
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
from cli_support import clip_frames
from media import SHARED_DATA
from PIL import Image
from serve_support import load_test_model, running_asgi, running_front, running_server

from sam2rt.serve.app import ServerConfig, create_app
from sam2rt.serve.scheduler import default_engine

CHROMIUM = Path("/usr/bin/chromium")
FRAME_SIZE = (180, 320)  # (height, width): small frames keep the CPU test fast
CLIP_FRAMES = 40


def _missing() -> list[str]:
    """What the test needs and this machine lacks: the browser, and the Python package that drives it."""
    missing = []
    if not CHROMIUM.exists():
        missing.append(f"Debian's chromium at {CHROMIUM}")
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError as error:
        missing.append(f"the Python package playwright ({error})")
    return missing


MISSING = _missing()
pytestmark = pytest.mark.skipif(
    bool(MISSING), reason=f"needs {' and '.join(MISSING)}: bash scripts/setup.sh --test installs both"
)

# Reads the page's pixels: where the shown result has a mask, the view must show the frame blended with the
# object's colour (or the colour itself on the outline); elsewhere the frame as it is.
CHECK_PIXELS = """() => {
  const shown = window.sam2rt.shown, view = document.getElementById("view");
  const { width, height } = view;
  const drawn = view.getContext("2d").getImageData(0, 0, width, height).data;
  const raw = document.createElement("canvas"); raw.width = width; raw.height = height;
  raw.getContext("2d").drawImage(shown.bitmap, 0, 0);
  const frame = raw.getContext("2d").getImageData(0, 0, width, height).data;
  const result = { objects: shown.objects.map((o) => o.id), inside: 0, tinted: 0, outside: 0, untouched: 0 };
  const untinted = { x0: width, y0: height, x1: -1, y1: -1 };  // where the mask is covered by something else
  const near = (a, b, tolerance) => Math.abs(a - b) <= tolerance;
  for (let i = 0; i < width * height; i++) {
    const obj = shown.objects.find((o) => o.mask[i]);
    if (obj) {
      const colour = objectColor(obj.id);
      result.inside += 1;
      const fill = [0, 1, 2].every((c) => near(drawn[4 * i + c], frame[4 * i + c] * 0.498 + colour[c] * 0.502, 3));
      const edge = [0, 1, 2].every((c) => near(drawn[4 * i + c], colour[c], 1));
      if (fill || edge) result.tinted += 1;
      else {
        const x = i % width, y = Math.floor(i / width);
        untinted.x0 = Math.min(untinted.x0, x); untinted.x1 = Math.max(untinted.x1, x);
        untinted.y0 = Math.min(untinted.y0, y); untinted.y1 = Math.max(untinted.y1, y);
      }
    } else {
      result.outside += 1;
      if ([0, 1, 2].every((c) => near(drawn[4 * i + c], frame[4 * i + c], 1))) result.untouched += 1;
    }
  }
  result.untintedSize = [Math.max(0, untinted.x1 - untinted.x0 + 1), Math.max(0, untinted.y1 - untinted.y0 + 1)];
  result.height = height;
  return result;
}"""
BROWSER_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--use-fake-device-for-media-stream",
    "--use-fake-ui-for-media-stream",
]


def clip_images() -> list[np.ndarray]:
    videos = SHARED_DATA / "videos"
    source = videos / "bedroom.mp4"
    if not source.exists():
        return clip_frames(CLIP_FRAMES, FRAME_SIZE)
    images = []
    with av.open(str(source)) as container:
        for frame in container.decode(video=0):
            image = Image.fromarray(frame.to_ndarray(format="rgb24"))
            images.append(np.asarray(image.resize(FRAME_SIZE[::-1], Image.BILINEAR)))
            if len(images) == CLIP_FRAMES:
                break
    return images


def write_video(path: Path, images: list[np.ndarray], codec: str, pix_fmt: str, rate: Fraction) -> Path:
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream(codec, rate=rate)
        stream.height, stream.width = images[0].shape[:2]
        stream.pix_fmt = pix_fmt
        for index, image in enumerate(images):
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            frame.pts = index
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    return path


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    folder = tmp_path_factory.mktemp("browser-clips")
    images = clip_images()
    webcam = write_video(folder / "clip.y4m", images, "rawvideo", "yuv420p", Fraction(10))
    upload = write_video(folder / "clip.mp4", images, "libx264", "yuv420p", Fraction(8))
    return webcam, upload


@pytest.fixture(scope="module", params=["server", "front of two replicas"])
def server(request, tmp_path_factory):
    """The single-process server, and the front of `--ray` over two in-process replicas: the page sees no difference."""
    model = load_test_model(tmp_path_factory.mktemp("serve-model"))
    serving = (
        running_server(default_engine(model), ServerConfig()) if request.param == "server" else running_front(model)
    )
    with serving as running:
        yield running


def keep_screenshot(page, tmp_path: Path, name: str) -> Path:
    path = page.screenshot(path=str(tmp_path / name)) and tmp_path / name
    folder = os.environ.get("SAM2RT_SCREENSHOT_DIR")
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, Path(folder) / name)
    return path


def click_frame(page, x: float, y: float, shift: bool = False) -> None:
    """Click at pixel (x, y) of the frame shown, and wait for the prompt's result."""
    box = page.locator("#view").bounding_box()
    scale = box["width"] / page.evaluate("document.getElementById('view').width")
    before = page.evaluate("window.sam2rt.results")
    if shift:
        page.keyboard.down("Shift")
    page.mouse.click(box["x"] + x * scale, box["y"] + y * scale)
    if shift:
        page.keyboard.up("Shift")
    page.wait_for_function(f"window.sam2rt.results > {before} && window.sam2rt.objects.size > 0", timeout=30_000)


def assert_mask_drawn(page) -> None:
    pixels = page.evaluate(CHECK_PIXELS)
    assert pixels["objects"] == [1]
    assert pixels["inside"] > 100, pixels  # the mask has area
    # The object's colour over it, but where its id is drawn on top: on a small mask the id's label is
    # more than 3% of it, so what is not tinted must then fit in the label's box (the app's font size).
    label_side = 3 * max(12, round(pixels["height"] / 30))
    if pixels["tinted"] < 0.97 * pixels["inside"]:
        assert max(pixels["untintedSize"]) <= label_side, pixels
    assert pixels["untouched"] >= 0.99 * pixels["outside"], pixels  # the rest is the frame


def track_click_correct_remove_export(page, tmp_path: Path, screenshot: str) -> dict:
    page.wait_for_function("window.sam2rt.results >= 2", timeout=60_000)
    click_frame(page, 250, 150)
    page.wait_for_function("window.sam2rt.shown.objects.length === 1", timeout=30_000)
    page.wait_for_timeout(300)
    assert_mask_drawn(page)
    keep_screenshot(page, tmp_path, screenshot)
    assert page.locator("#objects li").count() == 1
    click_frame(page, 40, 30, shift=True)  # a correction: background point on the selected object
    assert page.locator("#objects li.selected").get_attribute("data-id") == "1"
    page.click("#objects li button.remove")
    page.wait_for_function("window.sam2rt.objects.size === 0 && window.sam2rt.shown.objects.length === 0")
    assert page.locator("#objects li").count() == 0
    with page.expect_download() as download:
        page.click("#export-coco")
    return json.loads(Path(download.value.path()).read_text())


def check_coco(coco: dict) -> None:
    from pycocotools import mask as mask_utils

    assert coco["annotations"], "nothing was exported"
    assert {a["object_id"] for a in coco["annotations"]} == {1}
    frames = {image["id"]: image for image in coco["images"]}
    for annotation in coco["annotations"]:
        image = frames[annotation["image_id"]]
        mask = mask_utils.decode(annotation["segmentation"])
        assert mask.shape == (image["height"], image["width"]) == FRAME_SIZE
        assert mask.sum() == annotation["area"] > 0


@pytest.fixture(scope="module")
def browser(clips):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        args = BROWSER_ARGS + [f"--use-file-for-fake-video-capture={clips[0]}"]
        launched = playwright.chromium.launch(executable_path=str(CHROMIUM), args=args)
        yield launched
        launched.close()


def new_page(browser):
    # The app's CSP forbids eval; Playwright evaluates the test's own checks with it.
    return browser.new_page(viewport={"width": 1280, "height": 640}, accept_downloads=True, bypass_csp=True)


def test_webcam_click_correct_remove_export(browser, server, tmp_path):
    page = new_page(browser)
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.goto(f"{server.base}/")
    page.click("#webcam-btn")
    check_coco(track_click_correct_remove_export(page, tmp_path, "serve.png"))
    assert "frames/s" in page.locator("#stat-fps").inner_text()
    assert not errors, errors
    page.close()


def test_uploaded_video_click_correct_remove_export(browser, server, clips, tmp_path):
    page = new_page(browser)
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.goto(f"{server.base}/")
    page.wait_for_function("window.sam2rt.session !== null")
    page.set_input_files("#upload-input", str(clips[1]))
    check_coco(track_click_correct_remove_export(page, tmp_path, "serve-upload.png"))
    assert not errors, errors
    page.close()


# The text box (SAM 3)

TEXT_PHRASE = "cup"
# Per object of the shown result: its pixels, those tinted with its colour (or its outline's), and the pixels of no
# object left as the frame is; and the names the page gives the objects.
CHECK_TEXT_PIXELS = """() => {
  const shown = window.sam2rt.shown, view = document.getElementById("view");
  const { width, height } = view;
  const drawn = view.getContext("2d").getImageData(0, 0, width, height).data;
  const raw = document.createElement("canvas"); raw.width = width; raw.height = height;
  raw.getContext("2d").drawImage(shown.bitmap, 0, 0);
  const frame = raw.getContext("2d").getImageData(0, 0, width, height).data;
  const near = (a, b, tolerance) => Math.abs(a - b) <= tolerance;
  const result = { objects: shown.objects.map((o) => [o.id, o.label]), inside: 0, tinted: 0, outside: 0, untouched: 0 };
  for (let i = 0; i < width * height; i++) {
    const obj = shown.objects.find((o) => o.mask[i]);
    if (obj) {
      const colour = objectColor(obj.id);
      result.inside += 1;
      const fill = [0, 1, 2].every((c) => near(drawn[4 * i + c], frame[4 * i + c] * 0.498 + colour[c] * 0.502, 3));
      if (fill || [0, 1, 2].every((c) => near(drawn[4 * i + c], colour[c], 1))) result.tinted += 1;
    } else {
      result.outside += 1;
      if ([0, 1, 2].every((c) => near(drawn[4 * i + c], frame[4 * i + c], 1))) result.untouched += 1;
    }
  }
  result.names = [...document.querySelectorAll("#objects li .name")].map((e) => e.textContent);
  return result;
}"""


@pytest.fixture(scope="module")
def text_server(tmp_path_factory):
    """The single-process server with SAM 3 beside SAM 2 (`sam2rt serve --sam3`)."""
    from test_serve_text import small_concept_models

    concepts = small_concept_models(tmp_path_factory.mktemp("vocab"))
    engine = default_engine(load_test_model(tmp_path_factory.mktemp("serve-model")))
    with running_asgi(create_app(engine, ServerConfig(), concepts)) as running:
        yield running


def test_webcam_text_box_finds_and_draws_the_instances(browser, text_server, tmp_path):
    page = new_page(browser)
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.goto(f"{text_server.base}/")
    page.click("#webcam-btn")
    page.wait_for_function("window.sam2rt.results >= 2", timeout=60_000)
    page.fill("#text-input", f"  {TEXT_PHRASE} ")
    page.click("#text-btn")
    page.wait_for_function(
        f"window.sam2rt.phrase === {TEXT_PHRASE!r} && window.sam2rt.shown.objects.length > 0 "
        "&& window.sam2rt.shown.objects.every((o) => o.label)",
        timeout=30_000,
    )
    page.wait_for_timeout(300)
    pixels = page.evaluate(CHECK_TEXT_PIXELS)
    keep_screenshot(page, tmp_path, "serve-text.png")
    assert pixels["objects"] and all(label == TEXT_PHRASE for _, label in pixels["objects"]), pixels["objects"]
    assert pixels["inside"] > 100, pixels  # masks with area, tinted in their colours (but under their names)
    assert pixels["tinted"] >= 0.9 * pixels["inside"], pixels
    assert pixels["untouched"] >= 0.95 * pixels["outside"], pixels  # the rest is the frame (but the names)
    assert pixels["names"] and all(name.startswith(f"{TEXT_PHRASE} ") for name in pixels["names"]), pixels["names"]
    assert TEXT_PHRASE in page.locator("#text-shown").inner_text()

    # clicks are refused while the phrase is tracked; Clear goes back to clicking
    box = page.locator("#view").bounding_box()
    page.mouse.click(box["x"] + 20, box["y"] + 20)
    assert "clear the phrase to click" in page.locator("#status").inner_text()
    page.click("#text-clear")
    page.wait_for_function("window.sam2rt.phrase === null", timeout=30_000)
    page.wait_for_function("window.sam2rt.results > 0 && window.sam2rt.shown.objects.length === 0", timeout=30_000)
    assert page.locator("#text-shown").inner_text() == ""
    assert not errors, errors
    page.close()


def test_text_box_on_a_server_without_sam3_says_how_to_start_it(browser, clips, tmp_path_factory):
    engine = default_engine(load_test_model(tmp_path_factory.mktemp("serve-model")))
    with running_server(engine, ServerConfig()) as server:
        page = new_page(browser)
        page.goto(f"{server.base}/")
        page.wait_for_function("window.sam2rt.session !== null")
        page.fill("#text-input", TEXT_PHRASE)
        page.click("#text-btn")
        page.wait_for_function("document.getElementById('status').textContent.includes('no SAM 3 model')")
        assert "sam2rt serve --sam3" in page.locator("#status").inner_text()
        assert page.locator("#text-input").get_attribute("placeholder") == "needs sam2rt serve --sam3"
        page.close()

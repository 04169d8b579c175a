"""laser.viewer: the picture of a camera, and the viewer in a real browser (Debian's headless Chromium)."""

import os
import shutil
import socket
import time

import numpy as np
import pytest
import torch
from PIL import Image

from laser.query import SceneQuery
from laser.viewer import OPENCV_FROM_OPENGL, Viewer, c2w_of

CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class Camera:
    def __init__(self, wxyz, position):
        self.wxyz, self.position = wxyz, position


def test_a_viser_camera_maps_to_our_pose_and_renders_the_view(trained_run):
    import viser.transforms as vtf

    query = SceneQuery(trained_run(), device="cpu", cache=False)
    view = query.views()[0]
    pose = query.scene.c2w[view]
    rotation = pose[:, :3].double().numpy() @ OPENCV_FROM_OPENGL
    assert torch.allclose(c2w_of(Camera(vtf.SO3.from_matrix(rotation).wxyz, pose[:, 3].numpy())), pose, atol=1e-5)

    viewer = Viewer(query, port=free_port(), height=query.scene.height)
    try:
        scene = query.scene
        fov = 2 * np.arctan(scene.height / (2 * scene.fy))
        picture = viewer.picture(pose, scene.width / scene.height, fov, "RGB", [], 0.5)
        expected = np.round(query.rgb(view).clamp(0, 1).numpy() * 255)
        assert picture.shape == (scene.height, scene.width, 3)
        assert np.abs(picture.astype(float) - expected).max() <= 1          # the evaluation view, re-rendered
        relevancy = viewer.picture(pose, scene.width / scene.height, fov, "Relevancy", ["red apple"], 0.5)
        changed = (relevancy != picture).any(-1)
        level = query.scores(view, ["red apple"])[..., 0]
        level = (level - level.min()) / (level.max() - level.min())
        assert np.array_equal(changed, (level >= 0.5).numpy() & changed)    # only where the phrase is relevant
        assert 0 < changed.mean() < 1
    finally:
        viewer.close()


@pytest.fixture
def browser():
    if not (CHROMIUM and CHROMEDRIVER):
        if os.environ.get("CI"):
            pytest.fail("CI installs chromium and chromium-driver (.ci/run); neither may be missing there")
        pytest.skip("Debian's chromium and chromium-driver are not installed")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    # As root, without a GPU, and without reaching out to the network this machine does not have.
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-quic",
                 "--no-first-run", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--window-size=1000,600"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    yield driver
    driver.quit()


def wait_for(condition, timeout=60.0):
    end = time.time() + timeout
    while time.time() < end:
        value = condition()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError("timed out")


def canvas_picture(driver, path, size):
    """The 3D canvas as the browser shows it, resampled to the rendered picture's ``size`` (w, h): viser stretches
    the background image over the canvas."""
    canvas = max(driver.find_elements("tag name", "canvas"), key=lambda c: c.size["width"] * c.size["height"])
    canvas.screenshot(str(path))
    return np.asarray(Image.open(path).convert("RGB").resize(size, Image.BILINEAR)).astype(float)


def control(driver, label):
    """The visible input of the panel row labelled ``label`` (a slider's is its number box)."""
    row = f"//label[text()='{label}']/ancestor::div[contains(@class, 'Flex-root')][1]//input"
    return next(e for e in driver.find_elements("xpath", row) if e.is_displayed())


def test_a_phrase_typed_in_the_browser_changes_the_picture_where_the_scene_puts_it(trained_run, browser, tmp_path):
    from selenium.webdriver.common.keys import Keys

    query = SceneQuery(trained_run(), device="cpu", cache=False)
    viewer = Viewer(query, port=free_port(), height=48)
    try:
        browser.get(f"http://127.0.0.1:{viewer.port}/")
        wait_for(lambda: viewer.frames)
        # A canvas of the scene's shape: the starting camera then sees what the field was trained on (a wider one
        # sees past the field's box, where the relevancy is that of empty rays).
        canvas = max(browser.find_elements("tag name", "canvas"), key=lambda c: c.size["width"] * c.size["height"])
        window = browser.get_window_size()
        wanted = round(canvas.size["width"] * query.scene.height / query.scene.width)
        browser.set_window_size(window["width"], window["height"] + wanted - canvas.size["height"])
        time.sleep(2.0)                                  # the browser's camera settles, its frame reaches the canvas
        (first,) = viewer.frames.values()
        assert first.mode == "RGB"
        size = first.picture.shape[1], first.picture.shape[0]
        before = canvas_picture(browser, tmp_path / "before.png", size)

        box = control(browser, "Phrases")
        box.send_keys("red apple", Keys.ENTER)
        wait_for(lambda: viewer.phrase_box.value == "red apple")
        threshold = control(browser, "Threshold")
        threshold.send_keys(Keys.CONTROL, "a")
        threshold.send_keys("0.8", Keys.ENTER)
        wait_for(lambda: abs(viewer.threshold.value - 0.8) < 1e-9)
        control(browser, "Show").click()
        wait_for(lambda: [o for o in browser.find_elements("css selector", "[role=option]")
                          if o.text == "Relevancy"])[0].click()
        shown = wait_for(lambda: next((f for f in viewer.frames.values()
                                       if f.mode == "Relevancy" and f.phrases == ["red apple"]), None))
        time.sleep(1.0)
        after = canvas_picture(browser, tmp_path / "after.png", size)
    finally:
        viewer.close()

    assert all(torch.equal(a, b) if isinstance(a, torch.Tensor) else a == b
               for a, b in zip(shown.camera, first.camera))               # the camera did not move
    expected = (shown.picture != first.picture).any(-1)                # where the viewer painted the relevancy
    seen = np.abs(after - before).max(-1) > 40
    # The panel floats over the right of the canvas and a notice over its top left: compare the left part below.
    region = (slice(size[1] // 3, None), slice(0, size[0] // 2))
    seen, expected = seen[region], expected[region]
    assert 0.02 < expected.mean() < 0.8                                   # a part of the view, not all of it
    iou = (seen & expected).sum() / (seen | expected).sum()
    assert iou > 0.6, iou

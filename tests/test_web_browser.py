"""End to end in a real browser: headless Chromium (Debian's chromium + chromium-driver) driven by
Selenium against the bundled model: the example button, an upload shown unedited, a drag across
the disc with live previews (>= 5 per second) and the full edit on release, before/after, the face
picker on a two-face photo, an error that clears the stale result, labels that never collide.

Screenshots are written to test-artifacts/ (web_desktop.png, web_phone.png, web_faces.png,
web_error.png). A missing browser is a failure, not a skip: CI installs it with
.ci/install-browser.sh."""
from __future__ import annotations

import contextlib
import itertools
import shutil
import threading
import time
from pathlib import Path

import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
PORTRAITS = DATA / "london-portraits" / "images"
ARTIFACTS = ROOT / "test-artifacts"
CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
INSTALL = "run .ci/install-browser.sh (apt-get install -y chromium chromium-driver)"


@pytest.fixture(scope="module")
def server():
    from affectedit import web
    from affectedit.editor import Editor

    server = web.make_server(Editor.from_pretrained(), "127.0.0.1", 0, quiet=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server
    server.shutdown()
    server.server_close()


@contextlib.contextmanager
def chromium(profile: Path):
    """Headless Chromium under Selenium; a missing browser fails the test (it is not skipped)."""
    for binary in (CHROMIUM, CHROMEDRIVER):
        if not Path(binary).is_file() and not shutil.which(Path(binary).name):
            pytest.fail(f"{binary} is not installed: the browser test needs Chromium and chromedriver; {INSTALL}",
                        pytrace=False)
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        pytest.fail("selenium is not installed; pip install -e '.[dev]'", pytrace=False)

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM if Path(CHROMIUM).is_file() else shutil.which("chromium")
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", "--window-size=1280,1000", "--force-device-scale-factor=1",
                 f"--user-data-dir={profile}"):
        options.add_argument(flag)
    # Both paths given explicitly, so Selenium Manager never tries to download a driver.
    service = Service(CHROMEDRIVER if Path(CHROMEDRIVER).is_file() else shutil.which("chromedriver"))
    try:
        driver = webdriver.Chrome(service=service, options=options)
    except Exception as e:  # noqa: BLE001 - say what to do, whatever the driver's complaint
        pytest.fail(f"could not start headless Chromium ({type(e).__name__}: {str(e).strip()[:500]}); {INSTALL}",
                    pytrace=False)
    try:
        driver.set_page_load_timeout(60)
        yield driver
    finally:
        driver.quit()


def wait_for(driver, condition, what: str, timeout: float = 60.0):
    """Poll ``condition(driver)`` until truthy; on timeout fail with the page's status lines."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition(driver)
        if value:
            return value
        time.sleep(0.05)
    status = driver.execute_script("return document.body.dataset.state + ': ' + document.getElementById('status').textContent"
                                   " + ' | ' + document.getElementById('upload-error').textContent")
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}; page says {status!r}")


def page_state(driver) -> str:
    return driver.execute_script("return document.body.dataset.state")


def js(driver, expression: str):
    return driver.execute_script(f"return {expression};")


def after_image(driver):
    """The edited image's natural size and src once shown, else None."""
    return driver.execute_script(
        "const img = document.getElementById('after');"
        "return !img.hidden && img.complete && img.naturalWidth > 0 ? [img.naturalWidth, img.naturalHeight, img.src] : null;")


def disc_radius(driver):
    disc = driver.find_element("id", "disc")
    return disc, disc.size["width"] * (0.5 - 0.17 / 2 - 0.02)  # app.js: size * (0.5 - MARGIN / 2 - 0.02)


def readout(driver) -> tuple[float, float]:
    words = driver.find_element("id", "readout").text.replace("\u2212", "-").split()
    return float(words[1]), float(words[4])


def upload(driver, path: Path) -> dict:
    before = js(driver, "window.affectedit.state.generation")
    driver.find_element("id", "file").send_keys(str(path))
    wait_for(driver, lambda d: page_state(d) == "loaded" and js(d, "window.affectedit.state.generation") > before,
             f"the upload of {path.name}")
    return js(driver, "window.affectedit.state.photo")


def check_labels(driver) -> None:
    """Every drawn emotion word: inside the canvas, overlapping no other word; the basic ones drawn."""
    placed = driver.execute_script("return labels.map(l => ({word: l.word, box: l.box}));")
    size = js(driver, "document.getElementById('disc').width")
    words = {p["word"] for p in placed}
    basic = {"neutral", "happy", "sad", "angry", "afraid", "surprised", "disgusted", "excited", "calm",
             "relaxed", "bored", "tired", "delighted", "content"}
    assert basic <= words, f"missing labels: {basic - words}"
    for p in placed:
        b = p["box"]
        assert b["x"] >= 0 and b["y"] >= 0 and b["x"] + b["w"] <= size and b["y"] + b["h"] <= size, p
    for p, q in itertools.combinations(placed, 2):
        a, b = p["box"], q["box"]
        apart = a["x"] + a["w"] <= b["x"] or b["x"] + b["w"] <= a["x"] or a["y"] + a["h"] <= b["y"] or b["y"] + b["h"] <= a["y"]
        assert apart, f"labels {p['word']!r} and {q['word']!r} overlap"
    return len(placed)


def two_face_photo(path: Path) -> Path:
    a = Image.open(sorted((PORTRAITS / "neutral_front").glob("*.jpg"))[1]).convert("RGB").resize((420, 420), Image.LANCZOS)
    b = Image.open(sorted((PORTRAITS / "smiling_front").glob("*.jpg"))[2]).convert("RGB").resize((380, 380), Image.LANCZOS)
    photo = Image.new("RGB", (840, 440), (205, 205, 200))
    photo.paste(a, (0, 10))
    photo.paste(b, (450, 40))
    photo.save(path, quality=92)
    return path


@pytest.mark.slow
def test_live_dial_in_chromium(server, tmp_path):
    with chromium(tmp_path / "chromium-profile") as browser:
        check_page(server, browser, tmp_path)


def check_page(server, browser, tmp_path):
    from selenium.webdriver.common.action_chains import ActionChains

    ARTIFACTS.mkdir(exist_ok=True)
    browser.get(server.url)
    wait_for(browser, lambda d: page_state(d) == "ready", "the page to load /api/info")
    n_labels = check_labels(browser)

    # The example portrait: uploaded and shown unedited (no edit runs on upload).
    browser.find_element("id", "example").click()
    wait_for(browser, lambda d: page_state(d) == "loaded", "the example portrait")
    assert browser.find_element("id", "before").is_displayed()
    assert after_image(browser) is None and not browser.find_element("id", "download").is_displayed()

    photo = sorted((PORTRAITS / "neutral_front").glob("*.jpg"))[0]
    size = Image.open(photo).size
    info = upload(browser, photo)
    assert (info["width"], info["height"]) == size and len(info["faces"]) == 1
    assert after_image(browser) is None, "the upload was edited"

    # Drag across the disc for ~3 s: previews must keep up at >= 5 per second.
    disc, r = disc_radius(browser)
    previews0 = js(browser, "window.affectedit.stats.previews")
    chain = ActionChains(browser, duration=0).move_to_element_with_offset(disc, round(-0.8 * r), round(0.2 * r)).click_and_hold()
    steps = 60
    for k in range(steps):  # a sweep from unpleasant to pleasant and up to excited
        t = (k + 1) / steps
        v, a = -0.8 + 1.6 * t, 0.2 + 0.5 * t * (1 - t) * 4 * 0.8
        prev_t = k / steps
        pv, pa = -0.8 + 1.6 * prev_t, 0.2 + 0.5 * prev_t * (1 - prev_t) * 4 * 0.8
        chain.move_by_offset(round((v - pv) * r), round(-(a - pa) * r)).pause(0.05)
    t0 = time.perf_counter()
    chain.perform()
    drag_s = time.perf_counter() - t0
    time.sleep(0.3)
    shown = js(browser, "window.affectedit.stats.previewTimes")
    previews = js(browser, "window.affectedit.stats.previews") - previews0
    span = (shown[-1] - shown[previews0]) / 1000 if previews > 1 else drag_s
    fps = (previews - 1) / span if previews > 1 else 0.0
    ActionChains(browser, duration=0).release().perform()
    print(f"\ndrag: {drag_s:.2f} s, {previews} previews shown, {fps:.1f} previews/s")
    assert previews / drag_s >= 5 and fps >= 5, f"{previews} previews in {drag_s:.2f} s ({fps:.1f}/s)"
    # The full-resolution edit follows the release.
    wait_for(browser, lambda d: page_state(d) == "done", "the full edit after the drag")
    full = after_image(browser)
    assert tuple(full[:2]) == size
    v, a = readout(browser)
    assert v > 0.5, (v, a)
    link = browser.find_element("id", "download")
    assert link.is_displayed() and link.get_attribute("href").startswith("blob:") and link.get_attribute("download").endswith(".jpg")

    # Strength slider: previews on input, a full edit on change.
    browser.execute_script("const s = document.getElementById('strength'); s.value = '1.5';"
                           "s.dispatchEvent(new Event('input')); s.dispatchEvent(new Event('change'));")
    wait_for(browser, lambda d: page_state(d) == "done" and "strength 1.50" in d.find_element("id", "status").text,
             "the edit at strength 1.5")

    # Before/after: the compare slider clips the edit; holding the button shows the original.
    browser.execute_script("const c = document.getElementById('compare'); c.value = '50'; c.dispatchEvent(new Event('input'));")
    assert "inset(0px 0px 0px 50%)" in js(browser, "getComputedStyle(document.getElementById('after')).clipPath")
    assert browser.find_element("id", "divider").is_displayed()
    shot = ARTIFACTS / "web_desktop.png"
    assert browser.save_screenshot(str(shot))
    browser.execute_script("const c = document.getElementById('compare'); c.value = '0'; c.dispatchEvent(new Event('input'));")
    hold = browser.find_element("id", "hold")
    ActionChains(browser, duration=0).click_and_hold(hold).perform()
    assert js(browser, "getComputedStyle(document.getElementById('after')).visibility") == "hidden"
    ActionChains(browser, duration=0).release().perform()
    assert js(browser, "getComputedStyle(document.getElementById('after')).visibility") == "visible"

    # Phone width: one column, the photo above the disc, nothing wider than the screen.
    browser.set_window_size(390, 844)
    time.sleep(0.5)
    layout = browser.execute_script(
        "const r = (id) => document.getElementById(id).getBoundingClientRect();"
        "return {viewer: r('viewer'), disc: r('disc'), width: document.documentElement.clientWidth,"
        " scroll: document.documentElement.scrollWidth};")
    assert layout["scroll"] <= layout["width"] + 1, layout
    assert layout["viewer"]["bottom"] <= layout["disc"]["top"] + 1 and layout["disc"]["right"] <= layout["width"] + 1, layout
    check_labels(browser)
    # Scrolled to the dial, the photo stays in view above it (sticky): both visible while dragging.
    browser.execute_script("document.getElementById('disc').scrollIntoView({block: 'end'});")
    time.sleep(0.3)
    seen = browser.execute_script(
        "const r = (id) => document.getElementById(id).getBoundingClientRect();"
        "return {stage: r('stage'), disc: r('disc'), height: window.innerHeight};")
    assert seen["stage"]["top"] >= 0 and seen["stage"]["bottom"] <= seen["disc"]["top"] + 1, seen
    assert seen["disc"]["bottom"] <= seen["height"] + 1, seen
    browser.save_screenshot(str(ARTIFACTS / "web_phone.png"))
    browser.set_window_size(1280, 1000)
    time.sleep(0.3)

    browser.execute_script("const s = document.getElementById('strength'); s.value = '1';"
                           "s.dispatchEvent(new Event('input'));")
    # Face picker on a two-face photo: boxes and buttons; picking face 2 edits only it.
    group = upload(browser, two_face_photo(tmp_path / "two.jpg"))
    assert len(group["faces"]) == 2
    assert browser.find_element("id", "face-picker").is_displayed()
    assert len(browser.find_elements("css selector", ".face-box")) == 2
    disc, r = disc_radius(browser)
    ActionChains(browser, duration=0).move_to_element_with_offset(disc, round(0.75 * r), round(-0.45 * r)).click().perform()
    wait_for(browser, lambda d: page_state(d) == "done", "the edit of both faces")
    browser.find_element("css selector", "#face-buttons button[data-face='1']").click()
    wait_for(browser, lambda d: page_state(d) == "done" and "(face 2)" in d.find_element("id", "status").text, "the edit of face 2")
    assert js(browser, "window.affectedit.state.face") == 1
    assert "selected" in browser.find_elements("css selector", ".face-box")[1].get_attribute("class")
    browser.save_screenshot(str(ARTIFACTS / "web_faces.png"))

    # A file that is not a photo: the message beside the input, and the stale result is gone.
    bogus = tmp_path / "notes.jpg"
    bogus.write_text("these are not pixels\n" * 20)
    browser.find_element("id", "file").send_keys(str(bogus))
    wait_for(browser, lambda d: page_state(d) == "error", "the error message")
    error = browser.find_element("id", "upload-error")
    assert error.is_displayed() and "not an image" in error.text
    assert after_image(browser) is None
    assert not browser.find_element("id", "download").is_displayed()
    assert not browser.find_element("id", "stage").is_displayed()
    browser.save_screenshot(str(ARTIFACTS / "web_error.png"))
    # A good photo again clears the error.
    upload(browser, photo)
    assert not browser.find_element("id", "upload-error").is_displayed()
    print(f"screenshots: {ARTIFACTS}/web_desktop.png web_phone.png web_faces.png web_error.png; {n_labels} labels on the disc")


def test_mp4_from_animate_plays_in_chromium(tiny_checkpoint, tmp_path):
    """`affectedit animate -o x.mp4` (H.264, yuv420p through imageio-ffmpeg) decodes in Chromium's
    <video>: it reaches "enough data", has the frame size and plays to its end."""
    pytest.importorskip("imageio_ffmpeg")  # the video extra
    from affectedit.cli import main

    video = tmp_path / "a.mp4"
    photo = sorted((Path(__file__).resolve().parents[2] / "shared" / "data" / "london-portraits" / "images" / "neutral_front").glob("*.jpg"))[0]
    assert main(["animate", str(photo), "--path", "0,0 happy sad", "--fps", "8", "--size", "128",
                 "-o", str(video), "--checkpoint", str(tiny_checkpoint)]) == 0
    page = tmp_path / "video.html"
    page.write_text('<!doctype html><video id="v" muted src="a.mp4"></video>')
    with chromium(tmp_path / "profile") as driver:
        driver.get(page.as_uri())
        wait_for(driver, lambda d: d.execute_script("return document.getElementById('v').readyState") >= 4,
                 "the MP4 to load in <video>", timeout=30)
        size = driver.execute_script("const v = document.getElementById('v'); return [v.videoWidth, v.videoHeight, v.duration]")
        assert size[:2] == [128, 128] and size[2] > 0
        driver.execute_script("document.getElementById('v').play()")
        wait_for(driver, lambda d: d.execute_script("return document.getElementById('v').ended"), "the MP4 to play to its end", timeout=30)
        assert driver.execute_script("return document.getElementById('v').error") is None

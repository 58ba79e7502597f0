"""End to end in a real browser: headless Chromium (Debian's chromium + chromium-driver) driven by
Selenium uploads a portrait, clicks and drags on the disc, and waits for the edited image.

The screenshot is written to test-artifacts/web_edit.png. A missing browser is a failure, not a
skip: CI installs it with .ci/install-browser.sh."""
from __future__ import annotations

import contextlib
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
def server(tiny_checkpoint):
    from affectedit import web
    from affectedit.editor import Editor

    server = web.make_server(Editor.from_checkpoint(tiny_checkpoint), "127.0.0.1", 0, quiet=True)
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
    """Poll ``condition(driver)`` until truthy; on timeout fail with the page's status line."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition(driver)
        if value:
            return value
        time.sleep(0.05)
    status = driver.execute_script("return document.body.dataset.state + ': ' + document.getElementById('status').textContent")
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}; page says {status!r}")


def page_state(driver) -> str:
    return driver.execute_script("return document.body.dataset.state")


def result_loaded(driver):
    """The result <img>'s natural size once it has loaded a new image (state 'done')."""
    return driver.execute_script(
        "const img = document.getElementById('result');"
        "return document.body.dataset.state === 'done' && img.complete && img.naturalWidth > 0"
        " ? [img.naturalWidth, img.naturalHeight, img.src] : null;"
    )


def click_disc(driver, valence: float, arousal: float):
    """Click the disc where (valence, arousal) is drawn (same geometry as app.js)."""
    from selenium.webdriver.common.action_chains import ActionChains

    disc = driver.find_element("id", "disc")
    r = disc.size["width"] * (0.5 - 0.17 / 2 - 0.02)  # app.js: size * (0.5 - MARGIN / 2 - 0.02)
    ActionChains(driver).move_to_element_with_offset(disc, round(valence * r), round(-arousal * r)).click().perform()
    return disc, r


def readout(driver) -> tuple[float, float]:
    text = driver.find_element("id", "readout").text.replace("\u2212", "-")
    words = text.split()
    return float(words[1]), float(words[4])


@pytest.mark.slow
def test_upload_pick_point_and_get_edit(server, tmp_path):
    with chromium(tmp_path / "chromium-profile") as browser:
        check_page(server, browser, tmp_path)


def check_page(server, browser, tmp_path):
    from selenium.webdriver.common.action_chains import ActionChains

    photo = sorted((PORTRAITS / "neutral_front").glob("*.jpg"))[0]
    size = Image.open(photo).size
    t0 = time.perf_counter()
    browser.get(server.url)
    wait_for(browser, lambda d: page_state(d) == "ready", "the page to load /api/info")
    labels = browser.execute_script("return Object.keys(state.emotions).length")
    assert labels > 8, "emotion words were not loaded"

    # Upload: the page edits right away at the current point (neutral).
    browser.find_element("id", "file").send_keys(str(photo))
    first = wait_for(browser, result_loaded, "the first edit")
    assert tuple(first[:2]) == size

    # Click a point on the disc: pleasant and a little excited.
    disc, r = click_disc(browser, 0.6, 0.3)
    v, a = readout(browser)
    assert abs(v - 0.6) < 0.05 and abs(a - 0.3) < 0.05, (v, a)
    second = wait_for(browser, lambda d: (res := result_loaded(d)) and res[2] != first[2] and res, "the edit after a click")
    assert tuple(second[:2]) == size

    # Drag the point to unpleasant and calm; the edit follows the release.
    (ActionChains(browser).move_to_element_with_offset(disc, round(0.6 * r), round(-0.3 * r)).click_and_hold()
     .move_by_offset(round(-0.6 * r), round(0.3 * r)).move_by_offset(round(-0.5 * r), round(0.4 * r)).release().perform())
    v, a = readout(browser)
    assert v < -0.3 and a < -0.3, (v, a)
    third = wait_for(browser, lambda d: (res := result_loaded(d)) and res[2] != second[2] and res, "the edit after a drag")
    assert tuple(third[:2]) == size
    elapsed = time.perf_counter() - t0

    link = browser.find_element("id", "download")
    assert link.is_displayed() and link.get_attribute("href").startswith("blob:")
    assert link.get_attribute("download").endswith(".jpg")

    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "web_edit.png"
    assert browser.save_screenshot(str(shot))
    print(f"\nscreenshot: {shot} (upload + 3 edits in the browser: {elapsed:.1f} s)")

    # A file that is not a photo: the server's 400 message is shown on the page.
    bogus = tmp_path / "notes.jpg"
    bogus.write_text("these are not pixels\n" * 20)
    browser.find_element("id", "file").send_keys(str(bogus))
    wait_for(browser, lambda d: page_state(d) == "error", "the error message")
    status = browser.find_element("id", "status")
    assert "not an image" in status.text and status.is_displayed()

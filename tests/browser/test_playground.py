"""The playground in a real headless Chromium (Debian's `chromium` + `chromium-driver`, driven by Selenium),
against a real `unclip serve` (embedded Redis, one worker, the shipped checkpoint) with API keys on; two
tests run `unclip gateway` instead: one with a full queue, one with the service tests' fake worker.

Each test starts from a fresh load of the page (the gallery survives in sessionStorage, as it does for a
user who reloads) and ends with two checks of everything the browser did: the console holds no error
but those the test provoked on purpose, and no request left the gateway's origin.
Screenshots go to pytest's tmp_path, and also to $UNCLIP_SCREENSHOTS when set.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from itertools import pairwise
from pathlib import Path

import httpx
import pytest
from PIL import Image, ImageDraw
from selenium import webdriver
from selenium.common.exceptions import TimeoutException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support.ui import WebDriverWait

from service.redis_server import free_port
from service.settings import Settings
from tests.service.fake_worker import fake_worker

REPO = Path(__file__).resolve().parents[2]
API_KEY = "playground-test-key"
MAX_PROMPT_CHARS = 60
PROMPT = "a red circle on a white background"
WAIT_SECONDS = 180  # generous: CI machines are shared (a 64 px job takes about a second on an idle CPU)
DESKTOP = (1280, 900)
PHONE = (390, 844)


def chromium_paths() -> tuple[str, str]:
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if not (browser and driver):
        pytest.fail(
            "the browser tests need Chromium and its driver: run ./setup.sh as root, or "
            "`apt-get install chromium chromium-driver` (Debian/Ubuntu)",
            pytrace=False,
        )
    return browser, driver


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`unclip serve` on a free port, keys on and a small prompt limit; yields the playground's URL as
    the command prints it."""
    log_path = tmp_path_factory.mktemp("serve") / "serve.log"
    env = {name: value for name, value in os.environ.items() if not name.startswith("UNCLIP_")}
    env |= {
        "UNCLIP_API_KEYS": API_KEY,
        "UNCLIP_MAX_PROMPT_CHARS": str(MAX_PROMPT_CHARS),
        "UNCLIP_WORKER_METRICS_PORT": str(probe_port := free_port()),
    }
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "service.cli", "serve", "--port", str(free_port())],
            cwd=REPO, env=env, stdout=log, stderr=log,
        )
    try:
        deadline = time.monotonic() + 60
        url = None
        while url is None:
            assert process.poll() is None, f"unclip serve exited: {log_path.read_text()[-3000:]}"
            assert time.monotonic() < deadline, f"no playground address: {log_path.read_text()[-3000:]}"
            lines = log_path.read_text().splitlines()
            url = next((line.split(": ", 1)[1] for line in lines if line.startswith("playground: ")), None)
            time.sleep(0.1)
        # The worker's probe answers once the checkpoint is loaded: from then on, job times are job times.
        deadline = time.monotonic() + WAIT_SECONDS
        while not ready(f"http://127.0.0.1:{probe_port}/", "healthz"):
            assert process.poll() is None, f"unclip serve exited: {log_path.read_text()[-3000:]}"
            assert time.monotonic() < deadline, f"the worker did not start: {log_path.read_text()[-3000:]}"
            time.sleep(0.2)
        yield url
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        print(log_path.read_text()[-30000:])  # shown when a test fails


@pytest.fixture(scope="module")
def driver() -> Iterator[webdriver.Chrome]:
    browser, driver_path = chromium_paths()
    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                     "--no-first-run", "--disable-extensions", "--disable-background-networking",
                     "--disable-component-update", f"--window-size={DESKTOP[0]},{DESKTOP[1]}"):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
    chrome = webdriver.Chrome(service=Service(driver_path), options=options)
    try:
        set_viewport(chrome, *DESKTOP)
        yield chrome
    finally:
        chrome.quit()


def set_viewport(chrome: webdriver.Chrome, width: int, height: int, mobile: bool = False) -> None:
    chrome.execute_cdp_cmd(
        "Emulation.setDeviceMetricsOverride",
        {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": mobile},
    )


class Page:
    """The playground in the browser, with the few moves the tests make."""

    def __init__(self, chrome: webdriver.Chrome, url: str):
        self.chrome = chrome
        self.url = url
        self.expected_console_errors: list[str] = []  # substrings of errors a test provokes

    def wait(self, condition, timeout: float = WAIT_SECONDS, message: str = ""):
        try:
            return WebDriverWait(self.chrome, timeout, poll_frequency=0.05).until(lambda _: condition())
        except TimeoutException:
            state = self.chrome.execute_script(
                "return ['#job-state', '#job-stage', '#job-steps', '#form-error']"
                ".map(s => document.querySelector(s).textContent).join(' | ')")
            raise AssertionError(f"waited {timeout} s for {message}; the page shows: {state}") from None

    def find(self, css: str) -> WebElement:
        return self.chrome.find_element(By.CSS_SELECTOR, css)

    def find_all(self, css: str) -> list[WebElement]:
        return self.chrome.find_elements(By.CSS_SELECTOR, css)

    def text(self, css: str) -> str:
        return self.find(css).text

    def choose_op(self, op: str) -> None:
        self.find(f'.ops label:has(input[value="{op}"])').click()
        assert self.find(f'.ops input[value="{op}"]').is_selected()

    def choose_size(self, size: int) -> None:
        self.find(f'.segmented label:has(input[value="{size}"])').click()

    def type_into(self, css: str, text: str) -> None:
        field = self.find(css)
        field.clear()
        field.send_keys(text)

    def gallery(self) -> list[dict[str, str]]:
        return self.chrome.execute_script(
            "return [...document.querySelectorAll('#gallery .card')].map(card => ({"
            "op: card.querySelector('.op').textContent, meta: card.querySelector('.card-meta').textContent,"
            "src: card.querySelector('.card-image').src}))"
        )

    def fast_sampling(self, prior_steps: int = 3, decoder_steps: int = 5) -> None:
        """Few steps, through the advanced section: the tests are about the page, not the pictures."""
        if not self.find("#advanced").get_attribute("open"):
            self.find("#advanced summary").click()
        self.type_into("#prior_steps", str(prior_steps))
        self.type_into("#decoder_steps", str(decoder_steps))

    def submit_and_wait(self) -> dict[str, str]:
        """Submits the form and waits for the job's pictures in the gallery; returns the newest."""
        before = len(self.gallery())
        self.find("#submit").click()
        self.wait(lambda: self.text("#job-state") in ("succeeded", "failed", "cancelled")
                  and self.find("#submit").is_enabled(), message="the job to end")
        assert self.text("#job-state") == "succeeded", self.text("#form-error")
        self.wait(lambda: len(self.gallery()) > before, message="the gallery to grow")
        return self.gallery()[0]

    def ensure_gallery_image(self) -> None:
        if not self.gallery():
            self.choose_op("generate")
            self.choose_size(64)
            self.type_into("#prompt", PROMPT)
            self.fast_sampling()
            self.submit_and_wait()

    def record_progress(self) -> None:
        """From now on, window.progressSeen lists the bar's (value, max) after every change."""
        self.chrome.execute_script(
            "window.progressSeen = [];"
            "const bar = document.querySelector('#progress-bar');"
            "new MutationObserver(() => window.progressSeen.push([bar.value, bar.max]))"
            "  .observe(bar, {attributes: true, attributeFilter: ['value', 'max']});"
        )

    def screenshot(self, name: str, folder: Path) -> list[Path]:
        """The viewport as `playground-NAME.png` and the whole page as `playground-NAME-full.png`."""
        folder.mkdir(parents=True, exist_ok=True)
        viewport, full = folder / f"playground-{name}.png", folder / f"playground-{name}-full.png"
        assert self.chrome.save_screenshot(str(viewport))
        width, height = self.chrome.execute_script(
            "return [innerWidth, document.documentElement.scrollHeight]")
        shot = self.chrome.execute_cdp_cmd("Page.captureScreenshot", {
            "format": "png", "captureBeyondViewport": True,
            "clip": {"x": 0, "y": 0, "width": width, "height": height, "scale": 1}})
        full.write_bytes(base64.b64decode(shot["data"]))
        if os.environ.get("UNCLIP_SCREENSHOTS"):
            target = Path(os.environ["UNCLIP_SCREENSHOTS"])
            target.mkdir(parents=True, exist_ok=True)
            for path in (viewport, full):
                shutil.copy(path, target / path.name)
        return [viewport, full]


@pytest.fixture
def page(driver: webdriver.Chrome, server: str) -> Iterator[Page]:
    """The page freshly loaded with the API key in place; after the test, the console and the
    network are checked."""
    current = open_page(driver, server, API_KEY)
    yield current
    check_console(driver, current.expected_console_errors)
    check_same_origin(driver, server)


def open_page(driver: webdriver.Chrome, url: str, key: str) -> Page:
    set_viewport(driver, *DESKTOP)
    driver.get(url)
    driver.execute_script("localStorage.setItem('unclip.apiKey', arguments[0])", key)
    driver.get(url)
    page = Page(driver, url)
    page.wait(lambda: page.find("#api-key").get_attribute("value") == key, 10)
    driver.get_log("browser")  # start the checks from this load
    driver.get_log("performance")
    return page


def check_console(chrome: webdriver.Chrome, expected: list[str]) -> None:
    errors = [entry for entry in chrome.get_log("browser") if entry["level"] in ("SEVERE", "ERROR")]
    unexpected = [e for e in errors if not any(part in e["message"] for part in expected)]
    assert unexpected == [], f"console errors: {unexpected}"
    for part in expected:  # what the test provoked did happen (so the filter above is not vacuous)
        assert any(part in e["message"] for e in errors), f"expected a console error with {part!r}"


def check_same_origin(chrome: webdriver.Chrome, url: str) -> None:
    origin = url.rstrip("/")
    own = (f"{origin}/", "data:", "blob:")
    requested = [
        message["params"]["request"]["url"]
        for entry in chrome.get_log("performance")
        if (message := json.loads(entry["message"])["message"])["method"] == "Network.requestWillBeSent"
    ]
    timed = chrome.execute_script("return performance.getEntriesByType('resource').map(e => e.name)")
    assert requested, "the performance log saw no request at all"
    elsewhere = [address for address in requested + timed if not address.startswith(own)]
    assert elsewhere == [], f"requests that left {origin}: {elsewhere}"


def test_generate_shows_live_progress_and_the_picture(page: Page) -> None:
    page.choose_op("generate")
    page.choose_size(64)
    page.type_into("#prompt", PROMPT)
    page.type_into("#seed", "7")
    page.fast_sampling(prior_steps=5, decoder_steps=10)
    page.record_progress()
    newest = page.submit_and_wait()

    seen = page.chrome.execute_script("return window.progressSeen")
    totals = {total for _, total in seen}
    assert max(totals) > 1, seen  # the bar took the stage's step count as its max
    rising = [(a, b) for (a, total_a), (b, total_b) in pairwise(seen)
              if total_a == total_b and b > a]
    assert rising, f"the bar never moved up within a stage: {seen}"
    assert newest["op"] == "generate" and newest["meta"].startswith("seed 7 · 64 px")
    image = page.find("#result-grid img")
    assert page.chrome.execute_script("return arguments[0].naturalWidth", image) == 64
    assert page.find("#job-progress").is_displayed() is False


def test_the_shipped_model_says_what_it_drew_for_a_prompt_in_other_words(page: Page) -> None:
    page.choose_op("generate")
    page.choose_size(64)
    page.type_into("#prompt", "Draw a circle that is red, on white!")
    page.fast_sampling(prior_steps=5, decoder_steps=10)
    page.submit_and_wait()
    assert page.text("#result-revised") == "Drawn as: a red circle on a white background"


def test_inpaint_with_a_mask_painted_on_the_canvas(page: Page) -> None:
    page.ensure_gallery_image()
    page.choose_op("inpaint")
    page.find("#gallery .card .use").click()
    canvas = page.find(".mask-canvas")
    page.wait(canvas.is_displayed, 10, "the image under the mask canvas")
    width, height = canvas.size["width"], canvas.size["height"]
    (ActionChains(page.chrome)
     .move_to_element_with_offset(canvas, -width // 4, -height // 4).click_and_hold()
     .move_by_offset(width // 2, 0).move_by_offset(0, height // 2).release().perform())
    painted = page.chrome.execute_script(
        "const c = arguments[0]; const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;"
        "let n = 0; for (let i = 3; i < d.length; i += 4) n += d[i] > 0; return [n, c.width * c.height,"
        "d[3]];", canvas)
    count, total, corner_alpha = painted
    assert 0 < count < total and corner_alpha == 0, painted  # a stroke, not the whole picture
    page.type_into("#prompt", "a green square")
    page.choose_size(64)
    page.fast_sampling()
    newest = page.submit_and_wait()  # an empty mask would have been refused before and by the server
    assert newest["op"] == "inpaint"
    assert '"mask": "<image/png' in page.chrome.execute_script(
        "return document.querySelector('#request-body').textContent")


def test_variation_from_a_gallery_item(page: Page) -> None:
    page.ensure_gallery_image()
    page.choose_op("generate")
    page.find("#gallery .card .use").click()  # from generate, "use as input" switches to variation
    assert page.find('.ops input[value="variation"]').is_selected()
    page.wait(lambda: page.find('[data-slot="image"] .preview').is_displayed(), 10, "the input preview")
    page.choose_size(64)
    page.fast_sampling()
    newest = page.submit_and_wait()
    assert newest["op"] == "variation" and "64 px" in newest["meta"]


def test_interpolate_shows_a_strip_that_plays_as_a_loop(page: Page) -> None:
    page.ensure_gallery_image()
    page.choose_op("interpolate")
    uses = page.find_all("#gallery .card .use")
    uses[0].click()
    page.wait(lambda: page.find('[data-slot="image_a"] .preview').is_displayed(), 10, "image A")
    uses[-1].click()
    page.wait(lambda: page.find('[data-slot="image_b"] .preview').is_displayed(), 10, "image B")
    page.type_into("#frames", "3")
    page.choose_size(64)
    page.fast_sampling()
    page.submit_and_wait()
    assert len(page.find_all("#strip button")) == 3
    caption = page.text("#player-caption")
    page.find("#player-toggle").click()
    page.wait(lambda: page.text("#player-caption") != caption, 5, "the loop to move on")
    assert page.text("#player-toggle") == "Pause"
    page.find("#player-toggle").click()
    assert page.text("#player-toggle") == "Play loop"


def test_text_diff_of_a_picked_file(page: Page, tmp_path: Path) -> None:
    picture = Image.new("RGB", (64, 64), "white")
    ImageDraw.Draw(picture).ellipse((16, 16, 48, 48), fill="red")
    picture.save(tmp_path / "red-circle.png")
    page.choose_op("text_diff")
    page.find("#image").send_keys(str(tmp_path / "red-circle.png"))  # the drop zone's file input
    page.wait(lambda: page.find('[data-slot="image"] .preview').is_displayed(), 10, "the picked file")
    page.type_into("#prompt", "a blue circle on a white background")
    page.type_into("#source_caption", "a red circle on a white background")
    page.type_into("#frames", "2")
    page.type_into("#text_diff_strength", "0.5")
    page.choose_size(64)
    page.fast_sampling()
    page.submit_and_wait()
    assert len(page.find_all("#strip button")) == 2
    shown = page.chrome.execute_script("return document.querySelector('#request-body').textContent")
    method, body = shown.split("\n", 1)
    sent = json.loads(body)
    assert method == "POST /v1/jobs" and sent["op"] == "text_diff" and sent["image"].startswith("<image/png")
    assert (sent["frames"], sent["text_diff_strength"], sent["size"]) == (2, 0.5, 64)
    assert sent["source_caption"] == "a red circle on a white background"


def test_cancel_a_running_job(page: Page) -> None:
    page.choose_op("generate")
    page.choose_size(1024)
    page.type_into("#prompt", PROMPT)
    before = len(page.gallery())
    page.find("#submit").click()
    page.wait(lambda: page.text("#job-state") == "running" and page.find("#cancel").is_enabled(),
              message="the job to run")
    page.find("#cancel").click()
    page.wait(lambda: page.text("#job-state") == "cancelled", message="the job to be cancelled")
    assert not page.find("#job-progress").is_displayed()
    page.wait(lambda: page.find("#submit").is_enabled(), 10, "the form to be ready again")
    assert len(page.gallery()) == before


def test_an_over_long_prompt_gets_the_servers_422_next_to_the_field(page: Page) -> None:
    page.choose_op("generate")
    page.type_into("#prompt", "a red circle " * 6)  # 78 characters > UNCLIP_MAX_PROMPT_CHARS
    page.expected_console_errors.append("422")  # Chrome logs every failed fetch
    page.find("#prompt").send_keys(Keys.ENTER)  # Enter submits
    error = page.wait(lambda: page.text("#prompt-error"), 20, "the prompt's error")
    assert f"at most {MAX_PROMPT_CHARS}" in error
    assert page.find("#prompt").get_attribute("aria-invalid") == "true"
    assert page.chrome.switch_to.active_element == page.find("#prompt")
    assert page.text("#form-error") == ""


def test_without_the_key_the_401_shows_at_the_key_field(page: Page) -> None:
    page.find("#api-key").send_keys(Keys.CONTROL, "a", Keys.DELETE)
    page.choose_op("generate")
    page.type_into("#prompt", PROMPT)
    page.expected_console_errors.append("401")
    page.find("#submit").click()
    error = page.wait(lambda: page.text("#api-key-error"), 20, "the key's error")
    assert "API key" in error
    assert page.chrome.execute_script("return localStorage.getItem('unclip.apiKey')") == ""


@pytest.fixture
def full_queue(redis_url: str, tmp_path: Path) -> Iterator[str]:
    """`unclip gateway` alone, whose queue counts as full from the first job (backlog limit 0)."""
    with unclip_gateway(redis_url, tmp_path, UNCLIP_BACKLOG_LIMIT="0") as url:
        yield url


@pytest.fixture
def fake_served(redis_url: str, tmp_path: Path) -> Iterator[str]:
    """`unclip gateway` with the service tests' fake worker in this process (tests/service/fake_worker.py):
    its jobs end in milliseconds, and it draws a prompt that is not lowercase with single spaces as
    rewritten into that form (the job's revised_prompt)."""
    with unclip_gateway(redis_url, tmp_path) as url, fake_worker(Settings(redis_url=redis_url)):
        yield url


@contextmanager
def unclip_gateway(redis_url: str, tmp_path: Path, **settings: str) -> Iterator[str]:
    """`unclip gateway` on a free port with these UNCLIP_* settings, no API keys; yields its URL."""
    port = free_port()
    env = {name: value for name, value in os.environ.items() if not name.startswith("UNCLIP_")}
    env |= {"UNCLIP_LOG_LEVEL": "warning", **settings}
    with open(tmp_path / "gateway.log", "wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "service.cli", "gateway", "--port", str(port), "--redis-url", redis_url],
            cwd=REPO, env=env, stdout=log, stderr=log,
        )
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + 30
        while not ready(url):
            log = (tmp_path / "gateway.log").read_text()
            assert process.poll() is None and time.monotonic() < deadline, log
            time.sleep(0.1)
        yield url
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=30)


def ready(url: str, probe: str = "readyz") -> bool:
    try:
        return httpx.get(f"{url}{probe}", timeout=1).status_code == 200
    except httpx.TransportError:
        return False


def test_a_full_queue_gets_a_429_and_the_button_waits_out_retry_after(
    driver: webdriver.Chrome, full_queue: str
) -> None:
    page = open_page(driver, full_queue, "")
    page.type_into("#prompt", PROMPT)
    page.find("#submit").click()
    message = page.wait(lambda: page.text("#form-error"), 20, "the 429 message")
    assert "queue is full" in message and "ready in" in message
    assert not page.find("#submit").is_enabled()
    page.wait(lambda: page.text("#form-error") != message, 5, "the countdown to tick")
    check_console(driver, ["429"])
    check_same_origin(driver, full_queue)


def test_a_rewritten_prompt_shows_under_the_picture_as_text(
    driver: webdriver.Chrome, fake_served: str
) -> None:
    page = open_page(driver, fake_served, "")
    page.choose_op("generate")
    page.choose_size(64)
    page.type_into("#prompt", "A <b>Red</b>  Circle")
    page.submit_and_wait()
    revised = page.find("#result-revised")
    assert revised.is_displayed() and revised.text == "Drawn as: a <b>red</b> circle"
    assert page.find_all("#result-revised *") == []  # text content, not markup
    page.type_into("#prompt", "a red circle")  # drawn as given: its job has no revised_prompt
    page.submit_and_wait()
    shown = page.chrome.execute_script(
        "const p = document.querySelector('#result-revised'); return [p.hidden, p.textContent]")
    assert shown == [True, ""]
    check_console(driver, [])
    check_same_origin(driver, fake_served)


def test_screenshots_at_desktop_and_phone_width(page: Page, tmp_path: Path) -> None:
    # A picture worth looking at (the checkpoint's own sampling settings), then an inpaint with a stroke.
    page.find("#gallery-clear").click()
    assert page.gallery() == [] and page.find("#gallery-empty").is_displayed()
    page.choose_op("generate")
    page.choose_size(64)
    page.type_into("#prompt", "Draw a circle that is red, on white!")  # shows what the model drew
    page.type_into("#seed", "3")
    page.submit_and_wait()
    page.choose_op("inpaint")
    page.find("#gallery .card .use").click()
    canvas = page.find(".mask-canvas")
    page.wait(canvas.is_displayed, 10, "the inpaint input")
    (ActionChains(page.chrome).move_to_element_with_offset(canvas, -canvas.size["width"] // 4, 0)
     .click_and_hold().move_by_offset(canvas.size["width"] // 3, 0).release().perform())
    page.type_into("#prompt", "a green square")
    page.chrome.execute_script("window.scrollTo(0, 0)")
    desktop = page.screenshot("desktop", tmp_path)

    set_viewport(page.chrome, *PHONE, mobile=True)
    page.chrome.execute_script("window.scrollTo(0, 0)")
    # Nothing may stick out sideways at phone width.
    page.wait(lambda: page.chrome.execute_script("return window.innerWidth") == PHONE[0], 5, "phone width")
    overflow = page.chrome.execute_script(
        "return document.documentElement.scrollWidth - document.documentElement.clientWidth")
    assert overflow <= 0, f"the page is {overflow} px wider than the phone"
    phone = page.screenshot("phone", tmp_path)
    assert all(path.stat().st_size > 0 for path in desktop + phone)


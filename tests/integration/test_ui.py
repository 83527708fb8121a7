"""The demo page in a real browser (Debian's Chromium through Selenium) against
the running app: draw, drop, pick a model, see errors."""

from __future__ import annotations

import base64
import mimetypes
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from ray import serve
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.actions import interaction
from selenium.webdriver.common.actions.action_builder import ActionBuilder
from selenium.webdriver.common.actions.pointer_input import PointerInput
from selenium.webdriver.common.by import By
from selenium.webdriver.support.select import Select
from selenium.webdriver.support.ui import WebDriverWait

from deployments.app import build_app
from tests.common import ROOT, SAMPLES, sample_label

# Debian's chromium and chromium-driver (`make test` installs them). Giving the
# driver's path keeps Selenium Manager from looking for (and downloading) one.
CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                  "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--window-size=900,840"]
ARTIFACTS = ROOT / "tests" / "artifacts"  # screenshots (gitignored)
PICKER_APP = "ui-picker"


@pytest.fixture(scope="module")
def picker_url(base_url: str) -> Iterator[str]:
    """An app at its own route prefix serving two image models and a tensor model."""
    digits = {"path": str(ROOT / "models" / "digits"), "input": "image",
              "labels_path": str(ROOT / "models" / "digits" / "labels.txt")}
    serve.run(build_app({"models": [
        {"name": "digits", **digits}, {"name": "digits_copy", **digits},
        {"name": "digits_linear", "path": str(ROOT / "models" / "digits_linear")},
    ]}), name=PICKER_APP, route_prefix=f"/{PICKER_APP}")
    yield f"{base_url}/{PICKER_APP}"
    serve.delete(PICKER_APP, _blocking=False)  # (goes while the next module starts)


@pytest.fixture(scope="module")
def browser(picker_url: str, tmp_path_factory: pytest.TempPathFactory
            ) -> Iterator[webdriver.Chrome]:
    """Chromium, opened after every app of the module is deployed: HAProxy reloads
    on a deploy, and a connection Chromium keeps alive across it meets the old
    routes once (a 404 for the new app)."""
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in [*CHROMIUM_FLAGS, f"--user-data-dir={tmp_path_factory.mktemp('chromium')}"]:
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
    yield driver
    driver.quit()


def open_page(browser: webdriver.Chrome, url: str) -> None:
    """Load the page and wait until it has listed the models."""
    browser.get(url)
    WebDriverWait(browser, 30).until(
        lambda d: d.find_element(By.ID, "meta").text != "Loading the models…")
    assert browser.find_element(By.ID, "error").text == ""


def answer(browser: webdriver.Chrome, act: Callable[[], object]) -> tuple[list[str], str, str]:
    """Do ``act`` (draw, drop, choose a file), then, once no request is in
    flight: the labels shown (best first), the line naming the model and
    latency, and the error shown ("" if none)."""
    browser.execute_script('document.getElementById("result").removeAttribute("aria-busy")')
    act()
    WebDriverWait(browser, 30).until(
        lambda d: d.find_element(By.ID, "result").get_attribute("aria-busy") == "false")
    labels = [e.text for e in browser.find_elements(By.CSS_SELECTOR, "#classes .label")]
    error = browser.find_element(By.ID, "error")
    return (labels, browser.find_element(By.ID, "meta").text,
            error.text if error.is_displayed() else "")


def draw(browser: webdriver.Chrome, points: list[tuple[int, int]], kind: str) -> None:
    """One stroke through ``points`` (CSS pixels from the pad's centre)."""
    pad = browser.find_element(By.ID, "pad")
    actions = ActionBuilder(browser, mouse=PointerInput(kind, kind), duration=10)
    actions.pointer_action.move_to(pad, *points[0]).pointer_down()
    for x, y in points[1:]:
        actions.pointer_action.move_to(pad, x, y)
    actions.pointer_action.pointer_up()
    actions.perform()


DROP = """
const transfer = new DataTransfer();
for (const [name, type, data] of arguments[0]) {
  const bytes = Uint8Array.from(atob(data), (c) => c.charCodeAt(0));
  transfer.items.add(new File([bytes], name, {type}));
  document.getElementById("drop").dispatchEvent(
    new DragEvent("drop", {dataTransfer: transfer, bubbles: true, cancelable: true}));
  transfer.items.clear();
}
"""


def drop(browser: webdriver.Chrome, *paths: Path) -> None:
    """Drop each file on the drop zone in turn, within one task of the page."""
    files = [[p.name, mimetypes.guess_type(p.name)[0], base64.b64encode(p.read_bytes()).decode()]
             for p in paths]
    browser.execute_script(DROP, files)


def test_the_page_and_its_files_are_served(client: httpx.Client):
    redirect = client.get("/ui")
    assert redirect.status_code in (307, 308)
    assert redirect.headers["location"].endswith("/ui/")
    page = client.get("/ui/")
    assert page.headers["content-type"].startswith("text/html")
    assert '<canvas id="pad"' in page.text
    for path, kind in [("/ui/app.js", "javascript"), ("/ui/style.css", "text/css")]:
        response = client.get(path)
        assert response.status_code == 200 and kind in response.headers["content-type"]
    missing = client.get("/ui/nothing.js")
    assert missing.status_code == 404 and "error" in missing.json()


@pytest.mark.parametrize("kind", [interaction.POINTER_MOUSE, interaction.POINTER_TOUCH])
def test_a_drawn_one_is_read_as_one(browser: webdriver.Chrome, base_url: str, kind: str):
    open_page(browser, f"{base_url}/ui/")
    assert not browser.find_element(By.ID, "model-row").is_displayed()  # one image model
    stroke = [(0, y) for y in range(-100, 101, 20)]
    labels, meta, error = answer(browser, lambda: draw(browser, stroke, kind))
    assert (labels[0], error) == ("1", "")
    assert len(labels) == 5
    assert meta.startswith("digits v1 answered in ") and meta.endswith(" ms (round trip)")
    ARTIFACTS.mkdir(exist_ok=True)
    browser.save_screenshot(ARTIFACTS / f"ui-drawn-{kind}.png")


@pytest.mark.parametrize("sample", SAMPLES, ids=lambda p: p.name)
def test_a_dropped_sample_is_read_as_its_label(browser: webdriver.Chrome, base_url: str,
                                                 sample: Path):
    open_page(browser, f"{base_url}/ui/")
    labels, _, error = answer(browser, lambda: drop(browser, sample))
    assert (labels[0], error) == (sample_label(sample), "")


def test_a_newer_image_supersedes_the_one_in_flight(browser: webdriver.Chrome, base_url: str):
    open_page(browser, f"{base_url}/ui/")
    browser.execute_script("""
        window.signals = [];
        const fetch = window.fetch;
        window.fetch = (url, init) => {
            window.signals.push(init.signal);
            return fetch(url, init);
        };
    """)
    first, second = SAMPLES[3], SAMPLES[8]
    labels, _, error = answer(browser, lambda: drop(browser, first, second))
    assert (labels[0], error) == (sample_label(second), "")
    assert browser.execute_script("return window.signals.map((s) => s.aborted)") == [True, False]


def test_a_rejected_file_shows_the_server_error(browser: webdriver.Chrome, base_url: str,
                                                tmp_path: Path):
    open_page(browser, f"{base_url}/ui/")
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(b"not a PNG at all")
    chooser = browser.find_element(By.ID, "file")  # the file picker
    labels, meta, error = answer(browser, lambda: chooser.send_keys(str(corrupt)))
    assert labels == [] and meta == "No prediction."
    assert error.startswith("The server answered 400: cannot decode image")
    labels, _, error = answer(browser, lambda: chooser.send_keys(str(SAMPLES[0])))
    assert (labels[0], error) == (sample_label(SAMPLES[0]), "")


def test_the_picker_offers_image_models_under_a_route_prefix(browser: webdriver.Chrome,
                                                              picker_url: str):
    open_page(browser, f"{picker_url}/ui/")
    picker = Select(browser.find_element(By.ID, "model"))
    assert picker.first_selected_option.text == "digits"
    assert [o.text for o in picker.options] == ["digits", "digits_copy"]  # no tensor model
    picker.select_by_visible_text("digits_copy")
    labels, meta, error = answer(browser, lambda: drop(browser, SAMPLES[7]))
    assert (labels[0], error) == (sample_label(SAMPLES[7]), "")
    assert meta.startswith("digits_copy v1 ")

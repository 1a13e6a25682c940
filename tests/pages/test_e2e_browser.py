"""End to end in a real headless Chromium: `streamlit run streamlit_app.py`, train a tiny run
from the browser, watch the live chart gain points, grade an upload, screenshot every page; the
Train fields (Enter queues nothing, values survive a page switch) and links to a run. Every test
also checks that the app asked nothing of any other machine and that its log has no fragment
warnings.

Screenshots go to artifacts/test-screens/. Needs Debian's chromium (/usr/bin/chromium) and
Playwright's Python package; outside CI the test skips when the browser is missing.
"""

from __future__ import annotations

import os
import re
import time
import zipfile
from pathlib import Path

import pytest

from appserver import start_app, stop_app
from app_fixtures import write_four, write_run
from conftest import fundus_image, jpeg_bytes, train_easy_run, write_easy_npz, write_tiny_npz
from retino_core.training import launch
from retino_core import runs

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = Path("/usr/bin/chromium")
SCREENS = ROOT / "artifacts" / "test-screens"
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
# Generous bounds: the machine may be busy with other training jobs.
SERVER_START_S, TRAIN_S, UI_S = 90, 300, 60
CLICK_TRIES = 4  # a deselecting second click keeps the picked cell (pages/results.py: pick_cell)

if not CHROMIUM.exists() and not IN_CI:
    pytest.skip(f"{CHROMIUM} not found (apt-get install chromium); CI installs it and runs this test",
                allow_module_level=True)
if not IN_CI:
    pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install playwright)")
from playwright.sync_api import Page, expect, sync_playwright  # noqa: E402

expect.set_options(timeout=UI_S * 1000)


@pytest.fixture
def app(tmp_path: Path):
    """The app on a free localhost port over an empty runs folder; stopped with its runs after."""
    runs_dir = tmp_path / "runs"
    runs_dir.mkdir()
    log = open(tmp_path / "streamlit.log", "wb")
    server = None
    try:
        try:
            server, url = start_app(runs_dir, log, SERVER_START_S)
        except RuntimeError as err:
            pytest.fail(f"{err}: {(tmp_path / 'streamlit.log').read_text()[-2000:]}")
        yield url, runs_dir
    finally:
        for run in runs.list_runs(runs_dir):  # trainers live in their own sessions: stop them by name
            if run.state in runs.ACTIVE_STATES:
                launch.stop(run.run_id, runs_dir)
        if server is not None:
            stop_app(server)
        log.close()


@pytest.fixture
def page(app, tmp_path: Path):
    """A browser tab on the app. After the test: nothing was requested from another machine (the
    favicon and fonts are the app's own), and the server logged no fragment warning."""
    url, _ = app
    elsewhere: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        tab = browser.new_page(viewport={"width": 1400, "height": 1000})
        tab.set_default_timeout(UI_S * 1000)
        tab.on("request", lambda r: elsewhere.append(r.url) if not r.url.startswith((url, "data:", "blob:")) else None)
        yield tab
        browser.close()
    assert elsewhere == [], f"the app asked other machines for: {elsewhere}"
    log = (tmp_path / "streamlit.log").read_text(errors="replace")
    assert "fragment rerun" not in log, log[-3000:]


def open_page(page: Page, url: str, heading: str) -> None:
    page.goto(url)
    expect(page.get_by_role("heading", name=heading, exact=False).first).to_be_visible()


def screenshot(page: Page, name: str) -> None:
    """The whole page: Streamlit scrolls inside its own container, so grow the viewport first."""
    SCREENS.mkdir(parents=True, exist_ok=True)
    page.wait_for_timeout(1000)  # let charts finish drawing
    height = page.evaluate("document.querySelector('[data-testid=stMainBlockContainer]').scrollHeight")
    page.set_viewport_size({"width": 1400, "height": min(int(height) + 150, 8000)})
    page.wait_for_timeout(500)
    page.screenshot(path=str(SCREENS / f"{name}.png"))
    page.set_viewport_size({"width": 1400, "height": 1000})


def chart_points(page: Page) -> int:
    return page.evaluate("document.querySelectorAll('.stPlotlyChart .scatterlayer .point').length")


def test_train_watch_classify_in_a_browser(app, page: Page, tmp_path: Path) -> None:
    url, runs_dir = app
    # A deep link as the first request of a fresh server still gets the app's navigation.
    open_page(page, f"{url}/live", "Live")
    expect(page.get_by_text("Nothing to watch yet")).to_be_visible()
    expect(page.get_by_role("link", name="Overview", exact=True)).to_be_visible()  # legacy mode: "overview"
    open_page(page, url, "retino")
    expect(page.get_by_text("not trained on this dataset yet").first).to_be_visible()
    screenshot(page, "overview-empty")

    # Start a tiny run from the Train form (RetinaMNIST's first images, so evaluation is quick).
    data = write_tiny_npz(tmp_path / "tiny.npz")
    open_page(page, f"{url}/train", "Train")
    page.get_by_role("textbox", name="Dataset").fill(str(data))
    for label, value in (("Epochs", "2"), ("Batch size", "8"), ("Image size (px)", "32")):
        page.get_by_role("spinbutton", name=label, exact=True).fill(value)
    page.get_by_text("More", exact=True).click()
    page.get_by_role("spinbutton", name="Max steps per epoch (0 = all)").fill("4")
    page.get_by_role("button", name="Start", exact=True).click()
    expect(page.get_by_text("Queued ").first).to_be_visible()
    (run,) = runs.list_runs(runs_dir)
    assert run.config["epochs"] == 2 and run.config["image_size"] == 32 and run.config["data"] == str(data)
    screenshot(page, "train")

    # The Live page polls the run folder: its charts gain points while the run trains.
    open_page(page, f"{url}/live", "Live")
    seen, captured = [chart_points(page)], False
    deadline = time.monotonic() + TRAIN_S
    while runs.read_status(run.path)["state"] in runs.ACTIVE_STATES and time.monotonic() < deadline:
        page.wait_for_timeout(500)
        seen.append(chart_points(page))
        if seen[-1] > seen[0] and not captured:
            screenshot(page, "live-training")
            captured = True
    status = runs.read_status(run.path)
    assert status["state"] == "done", f"the run ended {status['state']}: {status.get('error')}"
    expect(page.locator(".stPlotlyChart")).to_have_count(2)  # loss, and accuracy once an epoch ended
    page.wait_for_timeout(2500)
    seen.append(chart_points(page))
    assert max(seen) > min(seen), f"the live charts never gained points: {seen}"
    screenshot(page, "live")

    # Clicking a square of the confusion matrix picks that cell for the gallery.
    open_page(page, f"{url}/results", "Results")
    expect(page.get_by_text("Per grade")).to_be_visible()
    squares = page.locator(".stPlotlyChart .scatterlayer .point")
    expect(squares).to_have_count(25)
    # plotly hit-tests clicks on its drag layer (force=True), and only once its handlers are wired: a click
    # that lands while the figure is still settling is dropped by plotly itself, so click again.
    picked = page.get_by_text(re.compile("true Severe, predicted Mild", re.IGNORECASE))
    for _ in range(CLICK_TRIES):
        squares.nth(3 * 5 + 1).click(force=True)  # true Severe, predicted Mild
        try:
            expect(picked).to_be_visible(timeout=10_000)
            break
        except AssertionError:
            continue
    expect(picked).to_be_visible()
    screenshot(page, "results")

    # Grade an upload (and refuse a file that is not an image, without crashing).
    photo, bogus = tmp_path / "eye.jpg", tmp_path / "notes.png"
    photo.write_bytes(jpeg_bytes(fundus_image(96)))
    bogus.write_text("not an image")
    open_page(page, f"{url}/classify", "Classify")
    page.locator("input[type=file]").set_input_files([str(photo), str(bogus)])
    # Two epochs of four steps learn nothing: a banner says so before anything that looks like a grade.
    expect(page.get_by_text("None of the chosen models is usable").first).to_be_visible()
    expect(page.get_by_text("not a recognised image file").first).to_be_visible()
    expect(page.get_by_text("predicted grade")).to_have_count(0)
    screenshot(page, "classify-not-usable")

    # A run that learned its (easy) task grades a photo like its training ones, with Grad-CAM.
    train_easy_run(runs_dir, write_easy_npz(tmp_path / "easy.npz"))
    eye = tmp_path / "eye28.png"
    fundus_image(28, seed=3, grade=2, easy=True).save(eye)
    open_page(page, f"{url}/classify", "Classify")
    page.locator("input[type=file]").set_input_files([str(eye)])
    expect(page.get_by_text("predicted grade").first).to_be_visible()
    expect(page.get_by_text("2 · Moderate").first).to_be_visible()
    expect(page.get_by_text("Grad-CAM for 2 · Moderate").first).to_be_visible()
    screenshot(page, "classify")
    # The model that learned nothing, added with the switch on: it never votes, never speaks in
    # large type and never "agrees"; what it would say is shown apart, as not a grade.
    page.get_by_text("Show what models that are not usable would say").click()
    page.locator("[data-testid=stMultiSelect]").first.click()
    page.get_by_role("option", name=re.compile("no better than guessing")).click()
    page.keyboard.press("Escape")
    expect(page.get_by_text("Left out of the ensemble and shown greyed").first).to_be_visible()
    expect(page.get_by_text("What the models that are not usable would say (not a grade)")).to_be_visible()
    expect(page.get_by_text(re.compile("Ensemble of 2 models"))).to_have_count(0)
    expect(page.get_by_text("The models agree")).to_have_count(0)
    screenshot(page, "classify-with-a-model-that-is-not-usable")

    open_page(page, f"{url}/compare", "Compare")
    expect(page.get_by_text("Test accuracy", exact=True)).to_be_visible()
    with page.expect_download() as download:
        page.get_by_role("button", name="Download the comparison report").click()
    with zipfile.ZipFile(download.value.path()) as report:
        assert {"report.md", "report.html", "comparison.csv"} <= set(report.namelist())
    screenshot(page, "compare")
    open_page(page, url, "retino")
    expect(page.get_by_text("test accuracy").first).to_be_visible()
    screenshot(page, "overview")

    # Delete the newest run (picked by default): the confirmation is for that run, it closes
    # after deleting, the toast stays up while the table redraws, and the other run stays.
    newest, other = runs.list_runs(runs_dir)[:2]
    open_page(page, f"{url}/train", "Train")
    page.get_by_role("button", name="Delete", exact=True).click()
    expect(page.get_by_text(f"Delete {newest.run_id}")).to_be_visible()
    page.get_by_role("button", name="Delete for good").click()
    expect(page.get_by_text(f"Deleted {newest.run_id}")).to_be_visible()
    page.wait_for_timeout(4500)  # two redraws of the run table
    expect(page.get_by_role("button", name="Delete for good")).to_have_count(0)
    assert not newest.path.exists() and other.path.exists()
    screenshot(page, "train-after-delete")


def test_the_train_fields_queue_nothing_on_enter_and_links_open_a_run(app, page: Page) -> None:
    url, runs_dir = app
    write_four(runs_dir)
    failed = write_run(runs_dir, name="broken", state="failed")
    runs.write_status(failed, "failed", error="ImageError: scans/0042.jpeg is truncated; " + "see the log; " * 8)
    (failed / "train.log").write_text("loading data\nepoch 1/3\nTraceback (most recent call last): boom\n")
    small = write_run(runs_dir, name="small")
    runs.write_json(small / "config.json", {**runs.read_json(small / "config.json"), "image_size": 32})
    before = len(runs.list_runs(runs_dir))

    # A link names a run, as the first request of a fresh server: Results opens on it, with its id,
    # its link and its whole failure reason.
    open_page(page, f"{url}/results?run={failed.name}", "Results")
    expect(page.get_by_text(failed.name).first).to_be_visible()
    expect(page.get_by_text("see the log; " * 8).first).to_be_visible()
    expect(page.locator("code").filter(has_text=f"/results?run={failed.name}").first).to_be_visible()
    expect(page.get_by_text("Traceback (most recent call last): boom").first).to_be_visible()  # open: it failed
    screenshot(page, "results-failed-run")
    # Enter in a field applies its value and queues nothing; only the buttons queue.
    open_page(page, f"{url}/train", "Train")
    epochs = page.get_by_role("spinbutton", name="Epochs", exact=True)
    epochs.fill("7")
    epochs.press("Enter")
    expect(page.get_by_text(re.compile(r"resnet18 / scratch, 7 epochs at 64 px"))).to_be_visible()
    page.get_by_role("textbox", name="Dataset").press("Enter")
    page.wait_for_timeout(3000)
    assert len(runs.list_runs(runs_dir)) == before
    expect(page.get_by_text("Press Enter to submit form")).to_have_count(0)
    # The fields keep their values through a visit to another page.
    page.get_by_role("link", name="Live", exact=True).click()
    expect(page.get_by_role("heading", name="Live").first).to_be_visible()
    page.get_by_role("link", name="Train", exact=True).click()
    expect(page.get_by_role("spinbutton", name="Epochs", exact=True)).to_have_value("7")
    assert len(runs.list_runs(runs_dir)) == before
    # The search narrows the table to the run at 32 px.
    page.get_by_text("Search runs", exact=True).click()
    page.get_by_role("textbox", name="Settings").fill("image_size=32")
    page.get_by_role("textbox", name="Settings").press("Enter")
    expect(page.get_by_text("1 of 6 runs match the search.")).to_be_visible()
    screenshot(page, "train-fields")

    open_page(page, f"{url}/results?run={small.name}", "Results")
    expect(page.get_by_text("Per grade")).to_be_visible()
    expect(page.get_by_text(small.name).first).to_be_visible()
    assert page.url.endswith(f"/results?run={small.name}")


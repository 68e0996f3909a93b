"""Headless Chromium opens the report and the running dashboard as a person would (docs/ARCHITECTURE.md, "Outputs").

Needs Debian's `chromium` and `chromium-driver` and the `selenium` package. Without them the tests skip
locally and FAIL under CI (env CI set), so a CI box that lost its browser cannot pass silently.
Screenshots are kept in pytest's tmp dir (printed with -s; pytest keeps the last three runs).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from hpo.artifacts import ARTIFACTS_ENV
from hpo.cli import main
from hpo.storage import open_storage

pytestmark = pytest.mark.browser

PAGE_TIMEOUT = 60  # seconds for a page to render on a busy 2-core CI box


def _missing() -> str | None:
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "the selenium package is not installed (pip install -e '.[dev]')"
    for tool, package in (("chromium", "chromium"), ("chromedriver", "chromium-driver")):
        if shutil.which(tool) is None:
            return f"{tool} not found (apt-get install -y {package})"
    return None


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    missing = _missing()
    if missing:
        if os.environ.get("CI"):
            pytest.fail(f"browser tests must run in CI: {missing}")
        pytest.skip(missing)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = str(shutil.which("chromium"))
    # --no-sandbox: CI runs as root, where Chromium's sandbox refuses to start.
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--window-size=1280,1000",
    ):
        opts.add_argument(arg)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})  # console messages and uncaught JS errors
    driver = webdriver.Chrome(service=Service(str(shutil.which("chromedriver"))), options=opts)
    driver.set_page_load_timeout(PAGE_TIMEOUT)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, optuna.Study, Path]:
    """3 real tiny smoke trials on a fresh SQLite file, confirmed (2 candidates, 2 seeds), and their report."""
    from hpo.run import RunOptions, run_study

    folder = tmp_path_factory.mktemp("browser")
    url = f"sqlite:///{folder}/hpo.db"
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv(ARTIFACTS_ENV, raising=False)
        run_study(
            RunOptions(study="smoke", n_trials=3, storage=url, device="cpu", confirm_top=2, confirm_seeds=2, quiet=True)
        )
    report = folder / "report.html"
    assert main(["report", "--study", "smoke", "--storage", url, "-o", str(report)]) == 0
    return url, optuna.load_study(study_name="smoke", storage=open_storage(url, heartbeat=False)), report


def _wait(driver, condition, what: str) -> None:
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.support.ui import WebDriverWait

    try:
        WebDriverWait(driver, PAGE_TIMEOUT, poll_frequency=0.25).until(lambda d: condition(d))
    except TimeoutException:
        raise AssertionError(f"timed out waiting for {what}") from None


def _severe(driver) -> list[str]:
    """Console errors since the last call (uncaught exceptions and failed loads log as SEVERE)."""
    return [e["message"] for e in driver.get_log("browser") if e["level"] == "SEVERE"]


def _screenshot(driver, path: Path) -> None:
    height = driver.execute_script("return document.documentElement.scrollHeight")
    driver.set_window_size(1280, min(int(height), 12000))
    driver.save_screenshot(str(path))
    driver.set_window_size(1280, 1000)
    print(f"screenshot: {path}")
    assert path.stat().st_size > 10_000


def test_report_plots_render_without_errors(browser, study, tmp_path: Path) -> None:
    _, _, report = study
    _severe(browser)
    browser.get(report.as_uri())
    html = report.read_text()
    n_figures = html.count('class="plotly-graph-div"')
    assert n_figures >= 10  # history, importances, parallel, 3 slices, curves, schedules, per frame, states
    script = "return document.querySelectorAll('div[id^=\"fig-\"].js-plotly-plot .main-svg').length"
    _wait(browser, lambda d: d.execute_script(script) >= n_figures, f"{n_figures} plotly figures to draw")
    empty = browser.execute_script(
        "return [...document.querySelectorAll('div[id^=\"fig-\"]')]"
        ".filter(d => !d.classList.contains('js-plotly-plot') || !d.querySelector('.main-svg')).map(d => d.id)"
    )
    assert empty == []
    # Each learning-curve trace is drawn: one SVG path per trial that reported an epoch.
    traces = browser.execute_script("return document.querySelectorAll('#fig-curves .scatterlayer .trace').length")
    assert traces == len([t for t in study[1].trials if t.intermediate_values])
    assert _severe(browser) == []
    _screenshot(browser, tmp_path / "report.png")


def test_report_shows_the_confirmation_section(browser, study) -> None:
    _, _, report = study
    browser.get(report.as_uri())
    section = browser.find_element("css selector", "#confirmation")
    assert section.is_displayed() and "confirmed: trial" in section.text and "seed noise: sd" in section.text
    rows = browser.execute_script("return [...document.querySelectorAll('#confirmation tr')].map(r => r.innerText)")
    assert "seed 1" in rows[0] and "seed 2" in rows[0] and "95% interval" in rows[0]
    assert len(rows) == 3 and sum("winner" in r for r in rows[1:]) == 1  # a header and one row per candidate
    nav = browser.execute_script("return [...document.querySelectorAll('nav a')].map(a => a.innerText)")
    assert "Confirmation over seeds" in nav


def test_dashboard_shows_the_trials_and_artifacts(browser, study, tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By
    from test_dashboard import free_port, start_dashboard, stop

    url, st, _ = study
    port = free_port()
    proc, _ = start_dashboard(url, port)
    try:
        study_id = st._storage.get_study_id_from_name("smoke")
        _severe(browser)
        browser.get(f"http://127.0.0.1:{port}/dashboard/studies/{study_id}")
        _wait(browser, lambda d: len(d.find_elements(By.CSS_SELECTOR, ".js-plotly-plot .main-svg")) > 0, "plots")
        _screenshot(browser, tmp_path / "dashboard-study.png")

        browser.get(f"http://127.0.0.1:{port}/dashboard/studies/{study_id}/trials")
        n = len(st.trials)
        _wait(browser, lambda d: f"{n} Trials" in d.find_element(By.TAG_NAME, "body").text, "the trial list")
        text = browser.find_element(By.TAG_NAME, "body").text
        for t in st.trials:
            assert f"Trial {t.number}" in text
        first = st.trials[0]  # selected by default; the first trials of a study are never pruned (n_startup)
        assert first.state == TrialState.COMPLETE
        assert f"trial-{first.number}-frames.png" in text and f"trial-{first.number}-psnr-per-frame.png" in text
        loaded = (
            "return [...document.querySelectorAll('img[src*=\"/artifacts/\"]')]"
            ".filter(i => i.complete && i.naturalWidth > 0).length"
        )
        _wait(browser, lambda d: d.execute_script(loaded) >= 2, "the trial's artifact images to load")
        assert _severe(browser) == []
        browser.execute_script("document.querySelector('img[src*=\"/artifacts/\"]').scrollIntoView()")
        _screenshot(browser, tmp_path / "dashboard-trials.png")
    finally:
        stop(proc)


def test_report_says_what_the_complete_only_plots_leave_out(browser, study) -> None:
    _, st, report = study
    browser.get(report.as_uri())
    complete = sum(t.state == TrialState.COMPLETE for t in st.trials)
    for section in ("importances", "parallel", "slices"):
        caveat = browser.find_element("css selector", f"#{section} .caveat")
        assert caveat.is_displayed() and f"These plots use the {complete} COMPLETE trial" in caveat.text


def test_dashboard_labels_the_value_with_the_metric_name(browser, study) -> None:
    from selenium.webdriver.common.by import By
    from test_dashboard import free_port, start_dashboard, stop

    url, st, _ = study
    port = free_port()
    proc, _ = start_dashboard(url, port)
    try:
        study_id = st._storage.get_study_id_from_name("smoke")
        browser.get(f"http://127.0.0.1:{port}/dashboard/studies/{study_id}")
        texts = "return [...document.querySelectorAll('.js-plotly-plot text')].map(t => t.textContent).join('|')"
        _wait(browser, lambda d: "val PSNR (dB)" in d.execute_script(texts), "the metric name on a plot axis")
        assert "Objective 0" not in browser.execute_script(texts)
        assert "Objective 0" not in browser.find_element(By.TAG_NAME, "body").text
    finally:
        stop(proc)

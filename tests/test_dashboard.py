"""The dashboard in a real headless browser (Chromium driven by Selenium): the token is
asked for once; a running job with failures shows its progress, a throughput chart, its
failed items page by page and links to its files; it ends ``completed`` with failures,
and is deleted. The download rate is drawn from each run's bytes; a job deleted behind
the page's back leaves it quietly."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Literal

import pytest

from runtime.testing import FaultServer
from tests.service_helpers import (
    BODY_SIZE,
    TOKEN,
    FileServer,
    Service,
    headless_chromium,
    write_config,
)

pytestmark = pytest.mark.slow

ARTIFACTS = Path(os.environ.get("CONVEYOR_TEST_ARTIFACTS", "test-artifacts"))
WAIT = 60.0


@pytest.fixture
def downloads(tmp_path: Path) -> Path:
    """Where the browser saves downloads."""
    folder = tmp_path / "downloads"
    folder.mkdir()
    return folder


@pytest.fixture
def browser(downloads: Path) -> Iterator[Any]:
    prefs = {
        "download.default_directory": str(downloads),
        "download.prompt_for_download": False,
        "profile.default_content_setting_values.automatic_downloads": 1,
    }
    with headless_chromium(("--window-size=1280,1500",), prefs,
                           {"goog:loggingPrefs": {"browser": "SEVERE"}}) as driver:  # fmt: skip
        yield driver


def read(driver: Any, selector: str, what: str = "e.textContent") -> Any:
    """``what`` of the element ``e`` matching ``selector`` (None when there is none)."""
    return driver.execute_script(
        f"const e = document.querySelector(arguments[0]); return e ? {what} : null;", selector
    )


def click(driver: Any, selector: str) -> None:
    """Click the element matching ``selector``, as a user would."""
    from selenium.webdriver.common.by import By

    driver.find_element(By.CSS_SELECTOR, selector).click()


def saved(folder: Path, name: str) -> Callable[[Any], bytes | Literal[False]]:
    """A wait condition: the bytes of a finished download (False while there are none)."""

    def check(_: Any) -> bytes | Literal[False]:
        path = folder / name
        partial = list(folder.glob("*.crdownload"))
        return path.read_bytes() if path.exists() and not partial else False

    return check


def shown(first: int, last: int, of: int) -> str:
    """A pager's range as the page writes it: "1-20 of 40", with an en dash."""
    return f"{first}\N{EN DASH}{last} of {of}"


def unexpected(entries: list[dict[str, Any]], job_id: str) -> list[dict[str, Any]]:
    """The browser's log ``entries`` but the 404s of the job's urls: a request on its
    way when the job was deleted is answered so (Chromium logs it, the page says
    nothing)."""
    gone = f"/v1/jobs/{job_id}"
    return [e for e in entries if not (gone in e["message"] and "status of 404" in e["message"])]


def enter_token(browser: Any, wait: Any, value: str) -> None:
    """Type ``value`` into the token form once it shows."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec

    wait.until(ec.visibility_of_element_located((By.ID, "token")))
    browser.find_element(By.ID, "token").send_keys(value)
    browser.find_element(By.ID, "token-save").click()


def test_the_dashboard_asks_for_the_token_then_says_when_it_is_refused(
    browser: Any, tmp_path: Path
) -> None:
    """The first load asks for the token (it does not say it was refused); a wrong one is
    refused, the right one kept in sessionStorage."""
    from selenium.webdriver.support.ui import WebDriverWait

    service = Service(write_config(tmp_path))
    try:
        browser.get(service.url("/"))
        wait = WebDriverWait(browser, WAIT)
        wait.until(lambda d: read(d, "#message") == "Enter the service's token.")
        enter_token(browser, wait, "not-the-token")
        wait.until(lambda d: read(d, "#message") == "The token was refused.")
        enter_token(browser, wait, TOKEN)
        wait.until(lambda d: read(d, "#connection") == "connected")
        assert read(browser, "#message") == ""
        assert read(browser, "#empty", "e.hidden") is False  # "No jobs yet."
        assert browser.execute_script("return sessionStorage.getItem('conveyor-token')") == TOKEN
    finally:
        service.stop()


def test_the_dashboard_follows_a_job_with_failures(
    browser: Any, tmp_path: Path, downloads: Path
) -> None:
    """A job of 200 items, 40 of them 404s, held at 40 files: its row shows a partial bar
    with failures, bytes and rate, updated in place; its chart shows the files/s it made;
    its failed items are listed 20 a page with URL, kind and message. Paused, resumed and
    released, it ends "completed, 40 failed" (not a clean completed); a file and the
    result download with the token; deleted, it is gone. The screenshot is taken while it
    runs."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    files, missing = FileServer(free=40), FaultServer().__enter__()
    good = files.items(160, "d")
    items = [good.pop(0) if i % 5 else {"url": missing.url(f"/status/404/{i}")} for i in range(200)]
    service = Service(write_config(tmp_path))
    try:
        job_id = service.submit(items)["job_id"]
        browser.get(service.url("/"))
        wait = WebDriverWait(browser, WAIT)
        enter_token(browser, wait, TOKEN)
        wait.until(lambda d: read(d, "#connection") == "connected")
        browser.get_log("browser")  # read: the 401 of the first load, before the token
        row = f'tr[data-job="{job_id}"]'
        wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, row)))
        element = browser.find_element(By.CSS_SELECTOR, row)

        def percent(driver: Any) -> float:
            value = read(driver, f"{row} .bar", "e.getAttribute('aria-valuenow')")
            return float(value) if value is not None else -1.0

        # Running, held by the file server, every 404 already failed.
        wait.until(lambda d: percent(d) == 40.0)
        partial = percent(browser)
        assert read(browser, f"{row} td:nth-child(4)") == "40 done, 40 failed of 200"
        assert read(browser, f"{row} td:nth-child(5)") == "82 kB"  # 40 files of 2048 bytes
        assert read(browser, f"{row} .status") == "running"

        click(browser, f"{row} button.link")  # show the job
        wait.until(lambda d: read(d, "#failed .range") == shown(1, 20, 40))
        chart = "#chart-files svg"
        wait.until(lambda d: float(read(d, chart, "e.dataset.peak") or 0) > 0)
        wait.until(lambda d: int(read(d, chart, "e.dataset.points")) >= 10)  # still drawing
        assert read(browser, f"{chart} .line", "e.getAttribute('d')").startswith("M")
        assert read(browser, "#chart-files figcaption").startswith("Files per second: ")
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        assert browser.save_screenshot(str(ARTIFACTS / "dashboard.png"))
        # Reloaded, the page shows the job again, and its chart is filled from the job's
        # past events: the burst at its start (it makes no progress now, held).
        browser.refresh()
        wait.until(lambda d: read(d, "#detail-id") == job_id)
        wait.until(lambda d: float(read(d, chart, "e.dataset.peak") or 0) > 0)
        assert read(browser, f"{row} .status") == "running"
        assert read(browser, f"{row} td:nth-child(4)") == "40 done, 40 failed of 200"
        wait.until(lambda d: read(d, "#failed .range") == shown(1, 20, 40))
        element = browser.find_element(By.CSS_SELECTOR, row)

        failed = browser.find_element(By.CSS_SELECTOR, "#failed tbody")
        first_page = failed.text
        cells = [td.text for td in failed.find_elements(By.CSS_SELECTOR, "tr:first-child td")]
        gone = missing.url("/status/404/0")
        assert cells == ["0", gone, "http_4xx", f"HTTP 404 for {gone}", "1"]  # index 0 of 200
        assert len(failed.find_elements(By.TAG_NAME, "tr")) == 20
        click(browser, "#failed .next")
        wait.until(lambda d: read(d, "#failed .range") == shown(21, 40, 40))
        assert missing.url("/status/404/195") in failed.text
        assert failed.text != first_page
        assert read(browser, "#failed .next", "e.disabled") is True
        click(browser, "#failed .prev")
        wait.until(lambda d: read(d, "#failed .range") == shown(1, 20, 40))
        assert read(browser, "#errors tbody") == "http_4xx40"

        click(browser, f'{row} button[data-verb="pause"]')
        wait.until(lambda d: read(d, f"{row} .status") == "paused")
        files.gate.set()
        click(browser, f'{row} button[data-verb="resume"]')
        wait.until(lambda d: read(d, f"{row} .status", "e.dataset.status") == "completed")
        assert percent(browser) == 100.0 > partial
        assert read(browser, f"{row} .status") == "completed, 40 failed"
        assert read(browser, f"{row} .status", "e.className") == "status status-partial"
        # Updated in place: the row found while it ran is still the row.
        assert browser.find_element(By.CSS_SELECTOR, row) == element
        hosts = browser.find_element(By.CSS_SELECTOR, "#hosts tbody").text
        assert "127.0.0.1" in hosts
        assert "object" not in hosts  # every cell is text, not a JavaScript object

        wait.until(lambda d: read(d, "#files .range") == shown(1, 20, 160))
        click(browser, "#files tbody tr:first-child a")
        body = wait.until(saved(downloads, "d0"))
        assert body == b"/f/d0".ljust(BODY_SIZE, b".")
        click(browser, "#result-link")
        result = json.loads(wait.until(saved(downloads, f"{job_id}-result.json")))
        assert result["job_id"] == job_id
        assert len(result["files"]) == 160

        click(browser, f'{row} button[data-verb="delete"]')
        wait.until(ec.alert_is_present()).accept()
        wait.until(ec.invisibility_of_element_located((By.CSS_SELECTOR, row)))
        assert read(browser, "#detail", "e.hidden") is True
        assert service.call("GET", f"/v1/jobs/{job_id}").status_code == 404
        assert unexpected(browser.get_log("browser"), job_id) == []  # no script error
        assert read(browser, "#message") == ""
    finally:
        service.stop()
        files.close()
        missing.__exit__()


def test_the_download_rate_is_drawn_from_the_bytes_each_run_downloaded(
    browser: Any, tmp_path: Path
) -> None:
    """The rate chart follows ``run.bytes`` (what the run downloaded), not ``bytes`` (the
    completed files' committed bytes, 0 here throughout); when a job resumes, its run's
    count starts again at 0: the line breaks there, with no negative or zero rate."""
    from selenium.webdriver.support.ui import WebDriverWait

    service = Service(write_config(tmp_path))
    try:
        browser.get(service.url("/"))
        wait = WebDriverWait(browser, WAIT)
        wait.until(lambda d: read(d, "#message") == "Enter the service's token.")  # idle now
        # (ts, run bytes, run elapsed): a run at 1000 B/s, a pause, a run at 500 B/s.
        events = [(1000.0, 0, 0.0), (1001.0, 1000, 1.0), (1002.0, 2000, 2.0),
                  (1003.0, 3000, 3.0), (1004.0, 0, 0.5), (1005.0, 500, 1.5),
                  (1006.0, 1000, 2.5)]  # fmt: skip
        chart = browser.execute_script(
            """
            const id = "synthetic";
            const counts = {completed: 0, failed: 0, skipped: 0, total: 1, percent: 0, bytes: 0};
            jobs.set(id, {job_id: id, status: "running", progress: {...counts}});
            selected = id;
            for (const [ts, bytes, elapsed] of arguments[0]) {
              apply(id, {type: "progress", ts, ...counts, run: {bytes, elapsed}});
            }
            drawCharts();
            const svg = document.querySelector("#chart-bytes svg");
            return {peak: svg.dataset.peak, points: svg.dataset.points,
                    line: svg.querySelector(".line").getAttribute("d"),
                    caption: document.querySelector("#chart-bytes figcaption").textContent};
            """,
            events,
        )
        assert (chart["peak"], chart["points"]) == ("1000", "5")  # 3 of the first run, 2
        assert chart["line"].count("M") == 2  # two runs, two lines
        assert chart["caption"] == "Download rate: 500 B/s now, peak 1.0 kB/s"
    finally:
        service.stop()


def test_a_job_deleted_elsewhere_leaves_the_page_quietly(browser: Any, tmp_path: Path) -> None:
    """Shown after another client deleted it, a job's 404s take it off the page — its
    row and its details — without an error message."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    files = FileServer()
    service = Service(write_config(tmp_path))
    try:
        job_id = service.submit(files.items(3, "v"))["job_id"]
        service.wait_for(job_id, "completed")
        browser.get(service.url("/"))
        wait = WebDriverWait(browser, WAIT)
        enter_token(browser, wait, TOKEN)
        row = f'tr[data-job="{job_id}"]'
        wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, row)))
        browser.get_log("browser")  # read: the 401 of the first load, before the token
        assert service.call("DELETE", f"/v1/jobs/{job_id}").status_code == 204
        browser.execute_script("select(arguments[0])", job_id)  # as a click on its row
        wait.until(lambda d: d.execute_script("return !jobs.has(arguments[0])", job_id))
        asked = (
            "return performance.getEntriesByType('resource')"
            ".filter(e => e.name.includes('/v1/jobs/' + arguments[0])).length"
        )
        wait.until(lambda d: d.execute_script(asked, job_id) >= 3)  # the job, its 2 pages
        assert read(browser, "#detail", "e.hidden") is True
        assert browser.find_elements(By.CSS_SELECTOR, row) == []
        assert read(browser, "#message") == ""
        assert unexpected(browser.get_log("browser"), job_id) == []
    finally:
        service.stop()
        files.close()

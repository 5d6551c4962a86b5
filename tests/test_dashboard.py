"""The dashboard in a real headless browser (Chromium driven by Selenium): the token is
entered once, a running job's progress rises and the job ends ``completed``."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.service_helpers import TOKEN, FileServer, Service, write_config

pytestmark = pytest.mark.slow

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")
ARTIFACTS = Path(os.environ.get("CONVEYOR_TEST_ARTIFACTS", "test-artifacts"))


@pytest.fixture
def browser() -> Iterator[Any]:
    if not (CHROMIUM and DRIVER):
        if os.environ.get("CI"):
            pytest.fail("CI must install chromium and chromium-driver (see .ci/run)")
        pytest.skip("needs Debian's chromium and chromium-driver")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service as DriverService

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
                 "--window-size=1200,800"):  # fmt: skip
        options.add_argument(flag)
    driver = webdriver.Chrome(service=DriverService(executable_path=DRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def test_the_dashboard_shows_progress_rising_to_completed(browser: Any, tmp_path: Path) -> None:
    """A job held at 40 of 200 files shows a partial bar; its pause and resume buttons
    work; released, it shows completed."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    files = FileServer(free=40)
    service = Service(write_config(tmp_path))
    try:
        job_id = service.submit(files.items(200, "d"))["job_id"]
        browser.get(service.url("/"))
        wait = WebDriverWait(browser, 60)
        wait.until(ec.visibility_of_element_located((By.ID, "token")))
        browser.find_element(By.ID, "token").send_keys(TOKEN)
        browser.find_element(By.ID, "token-save").click()
        row = f'tr[data-job="{job_id}"]'

        def read(driver: Any, selector: str, what: str) -> Any:
            # One script: the page redraws its rows with every event.
            return driver.execute_script(
                f"const e = document.querySelector(arguments[0]); return e ? {what} : null;",
                selector,
            )

        def percent(driver: Any) -> float:
            value = read(driver, f"{row} .bar", "e.getAttribute('aria-valuenow')")
            return float(value) if value is not None else -1.0

        wait.until(lambda d: 0 < percent(d) < 100)  # running, held by the file server
        partial = percent(browser)
        assert browser.execute_script("return sessionStorage.getItem('conveyor-token')") == TOKEN
        click = "document.querySelector(arguments[0]).click()"
        browser.execute_script(click, f'{row} button[data-verb="pause"]')
        wait.until(lambda d: read(d, f"{row} .status", "e.textContent") == "paused")
        files.gate.set()
        browser.execute_script(click, f'{row} button[data-verb="resume"]')
        wait.until(lambda d: read(d, f"{row} .status", "e.textContent") == "completed")
        assert percent(browser) == 100.0 > partial
        browser.execute_script("document.querySelector(arguments[0]).click()", row)
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#hosts tbody tr"))
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        assert browser.save_screenshot(str(ARTIFACTS / "dashboard.png"))
        hosts = browser.find_element(By.CSS_SELECTOR, "#hosts tbody").text
        assert "127.0.0.1" in hosts
        assert "object" not in hosts  # every cell is text, not a JavaScript object
    finally:
        service.stop()
        files.close()

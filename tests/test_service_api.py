"""The job service's API at its edges: request bodies (size, media type), what answers
without a token (the schema and its docs, which need nothing from elsewhere), callback
urls the network guard would refuse, and the settings its refusals name."""

from __future__ import annotations

import asyncio
import os
import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from runtime.core.netguard import (
    SERVICE_SETTING,
    BlockedAddressError,
    NetworkGuard,
    check_host,
)
from runtime.service.jobstore import Delivery, Job, SQLiteJobStore
from runtime.service.limits import Limits
from runtime.service.webhooks import Deliverer
from tests.service_helpers import TIMEOUT, Service, write_config

MAX_BODY = 200_000


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    folder = tmp_path_factory.mktemp("service-api")
    server = Service(write_config(folder, max_body_bytes=MAX_BODY))
    try:
        yield server
    finally:
        assert server.stop() == 0


def _chunked(body: bytes, size: int = 10_000) -> Iterator[bytes]:
    """``body`` as a generator: requests sends it with Transfer-Encoding: chunked."""
    for start in range(0, len(body), size):
        yield body[start : start + size]


# -- request bodies ----------------------------------------------------------------------


def test_limits_answer_413_even_when_the_app_turns_read_errors_into_400() -> None:
    """A streamed body over the limit is refused by the middleware itself, not surfaced
    as an error of the app's body reading (which FastAPI answers with a 400)."""

    async def app(scope: Any, receive: Any, send: Any) -> None:
        try:
            while (await receive())["more_body"]:
                pass
            status = 200
        except Exception:  # noqa: BLE001 - what FastAPI does while reading a body
            status = 400
        await send({"type": "http.response.start", "status": status, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    async def call(body: bytes) -> int:
        chunks = [body[i : i + 10] for i in range(0, len(body), 10)] or [b""]
        sent: list[Any] = []

        async def receive() -> dict[str, Any]:
            chunk = chunks.pop(0) if chunks else b""
            return {"type": "http.request", "body": chunk, "more_body": bool(chunks)}

        async def send(message: Any) -> None:
            sent.append(message)

        await Limits(app, max_connections=5, max_body=100)(
            {"type": "http", "headers": []}, receive, send
        )
        return int(sent[0]["status"])

    assert asyncio.run(call(b"x" * 101)) == 413
    assert asyncio.run(call(b"x" * 100)) == 200


@pytest.mark.slow
def test_a_body_over_the_limit_gets_413_chunked_or_not(service: Service) -> None:
    """Too big a body is a 413 naming the setting, whether it announces its length or
    comes chunked; a chunked body within the limit is read as any other."""
    body = b'{"items": [' + b" " * MAX_BODY + b"]}"
    headers = {"Content-Type": "application/json"}
    announced = service.call("POST", "/v1/jobs", data=body, headers=headers)
    chunked = service.call("POST", "/v1/jobs", data=_chunked(body), headers=headers)
    for answer in (announced, chunked):
        assert answer.status_code == 413, answer.text
        assert "service.max_body_bytes" in answer.json()["detail"]
    small = b'{"items": [{"url": "http://127.0.0.1:1/a"}]}'
    accepted = service.call("POST", "/v1/jobs", data=_chunked(small, 7), headers=headers)
    assert accepted.status_code == 202, accepted.text


@pytest.mark.slow
def test_a_body_not_sent_as_json_gets_415(service: Service) -> None:
    """Form-encoded, plain text or no Content-Type at all: 415 saying what to send, not a
    422 about dictionaries; JSON with a charset (or a +json type) is fine; JSON with a
    string that is not Unicode is a 422 like any invalid body."""
    body = b'{"items": [{"url": "http://127.0.0.1:1/a"}]}'
    for content_type in ("application/x-www-form-urlencoded", "text/plain", None):
        headers = {"Content-Type": content_type} if content_type else {}
        answer = service.call("POST", "/v1/jobs", data=body, headers=headers)
        assert answer.status_code == 415, (content_type, answer.text)
        assert "Content-Type: application/json" in answer.json()["detail"]
    not_unicode = b'{"items": [{"url": "http://a/b"}], "callback_url": "http://\\udcff/"}'
    answer = service.call(
        "POST", "/v1/jobs", data=not_unicode, headers={"Content-Type": "application/json"}
    )
    assert answer.status_code == 422, answer.text  # echoed back escaped, not a 500
    assert answer.json()["detail"][0]["loc"] == ["body", "callback_url"]
    for content_type in ("application/json; charset=utf-8", "application/vnd.batch+json"):
        answer = service.call("POST", "/v1/jobs", data=body, headers={"Content-Type": content_type})
        assert answer.status_code == 202, (content_type, answer.text)
    unauthorised = requests.post(service.url("/v1/jobs"), data=body, timeout=30)
    assert unauthorised.status_code == 401  # the token is checked first


# -- what answers without a token ---------------------------------------------------------


@pytest.mark.slow
def test_the_schema_and_its_docs_answer_without_a_token_and_load_nothing_from_elsewhere(
    service: Service,
) -> None:
    """/openapi.json and /docs describe the API (not its data) without a token; the docs
    page has no script, style or link from another site; /redoc (a CDN page) is gone."""
    schema = requests.get(service.url("/openapi.json"), timeout=30)
    assert schema.status_code == 200
    assert "/v1/jobs" in schema.json()["paths"]
    page = requests.get(service.url("/docs"), timeout=30)
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert "openapi.json" in page.text
    for attribute in ("src=", "href="):
        for part in page.text.split(attribute)[1:]:
            target = part[1:].split(part[0], 1)[0]  # the quoted value
            assert "//" not in target, target  # nothing from another site
    assert requests.get(service.url("/redoc"), timeout=30).status_code == 404
    assert requests.get(service.url("/v1/jobs"), timeout=30).status_code == 401


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")


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
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=DriverService(executable_path=DRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.mark.slow
def test_the_docs_page_shows_every_operation_from_this_server_alone(
    service: Service, browser: Any
) -> None:
    """In a real browser, /docs lists every operation of /openapi.json, with everything
    it loaded coming from the service itself."""
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get(service.url("/docs"))
    WebDriverWait(browser, 60).until(
        lambda b: b.execute_script("return document.querySelector('#api[data-ready]') !== null")
    )
    shown = browser.execute_script(
        "return [...document.querySelectorAll('#api details.op summary')]"
        ".map(s => s.textContent.replace(/\\s+/g, ' ').trim())"
    )
    paths = requests.get(service.url("/openapi.json"), timeout=30).json()["paths"]
    for path, operations in paths.items():
        for method in operations:
            assert any(s.startswith(f"{method} {path}") for s in shown), (method, path, shown)
    loaded = browser.execute_script(
        "return [location.href, ...performance.getEntriesByType('resource').map(e => e.name)]"
    )
    assert all(url.startswith(service.base + "/") for url in loaded), loaded


# -- callback urls and the network guard --------------------------------------------------


def _refused(answer: requests.Response) -> str:
    assert answer.status_code == 422, answer.text
    (error,) = answer.json()["detail"]
    assert error["loc"] == ["body", "callback_url"], error
    return str(error["msg"])


@pytest.mark.slow
def test_a_callback_url_the_guard_would_refuse_is_refused_at_submit(service: Service) -> None:
    """Loopback (beyond service.allow_networks), private and link-local callbacks, and
    hosts that do not resolve: 422 naming callback_url and why, and no job; an allowed
    one is accepted."""
    items = [{"url": "http://127.0.0.1:1/a"}]
    before = len(service.call("GET", "/v1/jobs", params={"limit": 1000}).json()["jobs"])
    allow = "(allow it with service.allow_networks)"
    cases = {
        "http://10.0.0.1/hook": f"10.0.0.1 is a private address {allow}",
        "http://169.254.169.254/latest": f"169.254.169.254 is a link-local address {allow}",
        "http://[::1]:8080/hook": f"::1 is a loopback address {allow}",
        "https://127.0.0.2/hook": f"127.0.0.2 is a loopback address {allow}",
        "http://no-such-host.invalid/hook": "its host no-such-host.invalid does not resolve",
    }
    for url, reason in cases.items():
        answer = service.call("POST", "/v1/jobs", json={"items": items, "callback_url": url})
        message = _refused(answer)
        assert message.startswith("callback_url refused: "), message
        assert reason in message, (url, message)
    message = _refused(
        service.call("POST", "/v1/jobs", json={"items": items, "callback_url": "ftp://x/y"})
    )
    assert "callback_url must be an http(s) url" in message
    after = len(service.call("GET", "/v1/jobs", params={"limit": 1000}).json()["jobs"])
    assert after == before
    service.submit(items, callback_url="http://127.0.0.1:1/hook")  # allowed: accepted


def test_a_host_is_refused_when_none_of_its_addresses_is_allowed() -> None:
    """``check_host`` resolves a name and refuses it as a connection would be refused."""
    guard = NetworkGuard((), SERVICE_SETTING)
    with pytest.raises(BlockedAddressError) as refused:
        check_host(guard, "localhost", 80)
    assert "localhost resolves to " in str(refused.value)
    assert str(refused.value).endswith("a loopback address (allow it with service.allow_networks)")
    check_host(NetworkGuard(["127.0.0.0/8", "::1/128"], SERVICE_SETTING), "localhost", 80)
    with pytest.raises(OSError, match=r"not known|no address|resolve"):
        check_host(guard, "no-such-host.invalid", 80)


def test_a_delivery_is_checked_again_when_it_connects(tmp_path: Path) -> None:
    """A delivery to a refused address (a name that resolved elsewhere at submit, say) is
    given up at its first attempt, without a connection, naming the service's setting;
    the attempt is stored before it is announced."""
    store = SQLiteJobStore(tmp_path)
    store.create(Job(id="j", number=0, status="completed", total=1, invalid=0,
                     created_at=0.0), None)  # fmt: skip
    delivery = Delivery(id="d", job_id="j", url="http://10.0.0.1/hook", body=b"{}",
                        status="pending", created_at=time.time())  # fmt: skip
    store.add_delivery(delivery)
    attempts: list[dict[str, object]] = []
    done = threading.Event()

    def attempted(_: Delivery, record: dict[str, object]) -> None:
        (stored,) = store.deliveries("j")  # recorded before it is announced
        attempts.append({**record, "recorded": stored.attempts})
        done.set()

    deliverer = Deliverer(store, "secret", NetworkGuard((), SERVICE_SETTING), timeout=3600,
                          backoff=0.01, on_attempt=attempted)  # fmt: skip
    try:
        deliverer.start(delivery)
        assert done.wait(TIMEOUT)
    finally:
        deliverer.stop()
        store.close()
    (attempt,) = attempts
    assert attempt["gave_up"] is True
    assert attempt["recorded"] == [{k: v for k, v in attempt.items()
                                    if k not in ("recorded", "status_after")}]  # fmt: skip
    assert attempt["status_after"] == "failed"
    assert attempt["error"] == (
        "refused to connect: 10.0.0.1 is a private address (allow it with service.allow_networks)"
    )


@pytest.mark.slow
def test_a_refused_item_names_the_service_setting(service: Service) -> None:
    """In the service, a download the guard refuses says to allow it with
    ``service.allow_networks`` (what the service reads), not ``download.allow_networks``."""
    job = service.submit([{"url": "http://10.0.0.1/x", "id": "x"}], options={"max_attempts": 1})
    service.wait_for(job["job_id"], "completed")
    (item,) = service.call("GET", f"/v1/jobs/{job['job_id']}/items").json()["items"]
    assert item["error_kind"] == "blocked"
    assert item["error"] == (
        "refused to connect: 10.0.0.1 is a private address (allow it with service.allow_networks)"
    )

"""The job service's API at its edges: request bodies (size, media type), what answers
without a token (the schema and its docs, which need nothing from elsewhere), the token
as the schema's security scheme, callback urls the network guard would refuse (without
telling what internal names resolve to), the settings its refusals name, the metrics'
help."""

from __future__ import annotations

import asyncio
import io
import json
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from fastapi.exceptions import RequestValidationError

from runtime.core.netguard import (
    SERVICE_SETTING,
    AddrInfo,
    BlockedAddressError,
    NetworkGuard,
    allowed_addresses,
    check_host,
)
from runtime.service.app import CALLBACK_REFUSED, _check_callback
from runtime.service.client import submit_file
from runtime.service.jobstore import Delivery, Job, SQLiteJobStore
from runtime.service.limits import Limits
from runtime.service.resolver import Resolver
from runtime.service.webhooks import Deliverer
from runtime.testing import FakeClock, capture_logs
from tests.service_helpers import TIMEOUT, TOKEN, Service, headless_chromium, write_config

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


@pytest.mark.slow
def test_the_schema_declares_the_token_as_a_bearer_security_scheme(service: Service) -> None:
    """/openapi.json has a bearer security scheme that every operation needing the token
    lists (and no operation has an ``authorization`` parameter instead); the open ones
    list none. Without the token, with another scheme or a wrong token: the same 401."""
    schema = requests.get(service.url("/openapi.json"), timeout=30).json()
    assert schema["components"]["securitySchemes"]["bearer"] == {
        "type": "http",
        "scheme": "bearer",
        "description": "the service's token (`service.token`, or CONVEYOR_SERVICE_TOKEN)",
    }
    operations = [(m, p, op) for p, ops in schema["paths"].items() for m, op in ops.items()]
    assert len(operations) > 10
    for method, path, op in operations:
        names = [p["name"].lower() for p in op.get("parameters", [])]
        assert "authorization" not in names, (method, path)
        open_route = path == "/healthz"
        assert op.get("security") == (None if open_route else [{"bearer": []}]), (method, path)
    for header in ({}, {"Authorization": f"Basic {TOKEN}"}, {"Authorization": "Bearer x"},
                   {"Authorization": "Bearer"}, {"Authorization": f"Bearer {TOKEN}x"}):  # fmt: skip
        answer = requests.get(service.url("/v1/jobs"), headers=header, timeout=30)
        assert answer.status_code == 401, header
        assert answer.json() == {"detail": "missing or wrong bearer token"}
        assert answer.headers["www-authenticate"] == "Bearer"
    lower = {"Authorization": f"bearer  {TOKEN} "}  # the scheme in any case, spaces around
    assert requests.get(service.url("/v1/jobs"), headers=lower, timeout=30).status_code == 200


@pytest.fixture
def browser() -> Iterator[Any]:
    with headless_chromium() as driver:
        yield driver


@pytest.mark.slow
def test_the_docs_page_shows_every_operation_from_this_server_alone(
    service: Service, browser: Any
) -> None:
    """In a real browser, /docs lists every operation of /openapi.json, says which need
    the token, with everything it loaded coming from the service itself."""
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
    needs = browser.execute_script(
        "return Object.fromEntries([...document.querySelectorAll('#api details.op:has(.method)')]"
        ".map(d =>"
        " [d.querySelector('summary code').textContent + ' ' + d.querySelector('.method')"
        ".textContent, d.textContent.includes('Needs Authorization: Bearer <token>')]))"
    )
    assert needs["/v1/jobs get"] is True  # from the schema's security, not a parameter
    assert needs["/healthz get"] is False
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
    hosts that do not resolve: 422 naming callback_url, the same answer for each (it
    names neither an address nor the host), and no job; an allowed one is accepted."""
    items = [{"url": "http://127.0.0.1:1/a"}]
    before = len(service.call("GET", "/v1/jobs", params={"limit": 1000}).json()["jobs"])
    cases = ["http://10.0.0.1/hook", "http://169.254.169.254/latest", "http://[::1]:8080/hook",
             "https://127.0.0.2/hook", "http://no-such-host.invalid/hook"]  # fmt: skip
    for url in cases:
        answer = service.call("POST", "/v1/jobs", json={"items": items, "callback_url": url})
        assert _refused(answer) == (
            "callback_url refused: its host does not resolve to an address the service may "
            "reach (service.allow_networks)"
        ), url
    message = _refused(
        service.call("POST", "/v1/jobs", json={"items": items, "callback_url": "ftp://x/y"})
    )
    assert "callback_url must be an http(s) url" in message
    after = len(service.call("GET", "/v1/jobs", params={"limit": 1000}).json()["jobs"])
    assert after == before
    service.submit(items, callback_url="http://127.0.0.1:1/hook")  # allowed: accepted


def _lookup(table: dict[str, list[str]]) -> Any:
    """A resolver over ``table`` (name → addresses); other names do not resolve."""

    def lookup(host: str, port: int) -> list[AddrInfo]:
        if host not in table:
            raise OSError(-2, "Name or service not known")
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (a, port)) for a in table[host]]

    return lookup


def test_a_refused_callback_tells_the_client_nothing_of_internal_names() -> None:
    """A name that resolves to a private address and one that does not resolve get the
    same answer, without the address; the server's log has the reason."""
    guard = NetworkGuard((), SERVICE_SETTING)
    lookup = _lookup({"db.internal": ["10.1.2.3"], "example.org": ["93.184.215.14"]})
    answers = {}
    with capture_logs() as logs:
        for host in ("db.internal", "nothing.internal"):
            with pytest.raises(RequestValidationError) as refused:
                _check_callback(guard, f"https://{host}/hook", lookup)
            ((error),) = refused.value.errors()
            assert error["loc"] == ("body", "callback_url")
            answers[host] = error["msg"]
        _check_callback(guard, "https://example.org/hook", lookup)  # allowed: no error
    assert answers == {"db.internal": CALLBACK_REFUSED, "nothing.internal": CALLBACK_REFUSED}
    assert "10.1.2.3" not in CALLBACK_REFUSED
    assert [(e["event"], e["log_level"], e["url"]) for e in logs] == [
        ("callback_url refused", "warning", "https://db.internal/hook"),
        ("callback_url refused", "warning", "https://nothing.internal/hook"),
    ]
    assert logs[0]["reason"] == (
        "refused to connect: db.internal resolves to 10.1.2.3, a private address "
        "(allow it with service.allow_networks)"
    )
    assert logs[1]["reason"] == (
        "its host nothing.internal does not resolve (Name or service not known)"
    )


def test_a_lookup_that_does_not_answer_is_given_up_at_its_deadline() -> None:
    """The resolver waits at most its timeout for an answer, then raises TimeoutError
    (an OSError: the callback is refused); while its slots are taken by lookups that
    hang, a new one waits for a slot no longer than the timeout and is not started; a
    slot is free again once its lookup returns."""
    release = threading.Event()
    started: list[str] = []

    def lookup(host: str, port: int) -> list[AddrInfo]:
        started.append(host)
        release.wait(TIMEOUT)
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("93.184.215.14", port))]

    resolver = Resolver(timeout=0.05, most=1, lookup=lookup)
    with pytest.raises(TimeoutError, match=r"hangs\.example did not resolve within 0\.05 s"):
        resolver("hangs.example", 443)
    with pytest.raises(TimeoutError, match="busy"):
        resolver("next.example", 443)
    assert started == ["hangs.example"]
    release.set()
    for thread in threading.enumerate():
        if thread.name == "resolve hangs.example":
            thread.join(TIMEOUT)
    resolver.timeout = TIMEOUT
    guard = NetworkGuard((), SERVICE_SETTING)
    check_host(guard, "next.example", 443, resolver)
    assert started == ["hangs.example", "next.example"]
    failing = Resolver(timeout=TIMEOUT, lookup=_lookup({}))
    with pytest.raises(OSError, match="not known"):
        failing("nothing.internal", 80)


def test_one_resolve_and_check_serves_the_submit_check_and_the_connection() -> None:
    """``allowed_addresses`` keeps the allowed addresses in the resolver's order and
    drops the refused ones; refuses with the first refusal when none is allowed."""
    guard = NetworkGuard((), SERVICE_SETTING)
    lookup = _lookup({"mixed": ["10.0.0.1", "93.184.215.14", "127.0.0.1", "1.1.1.1"],
                      "inside": ["192.168.0.1", "127.0.0.1"]})  # fmt: skip
    allowed = allowed_addresses(guard, "mixed", 80, lookup)
    assert [info[4] for info in allowed] == [("93.184.215.14", 80), ("1.1.1.1", 80)]
    with pytest.raises(BlockedAddressError, match=r"inside resolves to 192\.168\.0\.1, a private"):
        allowed_addresses(guard, "[inside]", 80, lookup)
    with pytest.raises(OSError, match="nowhere resolves to no address"):
        allowed_addresses(guard, "nowhere", 80, lambda host, port: [])


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


@pytest.mark.slow
def test_the_metrics_help_says_what_each_job_gauge_counts(service: Service) -> None:
    """A running job's bytes are its completed files' committed bytes (all its runs),
    not the bytes its current run downloaded; its items are those that ended."""
    text = service.call("GET", "/metrics").text
    helps = dict(
        line.removeprefix("# HELP ").split(" ", 1)
        for line in text.splitlines()
        if line.startswith("# HELP conveyor_")
    )
    assert helps["conveyor_job_bytes"] == (
        "Bytes in the completed files of a running job (all its runs), as committed"
    )
    assert helps["conveyor_job_items"] == (
        "Items of a running job that ended, by status (all its runs)"
    )
    assert helps["conveyor_job_downloading"] == "Items a running job is downloading"


# -- submit --follow ----------------------------------------------------------------------


@pytest.mark.slow
def test_submit_follow_shows_an_example_of_a_kind_first_seen_after_a_page(
    service: Service, tmp_path: Path
) -> None:
    """The summary's example of each error kind is found however late the kind first
    fails: 1000 items refused by the guard, then one invalid entry (item 1000, beyond
    the first page of 1000 failed items), each kind with its url and reason."""
    listing = tmp_path / "late.ndjson"
    entries = [{"url": f"http://10.0.0.1/{i}", "id": f"b{i}"} for i in range(1000)]
    entries.append({"url": "ftp://10.0.0.1/late", "id": "late"})
    listing.write_text("".join(json.dumps(e) + "\n" for e in entries))
    out, err = io.StringIO(), io.StringIO()
    submit_file(str(listing), server=service.base, token=TOKEN, follow=True, out=out, err=err,
                clock=FakeClock())  # fmt: skip
    text = out.getvalue()
    assert ": 0 completed, 1001 failed, 0 skipped of 1001\n" in text, (text, err.getvalue())
    rows = [line.split()[:3] for line in text.splitlines() if line.startswith("  ")]
    assert ["blocked", "1000", "http://10.0.0.1/0"] in rows
    assert ["invalid_entry", "1", "ftp://10.0.0.1/late"] in rows
    assert "    invalid_entry: " in text

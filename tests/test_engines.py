"""The download engines beyond the fault server's pipeline tests: curl's error table,
HTTPS with a CA bundle, an HTTP proxy, and each engine driven directly through a restart
after a Range answer it cannot use — each with both engines."""

from __future__ import annotations

import dataclasses
import http.server
import socket
import ssl
import threading
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pycurl
import pytest
import structlog
import trustme

from messages import DownloadComplete, DownloadFailed, WorkItem
from runtime import Pipeline
from runtime.core.config import Config
from runtime.core.curl import CURL_ERRORS, CurlEngine, translate_curl
from runtime.core.errors import FAILURE_KINDS, StalledError
from runtime.core.transfer import Transfer
from runtime.core.transport import RequestsTransport
from runtime.testing import FakeClock, FaultServer, capture_logs
from tests import helpers
from tests.helpers import make_config, read_manifest

TIMEOUT = 60
BODY = b"over tls " * 1000


def test_every_curl_error_maps_to_a_known_kind() -> None:
    """One table: each entry names an error kind a failed item may end with."""
    assert {kind for kind, _ in CURL_ERRORS.values()} <= set(FAILURE_KINDS)
    assert translate_curl(pycurl.E_TOO_MANY_REDIRECTS, "x", received=0, headers_seen=True) \
        .error_kind == "redirect"  # fmt: skip
    assert translate_curl(pycurl.E_UNSUPPORTED_PROTOCOL, "ftp", received=0, headers_seen=True) \
        .permanent  # fmt: skip
    assert translate_curl(pycurl.E_COULDNT_CONNECT, "x", received=0, headers_seen=False) \
        .error_kind == "connection"  # fmt: skip
    assert translate_curl(pycurl.E_PARTIAL_FILE, "x", received=5, headers_seen=True) \
        .error_kind == "truncated"  # fmt: skip
    # Too slow before the response: a timeout; in the middle of a body: a stall.
    assert translate_curl(pycurl.E_OPERATION_TIMEDOUT, "x", received=0, headers_seen=False) \
        .error_kind == "timeout"  # fmt: skip
    assert isinstance(
        translate_curl(pycurl.E_OPERATION_TIMEDOUT, "x", received=9, headers_seen=True),
        StalledError,
    )
    assert translate_curl(pycurl.E_RECV_ERROR, "x", received=9, headers_seen=True) \
        .error_kind == "truncated"  # fmt: skip
    unknown = translate_curl(9999, "new", received=0, headers_seen=False)
    assert (unknown.error_kind, unknown.permanent) == ("connection", False)


@pytest.fixture(params=["requests", "curl"])
def engine(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setattr(helpers, "ENGINE", request.param)
    return str(request.param)


class _Files(http.server.BaseHTTPRequestHandler):
    """``/to?http://…`` answers 302 to that url (unquoted); anything else is ``BODY``."""

    hits: list[str]

    def do_GET(self) -> None:
        self.hits.append(self.path)
        if self.path.startswith("/to?"):
            self.send_response(302)
            # Unquoted: requests quotes the brackets of an IPv6 url in a query, curl not.
            self.send_header("Location", urllib.parse.unquote(self.path[len("/to?") :]))
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(BODY)))
        self.end_headers()
        self.wfile.write(BODY)

    def log_message(self, *args: Any) -> None:
        pass


def _serve(wrap: Any = None, address: str = "127.0.0.1") -> Iterator[tuple[str, list[str]]]:
    hits: list[str] = []
    handler = type("Handler", (_Files,), {"hits": hits})
    server = http.server.ThreadingHTTPServer((address, 0), handler)
    if wrap is not None:
        server.socket = wrap(server.socket)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"{address}:{server.server_address[1]}", hits
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def tls(tmp_path: Path) -> Iterator[tuple[str, list[str], Path]]:
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(context)
    bundle = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(bundle))
    for address, hits in _serve(lambda s: context.wrap_socket(s, server_side=True)):
        yield address, hits, bundle


def test_https_with_a_ca_bundle_from_the_environment(
    engine: str, tmp_path: Path, tls: tuple[str, list[str], Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Both engines trust the bundle named by the environment, and nothing else."""
    address, hits, bundle = tls
    config = make_config(tmp_path, retry={"max_attempts": 1})
    for variable in ("CURL_CA_BUNDLE", "REQUESTS_CA_BUNDLE", "SSL_CERT_FILE"):
        monkeypatch.delenv(variable, raising=False)
    with Pipeline(config) as pipeline:  # no bundle: the certificate is refused
        pipeline.submit([{"url": f"https://{address}/untrusted.bin"}])
        assert pipeline.wait(TIMEOUT).finished.failed == 1
    refused = read_manifest(config.manifest_path)
    config = make_config(tmp_path / "trusted")
    monkeypatch.setenv("REQUESTS_CA_BUNDLE" if engine == "requests" else "CURL_CA_BUNDLE",
                       str(bundle))  # fmt: skip
    with Pipeline(config) as pipeline:
        pipeline.submit([{"url": f"https://{address}/a.bin"}])
        summary = pipeline.wait(TIMEOUT)
    assert summary.finished.completed == 1
    assert (Path(config.output.dir) / "a.bin").read_bytes() == BODY
    assert hits == ["/a.bin"]  # the refused handshake never got to a request
    assert [r["error_kind"] for r in refused] == ["connection"]


class _Proxy(http.server.BaseHTTPRequestHandler):
    """A forward proxy for plain HTTP: absolute-URI GETs, passed on."""

    seen: list[str]

    def do_GET(self) -> None:
        self.seen.append(self.path)
        direct = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        with direct.open(self.path, timeout=10) as upstream:
            body = upstream.read()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


def test_an_http_proxy_from_the_environment_is_used(
    engine: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``HTTP_PROXY`` reaches both engines; ``NO_PROXY`` exempts a host again."""
    seen: list[str] = []
    proxy = http.server.ThreadingHTTPServer(("127.0.0.1", 0), type("P", (_Proxy,), {"seen": seen}))
    threading.Thread(target=proxy.serve_forever, daemon=True).start()
    try:
        for address, hits in _serve():
            for name in ("HTTP_PROXY", "http_proxy"):
                monkeypatch.setenv(name, f"http://127.0.0.1:{proxy.server_address[1]}")
            for name in ("NO_PROXY", "no_proxy"):
                monkeypatch.delenv(name, raising=False)
            config = make_config(tmp_path)
            with Pipeline(config) as pipeline:
                pipeline.submit([{"url": f"http://{address}/via-proxy.bin"}])
                assert pipeline.wait(TIMEOUT).finished.completed == 1
            assert seen == [f"http://{address}/via-proxy.bin"]
            for name in ("NO_PROXY", "no_proxy"):
                monkeypatch.setenv(name, "127.0.0.1")
            config = make_config(tmp_path / "direct")
            with Pipeline(config) as pipeline:
                pipeline.submit([{"url": f"http://{address}/direct.bin"}])
                assert pipeline.wait(TIMEOUT).finished.completed == 1
            assert len(seen) == 1  # not through the proxy
            assert hits == ["/via-proxy.bin", "/direct.bin"]
    finally:
        proxy.shutdown()
        proxy.server_close()


def test_links_planted_in_the_output_lead_nowhere_with_either_engine(
    engine: str, tmp_path: Path
) -> None:
    """A directory link or a file link under the final name is not written through."""
    config = make_config(tmp_path)
    out = Path(config.output.dir)
    outside = tmp_path / "outside"
    outside.mkdir()
    out.mkdir(parents=True)
    (out / "link").symlink_to(outside)
    (out / "planted.bin").symlink_to(outside / "target.bin")
    for address, hits in _serve():
        with Pipeline(config) as pipeline:
            pipeline.submit(
                [
                    {"url": f"http://{address}/a", "name": "link/file.bin"},
                    {"url": f"http://{address}/b", "name": "planted.bin"},
                ]
            )
            pipeline.wait(TIMEOUT)
        assert hits == []  # refused before any request
    records = {r["name"]: r for r in read_manifest(config.manifest_path)}
    assert records["link/file.bin"]["error_kind"] == "unsafe_name"
    assert records["planted.bin"]["error_kind"] == "unsafe_name"
    assert list(outside.iterdir()) == []


def test_the_network_guard_refuses_internal_addresses_at_connect_time(
    engine: str, tmp_path: Path
) -> None:
    """With ``block_private_networks``, loopback, private and link-local addresses are
    refused — by address, by a name that resolves there, and behind a redirect from an
    allowed host — and nothing reaches the blocked server; allowed networks still work."""
    # All of 127/8 is local on Linux: 127.0.0.2 stands for an allowed outside host.
    for a, allowed_hits in _serve(address="127.0.0.2"):
        for blocked, blocked_hits in _serve():
            b_port = blocked.rsplit(":", 1)[1]
            config = make_config(
                tmp_path,
                download={"block_private_networks": True, "allow_networks": ["127.0.0.2/32"],
                          "connect_timeout": 2.0},
                retry={"max_attempts": 1},
            )  # fmt: skip
            urls = {
                "direct.bin": f"http://127.0.0.1:{b_port}/direct.bin",
                "name.bin": f"http://localhost:{b_port}/name.bin",
                "private.bin": "http://10.0.0.1/private.bin",
                "v6.bin": f"http://[::1]:{b_port}/v6.bin",
                "linklocal.bin": "http://169.254.169.254/latest/meta-data",
                "redirected.bin": f"http://{a}/to?http://127.0.0.1:{b_port}/redirected.bin",
                "ok.bin": f"http://{a}/ok.bin",
            }
            with Pipeline(config) as pipeline:
                pipeline.submit([{"url": url, "name": name} for name, url in urls.items()])
                summary = pipeline.wait(TIMEOUT)
            assert blocked_hits == []  # nothing was requested from the internal server
            redirect = f"/to?http://127.0.0.1:{b_port}/redirected.bin"
            assert sorted(allowed_hits) == ["/ok.bin", redirect]
    records = {r["name"]: r for r in read_manifest(config.manifest_path)}
    assert summary.finished.completed == 1
    assert records["ok.bin"]["status"] == "completed"
    for name in urls.keys() - {"ok.bin"}:
        assert records[name]["status"] == "failed", name
        assert records[name]["error_kind"] == "blocked", (name, records[name])


def test_a_refused_redirect_names_its_target_and_hop(engine: str, tmp_path: Path) -> None:
    """A redirect the guard refuses is told as such: its number, the host it came from,
    the url it went to and the refused address (not the first host's name), and the
    setting that would allow it."""
    for a, _ in _serve():
        for b, b_hits in _serve(address="127.0.0.2"):
            b_port = b.rsplit(":", 1)[1]
            config = make_config(
                tmp_path,
                download={"block_private_networks": True, "allow_networks": ["127.0.0.1/32"]},
                retry={"max_attempts": 1},
            )
            targets = {
                "loop.bin": f"http://{b}/loop.bin",
                "v6.bin": f"http://[::1]:{b_port}/v6.bin",
                "meta.bin": "http://169.254.169.254/latest/meta-data",
            }
            urls = {name: f"http://{a}/to?{target}" for name, target in targets.items()}
            urls["two.bin"] = f"http://{a}/to?http://{a}/to?http://{b}/two.bin"
            with Pipeline(config) as pipeline:
                pipeline.submit([{"url": url, "name": name} for name, url in urls.items()])
                pipeline.wait(TIMEOUT)
            assert b_hits == []
    errors = {r["name"]: r["error"] for r in read_manifest(config.manifest_path)}
    allow = "(allow it with download.allow_networks)"
    assert errors == {
        "loop.bin": f"refused to connect: redirect 1 (from {a}) to http://{b}/loop.bin: "
        f"127.0.0.2 is a loopback address {allow}",
        "v6.bin": f"refused to connect: redirect 1 (from {a}) to http://[::1]:{b_port}/v6.bin: "
        f"::1 is a loopback address {allow}",
        "meta.bin": f"refused to connect: redirect 1 (from {a}) to "
        f"http://169.254.169.254/latest/meta-data: 169.254.169.254 is a link-local address "
        f"{allow}",
        "two.bin": f"refused to connect: redirect 2 (from {a}) to http://{b}/two.bin: "
        f"127.0.0.2 is a loopback address {allow}",
    }


# -- the engines driven directly: a restart after a Range answer they cannot use ----------


class _Told:
    """``TransferHooks`` that keep what the transfer told."""

    def __init__(self) -> None:
        self.validators: list[str] = []
        self.received: list[int] = []

    def validator(self, item: WorkItem, validator: str) -> None:
        self.validators.append(validator)

    def progress(self, item: WorkItem, received: int, total: int | None) -> None:
        self.received.append(received)

    def tick(self, now: float) -> None:
        pass


class _Engine:
    """One downloader's engine without the actor: ``attempt`` runs an item to its result
    the way the downloader drives that engine."""

    def __init__(
        self, engine: str, config: Config, clock: FakeClock, cancel: threading.Event
    ) -> None:
        self.hooks = _Told()
        self.transport = RequestsTransport(config) if engine == "requests" else None
        self.transfer = Transfer(
            worker="w",
            config=config,
            transport=self.transport,
            clock=clock,
            cancel=cancel,
            lane="small",
            hooks=self.hooks,
        )
        self.curl = CurlEngine(self.transfer) if engine == "curl" else None

    def attempt(self, item: WorkItem) -> DownloadComplete | DownloadFailed:
        if self.curl is None:
            return self.transfer.download(item)
        result = self.curl.start(item)
        for _ in range(int(TIMEOUT / 0.05)):
            if result is not None:
                return result
            done = self.curl.perform(0.05)
            if done:
                (result,) = done
        raise AssertionError("the transfer did not end")

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()
        if self.curl is not None:
            self.curl.close()


def _resume_after_a_range_lie(
    engine: str,
    tmp_path: Path,
    on_request: Callable[[str, str | None], None] | None,
    clock: FakeClock,
    cancel: threading.Event,
    **download: Any,
) -> tuple[DownloadComplete | DownloadFailed, list[str | None], _Told]:
    """A first attempt cut at 40,000 of 100,000 bytes, then the resume, which the server
    answers with a 206 from the wrong offset (``on_request`` runs as each request comes).
    Return the resume's result, the Range header of every request, and the hooks."""
    path = "/range-lie/206/a.bin"
    config = make_config(tmp_path, download=download)
    with FaultServer(on_request=on_request) as server:
        driver = _Engine(engine, config, clock, cancel)
        try:
            item = WorkItem(id="a", url=server.url(f"{path}?size=100000&at=40000"),
                            name="a.bin", attempts=1)  # fmt: skip
            first = driver.attempt(item)
            assert isinstance(first, DownloadFailed)
            assert first.error_kind == "truncated"
            (validator,) = driver.hooks.validators
            driver.hooks.received.clear()
            item = dataclasses.replace(item, attempts=2, validator=validator)
            result = driver.attempt(item)
        finally:
            driver.close()
        return result, list(server.ranges[path]), driver.hooks


def test_the_whole_file_after_a_range_lie_keeps_the_attempts_deadline(
    engine: str, tmp_path: Path
) -> None:
    """The whole-file fetch after a Range answer the engine cannot use is the same
    attempt, with the same deadline: a server that lies only once the attempt's time
    (``download.timeout`` plus size over ``min_speed``) is up does not get a fresh one —
    the attempt fails ``timeout`` (transient, an attempt spent)."""
    clock = FakeClock()

    def late(path: str, range_: str | None) -> None:
        if range_ is not None:
            clock.advance(1000.0)  # the lie comes long after the attempt began

    result, ranges, _ = _resume_after_a_range_lie(
        engine, tmp_path, late, clock, threading.Event(), timeout=10.0, min_speed=1024
    )  # a limit of 10 s + 100,000 B / 1,024 B/s: about 108 s
    assert ranges == [None, "bytes=40000-", None]
    assert isinstance(result, DownloadFailed), result
    assert (result.error_kind, result.permanent, result.counts_attempt) == ("timeout", False, True)
    assert "longer than 108 s" in result.error


def test_no_whole_file_is_fetched_after_a_range_lie_while_cancelling(
    engine: str, tmp_path: Path
) -> None:
    """A Range answer the engine cannot use that arrives while the downloader cancels (a
    shutdown) ends the transfer ``cancelled`` like every transfer in flight at a cancel —
    no attempt spent, and no request for the whole file."""
    cancel = threading.Event()

    def shutdown(path: str, range_: str | None) -> None:
        if range_ is not None:
            cancel.set()

    result, ranges, _ = _resume_after_a_range_lie(engine, tmp_path, shutdown, FakeClock(), cancel)
    assert ranges == [None, "bytes=40000-"]
    assert isinstance(result, DownloadFailed), result
    assert (result.error_kind, result.counts_attempt) == ("cancelled", False)


def test_progress_does_not_go_back_when_an_attempt_starts_over(engine: str, tmp_path: Path) -> None:
    """Within an attempt that starts over from byte 0 after a Range lie, the bytes
    reported only grow: the restart is decided on the response's head, before a byte of
    the attempt is written or reported."""
    result, ranges, hooks = _resume_after_a_range_lie(
        engine, tmp_path, None, FakeClock(), threading.Event(), progress_interval=0.0,
        chunk_size=4096,
    )  # fmt: skip
    assert ranges == [None, "bytes=40000-", None]
    assert isinstance(result, DownloadComplete), result
    assert hooks.received == sorted(hooks.received)
    assert hooks.received[-1] == 100000


RUN_EVENTS = {"state opened", "run starting", "input read", "run finished", "shutting down"}
"""Log events about the run as a whole; every other event of a run concerns an item."""


@pytest.mark.usefixtures("debug_logs")
def test_every_log_line_about_an_item_names_it_with_either_engine(
    engine: str, tmp_path: Path
) -> None:
    """A connection refused, a 404 and a Range answer that cannot be used, each with a
    retry: every line logged about one of those items — ``download failed``, ``retry
    scheduled``, ``range not usable``, … — carries its ``item_id``, whichever engine
    downloads it (the CLI merges the context into each line, as here)."""
    with socket.socket() as closed:  # bound, never listening: connections are refused
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
        config = make_config(tmp_path, retry={"max_attempts": 2})
        with (
            FaultServer() as server,
            capture_logs(processors=[structlog.contextvars.merge_contextvars]) as logs,
            Pipeline(config) as pipeline,
        ):
            pipeline.submit([
                {"id": "refused", "url": f"http://127.0.0.1:{port}/a.bin"},
                {"id": "missing", "url": server.url("/status/404/b.bin")},
                {"id": "lied", "url": server.url("/range-lie/206/c.bin?at=3000")},
            ])  # fmt: skip
            summary = pipeline.wait(TIMEOUT)
    assert (summary.finished.failed, summary.finished.completed) == (2, 1)
    events = {e["event"] for e in logs}
    assert {"download failed", "retry scheduled", "range not usable; fetching the whole file"} \
        <= events  # fmt: skip
    unnamed = [e for e in logs if e["event"] not in RUN_EVENTS and "item_id" not in e]
    assert unnamed == []
    failures = {e["item_id"] for e in logs if e["event"] == "download failed"}
    assert failures == {"refused", "missing", "lied"}

"""The download engines beyond the fault server: curl's error table, HTTPS with a CA
bundle, and an HTTP proxy — each with both engines."""

from __future__ import annotations

import http.server
import ssl
import threading
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pycurl
import pytest
import trustme

from runtime import Pipeline
from runtime.core.curl import CURL_ERRORS, translate_curl
from runtime.core.errors import FAILURE_KINDS, StalledError
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

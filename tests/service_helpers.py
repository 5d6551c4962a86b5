"""Helpers of the job service's tests: the real server in a subprocess, a gated file
server, an SSE reader."""

from __future__ import annotations

import contextlib
import http.server
import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import threading
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from runtime.service.client import read_sse

TOKEN = "test-token-0123456789"  # noqa: S105 - a test server's token
SECRET = "webhook-secret"  # noqa: S105
START_TIMEOUT = 60.0
TIMEOUT = 120.0
BODY_SIZE = 2048


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")


@contextlib.contextmanager
def headless_chromium(
    flags: tuple[str, ...] = (),
    prefs: dict[str, Any] | None = None,
    capabilities: dict[str, Any] | None = None,
) -> Iterator[Any]:
    """Debian's chromium driven by Selenium, headless; skipped where it is not installed
    (a failure under ``CI``, whose ``.ci/run`` installs it)."""
    if not (CHROMIUM and DRIVER):
        if os.environ.get("CI"):
            pytest.fail("CI must install chromium and chromium-driver (see .ci/run)")
        pytest.skip("needs Debian's chromium and chromium-driver")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service as DriverService

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", *flags):
        options.add_argument(flag)
    if prefs:
        options.add_experimental_option("prefs", prefs)
    for key, value in (capabilities or {}).items():
        options.set_capability(key, value)
    driver = webdriver.Chrome(service=DriverService(executable_path=DRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()


class FileServer:
    """Files ``/f/<n>`` of ``BODY_SIZE`` bytes on 127.0.0.1. The first ``free`` requests
    are answered at once; later ones wait for ``gate``. Counts requests per path, and
    sets ``late`` for a request that arrives while ``watching`` is set."""

    def __init__(self, free: int | None = None, address: str = "127.0.0.1") -> None:
        self.free = free
        self.gate = threading.Event()
        self.watching = threading.Event()
        self.late = threading.Event()
        self.counts: Counter[str] = Counter()
        self.lock = threading.Lock()
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                with owner.lock:
                    owner.counts[self.path] += 1
                    served = sum(owner.counts.values())
                if owner.watching.is_set():
                    owner.late.set()
                if self.path.startswith("/to?"):  # a redirect to the url after "?"
                    self.send_response(302)
                    self.send_header("Location", self.path[len("/to?") :])
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                if owner.free is not None and served > owner.free:
                    owner.gate.wait(TIMEOUT)
                body = self.path.encode().ljust(BODY_SIZE, b".")
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                with contextlib.suppress(OSError):  # the client gave up (paused, cancelled)
                    self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer((address, 0), Handler)
        self.server.daemon_threads = True
        self.base = f"http://{address}:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def items(self, n: int, prefix: str = "") -> list[dict[str, Any]]:
        """``n`` items of this server."""
        return [{"url": f"{self.base}/f/{prefix}{i}", "id": f"{prefix}{i}"} for i in range(n)]

    def close(self) -> None:
        """Release waiting requests and stop."""
        self.gate.set()
        self.server.shutdown()
        self.server.server_close()


def write_config(folder: Path, **service: Any) -> Path:
    """A service config in ``folder``: port 0, loopback allowed, quick retries."""
    folder.mkdir(parents=True, exist_ok=True)
    values = {
        "data_dir": str(folder / "data"),
        "port": 0,
        "token": TOKEN,
        "allow_networks": ["127.0.0.1/32"],
        "webhook_secret": SECRET,
        "webhook_backoff": 0.05,
        "progress_interval": 0.2,
        "max_running_jobs": 2,
        **service,
    }
    lines = ["[service]"]
    lines += [f"{k} = {json.dumps(v)}" for k, v in values.items()]
    lines += [
        "[state]",
        "persist_interval = 0.05",
        "[retry]",
        "backoff_initial = 0.01",
        "[download]",
        "connect_timeout = 5.0",
    ]
    path = folder / "service.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


class Service:
    """``python -m runtime serve CONFIG`` in a subprocess."""

    def __init__(self, config: Path) -> None:
        self.config = config
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        env.pop("CONVEYOR_SERVICE_TOKEN", None)
        self.process = subprocess.Popen(
            [sys.executable, "-m", "runtime", "serve", str(config), "--log-format", "json"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            env=env,
            text=True,
        )
        self.base = self._wait_listening()
        self.headers = {"Authorization": f"Bearer {TOKEN}"}

    def _wait_listening(self) -> str:
        # A thread reads stderr from the start (select() on the pipe would miss lines
        # already buffered by an earlier readline); this waits for its lines.
        self.log: list[str] = []
        lines: queue.Queue[str] = queue.Queue()
        self._drainer = threading.Thread(target=self._drain, args=(lines,), daemon=True)
        self._drainer.start()
        while True:
            try:
                line = lines.get(timeout=START_TIMEOUT)
            except queue.Empty:
                line = ""
            if not line:
                self.process.kill()
                raise AssertionError(f"the service did not start: {''.join(self.log)}")
            if "listening on " in line:
                return line.split("listening on ")[1].split()[0]

    def _drain(self, lines: queue.Queue[str]) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            self.log.append(line)
            lines.put(line)
        lines.put("")  # the end of the output

    def url(self, path: str) -> str:
        """An absolute url of this service."""
        return self.base + path

    def call(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        """An authorised request."""
        headers = {**self.headers, **kwargs.pop("headers", {})}
        return requests.request(method, self.url(path), headers=headers, timeout=60, **kwargs)

    def submit(self, items: list[dict[str, Any]], **body: Any) -> dict[str, Any]:
        """POST a job; return the 202's document."""
        headers = body.pop("headers", {})
        answer = self.call("POST", "/v1/jobs", json={"items": items, **body}, headers=headers)
        assert answer.status_code == 202, answer.text
        return dict(answer.json())

    def events(self, job_id: str, last: int = 0) -> Iterator[dict[str, Any]]:
        """The job's SSE events after ``last``, until the stream ends."""
        headers = {**self.headers, "Last-Event-ID": str(last)}
        with requests.get(self.url(f"/v1/jobs/{job_id}/events"), headers=headers, stream=True,
                          timeout=(10, TIMEOUT)) as response:  # fmt: skip
            assert response.status_code == 200, response.text
            for event_id, _, data in read_sse(response):
                event = json.loads(data)
                assert event["seq"] is None or int(event_id or 0) == event["seq"], (event_id, event)
                yield event

    def wait_for(self, job_id: str, status: str) -> dict[str, Any]:
        """Follow the events until the job reaches ``status``; return the job."""
        for event in self.events(job_id):
            if event["type"] == "status" and event["status"] == status:
                break
        job = self.call("GET", f"/v1/jobs/{job_id}").json()
        assert job["status"] == status, job
        return dict(job)

    def kill(self) -> None:
        """SIGKILL."""
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(30)
        self._close_pipe()

    def _close_pipe(self) -> None:
        self._drainer.join(30)  # it ends with the pipe's end of file
        assert self.process.stderr is not None
        self.process.stderr.close()

    def stop(self) -> int:
        """SIGTERM and wait."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(30)
            self._close_pipe()
        return self.process.returncode

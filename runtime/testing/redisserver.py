"""``RedisServer``: a real ``redis-server`` for tests and benchmarks, on 127.0.0.1.

It listens on a free port, keeps nothing on disk (no RDB, no AOF, its directory a
temporary one) and stops with its ``with`` block: killed if it does not stop on SIGTERM.
"""

from __future__ import annotations

import shutil
import socket
import ssl
import subprocess
import tempfile
import time
from typing import Self

__all__ = ["RedisServer"]


class RedisServer:
    """``with RedisServer() as server: server.url`` (``redis://127.0.0.1:PORT/0``)."""

    def __init__(
        self,
        executable: str | None = None,
        *,
        password: str = "",
        tls: tuple[str, str, str] | None = None,
    ) -> None:
        """``password``: required of every client (``requirepass``; in ``url``).
        ``tls``: ``(certificate, key, CA certificate)`` files: the server speaks TLS
        only, and ``url`` is a ``rediss://`` one naming the CA (``ssl_ca_certs``)."""
        found = executable or shutil.which("redis-server") or "/usr/bin/redis-server"
        self.executable = found
        self.password = password
        self.tls = tls
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None
        self._dir: tempfile.TemporaryDirectory[str] | None = None

    @property
    def url(self) -> str:
        """Where to connect."""
        auth = f":{self.password}@" if self.password else ""
        if self.tls:
            return f"rediss://{auth}127.0.0.1:{self.port}/0?ssl_ca_certs={self.tls[2]}"
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 10.0) -> None:
        """Start the server on a free port and wait until it answers a PING.

        Raises:
            RuntimeError: it is not installed, or did not come up in ``timeout`` seconds.
        """
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        self.start_on(port, timeout)

    def start_on(self, port: int, timeout: float = 10.0) -> None:
        """Start the server on ``port`` (again, after ``stop``: empty, as a restarted
        Redis without persistence is) and wait until it answers a PING."""
        if not shutil.which(self.executable):
            raise RuntimeError(
                f"{self.executable} not found: install Redis (Debian: apt-get install redis-server)"
            )
        self.port = port
        self._dir = tempfile.TemporaryDirectory(prefix="conveyor-redis-")
        ports = ["--port", str(self.port)]
        if self.tls:
            cert, key, ca = self.tls
            ports = ["--port", "0", "--tls-port", str(self.port), "--tls-cert-file", cert,
                     "--tls-key-file", key, "--tls-ca-cert-file", ca,
                     "--tls-auth-clients", "no"]  # fmt: skip
        self.process = subprocess.Popen(
            [self.executable, *ports, "--bind", "127.0.0.1",
             "--save", "", "--appendonly", "no", "--dir", self._dir.name,
             "--protected-mode", "yes", "--loglevel", "warning",
             *(["--requirepass", self.password] if self.password else [])],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                break
            try:
                if self._answers():
                    return
            except OSError:
                pass
            time.sleep(0.02)
        self.stop()
        raise RuntimeError(f"redis-server did not start on port {self.port}")

    def _answers(self) -> bool:
        """Whether the server answers a PING (over TLS if it speaks TLS)."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as raw:
            if not self.tls:
                raw.sendall(b"PING\r\n")
                return raw.recv(64).startswith((b"+PONG", b"-NOAUTH"))
            context = ssl.create_default_context(cafile=self.tls[2])
            with context.wrap_socket(raw, server_hostname="127.0.0.1") as conn:
                conn.sendall(b"PING\r\n")
                return conn.recv(64).startswith((b"+PONG", b"-NOAUTH"))

    def stop(self) -> None:
        """Stop the server (SIGTERM, then SIGKILL) and remove its directory."""
        if self.process is not None:
            self.process.terminate()
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
            self.process = None
        if self._dir is not None:
            self._dir.cleanup()
            self._dir = None

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

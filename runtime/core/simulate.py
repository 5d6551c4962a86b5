"""The seeded offline transport of ``run --simulate-downloads`` (settings: ``[simulate]``).

No network: each url's size comes from its digest, and its latency, 503s (at
``failure_rate``) and 429s (from ``throttle_hosts``) from the seed, so a simulated run is
the same whichever downloader serves which item. The downloaders of the small-file lane
run it inside ``runtime.core.engine.TransportEngine``, the loop real runs use.
"""

from __future__ import annotations

import hashlib
import random
import threading
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from runtime.core.clock import Clock
from runtime.core.config import SimulateConfig
from runtime.core.engine import TransportEngine
from runtime.core.transfer import Transfer

if TYPE_CHECKING:
    from runtime.core.transport import Response, Transport

__all__ = ["SimulatedTransportFactory"]


_SIM_BLOCK = random.Random(0).randbytes(65536)


class _SimulatedResponse:
    def __init__(self, status: int, size: int, seed: int, retry_after: float = 0.0) -> None:
        self.status = status
        self.size = size
        self.headers: Mapping[str, str] = {"Content-Length": str(size)}
        if retry_after:
            self.headers = {**self.headers, "Retry-After": str(round(retry_after))}
        self._seed = seed

    def iter_bytes(self, chunk_size: int) -> Iterator[bytes]:
        # A fixed random block behind a per-url prefix: distinct bodies, no per-request
        # cost of generating random bytes (that dominated simulated runs).
        step = max(1, min(chunk_size, len(_SIM_BLOCK)))
        block = self._seed.to_bytes(8, "big") + _SIM_BLOCK[8:step]
        left = self.size
        while left > 0:
            piece = block[: min(left, len(block))]
            left -= len(piece)
            yield piece

    def close(self) -> None:
        pass


class _SimulatedTransport:
    def __init__(self, factory: SimulatedTransportFactory, *, wait: bool = True) -> None:
        self._factory = factory
        self._wait = wait  # sleep the latency here (else the engine waited for it)

    def open(self, url: str, headers: Mapping[str, str]) -> Response:
        return self._factory.respond(url, wait=self._wait)

    def close(self) -> None:
        pass


class SimulatedTransportFactory:
    """Offline transports whose sizes, latencies and failures follow one seed.

    Each url's n-th request draws from ``Random(seed, url, n)``, so a run is the same
    whichever downloader serves which item.
    """

    def __init__(self, config: SimulateConfig, clock: Clock) -> None:
        self.config = config
        self.clock = clock
        self._lock = threading.Lock()
        self._requests: dict[str, int] = {}
        self._throttled = {h.lower() for h in config.throttle_hosts}

    def __call__(self) -> Transport:
        """Return a transport for one downloader."""
        return _SimulatedTransport(self)

    def make_engine(self, transfer: Transfer) -> TransportEngine:
        """The engine of a downloader of the small-file lane: the simulated requests wait
        their latency in the downloader's loop, many at once, as with libcurl."""
        return TransportEngine(transfer, _SimulatedTransport(self, wait=False), self.config.latency)

    def __reduce__(self) -> tuple[Any, ...]:
        # In a worker process: the same seed, settings and clock (which must pickle).
        return (SimulatedTransportFactory, (self.config, self.clock))

    def respond(self, url: str, *, wait: bool = True) -> Response:
        """Answer one simulated request (after its latency, when ``wait``)."""
        digest = hashlib.sha256(f"{self.config.seed}\x00{url}".encode()).digest()
        url_seed = int.from_bytes(digest[:8], "big")
        low, high = self.config.min_size, self.config.max_size
        # From the url's own digest, not a Random seeded per request (~6 µs each).
        size = low + int.from_bytes(digest[8:16], "big") % (high - low + 1)
        if self.config.latency and wait:
            self.clock.sleep(self.config.latency)
        if self.config.throttle_hosts and urlsplit(url).hostname in self._throttled:
            return _SimulatedResponse(429, 0, url_seed, self.config.throttle_retry_after)
        if self.config.failure_rate:  # only then does the request's number matter
            with self._lock:
                n = self._requests.get(url, 0)
                self._requests[url] = n + 1
            if random.Random(url_seed + n + 1).random() < self.config.failure_rate:
                return _SimulatedResponse(503, 0, url_seed)
        return _SimulatedResponse(200, size, url_seed)

"""What is known about each host: its key (``host_of``), its live state (``HostState``,
with its breaker) and its statistics in their one shape (``HostStatus``, kept as a
``host_record``)."""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass, field, fields
from typing import Any
from urllib.parse import urlsplit

from messages import HostStatus
from runtime.core.breaker import CircuitBreaker

__all__ = ["HostState", "host_of", "host_record", "host_status"]


_BLANK = re.compile("[\x00-\x20]")
"""Characters urlsplit strips or removes: left to it."""


@functools.lru_cache(maxsize=1 << 16)
def host_of(url: str) -> str:
    """The breaker and statistics key of a url: ``host:port``.

    Cached: the ledger asks for the host of each item in flight several times.
    """
    # The common case without urlsplit (a third of ingest's time): a lower-case scheme,
    # no user info, no IPv6 literal, no or a plain port.
    scheme, sep, rest = url.partition("://")
    if sep and (scheme == "http" or scheme == "https") and not _BLANK.search(url):
        netloc = rest.partition("/")[0].partition("?")[0].partition("#")[0]
        if (
            netloc.isascii()
            and "@" not in netloc
            and "[" not in netloc
            and "]" not in netloc
            and "\\" not in netloc
        ):
            host, colon, port = netloc.partition(":")
            default = 443 if scheme == "https" else 80
            if not colon:
                return f"{host.lower()}:{default}"
            if port.isdigit() and int(port) <= 65535:  # ascii: the netloc is
                return f"{host.lower()}:{int(port) or default}"
    parts = urlsplit(url)
    number = parts.port or (443 if parts.scheme == "https" else 80)
    return f"{(parts.hostname or '').lower()}:{number}"


@dataclass(slots=True)
class HostState:
    """Everything known about one host."""

    breaker: CircuitBreaker
    active: int = 0
    not_before: float = 0.0
    attempts: int = 0
    successes: int = 0
    retries: int = 0
    bytes: int = 0
    failures: dict[str, int] = field(default_factory=dict)
    cooldown_reason: str = ""
    """Why the host is cooling down (empty when it is not)."""
    cooldown_until: float = 0.0
    """Wall-clock end of the cool-down, for ``status`` (0: none)."""

    def status(self, key: str, now: float) -> HostStatus:
        """The statistics as they are shown, sent and kept (``now``: for the cool-down)."""
        cooldown = max(0.0, self.not_before - now)
        return HostStatus(
            host=key,
            active=self.active,
            attempts=self.attempts,
            successes=self.successes,
            failures=sum(self.failures.values()),
            failures_by_kind=dict(self.failures),
            retries=self.retries,
            bytes=self.bytes,
            breaker=self.breaker.state,
            times_opened=self.breaker.times_opened,
            window=len(self.breaker.outcomes),
            window_failures=self.breaker.failures,
            breaker_reason=self.breaker.reason if self.breaker.state != "closed" else "",
            cooldown=cooldown,
            cooldown_until=self.cooldown_until if cooldown else 0.0,
            cooldown_reason=self.cooldown_reason if cooldown else "",
        )


def host_record(status: HostStatus) -> dict[str, Any]:
    """A host's statistics as plain data — what the state keeps, ``status --json`` shows
    and ``RunSummary.stats["hosts"]`` holds: the fields of ``HostStatus`` but ``host``,
    with the failures by kind under ``failures``. ``host_status`` reads it back."""
    record = {f.name: getattr(status, f.name) for f in fields(HostStatus)}
    del record["host"]
    record["failures"] = dict(record.pop("failures_by_kind"))
    return record


def host_status(host: str, record: dict[str, Any]) -> HostStatus:
    """A ``host_record`` (or what an earlier version kept) as a ``HostStatus`` again."""
    known = {f.name for f in fields(HostStatus)}
    values = {k: v for k, v in record.items() if k in known}
    if isinstance(values.get("failures"), dict):
        values["failures_by_kind"] = values["failures"]
        values["failures"] = sum(values["failures"].values())
    values.setdefault("failures", sum(values.get("failures_by_kind", {}).values()))
    for key in ("active", "attempts", "successes", "retries", "bytes"):
        values.setdefault(key, 0)
    values.setdefault("breaker", "closed")
    return HostStatus(host=host, **values)

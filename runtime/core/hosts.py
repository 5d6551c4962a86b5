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

__all__ = ["HostState", "host_of", "host_record", "host_status", "split_plain_url"]


_PLAIN_URL = re.compile(
    r"(https?)://([a-z0-9.-]+)(?::([0-9]{1,5}))?(/[^?#\x00-\x20\x7f-\x9f]*)?"
    r"(?:[?#][^\x00-\x20\x7f-\x9f]*)?"
)


def split_plain_url(url: str) -> tuple[str, str, int | None, str] | None:
    """``(scheme, host, port, path)`` of a plain url — ``http(s)://host[:port]/path…``
    with a lower-case host name or IPv4 address, no user info, no whitespace or control
    character — found without ``urlsplit`` (a third of parsing an entry); None for any
    other url, which ``urlsplit`` then takes apart."""
    match = _PLAIN_URL.fullmatch(url)
    if match is None:
        return None
    scheme, host, port, path = match.groups()
    return scheme, host, int(port) if port else None, path or ""


@functools.lru_cache(maxsize=1 << 16)
def host_of(url: str) -> str:
    """The breaker and statistics key of a url: ``host:port``.

    Cached: the ledger asks for the host of each item in flight several times.
    """
    plain = split_plain_url(url)
    if plain is not None and (plain[2] or 0) <= 65535:
        scheme, host, port, _ = plain
        return f"{host}:{port or (443 if scheme == 'https' else 80)}"
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

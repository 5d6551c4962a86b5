"""Signed webhooks: a job's summary POSTed to its ``callback_url`` when it ends.

Each delivery has an id (``X-Conveyor-Delivery``) and is sent until the receiver answers
2xx, with exponential backoff (tenacity) for at most ``service.webhook_timeout`` seconds,
every attempt recorded in the job store — so a restart of the service goes on with the
deliveries still pending (at least once: receivers de-duplicate on the delivery id).

Every attempt is signed afresh::

    X-Conveyor-Timestamp: <unix seconds>
    X-Conveyor-Signature: sha256=<hex HMAC-SHA256(secret, timestamp + "." + body)>

``verify_signature`` is the receiver's side (and the README's ten lines).
"""

from __future__ import annotations

import hashlib
import hmac
import threading
import time
from collections.abc import Callable, Mapping

import requests
import tenacity

from runtime.core.clock import Clock, SystemClock
from runtime.core.logs import get_logger
from runtime.core.netguard import NetworkGuard, find_blocked
from runtime.core.transport import requests_adapter
from runtime.service.jobstore import Delivery, JobStore

__all__ = ["Deliverer", "sign", "verify_signature"]

log = get_logger("service.webhooks")

MAX_WAIT = 300.0
"""Longest wait between two attempts of one delivery."""
TOLERANCE = 300.0
"""Seconds a receiver should accept a timestamp for (older: a replay)."""


def sign(secret: str, timestamp: str, body: bytes) -> str:
    """The ``X-Conveyor-Signature`` value of ``body`` sent at ``timestamp``."""
    mac = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


def verify_signature(
    secret: str,
    headers: Mapping[str, str],
    body: bytes,
    *,
    now: float | None = None,
    tolerance: float = TOLERANCE,
) -> bool:
    """Whether a delivery is authentic and fresh: the signature matches and the timestamp
    is within ``tolerance`` seconds. (Also remember ``X-Conveyor-Delivery`` ids to drop a
    delivery seen before.)"""
    lowered = {k.lower(): v for k, v in headers.items()}
    timestamp = lowered.get("x-conveyor-timestamp", "")
    given = lowered.get("x-conveyor-signature", "")
    try:
        age = abs((time.time() if now is None else now) - float(timestamp))
    except ValueError:
        return False
    return age <= tolerance and hmac.compare_digest(given, sign(secret, timestamp, body))


class _UndeliveredError(Exception):
    """An attempt that did not get a 2xx."""


class Deliverer:
    """Sends pending deliveries, one thread each, until delivered, given up or stopped."""

    def __init__(
        self,
        store: JobStore,
        secret: str,
        guard: NetworkGuard,
        *,
        timeout: float,
        backoff: float,
        on_attempt: Callable[[Delivery, dict[str, object]], None] | None = None,
        clock: Clock | None = None,
    ) -> None:
        self.store = store
        self.clock = clock or SystemClock()
        self.secret = secret
        self.guard = guard
        self.timeout = timeout
        self.backoff = backoff
        self.on_attempt = on_attempt
        self.stopping = threading.Event()
        self.threads: dict[str, threading.Thread] = {}
        self.results = {"delivered": 0, "failed_attempt": 0, "given_up": 0}
        self._lock = threading.Lock()

    def resume(self) -> None:
        """Start every delivery the store still has pending (after a restart)."""
        for delivery in self.store.pending_deliveries():
            self.start(delivery)

    def start(self, delivery: Delivery) -> None:
        """Deliver in the background."""
        with self._lock:
            if delivery.id in self.threads or self.stopping.is_set():
                return
            thread = threading.Thread(
                target=self._deliver,
                args=(delivery,),
                name=f"webhook-{delivery.id[:8]}",
                daemon=True,
            )
            self.threads[delivery.id] = thread
        thread.start()

    def stop(self, wait: float = 5.0) -> None:
        """Stop retrying (what is pending stays pending for the next start)."""
        self.stopping.set()
        for thread in list(self.threads.values()):
            thread.join(wait)

    def _deliver(self, delivery: Delivery) -> None:
        session = requests.Session()
        session.trust_env = False
        adapter = requests_adapter(self.guard)
        session.mount("http://", adapter)
        session.mount("https://", adapter)
        attempt_no = len(delivery.attempts)
        clock = self.clock

        def attempt() -> None:
            nonlocal attempt_no
            attempt_no += 1
            timestamp = str(int(clock.wall()))
            headers = {
                "Content-Type": "application/json",
                "User-Agent": "conveyor-webhook",
                "X-Conveyor-Delivery": delivery.id,
                "X-Conveyor-Attempt": str(attempt_no),
                "X-Conveyor-Timestamp": timestamp,
                "X-Conveyor-Signature": sign(self.secret, timestamp, delivery.body),
            }
            record: dict[str, object] = {"attempt": attempt_no, "at": clock.wall()}
            try:
                answer = session.post(
                    delivery.url,
                    data=delivery.body,
                    headers=headers,
                    timeout=10,
                    allow_redirects=False,
                )
                record["status"] = answer.status_code
                ok = 200 <= answer.status_code < 300
            except requests.RequestException as exc:
                blocked = find_blocked(exc)
                if blocked is not None:  # no point in trying again
                    self._record(delivery, {**record, "error": str(blocked), "gave_up": True},
                                 "failed")  # fmt: skip
                    raise _BlockedError from exc
                record["error"] = f"{type(exc).__name__}: {exc}"[:500]
                ok = False
            self._record(delivery, record, "delivered" if ok else "pending")
            if not ok:
                raise _UndeliveredError(str(record.get("status") or record.get("error")))

        def sleep(seconds: float) -> None:
            if clock.wait(self.stopping, seconds):
                raise _StoppedError

        def expired(_state: tenacity.RetryCallState) -> bool:
            # From the delivery's creation, on the injected clock: a restart does not
            # give a delivery a new timeout.
            return clock.wall() - delivery.created_at >= self.timeout

        retrying = tenacity.Retrying(
            stop=expired,
            wait=tenacity.wait_exponential(multiplier=self.backoff, max=MAX_WAIT),
            retry=tenacity.retry_if_exception_type(_UndeliveredError),
            sleep=sleep,
            reraise=True,
        )
        try:
            retrying(attempt)
        except _UndeliveredError:
            self._record(delivery, {"gave_up": True, "at": clock.wall()}, "failed")
            log.warning("webhook given up", delivery=delivery.id, url=delivery.url)
        except (_StoppedError, _BlockedError):
            pass
        finally:
            session.close()
            with self._lock:
                self.threads.pop(delivery.id, None)

    def _record(self, delivery: Delivery, record: dict[str, object], status: str) -> None:
        self.store.record_attempt(delivery.id, record, status)
        with self._lock:
            if record.get("gave_up"):
                self.results["given_up"] += 1
            elif status == "delivered":
                self.results["delivered"] += 1
            else:
                self.results["failed_attempt"] += 1
        if self.on_attempt is not None:
            self.on_attempt(delivery, {**record, "status_after": status})


class _BlockedError(Exception):
    """The network guard refused the callback's address: given up at once."""


class _StoppedError(Exception):
    """The service is stopping: the delivery stays pending."""

"""A DNS lookup with a deadline, for the service's request handlers (the submit-time
check of a ``callback_url``): a resolver that never answers must not hold a request."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence

from runtime.core.netguard import AddrInfo, Lookup, system_lookup

__all__ = ["Resolver"]


class Resolver:
    """``getaddrinfo`` with a deadline: each lookup runs on a daemon thread, and the
    caller waits at most ``timeout`` seconds for it (a slot, then the answer). At most
    ``most`` lookups run at once, so names whose resolver never answers tie up that many
    threads at worst, each until the system resolver gives up."""

    def __init__(self, timeout: float, most: int = 16, lookup: Lookup = system_lookup) -> None:
        self.timeout = timeout
        self.lookup = lookup
        self._slots = threading.BoundedSemaphore(most)

    def __call__(self, host: str, port: int) -> Sequence[AddrInfo]:
        """``host``'s addresses.

        Raises:
            TimeoutError: no answer within ``timeout`` seconds.
            OSError, UnicodeError: what the lookup raised.
        """
        deadline = time.monotonic() + self.timeout
        if not self._slots.acquire(timeout=self.timeout):
            raise TimeoutError(f"{host} did not resolve within {self.timeout:g} s (busy)")
        answer: list[Sequence[AddrInfo] | BaseException] = []
        done = threading.Event()

        def resolve() -> None:
            try:
                answer.append(self.lookup(host, port))
            except Exception as exc:  # noqa: BLE001 - handed to the waiting caller
                answer.append(exc)
            finally:
                self._slots.release()
                done.set()

        threading.Thread(target=resolve, name=f"resolve {host}", daemon=True).start()
        if not done.wait(max(0.0, deadline - time.monotonic())):
            raise TimeoutError(f"{host} did not resolve within {self.timeout:g} s")
        (result,) = answer
        if isinstance(result, BaseException):
            raise result
        return result

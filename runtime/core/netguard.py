"""The network guard: refuse connections to internal addresses (server-side request forgery).

A service that downloads URLs its clients name must not let them reach the machine's own
loopback services, the private network behind it, link-local metadata endpoints or
multicast groups. The guard is consulted **when a socket is about to connect** — for the
first request and for every redirect, with the address the name resolved to at that
moment — so a DNS answer that changes between a check and the connection (rebinding)
does not get around it. Both engines use it: libcurl through its open-socket callback,
requests through a connection class that resolves, checks and then connects.

Enabled by ``download.block_private_networks``; ``download.allow_networks`` lists the
networks (CIDR) that are allowed anyway. The job service always enables it.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterable
from typing import Any

from runtime.core.errors import FetchError

__all__ = [
    "BlockedAddressError",
    "NetworkGuard",
    "blocked_error",
    "find_blocked",
    "guard_of",
    "guarded_connection",
    "parse_networks",
]

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class BlockedAddressError(OSError):
    """A connection the guard refused (an ``OSError``, so socket code passes it on)."""


def parse_networks(values: Iterable[str], where: str) -> tuple[Network, ...]:
    """Parse CIDR networks (a bare address is a /32 or /128).

    Raises:
        ValueError: a value is not a network; the message names ``where``.
    """
    networks = []
    for value in values:
        try:
            networks.append(ipaddress.ip_network(value.strip(), strict=False))
        except ValueError as exc:
            raise ValueError(f"{where}: {value!r} is not an IP network ({exc})") from None
    return tuple(networks)


class NetworkGuard:
    """Says whether a connection to an IP address may be made."""

    def __init__(self, allow: Iterable[str] = ()) -> None:
        self.allow = parse_networks(allow, "allow_networks")

    def allows(self, address: str) -> bool:
        """Whether ``address`` (an IPv4 or IPv6 literal) may be connected to."""
        try:
            ip = ipaddress.ip_address(address.split("%", 1)[0])
        except ValueError:
            return False
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        if any(ip in net for net in self.allow):
            return True
        return ip.is_global and not ip.is_multicast

    def check(self, address: str, host: str = "") -> None:
        """Raise ``BlockedAddressError`` when ``address`` is not allowed."""
        if not self.allows(address):
            name = f"{host} resolves to {address}" if host and host != address else address
            raise BlockedAddressError(
                f"refused to connect: {name} is a loopback, private, link-local or "
                "multicast address (allow it with allow_networks)"
            )


def find_blocked(exc: BaseException) -> BlockedAddressError | None:
    """The guard's refusal inside whatever wrappers HTTP libraries put around it."""
    seen: set[int] = set()
    todo: list[object] = [exc]
    while todo:
        one = todo.pop()
        if not isinstance(one, BaseException) or id(one) in seen:
            continue
        seen.add(id(one))
        if isinstance(one, BlockedAddressError):
            return one
        todo += [one.__cause__, one.__context__, getattr(one, "reason", None), *one.args]
    return None


def guard_of(config: Any) -> NetworkGuard | None:
    """The guard a ``DownloadConfig`` asks for, or None when it is off."""
    if not config.block_private_networks:
        return None
    return NetworkGuard(config.allow_networks)


def blocked_error(message: str) -> FetchError:
    """The ``FetchError`` of a refused connection: permanent, about this url only."""
    error = FetchError(message, error_kind="blocked", permanent=True)
    error.scope = "url"
    return error


def guarded_connection(
    guard: NetworkGuard,
    address: tuple[str, int],
    timeout: Any,
    source_address: tuple[str, int] | None = None,
    socket_options: Any = None,
) -> socket.socket:
    """``urllib3.util.connection.create_connection`` with the guard between resolving and
    connecting: each resolved address is checked before a socket is opened to it.

    Raises:
        BlockedAddressError: every address the name resolved to is refused.
        OSError: resolving or connecting failed.
    """
    host, port = address
    host = host.strip("[]")
    refused: BlockedAddressError | None = None
    error: OSError | None = None
    for family, kind, proto, _, sockaddr in socket.getaddrinfo(host, port, 0, socket.SOCK_STREAM):
        try:
            guard.check(str(sockaddr[0]), host)
        except BlockedAddressError as exc:
            refused = exc
            continue
        sock = socket.socket(family, kind, proto)
        try:
            for option in socket_options or ():
                sock.setsockopt(*option)
            if isinstance(timeout, int | float):  # urllib3 passes a sentinel for "default"
                sock.settimeout(timeout)
            if source_address:
                sock.bind(source_address)
            sock.connect(sockaddr)
            return sock
        except OSError as exc:
            error = exc
            sock.close()
    if error is not None:
        raise error
    if refused is not None:
        raise refused
    raise OSError(f"getaddrinfo returned no address for {host}")

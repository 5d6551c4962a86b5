"""The network guard: refuse connections to internal addresses (server-side request forgery).

A service that downloads URLs its clients name must not let them reach the machine's own
loopback services, the private network behind it, link-local metadata endpoints or
multicast groups. The guard is consulted **when a socket is about to connect** — for the
first request and for every redirect, with the address the name resolved to at that
moment — so a DNS answer that changes between a check and the connection (rebinding)
does not get around it. Both engines use it: libcurl through its open-socket callback,
requests through a connection class that resolves, checks and then connects.

Enabled by ``download.block_private_networks``; ``download.allow_networks`` lists the
networks (CIDR) that are allowed anyway. The job service always enables it, with
``service.allow_networks``. A refusal says what was refused — the address, the name that
resolved to it, and for a redirect its number, where it came from and where it went —
and names the setting that would allow it.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import socket
import urllib.parse
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any

from runtime.core.errors import FetchError

if TYPE_CHECKING:  # (config imports this module: only for the type)
    from runtime.core.config import DownloadConfig

__all__ = [
    "DOWNLOAD_SETTING",
    "SERVICE_SETTING",
    "AddrInfo",
    "BlockedAddressError",
    "Lookup",
    "NetworkGuard",
    "Redirect",
    "allowed_addresses",
    "blocked_error",
    "check_host",
    "find_blocked",
    "guard_of",
    "guarded_connection",
    "parse_networks",
    "refusal",
    "system_lookup",
]

Network = ipaddress.IPv4Network | ipaddress.IPv6Network

DOWNLOAD_SETTING = "download.allow_networks"
"""The setting that allows networks to ``run``'s downloads."""
SERVICE_SETTING = "service.allow_networks"
"""The setting that allows networks to the job service's jobs and webhooks."""


@dataclasses.dataclass(frozen=True, slots=True)
class Redirect:
    """The redirect a refused connection was for."""

    hop: int
    """Its number in the chain (1: the first redirect)."""
    source: str
    """The url that answered with the redirect."""
    target: str
    """The url it redirected to."""

    def __str__(self) -> str:
        source = urllib.parse.urlsplit(self.source).netloc or self.source
        return f"redirect {self.hop} (from {source}) to {self.target}"


class BlockedAddressError(OSError):
    """A connection the guard refused (an ``OSError``, so socket code passes it on).

    ``address``, ``host`` and ``setting`` say what was refused and what would allow it;
    ``redirected`` gives the same refusal told as a redirect's.
    """

    def __init__(
        self, message: str, address: str = "", host: str = "", setting: str = DOWNLOAD_SETTING
    ) -> None:
        super().__init__(message)
        self.address = address
        self.host = host
        self.setting = setting

    def redirected(self, redirect: Redirect) -> BlockedAddressError:
        """This refusal, saying that it was ``redirect``'s connection."""
        return BlockedAddressError(
            refusal(self.address, self.host, self.setting, redirect),
            self.address,
            self.host,
            self.setting,
        )


_KINDS = (
    ("is_loopback", "a loopback"),
    ("is_link_local", "a link-local"),
    ("is_multicast", "a multicast"),
    ("is_private", "a private"),
    ("is_unspecified", "an unspecified"),
    ("is_reserved", "a reserved"),
)


def _kind(address: str) -> str:
    """``a loopback``, ``a private``, … (what sort of address ``address`` is)."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return "not an IP"
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return next((text for attr, text in _KINDS if getattr(ip, attr)), "a non-global")


def refusal(address: str, host: str, setting: str, redirect: Redirect | None = None) -> str:
    """The message of a refused connection to ``address`` (what ``host`` resolved to).

    ``refused to connect: [redirect N (from HOST:PORT) to URL: ]NAME resolves to ADDRESS,
    a loopback address (allow it with SETTING)``.
    """
    kind = f"{_kind(address)} address"
    if host and host.strip("[]") != address:
        what = f"{host} resolves to {address}, {kind}"
    else:
        what = f"{address} is {kind}"
    where = f"{redirect}: " if redirect is not None else ""
    return f"refused to connect: {where}{what} (allow it with {setting})"


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
    """Says whether a connection to an IP address may be made; ``setting`` is the config
    key of ``allow``, named in refusals."""

    def __init__(self, allow: Iterable[str] = (), setting: str = DOWNLOAD_SETTING) -> None:
        self.allow = parse_networks(allow, setting)
        self.setting = setting

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

    def check(self, address: str, host: str = "", redirect: Redirect | None = None) -> None:
        """Raise ``BlockedAddressError`` when ``address`` (what ``host`` resolved to, for
        ``redirect`` if it was one) is not allowed."""
        if not self.allows(address):
            raise BlockedAddressError(
                refusal(address, host, self.setting, redirect), address, host, self.setting
            )


AddrInfo = tuple[socket.AddressFamily, socket.SocketKind, int, str, tuple[Any, ...]]
"""One answer of ``socket.getaddrinfo``: family, type, protocol, canonical name, address."""
Lookup = Callable[[str, int], Sequence[AddrInfo]]
"""Resolves a host and port (as ``socket.getaddrinfo`` for stream sockets)."""


def system_lookup(host: str, port: int) -> Sequence[AddrInfo]:
    """``socket.getaddrinfo`` for stream sockets (the ``Lookup`` used by default)."""
    return socket.getaddrinfo(host, port, 0, socket.SOCK_STREAM)


def allowed_addresses(
    guard: NetworkGuard, host: str, port: int, lookup: Lookup = system_lookup
) -> list[AddrInfo]:
    """Resolve ``host`` now; the addresses the guard allows, in the resolver's order.

    Raises:
        BlockedAddressError: ``host`` resolves, but to no allowed address (the refusal of
            the first address).
        OSError: ``host`` does not resolve (or ``lookup`` failed: a ``TimeoutError``…).
        UnicodeError: ``host`` is not a valid name.
    """
    host = host.strip("[]")
    allowed: list[AddrInfo] = []
    refused: BlockedAddressError | None = None
    for info in lookup(host, port):
        try:
            guard.check(str(info[4][0]), host)
        except BlockedAddressError as exc:
            refused = refused or exc
            continue
        allowed.append(info)
    if allowed:
        return allowed
    if refused is not None:
        raise refused
    raise OSError(f"{host} resolves to no address")


def check_host(guard: NetworkGuard, host: str, port: int, lookup: Lookup = system_lookup) -> None:
    """Resolve ``host`` now and refuse it as a connection to it would be refused: when
    none of its addresses is allowed. (A connection is still checked when it is made.)
    ``lookup`` resolves (the service bounds the time it may take).

    Raises:
        BlockedAddressError: no address of ``host`` is allowed (the first one's refusal).
        OSError: ``host`` does not resolve, or not in time.
        UnicodeError: ``host`` is not a valid name.
    """
    allowed_addresses(guard, host, port, lookup)


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


def guard_of(config: DownloadConfig) -> NetworkGuard | None:
    """The guard a ``DownloadConfig`` asks for, or None when it is off. Its refusals name
    the config's ``allow_networks_setting`` (``DOWNLOAD_SETTING``; a job of the service:
    ``SERVICE_SETTING``)."""
    if not config.block_private_networks:
        return None
    return NetworkGuard(config.allow_networks, config.allow_networks_setting)


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
        BlockedAddressError: every address the name resolved to is refused (the first
            one's refusal).
        OSError: resolving or connecting failed.
    """
    host, port = address
    error: OSError | None = None
    for family, kind, proto, _, sockaddr in allowed_addresses(guard, host, port):
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
    raise error or OSError(f"{host} resolves to no address")  # (allowed_addresses has one)

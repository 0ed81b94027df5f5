"""Safe downloads of provider image URLs (docs/architecture.md rule 7): the SSRF guard.

A URL is fetched only when
- its scheme is http or https,
- its host matches the allowlist: an exact name (`cdn.example.com`, `127.0.0.1`) or a `.suffix`
  entry (`.example.com` matches `example.com` and any subdomain),
- every address we connect to is public, unless the host is listed by an exact entry (the tests
  and the demo list `127.0.0.1`). Link-local (cloud metadata at 169.254.169.254), multicast and
  unspecified addresses are refused even then.

We resolve the name ourselves, vet each address and connect to that vetted address (then check the
socket's peer again), so DNS rebinding between a check and the connect cannot slip through.
Redirects are followed by hand, each hop checked the same way. Proxies from the environment are
ignored (a proxy would connect on our behalf, out of the guard's sight). The body is read as a
stream with a byte cap, connect/read timeouts and an overall deadline.

Downstream webhooks (worker/delivery.py) use the same connections with `AnyPublicHost`: any name,
public addresses only unless the name is listed in NOTIFY_ALLOWED_HOSTS.
"""

from __future__ import annotations

import io
import ipaddress
import socket
import time
from collections.abc import Callable, Iterable
from typing import Any
from urllib.parse import urljoin, urlsplit

import requests
import urllib3
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

Resolver = Callable[..., list[tuple[Any, ...]]]

REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
GONE_STATUSES = frozenset({403, 404, 410})


class FetchFailure(Exception):
    """Base of every download error; `retryable` tells the caller whether trying again can help."""

    retryable: bool = False

    def __init__(self, message: str, *, url: str | None = None, status: int | None = None) -> None:
        super().__init__(message)
        self.url = url
        self.status = status


class FetchRefused(FetchFailure):
    """Refused by the guard before anything was sent (scheme, host, address, redirect limit)."""


class SourceGone(FetchFailure):
    """The source answered 403/404/410: the image expired or was removed at the provider."""


class TooLarge(FetchFailure):
    """The body is (or announces itself) larger than the byte cap."""


class FetchError(FetchFailure):
    """Any other failure (network, timeout, 5xx, unexpected status): worth retrying later."""

    retryable = True


# Cloud metadata services outside link-local space (AWS's IPv6 endpoint, Alibaba's 100.100.100.200).
METADATA_ADDRESSES = frozenset(
    ipaddress.ip_address(a) for a in ("169.254.169.254", "fd00:ec2::254", "100.100.100.200", "169.254.170.2")
)
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_NAT64_LOCAL = ipaddress.ip_network("64:ff9b:1::/48")
_IPV4_COMPATIBLE = ipaddress.ip_network("::/96")


def embedded_ipv4(
    ip: ipaddress.IPv4Address | ipaddress.IPv6Address,
) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    """The IPv4 address an IPv6 one carries (mapped, NAT64, 6to4, IPv4-compatible): it is where the
    packets go, so it is the one to check; any other address as it is."""
    if isinstance(ip, ipaddress.IPv4Address):
        return ip
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip.sixtofour is not None:
        return ip.sixtofour
    if ip in _NAT64 or ip in _NAT64_LOCAL or (ip in _IPV4_COMPATIBLE and int(ip) > 1):
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return ip


def _normalize_host(host: str) -> str:
    return host.strip().lower().rstrip(".")


class HostPolicy:
    """The allowlist: which hosts may be fetched, and which may resolve to non-public addresses."""

    def __init__(self, allowed_hosts: Iterable[str]) -> None:
        entries = [_normalize_host(h) for h in allowed_hosts if h.strip()]
        self.exact = frozenset(e for e in entries if not e.startswith("."))
        self.suffixes = tuple(e for e in entries if e.startswith(".") and len(e) > 1)

    def host_allowed(self, host: str) -> bool:
        host = _normalize_host(host)
        return host in self.exact or any(host == s[1:] or host.endswith(s) for s in self.suffixes)

    def address_allowed(self, host: str, address: str) -> bool:
        ip = embedded_ipv4(ipaddress.ip_address(address.split("%", 1)[0]))
        if ip in METADATA_ADDRESSES:
            return False  # cloud metadata, whatever the allowlist says
        if ip.is_link_local or ip.is_multicast or ip.is_unspecified:
            return False
        if ip.is_global:
            return True
        # Private, loopback, reserved, shared (100.64/10)...: only for hosts listed by exact name.
        return _normalize_host(host) in self.exact

    def check_url(self, url: str) -> tuple[str, str]:
        """(scheme, host) of an acceptable URL, else FetchRefused. Addresses are checked at connect."""
        try:
            parts = urlsplit(url)
            host = parts.hostname
            parts.port  # noqa: B018  (raises ValueError on a malformed port)
        except ValueError as exc:
            raise FetchRefused(f"malformed URL: {exc}", url=url) from exc
        if parts.scheme not in ("http", "https"):
            raise FetchRefused(f"scheme {parts.scheme!r} is not allowed", url=url)
        if not host:
            raise FetchRefused("URL has no host", url=url)
        if not self.host_allowed(host):
            raise FetchRefused(f"host {host!r} is not in the allowlist", url=url)
        return parts.scheme, _normalize_host(host)


class AnyPublicHost(HostPolicy):
    """Downstream webhooks: any host name, public addresses only, except for hosts listed by exact
    name (NOTIFY_ALLOWED_HOSTS), which may also reach private ones."""

    def host_allowed(self, host: str) -> bool:
        return True


class _GuardedMixin:
    """Connection behaviour: resolve, vet and connect to the vetted address only."""

    policy: HostPolicy
    resolver: Resolver
    # Called with each connected socket (the webhook sender's overall deadline cuts it).
    on_connect: Callable[[socket.socket], None] | None = None
    host: str
    port: int
    timeout: Any
    source_address: Any
    socket_options: Any

    def _new_conn(self) -> socket.socket:
        # The allowlist is checked again on the host urllib3 will really connect to, in case its URL
        # parsing ever differs from ours.
        if not self.policy.host_allowed(self.host):
            raise _AddressRefused(f"host {self.host!r} is not in the allowed hosts")
        try:
            infos = self.resolver(self.host, self.port, type=socket.SOCK_STREAM)
        except OSError as exc:
            raise urllib3.exceptions.NameResolutionError(self.host, self, exc) from exc  # type: ignore[arg-type]
        allowed = [info for info in infos if self.policy.address_allowed(self.host, info[4][0])]
        if not allowed:
            refused = sorted({str(info[4][0]) for info in infos})
            raise _AddressRefused(f"host {self.host!r} resolves to refused address(es) {refused}")
        last_error: OSError | None = None
        for family, socktype, proto, _, sockaddr in allowed:
            sock = socket.socket(family, socktype, proto)
            try:
                for opt in self.socket_options or ():
                    sock.setsockopt(*opt)
                timeout = self.timeout
                if isinstance(timeout, (int, float)):
                    sock.settimeout(timeout)
                if self.source_address:
                    sock.bind(self.source_address)
                sock.connect(sockaddr)
                peer = sock.getpeername()[0]
                if not self.policy.address_allowed(self.host, peer):
                    raise _AddressRefused(f"connected peer {peer} is not allowed for {self.host!r}")
                if self.on_connect is not None:
                    self.on_connect(sock)
                return sock
            except _AddressRefused:
                sock.close()
                raise
            except OSError as exc:
                sock.close()
                last_error = exc
        if isinstance(last_error, TimeoutError):
            raise urllib3.exceptions.ConnectTimeoutError(self, f"connect to {self.host} timed out")
        raise urllib3.exceptions.NewConnectionError(self, f"failed to connect to {self.host}: {last_error}")  # type: ignore[arg-type]


class _AddressRefused(OSError):
    """Raised inside the connection so urllib3/requests hand it back to us without retrying."""


class GuardedHTTPConnection(_GuardedMixin, HTTPConnection):
    pass


class GuardedHTTPSConnection(_GuardedMixin, HTTPSConnection):
    pass


class _GuardedAdapter(HTTPAdapter):
    def __init__(
        self,
        policy: HostPolicy,
        resolver: Resolver,
        on_connect: Callable[[socket.socket], None] | None = None,
    ) -> None:
        attrs = {
            "policy": policy,
            "resolver": staticmethod(resolver),
            "on_connect": None if on_connect is None else staticmethod(on_connect),
        }
        http_conn = type("BoundHTTPConnection", (GuardedHTTPConnection,), attrs)
        https_conn = type("BoundHTTPSConnection", (GuardedHTTPSConnection,), attrs)
        self._pool_classes = {
            "http": type("GuardedHTTPPool", (HTTPConnectionPool,), {"ConnectionCls": http_conn}),
            "https": type("GuardedHTTPSPool", (HTTPSConnectionPool,), {"ConnectionCls": https_conn}),
        }
        super().__init__(max_retries=0)

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = self._pool_classes


class FetchedBody(io.RawIOBase):
    """The response body as a read-only stream that enforces the byte cap and the overall deadline."""

    def __init__(self, response: requests.Response, *, max_bytes: int, deadline: float | None) -> None:
        super().__init__()
        self.response = response
        self.max_bytes = max_bytes
        self.deadline = deadline
        self.bytes_read = 0

    @property
    def url(self) -> str:
        return str(self.response.url)

    @property
    def headers(self) -> Any:
        return self.response.headers

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        # Ask for one byte beyond the cap so an oversize body is detected, not silently truncated.
        want = min(len(view), self.max_bytes - self.bytes_read + 1)
        if want <= 0:
            return 0
        if self.deadline is not None and time.monotonic() > self.deadline:
            raise FetchError("download took longer than the overall timeout", url=self.url)
        try:
            # What has arrived (one socket read), not all `want` bytes: a slow source still returns
            # to the caller often (the archiver's claim heartbeat runs between reads).
            chunk = self.response.raw.read1(want, decode_content=True)
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise FetchError(f"reading the body failed: {exc}", url=self.url) from exc
        self.bytes_read += len(chunk)
        if self.bytes_read > self.max_bytes:
            raise TooLarge(f"body exceeds the cap of {self.max_bytes} bytes", url=self.url)
        view[: len(chunk)] = chunk
        return len(chunk)

    def close(self) -> None:
        if not self.closed:
            self.response.close()
        super().close()


class SafeFetcher:
    """Opens allowlisted URLs as capped streams. Thread-safe for sequential use per thread."""

    def __init__(
        self,
        allowed_hosts: Iterable[str],
        *,
        max_bytes: int = 104_857_600,
        connect_timeout: float = 5.0,
        read_timeout: float = 30.0,
        total_timeout: float | None = 600.0,
        max_redirects: int = 5,
        resolver: Resolver = socket.getaddrinfo,
        user_agent: str = "kling-orchestrator-archiver/1",
    ) -> None:
        self.policy = HostPolicy(allowed_hosts)
        self.max_bytes = max_bytes
        self.timeout = (connect_timeout, read_timeout)
        self.total_timeout = total_timeout
        self.max_redirects = max_redirects
        self._session = requests.Session()
        self._session.trust_env = False  # no proxies or .netrc from the environment
        self._session.headers["User-Agent"] = user_agent
        # Identity only: the cap must count what the server sends, and images don't compress.
        self._session.headers["Accept-Encoding"] = "identity"
        adapter = _GuardedAdapter(self.policy, resolver)
        self._session.mount("http://", adapter)
        self._session.mount("https://", adapter)

    def close(self) -> None:
        self._session.close()

    def __enter__(self) -> SafeFetcher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def open(self, url: str, *, max_bytes: int | None = None) -> FetchedBody:
        """A stream over the body of `url` (after checked redirects). Close it (it is a context manager)."""
        cap = self.max_bytes if max_bytes is None else max_bytes
        deadline = time.monotonic() + self.total_timeout if self.total_timeout else None
        current = url
        for _hop in range(self.max_redirects + 1):
            self.policy.check_url(current)
            response = self._get(current)
            if response.status_code in REDIRECT_STATUSES and "Location" in response.headers:
                location = urljoin(current, response.headers["Location"])
                response.close()
                current = location
                continue
            return self._accept(response, current, cap, deadline)
        raise FetchRefused(f"more than {self.max_redirects} redirects", url=url)

    def _get(self, url: str) -> requests.Response:
        try:
            return self._session.get(url, stream=True, allow_redirects=False, timeout=self.timeout)
        except requests.ConnectionError as exc:
            refused = find_cause(exc, _AddressRefused)
            if refused is not None:
                raise FetchRefused(str(refused), url=url) from exc
            raise FetchError(f"connection failed: {exc}", url=url) from exc
        except requests.RequestException as exc:
            raise FetchError(f"request failed: {exc}", url=url) from exc

    @staticmethod
    def _accept(response: requests.Response, url: str, cap: int, deadline: float | None) -> FetchedBody:
        status = response.status_code
        if status != 200:
            response.close()
            if status in GONE_STATUSES:
                raise SourceGone(f"source answered HTTP {status}", url=url, status=status)
            raise FetchError(f"source answered HTTP {status}", url=url, status=status)
        length = response.headers.get("Content-Length")
        if length is not None and length.isdigit() and int(length) > cap:
            response.close()
            raise TooLarge(f"Content-Length {length} exceeds the cap of {cap} bytes", url=url, status=status)
        return FetchedBody(response, max_bytes=cap, deadline=deadline)


def guarded_session(
    policy: HostPolicy,
    *,
    resolver: Resolver = socket.getaddrinfo,
    on_connect: Callable[[socket.socket], None] | None = None,
    user_agent: str = "kling-orchestrator/1",
) -> requests.Session:
    """A requests session whose every connection goes through the guard: no environment proxies,
    no retries; redirects are the caller's business (pass `allow_redirects=False`)."""
    session = requests.Session()
    session.trust_env = False  # no proxies or .netrc from the environment
    session.headers["User-Agent"] = user_agent
    session.headers["Accept-Encoding"] = "identity"  # a byte cap counts what the server sends
    adapter = _GuardedAdapter(policy, resolver, on_connect)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    return session


def refused_by_guard(exc: BaseException) -> bool:
    """True when the guard refused the address (or host) of a failed request: nothing was sent."""
    return find_cause(exc, _AddressRefused) is not None


def find_cause(exc: BaseException, kind: type[BaseException]) -> BaseException | None:
    """The first exception of `kind` in the cause/context chain or in urllib3's `reason` attributes."""
    seen: set[int] = set()
    stack: list[BaseException | None] = [exc]
    while stack:
        current = stack.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, kind):
            return current
        stack.extend([current.__cause__, current.__context__])
        reason = getattr(current, "reason", None)
        if isinstance(reason, BaseException):
            stack.append(reason)
        stack.extend(a for a in current.args if isinstance(a, BaseException))
    return None

"""HTTP GETs that go exactly where they were checked to go.

- `parse_target` parses a URL once, with urllib3's parser, and refuses the shapes
  URL parsers disagree on (backslash, control characters, userinfo); that one
  result is used for every decision and for the connection.
- `AddressPolicy` resolves a name once and says which of its addresses may be
  contacted (public, or on the allow-list).
- `get_once` connects to one of those checked addresses, with the Host header,
  TLS SNI and certificate check for the name, under a whole-request deadline.
"""
from __future__ import annotations

import contextlib
import dataclasses
import ipaddress
import re
import socket
import threading
import time
from typing import Callable, Iterable, Iterator

from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.exceptions import LocationParseError
from urllib3.util import parse_url

REDIRECT_CODES = (301, 302, 303, 307, 308)
_BAD_URL_CHARS = re.compile(r"[\\\x00-\x1f\x7f]")
_AUTHORITY = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://([^/?#]*)")


class ImageFetchError(Exception):
    """A task image could not be fetched or decoded; the message says why."""


class BlockedAddressError(ImageFetchError):
    """The URL resolves to an address this backend must not contact."""


def _is_public(ip: ipaddress._BaseAddress) -> bool:
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    # is_global excludes private, loopback, link-local, reserved, shared (100.64/10) and
    # documentation ranges; multicast is refused on top.
    return ip.is_global and not (ip.is_multicast or ip.is_loopback or ip.is_link_local or ip.is_private)


class AddressPolicy:
    """Decides whether a host may be contacted (public, or on the allow-list) and at which addresses."""

    def __init__(self, allowed_hosts: Iterable[str] = (),
                 resolver: Callable[[str], list[str]] | None = None) -> None:
        self.allowed_names: set[str] = set()
        self.allowed_networks: list[ipaddress._BaseNetwork] = []
        for entry in allowed_hosts:
            entry = entry.strip().lower()
            if not entry:
                continue
            try:
                self.allowed_networks.append(ipaddress.ip_network(entry, strict=False))
            except ValueError:
                self.allowed_names.add(entry)
        self._resolve = resolver or _resolve_all

    def resolve(self, host: str) -> list[str]:
        """Every address of `host` (one lookup; the caller connects to these, never looks up again)."""
        host = (host or "").strip("[]").lower()
        if not host:
            raise BlockedAddressError("URL has no host")
        try:
            addresses = list(self._resolve(host))
        except (OSError, KeyError, UnicodeError) as exc:
            raise ImageFetchError(f"cannot resolve host {host!r}: {exc}") from None
        if not addresses:
            raise ImageFetchError(f"host {host!r} resolves to no address")
        return addresses

    def check(self, host: str) -> list[str]:
        """The addresses of `host`; BlockedAddressError unless every one of them may be contacted."""
        addresses = self.resolve(host)
        if (host or "").strip("[]").lower() in self.allowed_names:
            return addresses
        for text in addresses:
            ip = ipaddress.ip_address(text.split("%")[0])
            if _is_public(ip) or any(ip in net for net in self.allowed_networks):
                continue
            raise BlockedAddressError(
                f"host {host!r} resolves to non-public address {ip}; refused (add it to MCM_ALLOWED_HOSTS "
                "to allow it)")
        return addresses


def _resolve_all(host: str) -> list[str]:
    infos = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
    return list(dict.fromkeys(info[4][0] for info in infos))


@dataclasses.dataclass(frozen=True)
class Target:
    """One parsed http(s) URL: the only description of where a request goes."""

    scheme: str
    host: str          # lower-case name or IP literal, without brackets
    port: int
    request_uri: str   # path and query, as sent
    url: str

    @property
    def origin(self) -> tuple[str, str, int]:
        return self.scheme, self.host, self.port

    @property
    def host_header(self) -> str:
        name = f"[{self.host}]" if ":" in self.host else self.host
        return name if self.port == (443 if self.scheme == "https" else 80) else f"{name}:{self.port}"


def check_characters(url: str) -> None:
    """Refuse backslashes and control characters, where URL parsers (and header writers) disagree."""
    if _BAD_URL_CHARS.search(url):
        raise ImageFetchError(f"image URL {url[:200]!r} contains a backslash or a control character; refused")


def parse_target(url: str) -> Target:
    """Parse an absolute http(s) URL with urllib3's parser, refusing the shapes parsers disagree on."""
    if not isinstance(url, str):
        raise ImageFetchError(f"image URL must be a string, got {type(url).__name__}")
    check_characters(url)
    authority = _AUTHORITY.match(url)
    if authority and "@" in authority.group(1):
        raise ImageFetchError(f"image URL {url[:200]!r} has user info (user@host); refused")
    try:
        parsed = parse_url(url)
    except (LocationParseError, ValueError) as exc:
        raise ImageFetchError(f"cannot parse image URL {url[:200]!r}: {exc}") from None
    scheme = (parsed.scheme or "").lower()
    if scheme not in ("http", "https"):
        raise ImageFetchError(f"unsupported image URL scheme {scheme!r} in {url[:200]!r}")
    if parsed.auth is not None:
        raise ImageFetchError(f"image URL {url[:200]!r} has user info (user@host); refused")
    host = (parsed.host or "").strip("[]").lower()
    if not host:
        raise ImageFetchError(f"image URL {url[:200]!r} has no host")
    port = parsed.port or (443 if scheme == "https" else 80)
    return Target(scheme, host, port, parsed.request_uri or "/", parsed.url)


class Deadline:
    """A whole-download deadline: a timer shuts the socket down when it passes, whatever phase is blocked."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.at = time.monotonic() + seconds

    def error(self) -> ImageFetchError:
        return ImageFetchError(f"download took longer than MCM_IMAGE_TIMEOUT={self.seconds:g}s; abandoned")

    def passed(self) -> bool:
        return time.monotonic() >= self.at

    def remaining(self) -> float:
        left = self.at - time.monotonic()
        if left <= 0:
            raise self.error()
        return left

    @contextlib.contextmanager
    def watch(self, conn: HTTPConnection) -> Iterator[threading.Event]:
        fired = threading.Event()

        def expire() -> None:
            fired.set()
            sock = getattr(conn, "sock", None)
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)

        timer = threading.Timer(max(0.0, self.at - time.monotonic()), expire)
        timer.daemon = True
        timer.start()
        try:
            yield fired
        finally:
            timer.cancel()


def get_once(target: Target, addresses: list[str], headers: dict, deadline: Deadline, *, timeout: float,
             max_bytes: int, ca_certs: str) -> tuple[str | None, bytes]:
    """GET `target` from the first checked address that answers: (redirect location, b"") or (None, body)."""
    last_error: Exception | None = None
    for address in addresses:
        conn = _connection(target, address, min(timeout, deadline.remaining()), ca_certs)
        try:
            with deadline.watch(conn) as expired:
                try:
                    conn.connect()
                except OSError as exc:
                    last_error = exc
                    continue
                result = _exchange(conn, target, headers, deadline, max_bytes)
            if expired.is_set():
                raise deadline.error()
            return result
        except ImageFetchError:
            raise
        except Exception as exc:
            if deadline.passed():
                raise deadline.error() from None
            raise ImageFetchError(f"download of {target.url[:200]} failed: {exc.__class__.__name__}: {exc}") from None
        finally:
            conn.close()
    if deadline.passed():
        raise deadline.error()
    raise ImageFetchError(f"download of {target.url[:200]} failed: cannot connect to {target.host} "
                          f"({', '.join(addresses)}): {last_error}")


def _connection(target: Target, address: str, timeout: float, ca_certs: str) -> HTTPConnection:
    if target.scheme == "https":
        return HTTPSConnection(address, target.port, timeout=timeout, server_hostname=target.host,
                               assert_hostname=target.host, cert_reqs="CERT_REQUIRED", ca_certs=ca_certs)
    return HTTPConnection(address, target.port, timeout=timeout)


def _exchange(conn: HTTPConnection, target: Target, headers: dict, deadline: Deadline,
              max_bytes: int) -> tuple[str | None, bytes]:
    deadline.remaining()
    conn.request("GET", target.request_uri, headers=headers, preload_content=False, decode_content=False)
    response = conn.getresponse()
    if response.status in REDIRECT_CODES:
        location = response.headers.get("Location")
        if not location:
            raise ImageFetchError(f"redirect without Location from {target.url[:200]}")
        return location, b""
    if response.status != 200:
        raise ImageFetchError(f"HTTP {response.status} for {target.url[:200]}")
    declared = response.headers.get("Content-Length")
    if declared and declared.isdigit() and int(declared) > max_bytes:
        raise ImageFetchError(f"image of {declared} bytes exceeds MCM_IMAGE_MAX_BYTES={max_bytes}")
    body = bytearray()
    while True:
        chunk = response.read(65536, decode_content=False)
        if not chunk:
            break
        body.extend(chunk)
        if len(body) > max_bytes:
            raise ImageFetchError(f"image exceeds MCM_IMAGE_MAX_BYTES={max_bytes}")
    deadline.remaining()
    return None, bytes(body)

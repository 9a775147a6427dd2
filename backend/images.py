"""Fetch and decode task images without leaking the Label Studio key or reaching the private network.

Rules (README "Security"):
- A URL is parsed once, with urllib3's parser, and that one result decides both
  whether the URL is Label Studio's and where the connection goes. URLs with a
  backslash, a control character or userinfo (`user@host`) are refused: they are
  where parsers disagree.
- The Label Studio key is sent only to the exact Label Studio origin (scheme,
  host, port of LABEL_STUDIO_URL) and only while a redirect chain has not left it.
- Cloud URIs (s3://, gs://, azure-blob://...) go through Label Studio's presign
  endpoint, which redirects to a short-lived public URL.
- Every other host must resolve only to public addresses unless MCM_ALLOWED_HOSTS
  names it. The name is resolved once and the connection goes to the checked
  address (Host header, TLS SNI and certificate check still use the name), so a
  second DNS answer cannot redirect it. Redirects are followed by hand, each hop
  checked again. No proxy from the environment is used.
- MCM_IMAGE_TIMEOUT is a deadline for the whole download, redirects included.
- Decoding is bounded: the pixel count is read from the header before decoding
  (JPEGs over MCM_IMAGE_MAX_PIXELS are decoded at 1/2..1/8 scale, other images over
  it are refused), and a shared budget caps the pixels decoded at once.
"""
from __future__ import annotations

import base64
import contextlib
import ctypes
import ctypes.util
import dataclasses
import io
import ipaddress
import logging
import math
import re
import socket
import threading
import time
import urllib.parse
from typing import Callable, Iterable, Iterator

import certifi
from PIL import Image
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.exceptions import LocationParseError
from urllib3.util import parse_url

logger = logging.getLogger(__name__)

CLOUD_SCHEMES = ("s3", "gs", "azure-blob", "azure-spi", "gcs")
MAX_REDIRECTS = 5
REDIRECT_CODES = (301, 302, 303, 307, 308)
DEFAULT_MAX_PIXELS = 25_000_000
# open_image checks MCM_IMAGE_MAX_PIXELS on every image this backend opens, from the header, with a message
# naming the setting; Pillow's global guard would only warn (100-200 Mpx) or fail with a less clear error.
Image.MAX_IMAGE_PIXELS = None
_BAD_URL_CHARS = re.compile(r"[\\\x00-\x1f\x7f]")
_AUTHORITY = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://([^/?#]*)")
Image.init()


def _return_large_buffers_to_the_os(threshold: int = 4 << 20) -> None:
    """Make glibc give big freed buffers (decoded images) back to the OS instead of keeping them per thread.

    With glibc's dynamic mmap threshold, a decoded image freed in one of the 8
    download threads stays in that thread's arena: measured, eight 5000x5000 PNGs
    in one /predict raised peak RSS by 790 MB, against 220 MB with a fixed threshold.
    No effect (and no error) on other C libraries.
    """
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.mallopt(-3, threshold)  # M_MMAP_THRESHOLD; setting it also stops the dynamic adjustment
    except (OSError, AttributeError):
        pass


_return_large_buffers_to_the_os()
# Raster formats browsers and cameras produce; never EPS/PDF-like formats that run external programs.
SAFE_FORMATS = tuple(f for f in ("JPEG", "MPO", "PNG", "GIF", "BMP", "WEBP", "TIFF", "PPM", "ICO", "AVIF")
                     if f in Image.OPEN)


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


def parse_target(url: str) -> Target:
    """Parse an absolute http(s) URL with urllib3's parser, refusing the shapes parsers disagree on."""
    if not isinstance(url, str):
        raise ImageFetchError(f"image URL must be a string, got {type(url).__name__}")
    if _BAD_URL_CHARS.search(url):
        raise ImageFetchError(f"image URL {url[:200]!r} contains a backslash or a control character; refused")
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


class PixelBudget:
    """Caps the pixels decoded at the same time across threads, so memory stays bounded whatever the images."""

    def __init__(self, total: int) -> None:
        self.total = max(1, int(total))
        self._used = 0
        self._cond = threading.Condition()

    @contextlib.contextmanager
    def hold(self, pixels: int) -> Iterator[None]:
        need = min(max(1, int(pixels)), self.total)  # an image as big as the budget proceeds alone
        with self._cond:
            while self._used + need > self.total:
                self._cond.wait()
            self._used += need
        try:
            yield
        finally:
            with self._cond:
                self._used -= need
                self._cond.notify_all()


def open_image(data: bytes, url: str, max_pixels: int) -> Image.Image:
    """Read the header (not the pixels); JPEGs over the budget get a reduced-scale decoder, others are refused."""
    try:
        image = Image.open(io.BytesIO(data), formats=SAFE_FORMATS)
    except Exception as exc:  # PIL raises many types for broken or unsupported files
        raise ImageFetchError(f"cannot decode image {url[:200]}: {exc.__class__.__name__}: {exc}") from None
    width, height = image.size
    if width * height > max_pixels and image.format in ("JPEG", "MPO"):
        scale = 1
        while scale < 8 and math.ceil(width / scale) * math.ceil(height / scale) > max_pixels:
            scale *= 2
        image.draft(None, (max(1, width // scale), max(1, height // scale)))
    if image.size[0] * image.size[1] > max_pixels:
        raise ImageFetchError(f"image {url[:200]} is {width}x{height} = {width * height} pixels, over "
                              f"MCM_IMAGE_MAX_PIXELS={max_pixels}; refused before decoding")
    return image


class _Deadline:
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


class ImageFetcher:
    """Downloads and decodes task images (see the module docstring for the rules)."""

    def __init__(self, *, label_studio_url: str | None, auth_header: Callable[[], str] | None,
                 allowed_hosts: Iterable[str] = (), max_bytes: int = 20_000_000, timeout: float = 10.0,
                 max_pixels: int = DEFAULT_MAX_PIXELS, resolver: Callable[[str], list[str]] | None = None,
                 ca_certs: str | None = None) -> None:
        self.ls_url = label_studio_url.rstrip("/") if label_studio_url else None
        self._ls = parse_target(self.ls_url) if self.ls_url else None
        self._auth_header = auth_header
        self.policy = AddressPolicy(allowed_hosts, resolver)
        self.max_bytes = max_bytes
        self.timeout = timeout
        self.max_pixels = max_pixels
        self.budget = PixelBudget(max_pixels)
        self.ca_certs = ca_certs or certifi.where()

    # -- URL classification -------------------------------------------------
    def is_label_studio_url(self, url: str) -> bool:
        """True only for the exact Label Studio origin, judged by the parser the connection uses."""
        if self._ls is None:
            return False
        try:
            return parse_target(url).origin == self._ls.origin
        except ImageFetchError:
            return False

    def resolve_url(self, url: str, task_id: int | None) -> str:
        """Map a task value to an absolute http(s) URL (Label Studio-relative or presigned)."""
        if not isinstance(url, str) or not url.strip():
            raise ImageFetchError(f"task image value is empty or not a string: {str(url)[:200]!r}")
        url = url.strip()
        if _BAD_URL_CHARS.search(url):
            raise ImageFetchError(f"image URL {url[:200]!r} contains a backslash or a control character; refused")
        scheme = urllib.parse.urlsplit(url).scheme.lower()
        if url.startswith("/"):
            if not self.ls_url:
                raise ImageFetchError(f"relative URL {url[:200]!r} needs LABEL_STUDIO_URL")
            return self.ls_url + url
        if scheme in CLOUD_SCHEMES:
            if not self.ls_url:
                raise ImageFetchError(f"cloud URI {url[:200]!r} needs LABEL_STUDIO_URL (presigned through Label Studio)")
            if task_id is None:
                raise ImageFetchError(f"cloud URI {url[:200]!r} needs a task id to presign")
            fileuri = base64.urlsafe_b64encode(url.encode()).decode()
            return f"{self.ls_url}/tasks/{int(task_id)}/presign/?fileuri={urllib.parse.quote(fileuri)}"
        if scheme in ("http", "https"):
            return url
        raise ImageFetchError(f"unsupported image URL scheme {scheme!r} in {url[:200]!r}")

    # -- download ------------------------------------------------------------
    def fetch_bytes(self, url: str, task_id: int | None = None) -> bytes:
        """The image's bytes; the key only on Label Studio's origin, every other hop checked and pinned."""
        deadline = _Deadline(self.timeout)
        target = parse_target(self.resolve_url(url, task_id))
        on_label_studio = True
        for _hop in range(MAX_REDIRECTS + 1):
            on_label_studio = on_label_studio and self._ls is not None and target.origin == self._ls.origin
            headers = {"Host": target.host_header, "Accept": "image/*,*/*;q=0.8", "Accept-Encoding": "identity",
                       "User-Agent": "mcm-backend"}
            if on_label_studio:
                # Label Studio is trusted by configuration, even on a private address.
                addresses = self.policy.resolve(target.host)
                if self._auth_header is not None:
                    headers["Authorization"] = self._auth_header()
            else:
                addresses = self.policy.check(target.host)
            location, body = self._get(target, addresses, headers, deadline)
            if location is None:
                return body
            target = parse_target(urllib.parse.urljoin(target.url, location))
        raise ImageFetchError(f"more than {MAX_REDIRECTS} redirects for {url[:200]}")

    def _connect(self, target: Target, address: str, deadline: _Deadline) -> HTTPConnection:
        timeout = min(self.timeout, deadline.remaining())
        if target.scheme == "https":
            return HTTPSConnection(address, target.port, timeout=timeout, server_hostname=target.host,
                                   assert_hostname=target.host, cert_reqs="CERT_REQUIRED", ca_certs=self.ca_certs)
        return HTTPConnection(address, target.port, timeout=timeout)

    def _get(self, target: Target, addresses: list[str], headers: dict, deadline: _Deadline,
             ) -> tuple[str | None, bytes]:
        """One request to the first checked address that answers: (redirect location, None) or (None, body)."""
        last_error: Exception | None = None
        for address in addresses:
            conn = self._connect(target, address, deadline)
            try:
                with deadline.watch(conn) as expired:
                    try:
                        conn.connect()
                    except OSError as exc:
                        last_error = exc
                        continue
                    result = self._exchange(conn, target, headers, deadline)
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

    def _exchange(self, conn: HTTPConnection, target: Target, headers: dict, deadline: _Deadline,
                  ) -> tuple[str | None, bytes]:
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
        if declared and declared.isdigit() and int(declared) > self.max_bytes:
            raise ImageFetchError(f"image of {declared} bytes exceeds MCM_IMAGE_MAX_BYTES={self.max_bytes}")
        body = bytearray()
        while True:
            chunk = response.read(65536, decode_content=False)
            if not chunk:
                break
            body.extend(chunk)
            if len(body) > self.max_bytes:
                raise ImageFetchError(f"image exceeds MCM_IMAGE_MAX_BYTES={self.max_bytes}")
        deadline.remaining()
        return None, bytes(body)

    # -- decode --------------------------------------------------------------
    @contextlib.contextmanager
    def decoded(self, data: bytes, url: str = "") -> Iterator[Image.Image]:
        """The decoded image, inside the shared pixel budget (keep the `with` short: prepare, then drop it)."""
        image = open_image(data, url, self.max_pixels)
        with self.budget.hold(image.size[0] * image.size[1]):
            try:
                image.load()
            except Exception as exc:
                raise ImageFetchError(f"cannot decode image {url[:200]}: {exc.__class__.__name__}: {exc}") from None
            yield image

    def fetch(self, url: str, task_id: int | None = None) -> Image.Image:
        """Download and decode one image; raise ImageFetchError with the reason."""
        with self.decoded(self.fetch_bytes(url, task_id), url) as image:
            return image

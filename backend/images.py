"""Fetch and decode task images without becoming a proxy into the private network.

Rules (see README "Images"):
- Label Studio URLs (relative `/data/...`, or absolute on the LABEL_STUDIO_URL host)
  get the Label Studio auth header; the key is sent to no other host.
- Cloud URIs (s3://, gs://, azure-blob://...) go through Label Studio's presign
  endpoint, which redirects to a short-lived public URL.
- Every other http(s) URL gets no auth header and must resolve only to public
  addresses; loopback, private, link-local, reserved and multicast addresses are
  refused unless MCM_ALLOWED_HOSTS names the host, the IP or a CIDR containing it.
  Redirects are followed by hand so every hop is checked again.
"""
from __future__ import annotations

import base64
import io
import ipaddress
import logging
import socket
import urllib.parse
from typing import Callable, Iterable

import requests
from PIL import Image

logger = logging.getLogger(__name__)

CLOUD_SCHEMES = ("s3", "gs", "azure-blob", "azure-spi", "gcs")
MAX_REDIRECTS = 5
Image.MAX_IMAGE_PIXELS = 100_000_000  # decompression-bomb guard


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
    """Decides whether a host may be contacted (public, or on the allow-list)."""

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

    def check(self, host: str) -> None:
        """Raise BlockedAddressError unless every address of `host` may be contacted."""
        host = (host or "").strip("[]").lower()
        if not host:
            raise BlockedAddressError("URL has no host")
        if host in self.allowed_names:
            return
        try:
            addresses = self._resolve(host)
        except OSError as exc:
            raise ImageFetchError(f"cannot resolve host {host!r}: {exc}") from None
        if not addresses:
            raise ImageFetchError(f"host {host!r} resolves to no address")
        for text in addresses:
            ip = ipaddress.ip_address(text.split("%")[0])
            if _is_public(ip) or any(ip in net for net in self.allowed_networks):
                continue
            raise BlockedAddressError(
                f"host {host!r} resolves to non-public address {ip}; refused (add it to MCM_ALLOWED_HOSTS "
                "to allow it)")


def _resolve_all(host: str) -> list[str]:
    infos = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
    return sorted({info[4][0] for info in infos})


def _origin(url: str) -> tuple[str, str, int]:
    parts = urllib.parse.urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    return parts.scheme, (parts.hostname or "").lower(), port


class ImageFetcher:
    """Downloads task images (see module docstring for the rules)."""

    def __init__(self, *, label_studio_url: str | None, auth_header: Callable[[], str] | None,
                 allowed_hosts: Iterable[str] = (), max_bytes: int = 20_000_000, timeout: float = 10.0,
                 session: requests.Session | None = None,
                 resolver: Callable[[str], list[str]] | None = None) -> None:
        self.ls_url = label_studio_url.rstrip("/") if label_studio_url else None
        self._auth_header = auth_header
        self.policy = AddressPolicy(allowed_hosts, resolver)
        self.max_bytes = max_bytes
        self.timeout = timeout
        self.session = session or requests.Session()
        self.session.trust_env = False  # no proxies from the environment: we check the real target

    # -- URL classification -------------------------------------------------
    def is_label_studio_url(self, url: str) -> bool:
        if not self.ls_url:
            return False
        return _origin(url) == _origin(self.ls_url)

    def resolve_url(self, url: str, task_id: int | None) -> str:
        """Map a task value to an absolute http(s) URL (Label Studio-relative or presigned)."""
        if not isinstance(url, str) or not url.strip():
            raise ImageFetchError(f"task image value is empty or not a string: {url!r}")
        url = url.strip()
        scheme = urllib.parse.urlsplit(url).scheme.lower()
        if url.startswith("/"):
            if not self.ls_url:
                raise ImageFetchError(f"relative URL {url!r} needs LABEL_STUDIO_URL")
            return self.ls_url + url
        if scheme in CLOUD_SCHEMES:
            if not self.ls_url:
                raise ImageFetchError(f"cloud URI {url!r} needs LABEL_STUDIO_URL (presigned through Label Studio)")
            if task_id is None:
                raise ImageFetchError(f"cloud URI {url!r} needs a task id to presign")
            fileuri = base64.urlsafe_b64encode(url.encode()).decode()
            return f"{self.ls_url}/tasks/{int(task_id)}/presign/?fileuri={urllib.parse.quote(fileuri)}"
        if scheme in ("http", "https"):
            return url
        raise ImageFetchError(f"unsupported image URL scheme {scheme!r} in {url[:200]!r}")

    # -- download ------------------------------------------------------------
    def fetch_bytes(self, url: str, task_id: int | None = None) -> bytes:
        current = self.resolve_url(url, task_id)
        for _hop in range(MAX_REDIRECTS + 1):
            headers = {}
            if self.is_label_studio_url(current):
                # The Label Studio host is trusted by configuration, even on a private address.
                if self._auth_header is not None:
                    headers["Authorization"] = self._auth_header()
            else:
                scheme, host, _port = _origin(current)
                if scheme not in ("http", "https"):
                    raise ImageFetchError(f"redirect to unsupported scheme {scheme!r}")
                self.policy.check(host)
            try:
                response = self.session.get(current, headers=headers, timeout=self.timeout,
                                            allow_redirects=False, stream=True)
            except requests.RequestException as exc:
                raise ImageFetchError(f"download of {current[:200]} failed: {exc.__class__.__name__}: {exc}") from None
            with response:
                if response.is_redirect or response.status_code in (301, 302, 303, 307, 308):
                    location = response.headers.get("Location")
                    if not location:
                        raise ImageFetchError(f"redirect without Location from {current[:200]}")
                    current = urllib.parse.urljoin(current, location)
                    continue
                if response.status_code != 200:
                    raise ImageFetchError(f"HTTP {response.status_code} for {current[:200]}")
                declared = response.headers.get("Content-Length")
                if declared and declared.isdigit() and int(declared) > self.max_bytes:
                    raise ImageFetchError(f"image of {declared} bytes exceeds MCM_IMAGE_MAX_BYTES={self.max_bytes}")
                body = bytearray()
                try:
                    for chunk in response.iter_content(65536):
                        body.extend(chunk)
                        if len(body) > self.max_bytes:
                            raise ImageFetchError(f"image exceeds MCM_IMAGE_MAX_BYTES={self.max_bytes}")
                except requests.RequestException as exc:
                    raise ImageFetchError(f"download of {current[:200]} failed: {exc}") from None
                return bytes(body)
        raise ImageFetchError(f"more than {MAX_REDIRECTS} redirects for {url[:200]}")

    def fetch(self, url: str, task_id: int | None = None) -> Image.Image:
        """Download and decode one image; raise ImageFetchError with the reason."""
        data = self.fetch_bytes(url, task_id)
        return decode_image(data, url)


def decode_image(data: bytes, url: str = "") -> Image.Image:
    try:
        image = Image.open(io.BytesIO(data))
        image.load()
    except Exception as exc:  # PIL raises many types for broken files
        raise ImageFetchError(f"cannot decode image {url[:200]}: {exc.__class__.__name__}: {exc}") from None
    return image

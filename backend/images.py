"""Fetch and decode task images without leaking the Label Studio key or reaching the private network.

Rules (README "Security"):
- A URL is parsed once (`pinned_http.parse_target`, urllib3's parser) and that one
  result decides whether it is Label Studio's, which addresses are checked and
  where the connection goes; backslashes, control characters and userinfo are refused.
- The Label Studio key is sent only to the exact Label Studio origin (scheme,
  host, port of LABEL_STUDIO_URL) and only while a redirect chain has not left it.
- Cloud URIs (s3://, gs://, azure-blob://...) go through Label Studio's presign
  endpoint, which redirects to a short-lived public URL.
- Every other host must resolve only to public addresses unless MCM_ALLOWED_HOSTS
  names it; the connection goes to the checked address (`pinned_http.get_once`).
  Redirects are followed by hand, each hop checked again. No proxy from the environment.
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
import io
import logging
import math
import threading
import urllib.parse
from typing import Callable, Iterable, Iterator

import certifi
from PIL import Image

from .pinned_http import (AddressPolicy, BlockedAddressError, Deadline, ImageFetchError, check_characters,
                          get_once, parse_target)

__all__ = ["AddressPolicy", "BlockedAddressError", "ImageFetchError", "ImageFetcher", "PixelBudget", "open_image"]

logger = logging.getLogger(__name__)

CLOUD_SCHEMES = ("s3", "gs", "azure-blob", "azure-spi", "gcs")
MAX_REDIRECTS = 5
DEFAULT_MAX_PIXELS = 25_000_000
# open_image checks MCM_IMAGE_MAX_PIXELS on every image this backend opens, from the header, with a message
# naming the setting; Pillow's global guard would only warn (100-200 Mpx) or fail with a less clear error.
Image.MAX_IMAGE_PIXELS = None
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
        check_characters(url)
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
        deadline = Deadline(self.timeout)
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
            location, body = get_once(target, addresses, headers, deadline, timeout=self.timeout,
                                      max_bytes=self.max_bytes, ca_certs=self.ca_certs)
            if location is None:
                return body
            target = parse_target(urllib.parse.urljoin(target.url, location))
        raise ImageFetchError(f"more than {MAX_REDIRECTS} redirects for {url[:200]}")

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

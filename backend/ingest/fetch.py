"""Fetch and decode task images without leaking the Label Studio key or reaching the private network.

Rules (README "Security"):
- A URL is parsed once (`pinned_http.parse_target`, urllib3's parser) and that one
  result decides whether it is Label Studio's, which addresses are checked and
  where the connection goes; backslashes, control characters and userinfo are refused.
- The Label Studio key is sent only to the exact Label Studio origin (scheme,
  host, port of LABEL_STUDIO_URL), only while a redirect chain has not left it,
  and only for Label Studio's media paths (MEDIA_PREFIXES, the storage-URI resolvers):
  a task value such as `/api/projects/2/export` would otherwise make the backend
  call Label Studio's API with its key. Any other path on Label Studio's origin,
  and any path with a `.`/`..` or empty segment or a backslash, also percent-encoded,
  is refused before a connection is made, on every hop.
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
import re
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
# Where Label Studio (1.23) serves task media (uploads, local files `?d=`, storage downloads `?filepath=`)
# and its storage-URI resolvers `?fileuri=` (presign is the older name of resolve; cloud URIs go through
# /tasks/<id>/presign/, and Label Studio itself writes /tasks/<id>/resolve/ URLs into task data): the
# only paths that get the key.
MEDIA_PREFIXES = ("/data/upload/", "/data/local-files/", "/storage-data/")
_RESOLVER_PATH = re.compile(r"/(?:tasks|projects)/[0-9]+/(?:presign|resolve)/")
MEDIA_PATHS_TEXT = ("/data/upload/..., /data/local-files/?d=..., /storage-data/..., "
                    "/tasks/<id>/presign/ or /resolve/, /projects/<id>/presign/ or /resolve/")
_MAX_DECODINGS = 4
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


def _decoded_forms(text: str) -> list[str] | None:
    """`text` and its successive percent-decodings (a proxy may decode more than once); None if still
    changing after _MAX_DECODINGS rounds."""
    forms = [text]
    for _ in range(_MAX_DECODINGS):
        decoded = urllib.parse.unquote(forms[-1])
        if decoded == forms[-1]:
            return forms
        forms.append(decoded)
    return None


def _path_problem(path: str) -> str | None:
    """Why `path` (any of its decodings) could name something else on a server than it seems to, or None."""
    forms = _decoded_forms(path)
    if forms is None:
        return f"path {path[:100]!r} is percent-encoded more than {_MAX_DECODINGS} times"
    for form in forms:
        if "\\" in form:
            return f"path {path[:100]!r} has a backslash (percent-encoded)"
        segments = form.split("/")[1:] if form.startswith("/") else form.split("/")
        if any(s in (".", "..") for s in segments):
            return f"path {path[:100]!r} has a '.' or '..' segment"
        if "" in segments[:-1]:
            return f"path {path[:100]!r} has an empty segment (//)"
    return None


def _raw_path(url: str) -> str:
    """The path of `url` as written (before any parser resolves its dot segments)."""
    authority = re.match(r"^(?:[A-Za-z][A-Za-z0-9+.-]*:)?//[^/?#]*", url)  # scheme-relative too
    return re.split(r"[?#]", url[authority.end():] if authority else url, maxsplit=1)[0]


def media_path_problem(raw_url: str, request_uri: str, base_path: str = "") -> str | None:
    """None when a request to Label Studio may carry the key: `request_uri` (path and query exactly as
    sent) is one of its media paths, below `base_path` (LABEL_STUDIO_URL's own path); else why not.

    Dot segments are refused, not resolved: urllib3 resolves `..` while parsing, so the URL as written
    (`raw_url`) is checked too; and every percent-decoding, since a server or proxy may decode first.
    """
    path, _, query = request_uri.partition("?")
    for text in (_raw_path(raw_url), path):
        problem = _path_problem(text)
        if problem:
            return problem
    if base_path:
        if not path.startswith(base_path + "/"):
            return f"path {path[:100]!r} is outside LABEL_STUDIO_URL's path {base_path!r}"
        path = path[len(base_path):]
    if not (path.startswith(MEDIA_PREFIXES) or _RESOLVER_PATH.fullmatch(path)):
        return f"path {path[:100]!r} is not one of Label Studio's media paths"
    for name, value in urllib.parse.parse_qsl(query, keep_blank_values=True):
        forms = _decoded_forms(value)
        if forms is None or any(".." in re.split(r"[/\\]", form) for form in forms):
            return f"query parameter {name[:20]!r} has a '..' segment (or is percent-encoded too often)"
    return None


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
        self._ls_base = self._ls.request_uri.partition("?")[0].rstrip("/") if self._ls else ""
        self._auth_header = auth_header
        self.policy = AddressPolicy(allowed_hosts, resolver)
        self.max_bytes = max_bytes
        self.timeout = timeout
        self.max_pixels = max_pixels
        self.budget = PixelBudget(max_pixels)
        self.ca_certs = ca_certs or certifi.where()

    # -- URL classification -------------------------------------------------
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
        """The image's bytes; the key only for Label Studio's media paths on its origin, decided per hop."""
        deadline = Deadline(self.timeout)
        written = self.resolve_url(url, task_id)
        target = parse_target(written)
        on_label_studio = True
        for hop in range(MAX_REDIRECTS + 1):
            on_label_studio = on_label_studio and self._ls is not None and target.origin == self._ls.origin
            headers = {"Host": target.host_header, "Accept": "image/*,*/*;q=0.8", "Accept-Encoding": "identity",
                       "User-Agent": "mcm-backend"}
            if on_label_studio:
                self._require_media(url, written, target, hop)
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
            written = location
            target = parse_target(urllib.parse.urljoin(target.url, location))
        raise ImageFetchError(f"more than {MAX_REDIRECTS} redirects for {url[:200]}")

    def _require_media(self, url: str, written: str, target, hop: int) -> None:
        """Refuse, before connecting, any request to Label Studio that is not for one of its media paths."""
        problem = media_path_problem(written, target.request_uri, self._ls_base)
        if problem is None:
            return
        where = "on Label Studio's origin" if hop == 0 else f"Label Studio redirected it to {written[:200]!r}"
        raise ImageFetchError(f"image URL {url[:200]!r} refused: {where}, its {problem}; the Label Studio key "
                              f"is sent only for its media paths ({MEDIA_PATHS_TEXT})")

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

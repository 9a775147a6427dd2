"""Image fetching against real local HTTP servers: auth only to Label Studio, private addresses refused."""
from __future__ import annotations

import base64
import json
import time

import numpy as np
import pytest

from backend.ingest.fetch import BlockedAddressError, ImageFetcher, ImageFetchError
from backend.labelstudio.client import auth_header, make_client
from backend_fakes import mnist_by_digit, png_bytes


def _fetcher(fake_ls=None, allowed=("127.0.0.1",), **kwargs):
    auth = None
    if fake_ls is not None:
        client = make_client(fake_ls.url, kwargs.pop("api_key", fake_ls.legacy_token))
        auth = lambda: auth_header(client)  # noqa: E731
    return ImageFetcher(label_studio_url=fake_ls.url if fake_ls else None, auth_header=auth,
                        allowed_hosts=allowed, **kwargs)


def test_fetch_from_allowed_local_server_without_auth_header(images, fake_ls):
    digit = mnist_by_digit()[7][0]
    images.files["/img/a.png"] = png_bytes(digit)
    image = _fetcher(fake_ls).fetch(f"{images.url}/img/a.png", task_id=1)
    np.testing.assert_array_equal(np.asarray(image), digit)
    path, headers = images.requests[-1]
    assert path == "/img/a.png" and "Authorization" not in headers


def test_loopback_refused_unless_allowed(images):
    images.files["/img/a.png"] = png_bytes(mnist_by_digit()[0][0])
    with pytest.raises(BlockedAddressError, match="127.0.0.1"):
        _fetcher(allowed=()).fetch(f"{images.url}/img/a.png")
    with pytest.raises(BlockedAddressError):
        _fetcher(allowed=()).fetch(f"http://localhost:{images.port}/img/a.png")
    assert images.requests == []  # refused before any connection


def test_redirect_to_private_address_is_rechecked(images):
    images.files["/img/a.png"] = png_bytes(mnist_by_digit()[0][0])
    # The first hop is allowed by name, the redirect target by IP is not.
    fetcher = _fetcher(allowed=("localhost",))
    with pytest.raises(BlockedAddressError, match="127.0.0.1"):
        fetcher.fetch(f"http://localhost:{images.port}/redirect?to=http://127.0.0.1:{images.port}/img/a.png")
    assert [p for p, _ in images.requests] == [f"/redirect?to=http://127.0.0.1:{images.port}/img/a.png"]


def test_404_broken_and_oversized_images_raise_clear_errors(images):
    images.files["/img/broken.png"] = b"this is not a png"
    images.files["/img/big.png"] = png_bytes(np.random.default_rng(0).integers(0, 255, (300, 300)))
    fetcher = _fetcher(max_bytes=10_000)
    with pytest.raises(ImageFetchError, match="HTTP 404"):
        fetcher.fetch(f"{images.url}/img/missing.png")
    with pytest.raises(ImageFetchError, match="cannot decode"):
        fetcher.fetch(f"{images.url}/img/broken.png")
    with pytest.raises(ImageFetchError, match="MCM_IMAGE_MAX_BYTES"):
        fetcher.fetch(f"{images.url}/img/big.png")
    with pytest.raises(ImageFetchError, match="scheme"):
        fetcher.fetch("file:///etc/passwd")
    with pytest.raises(ImageFetchError, match="LABEL_STUDIO_URL"):
        fetcher.fetch("/data/upload/1/a.png")


def test_label_studio_upload_gets_legacy_token(fake_ls):
    fake_ls.uploads["1/a.png"] = png_bytes(mnist_by_digit()[1][0])
    # Label Studio itself is on loopback: trusted by LABEL_STUDIO_URL, not by the allow-list.
    image = _fetcher(fake_ls, allowed=()).fetch("/data/upload/1/a.png", task_id=5)
    assert image.size == (28, 28)
    image = _fetcher(fake_ls, allowed=()).fetch(f"{fake_ls.url}/data/upload/1/a.png", task_id=5)
    assert image.size == (28, 28)


def _jwt(payload: dict) -> str:
    def b64(obj) -> str:
        return base64.urlsafe_b64encode(json.dumps(obj).encode()).decode().rstrip("=")
    return f"{b64({'alg': 'HS256', 'typ': 'JWT'})}.{b64(payload)}.c2lnbmF0dXJl"


def test_personal_access_token_is_exchanged_for_bearer_access_token(fake_ls):
    pat = _jwt({"token_type": "refresh", "exp": int(time.time()) + 3600, "jti": "x"})
    fake_ls.refresh_token = pat
    fake_ls.uploads["1/a.png"] = png_bytes(mnist_by_digit()[1][0])
    fetcher = _fetcher(fake_ls, allowed=(), api_key=pat)
    assert fetcher.fetch("/data/upload/1/a.png").size == (28, 28)
    assert ("POST", "/api/token/refresh/") in fake_ls.calls


def test_cloud_uri_goes_through_presign_and_redirect_target_is_checked(images, fake_ls):
    images.files["/img/cat.png"] = png_bytes(mnist_by_digit()[0][3])
    fake_ls.redirect_target = images.url
    image = _fetcher(fake_ls).fetch("s3://bucket/path/cat.png", task_id=12)
    assert image.size == (28, 28)
    assert ("PRESIGN", "s3://bucket/path/cat.png") in fake_ls.calls
    assert "Authorization" not in images.requests[-1][1]  # the key never leaves Label Studio's host
    with pytest.raises(BlockedAddressError):
        _fetcher(fake_ls, allowed=()).fetch("gs://bucket/cat.png", task_id=12)


# --- one parser for the decision and the connection (issue 10, defect 1) ---------------------------
@pytest.mark.parametrize("template", [
    "http://127.0.0.1:{evil}\\@127.0.0.1:{ls}/data/upload/1/a.png",   # backslash: urlsplit and urllib3 disagree
    "http://127.0.0.1:{ls}@127.0.0.1:{evil}/data/upload/1/a.png",     # userinfo
    "http://127.0.0.1:{evil}/\\@127.0.0.1:{ls}/data/upload/1/a.png",
    "http://127.0.0.1:{ls}\t@127.0.0.1:{evil}/data/upload/1/a.png",
])
def test_label_studio_key_never_reaches_another_port_through_a_parser_trick(images, fake_ls, template):
    fake_ls.uploads["1/a.png"] = png_bytes(mnist_by_digit()[1][0])
    images.files["/data/upload/1/a.png"] = png_bytes(mnist_by_digit()[1][0])
    url = template.format(evil=images.port, ls=fake_ls.port)
    with pytest.raises(ImageFetchError):
        _fetcher(fake_ls, allowed=("127.0.0.1",)).fetch(url, task_id=1)
    assert not [h for _, h in images.requests if "Authorization" in h or "Cookie" in h]


def test_private_address_policy_cannot_be_bypassed_by_a_parser_trick(images):
    images.files["/x.png"] = png_bytes(mnist_by_digit()[1][0])
    # The policy would approve the public name after the backslash; the connection must never go to loopback.
    resolver = {"public.example": ["93.184.216.34"]}.__getitem__
    fetcher = ImageFetcher(label_studio_url=None, auth_header=None, allowed_hosts=(), resolver=resolver)
    with pytest.raises(ImageFetchError):
        fetcher.fetch(f"http://127.0.0.1:{images.port}\\@public.example/x.png")
    assert images.requests == []


def test_redirect_from_elsewhere_into_label_studio_carries_no_key(images, fake_ls):
    fake_ls.uploads["1/a.png"] = png_bytes(mnist_by_digit()[1][0])
    target = f"{fake_ls.url}/data/upload/1/a.png"
    with pytest.raises(ImageFetchError, match="HTTP 401"):  # Label Studio refuses: no key was sent
        _fetcher(fake_ls).fetch(f"{images.url}/redirect?to={target}", task_id=1)


def test_connection_goes_to_the_address_that_was_checked(images):
    """The name is resolved once: the checked address is the one connected to (no DNS-rebinding window)."""
    images.files["/a.png"] = png_bytes(mnist_by_digit()[7][0])
    answers = iter([["127.0.0.1"], ["127.0.0.2"]])  # a rebinding resolver: the second answer differs
    fetcher = ImageFetcher(label_studio_url=None, auth_header=None, allowed_hosts=("127.0.0.1/32",),
                           resolver=lambda host: next(answers))
    image = fetcher.fetch(f"http://rebind.test:{images.port}/a.png")
    assert image.size == (28, 28)
    path, headers = images.requests[-1]
    assert path == "/a.png" and headers["Host"] == f"rebind.test:{images.port}"



# --- the key only for Label Studio's media paths (issue 19, item 4) --------------------------------------
MEDIA_KEY = "Token media-only-key"


def _ls_on(server, base: str = "", **kwargs) -> ImageFetcher:
    """A fetcher whose Label Studio is `server` (an ImageServer records every request with its headers)."""
    return ImageFetcher(label_studio_url=server.url + base, auth_header=lambda: MEDIA_KEY, allowed_hosts=(),
                        **kwargs)


EXPORT = "/api/projects/2/export?exportType=JSON&download_all_tasks=true"
NOT_MEDIA = [
    EXPORT,                                                        # the measured attack: another project's export
    "{ls}" + EXPORT,                                               # the same, absolute on Label Studio's origin
    "/data/upload/../../api/projects/2/export",
    "{ls}/data/upload/../../api/projects/2/export",
    "/data/upload/1/../../upload/1/a.png",                         # `..` refused even when it resolves to media
    "/data/upload/./a.png",
    "/data/upload/%2e%2e/%2e%2e/api/projects/2/export",
    "/data/upload/%2E%2E%2F%2E%2E%2Fapi/projects/2/export",
    "/data/upload%2f..%2f..%2fapi/projects/2/export",
    "/data/upload/%252e%252e/%252e%252e/api/projects/2/export",    # encoded twice (a proxy decoding once)
    "/data/upload/..%5c..%5capi/projects/2/export",                 # encoded backslashes
    "/data/upload//../api/projects/2/export",
    "/data/upload//1/a.png",                                       # double slash
    "//127.0.0.1:{port}/api/projects/2/export",                    # scheme-relative
    "{ls}//data/upload/1/a.png",
    "/data%2fupload/1/a.png",
    "/data/local-files/?d=../../api/projects/2/export",
    "/data/local-files/?d=%2e%2e/secret.png",
    "/tasks/5/presign/../../api/projects/2/export",
    "/tasks/x/presign/?fileuri=czM6Ly9i",
    "/api/tasks/5/presign/?fileuri=czM6Ly9i",
    "/static/../api/projects/2/export",
    "/user/login/",
]


@pytest.mark.parametrize("value", NOT_MEDIA)
def test_label_studio_paths_other_than_media_are_refused_before_any_request(images, value):
    images.files["/api/projects/2/export"] = png_bytes(mnist_by_digit()[1][0])  # only the refusal stops it
    images.files["/data/upload/1/a.png"] = png_bytes(mnist_by_digit()[1][0])
    value = value.format(ls=images.url, port=images.port)
    with pytest.raises(ImageFetchError, match="key is sent only for its media paths") as refused:
        _ls_on(images).fetch(value, task_id=5)
    assert "/data/upload/" in str(refused.value)  # the message names the allowed paths
    assert images.requests == []  # nothing reached Label Studio, with or without the key


@pytest.mark.parametrize("value, served_at", [
    ("/data/upload/1/a.png", "/data/upload/1/a.png"),
    ("{ls}/data/upload/1/a.png", "/data/upload/1/a.png"),
    ("/data/local-files/?d=imgs/a.png", "/data/local-files/"),
    ("/storage-data/uploaded/?filepath=1/a.png", "/storage-data/uploaded/"),
    ("/tasks/7/resolve/?fileuri=czM6Ly9iL2EucG5n", "/tasks/7/resolve/"),  # Label Studio writes these into tasks
    ("s3://bucket/a.png", "/tasks/7/presign/"),                          # built here from a cloud URI
])
def test_label_studio_media_paths_still_get_the_key(images, value, served_at):
    images.files[served_at] = png_bytes(mnist_by_digit()[7][0])
    assert _ls_on(images).fetch(value.format(ls=images.url), task_id=7).size == (28, 28)
    path, headers = images.requests[-1]
    assert path.startswith(served_at) and headers["Authorization"] == MEDIA_KEY


def test_media_paths_are_judged_below_label_studios_own_path(images):
    images.files["/ls/data/upload/1/a.png"] = png_bytes(mnist_by_digit()[7][0])
    assert _ls_on(images, "/ls").fetch("/data/upload/1/a.png").size == (28, 28)
    assert images.requests[-1][1]["Authorization"] == MEDIA_KEY
    with pytest.raises(ImageFetchError, match="outside LABEL_STUDIO_URL's path"):
        _ls_on(images, "/ls").fetch(f"{images.url}/data/upload/1/a.png")
    assert len(images.requests) == 1


def test_a_redirect_from_media_to_another_label_studio_path_is_refused(fake_ls):
    """Per hop: Label Studio's presign answers 303 to /api/projects/2/img/<name> on its own origin."""
    fake_ls.redirect_target = f"{fake_ls.url}/api/projects/2"
    with pytest.raises(ImageFetchError, match="redirected it to .*media paths"):
        _fetcher(fake_ls, allowed=()).fetch("s3://bucket/export", task_id=12)
    assert ("PRESIGN", "s3://bucket/export") in fake_ls.calls
    assert not [path for _, path in fake_ls.calls if path.startswith("/api/projects/2")]


def test_a_redirect_between_label_studio_media_paths_keeps_the_key(fake_ls):
    fake_ls.uploads["img/cat.png"] = png_bytes(mnist_by_digit()[0][3])
    fake_ls.redirect_target = f"{fake_ls.url}/data/upload"  # the upload route answers 401 without the key
    assert _fetcher(fake_ls, allowed=()).fetch("s3://bucket/cat.png", task_id=12).size == (28, 28)
    assert ("GET", "/data/upload/img/cat.png") in fake_ls.calls

@pytest.fixture(scope="module")
def tls_image_server(tmp_path_factory):
    """An HTTPS image server on 127.0.0.1 whose self-signed certificate names only img.test."""
    import http.server
    import ssl
    import subprocess
    import threading

    directory = tmp_path_factory.mktemp("tls")
    cert, key = str(directory / "cert.pem"), str(directory / "key.pem")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                    "-nodes", "-keyout", key, "-out", cert, "-days", "2", "-subj", "/CN=img.test",
                    "-addext", "subjectAltName=DNS:img.test"], check=True, capture_output=True)
    body = png_bytes(mnist_by_digit()[0][5])
    seen: list[str] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_GET(self):
            seen.append(self.headers.get("Host"))
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield {"port": server.server_address[1], "ca": cert, "seen": seen}
    server.shutdown()
    server.server_close()


def test_https_to_the_checked_address_still_verifies_the_hostname(tls_image_server):
    port, ca = tls_image_server["port"], tls_image_server["ca"]
    resolver = {"img.test": ["127.0.0.1"], "other.test": ["127.0.0.1"]}.__getitem__
    fetcher = ImageFetcher(label_studio_url=None, auth_header=None, allowed_hosts=("127.0.0.1",),
                           resolver=resolver, ca_certs=ca)
    assert fetcher.fetch(f"https://img.test:{port}/a.png").size == (28, 28)
    assert tls_image_server["seen"][-1] == f"img.test:{port}"
    with pytest.raises(ImageFetchError, match="(?i)certificate|hostname"):
        fetcher.fetch(f"https://other.test:{port}/a.png")  # same address, name not in the certificate


# --- a whole-download deadline (defect 4) ------------------------------------------------------------
@pytest.fixture
def drip_server():
    """Answers every request by sending `head` then `drip` one byte every 0.25 s (a slow-loris server)."""
    import socket
    import threading

    state = {"head": b"", "drip": b""}
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    stop = threading.Event()

    def serve(conn):
        with conn:
            try:
                conn.recv(65536)
                conn.sendall(state["head"])
                for byte in state["drip"]:
                    if stop.wait(0.25):
                        return
                    conn.sendall(bytes([byte]))
            except OSError:
                return

    def accept():
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            threading.Thread(target=serve, args=(conn,), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    state["url"] = f"http://127.0.0.1:{listener.getsockname()[1]}/slow.png"
    yield state
    stop.set()
    listener.close()


def test_a_slow_body_is_abandoned_at_the_whole_download_deadline(drip_server):
    drip_server["head"] = b"HTTP/1.1 200 OK\r\nContent-Length: 40\r\n\r\n"
    drip_server["drip"] = b"x" * 40  # one byte every 0.25 s: each read is quick, the download takes 10 s
    with pytest.raises(ImageFetchError, match="MCM_IMAGE_TIMEOUT"):
        _fetcher(timeout=1.0).fetch(drip_server["url"])


def test_slow_response_headers_are_abandoned_at_the_deadline(drip_server):
    drip_server["head"] = b"HTTP/1.1 200 OK\r\n"
    drip_server["drip"] = b"X-Slow: " + b"y" * 30 + b"\r\nContent-Length: 0\r\n\r\n"
    with pytest.raises(ImageFetchError, match="MCM_IMAGE_TIMEOUT"):
        _fetcher(timeout=1.0).fetch(drip_server["url"])


# --- a pixel budget checked from the header (defect 3) ----------------------------------------------
def _png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height (a few hundred bytes: the size of a decompression bomb)."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 1000))
            + chunk(b"IEND", b""))


def _jpeg_bytes(size: int) -> bytes:
    import io

    from PIL import Image
    rng = np.random.default_rng(0)
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(buffer, format="JPEG")
    return buffer.getvalue()


def test_an_image_over_the_pixel_budget_is_refused_from_its_header(images):
    images.files["/bomb.png"] = _png_header_only(14000, 14000)
    images.files["/big.png"] = png_bytes(np.zeros((300, 300), dtype=np.uint8))
    with pytest.raises(ImageFetchError, match="14000x14000.*MCM_IMAGE_MAX_PIXELS"):
        _fetcher().fetch(f"{images.url}/bomb.png")
    with pytest.raises(ImageFetchError, match="MCM_IMAGE_MAX_PIXELS"):
        _fetcher(max_pixels=50_000).fetch(f"{images.url}/big.png")
    assert _fetcher(max_pixels=90_000).fetch(f"{images.url}/big.png").size == (300, 300)


def test_a_jpeg_over_the_pixel_budget_is_downscaled_while_decoding(images):
    images.files["/photo.jpg"] = _jpeg_bytes(400)
    image = _fetcher(max_pixels=50_000).fetch(f"{images.url}/photo.jpg")
    assert image.size == (200, 200)  # decoded at half scale (JPEG draft), never at full size
    assert _fetcher().fetch(f"{images.url}/photo.jpg").size == (400, 400)  # within budget: untouched


def test_pixel_budget_bounds_the_pixels_decoded_at_once():
    import threading

    from backend.ingest.fetch import PixelBudget

    budget = PixelBudget(100)
    acquired = threading.Event()

    def second():
        with budget.hold(60):
            acquired.set()

    with budget.hold(60):
        worker = threading.Thread(target=second)
        worker.start()
        assert not acquired.wait(0.3)  # 60 + 60 > 100: the second decode waits
    assert acquired.wait(10)
    worker.join()
    with budget.hold(10_000):  # one image bigger than the whole budget still proceeds (alone)
        pass

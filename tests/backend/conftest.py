"""Shared fixtures: real MNIST digits served over local HTTP, a fake Label Studio, settings."""
from __future__ import annotations

import logging

import pytest
import torch

from backend.settings import Settings

from backend_fakes import FakeLabelStudio, ImageServer

torch.set_num_threads(2)
# The projects the tests without a (fake) Label Studio connect, as a deployment without one would list
# them in MCM_PROJECTS; 7 is left out on purpose (a test connects it with a bad config and expects a 404).
PROJECTS_WITHOUT_LABEL_STUDIO = ("1", "2", "3", "4", "5", "8", "42")

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


@pytest.fixture
def make_settings(tmp_path):
    def build(**overrides) -> Settings:
        values = dict(model_dir=str(tmp_path / "models"), backbone="simple-cnn", allowed_hosts=("127.0.0.1",),
                      debounce_seconds=0.0, retrain_min_interval=0.0, maintain_seconds=3600.0,
                      label_studio_url=None, label_studio_api_key=None)
        values.update(overrides)
        if values["label_studio_url"] is None:  # nothing to ask whether a project is connected: list them
            values.setdefault("projects", PROJECTS_WITHOUT_LABEL_STUDIO)
        return Settings(**values)
    return build


@pytest.fixture(autouse=True, scope="session")
def _no_delayed_first_training():
    """A /setup schedules a check a few seconds later (backend/onboarding.py); a test that does not ask
    for it must not see it fire at a time that depends on the machine (test_onboarding.py asks).
    Session-wide, so that apps built by module-scoped fixtures (set up before any function-scoped
    fixture) are stretched too; FirstTraining reads DELAYS when an app is built."""
    import backend.onboarding

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(backend.onboarding, "DELAYS", (86_400.0,))
        yield


@pytest.fixture(autouse=True)
def _quiet_logs(caplog):
    caplog.set_level(logging.INFO, logger="backend")
    yield

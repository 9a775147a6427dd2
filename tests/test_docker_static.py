"""Static checks of docker/ (images cannot be built on the CI machine: no registry access).

They catch the drift that breaks a deployment silently: a compose environment name the backend
never reads, a setting missing from .env.example, a Dockerfile command that differs from the one
the README documents, torch pins that disagree with requirements.txt."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import pytest

yaml = pytest.importorskip("yaml", reason="PyYAML is needed to parse docker-compose.yml")

from backend.settings import SETTINGS_HELP  # noqa: E402  (after the importorskip)

ROOT = Path(__file__).resolve().parents[1]
DOCKER = ROOT / "docker"
# Environment names of backend/worker containers that are not backend settings, and why.
NON_BACKEND_ENV = {"WEB_CONCURRENCY": "gunicorn's worker-process count (read by gunicorn itself)"}
# Settings whose compose default deliberately differs from the backend's own default, and why.
COMPOSE_DEFAULT_OVERRIDES = {"MCM_ALLOWED_HOSTS": "the backend must fetch images from label-studio"}
INTERPOLATION = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?:[:?+\-][^}]*)?\}")


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((DOCKER / "docker-compose.yml").read_text())


def _dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs with line continuations joined and comments dropped."""
    out, pending = [], ""
    for raw in (DOCKER / "Dockerfile").read_text().splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line = pending + line
        pending = ""
        instruction, _, args = line.partition(" ")
        out.append((instruction.upper(), args.strip()))
    return out


def _dockerfile(instruction: str) -> list[str]:
    return [args for name, args in _dockerfile_instructions() if name == instruction]


def _exec_form(args: str) -> list[str]:
    value = json.loads(args)
    assert isinstance(value, list) and all(isinstance(v, str) for v in value), args
    return value


def _env_names(service: dict) -> set[str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        return {item.split("=", 1)[0] for item in env}
    return set(env)


def _readme_gunicorn_lines() -> list[str]:
    """The production command in the backend's documentation (the README links to it)."""
    readme = ROOT / "docs" / "backend.md"
    if not readme.is_file():
        return []
    blocks = re.findall(r"```bash\n(.*?)```", readme.read_text(), flags=re.S)
    return [line.strip() for block in blocks for line in block.splitlines()
            if line.strip().startswith("gunicorn ")]


# --------------------------------------------------------------------------- compose


def test_compose_has_the_four_services_and_named_volumes(compose):
    services = compose["services"]
    assert {"label-studio", "backend", "redis", "worker"} <= set(services)
    assert services["label-studio"]["image"] == "heartexlabs/label-studio:1.23.2"
    assert services["redis"]["image"].startswith("redis:7")
    volumes = set(compose.get("volumes") or {})
    ls_mounts = services["label-studio"]["volumes"]
    assert any(m.split(":")[0] in volumes and m.split(":")[1] == "/label-studio/data"
               for m in ls_mounts), "Label Studio data must live in a named volume"


def test_backend_and_workers_share_image_and_model_volume(compose):
    backend, worker = compose["services"]["backend"], compose["services"]["worker"]
    assert backend["build"] == worker["build"] == {"context": "..", "dockerfile": "docker/Dockerfile"}
    assert backend["image"] == worker["image"]
    model_dir = backend["environment"]["MODEL_DIR"]
    assert worker["environment"]["MODEL_DIR"] == model_dir
    volumes = set(compose["volumes"])
    for service in (backend, worker):
        mounts = {m.split(":")[1]: m.split(":")[0] for m in service["volumes"]}
        assert mounts.get(model_dir) in volumes, f"{model_dir} must be a named volume"
    assert {m for m in backend["volumes"] if model_dir in m} == {
        m for m in worker["volumes"] if model_dir in m}
    assert "VOLUME" in {name for name, _ in _dockerfile_instructions()}
    assert model_dir in _exec_form(_dockerfile("VOLUME")[0])


def test_worker_is_an_rq_worker_on_queue_mcm_and_scalable(compose):
    worker = compose["services"]["worker"]
    command = worker["command"]
    command = shlex.split(command) if isinstance(command, str) else list(command)
    if command[:2] == ["sh", "-c"]:  # shell form so the container expands $REDIS_URL
        command = shlex.split(command[2])
    tokens = [t for t in command if t != "exec"]
    assert tokens[:2] == ["rq", "worker"] and tokens[-1] == "mcm", tokens
    assert tokens[tokens.index("--url") + 1] == "$$REDIS_URL"  # expanded by the container shell
    # --scale worker=N needs no fixed name and no fixed host port
    assert "container_name" not in worker and "ports" not in worker
    assert worker["environment"]["REDIS_URL"] == compose["services"]["backend"]["environment"]["REDIS_URL"]
    assert worker["environment"]["REDIS_URL"].startswith("redis://redis:")


def test_label_studio_settings_for_a_private_network_and_a_shared_token(compose):
    ls_env = compose["services"]["label-studio"]["environment"]
    assert str(ls_env["ML_BLOCK_LOCAL_IP"]).lower() == "false"
    assert str(ls_env["USE_DEFAULT_BANNED_SUBNETS"]).lower() == "false"
    assert str(ls_env["LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN"]).lower() == "true"
    assert str(ls_env["LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED"]).lower() == "true"
    for name in ("LABEL_STUDIO_USERNAME", "LABEL_STUDIO_PASSWORD", "LABEL_STUDIO_USER_TOKEN"):
        assert name in ls_env
    token_var = INTERPOLATION.search(ls_env["LABEL_STUDIO_USER_TOKEN"]).group(1)
    backend_env = compose["services"]["backend"]["environment"]
    assert INTERPOLATION.search(backend_env["LABEL_STUDIO_API_KEY"]).group(1) == token_var
    assert backend_env["LABEL_STUDIO_URL"] == "http://label-studio:8080"
    assert "label-studio" in backend_env["MCM_ALLOWED_HOSTS"]


def test_every_backend_and_worker_env_name_is_a_backend_setting(compose):
    known = set(SETTINGS_HELP)
    for name in ("backend", "worker"):
        unknown = _env_names(compose["services"][name]) - known - set(NON_BACKEND_ENV)
        assert not unknown, f"{name} sets {sorted(unknown)}, which backend/settings.py does not define"
    # and the compose file passes every backend setting through (so .env can set any of them)
    missing = known - _env_names(compose["services"]["backend"])
    assert not missing, f"backend service does not pass {sorted(missing)}"


def _env_example_values() -> dict[str, str]:
    text = (DOCKER / ".env.example").read_text()
    return dict(re.findall(r"^([A-Z][A-Z0-9_]*)=(.*)$", text, flags=re.M))


def test_compose_and_env_example_defaults_equal_the_backend_defaults(compose):
    """Copying .env.example, or leaving a variable unset, gives the backend's documented default."""
    example = _env_example_values()
    checked = 0
    for name, value in compose["services"]["backend"]["environment"].items():
        match = re.fullmatch(r"\$\{(\w+):-([^}]*)\}", str(value))
        if name not in SETTINGS_HELP or not match or match.group(1) != name:
            continue
        compose_default = match.group(2)
        if name not in COMPOSE_DEFAULT_OVERRIDES:
            assert compose_default == (SETTINGS_HELP[name][0] or ""), (
                f"{name}: compose default {compose_default!r} != backend default {SETTINGS_HELP[name][0]!r}")
        assert example.get(name) == compose_default, (
            f"{name}: .env.example has {example.get(name)!r}, compose default is {compose_default!r}")
        checked += 1
    assert checked >= 10


def test_env_example_documents_every_setting(compose):
    text = (DOCKER / ".env.example").read_text()
    assigned = set(re.findall(r"^\s*#?\s*([A-Z][A-Z0-9_]*)=", text, flags=re.M))
    used = set(INTERPOLATION.findall((DOCKER / "docker-compose.yml").read_text()))
    assert used, "compose file interpolates nothing?"
    assert not used - assigned, f".env.example lacks {sorted(used - assigned)}"
    assert not set(SETTINGS_HELP) - assigned, f".env.example lacks {sorted(set(SETTINGS_HELP) - assigned)}"


# --------------------------------------------------------------------------- Dockerfile


def test_dockerfile_base_user_healthcheck_and_pins():
    instructions = _dockerfile_instructions()
    assert _dockerfile("FROM") == ["python:3.11-slim"]
    users = _dockerfile("USER")
    assert users and users[-1] not in ("root", "0"), "the server must not run as root"
    health = _dockerfile("HEALTHCHECK")
    assert len(health) == 1 and "/health" in health[0] and "curl" not in health[0]
    assert "urllib" in health[0]
    env = " ".join(_dockerfile("ENV"))
    assert re.search(r"\bMODEL_DIR=/data/models\b", env)
    # CPU torch wheels, at the versions requirements.txt pins
    pins = dict(re.findall(r"^(torch|torchvision)==(\S+)", (ROOT / "requirements.txt").read_text(),
                           flags=re.M))
    runs = " ".join(_dockerfile("RUN"))
    assert "--index-url https://download.pytorch.org/whl/cpu" in runs
    for package, version in pins.items():
        assert f"{package}=={version}" in runs.split(), f"{package} pin differs from requirements.txt"
    assert "-r /app/requirements.txt" in runs or "-r requirements.txt" in runs
    assert [name for name, _ in instructions].count("CMD") == 1


def _dockerfile_command() -> list[str]:
    assert not _dockerfile("ENTRYPOINT"), "the command is CMD only (compose overrides it for workers)"
    return _exec_form(_dockerfile("CMD")[0])


def test_dockerfile_command_is_the_documented_production_command():
    command = _dockerfile_command()
    assert command[0] == "gunicorn" and command[-1] == "_wsgi:app"
    documented = re.search(r"^Production:\s+(gunicorn .+)$", (ROOT / "_wsgi.py").read_text(), flags=re.M)
    assert documented, "_wsgi.py docstring lost its 'Production: gunicorn ...' line"
    assert command == shlex.split(documented.group(1))


def test_dockerfile_command_equals_the_readme_gunicorn_line():
    lines = _readme_gunicorn_lines()
    assert lines, "docs/backend.md has no ```bash block line starting with 'gunicorn '"
    assert _dockerfile_command() in [shlex.split(line, comments=True) for line in lines], (
        f"Dockerfile CMD {' '.join(_dockerfile_command())!r} is not among README's {lines}")

"""Static checks of docker/ (images cannot be built on the CI machine: no registry access).

They catch the drift that breaks a deployment silently: a compose environment name the backend
never reads, a setting missing from .env.example, a Dockerfile command that differs from the one
the docs document (docs/operations.md), torch pins that disagree with requirements.txt."""

from __future__ import annotations

import json
import os
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
COMPOSE_DEFAULT_OVERRIDES = {"MCM_ALLOWED_HOSTS": "the backend must fetch images from label-studio",
                             "MCM_BACKEND_URL": "Label Studio reaches the backend at http://backend:9090"}
# The secrets of the stack: each must be refused at start while it still holds .env.example's value.
SECRETS = ("LABEL_STUDIO_PASSWORD", "LABEL_STUDIO_USER_TOKEN", "POSTGRES_PASSWORD", "BASIC_AUTH_PASS")
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


def _docs_gunicorn_lines() -> list[str]:
    readme = ROOT / "docs" / "operations.md"
    if not readme.is_file():
        return []
    blocks = re.findall(r"```bash\n(.*?)```", readme.read_text(), flags=re.S)
    return [line.strip() for block in blocks for line in block.splitlines()
            if line.strip().startswith("gunicorn ")]


# --------------------------------------------------------------------------- compose


def test_compose_has_the_five_services_and_named_volumes(compose):
    services = compose["services"]
    assert {"label-studio", "db", "backend", "redis", "worker"} <= set(services)
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


def _interpolated(value) -> str:
    match = INTERPOLATION.fullmatch(str(value))
    assert match, f"{value!r} is not a single ${{VAR...}} interpolation"
    return match.group(1)


def test_label_studio_runs_on_postgresql_with_a_volume_and_health_check(compose):
    services = compose["services"]
    db, ls = services["db"], services["label-studio"]
    assert db["image"] == "postgres:15"
    mounts = {m.split(":")[1]: m.split(":")[0] for m in db["volumes"]}
    assert mounts.get("/var/lib/postgresql/data") in set(compose["volumes"]), "PostgreSQL data must be a named volume"
    assert "ports" not in db, "the database needs no host port"
    test = db["healthcheck"]["test"]
    assert test[0] in ("CMD", "CMD-SHELL") and "pg_isready" in " ".join(test[1:])
    assert ls["depends_on"]["db"] == {"condition": "service_healthy"}
    env = ls["environment"]
    assert env["DJANGO_DB"] == "default" and env["POSTGRE_HOST"] == "db" and str(env["POSTGRE_PORT"]) == "5432"
    # Label Studio logs in with exactly the database, user and password the db container creates.
    for ls_name, pg_name in (("POSTGRE_NAME", "POSTGRES_DB"), ("POSTGRE_USER", "POSTGRES_USER"),
                             ("POSTGRE_PASSWORD", "POSTGRES_PASSWORD")):
        assert _interpolated(env[ls_name]) == _interpolated(db["environment"][pg_name]), ls_name
    assert ":?" in db["environment"]["POSTGRES_PASSWORD"], "no default database password"


def test_label_studio_reads_the_database_names_the_compose_file_sets(compose):
    """The POSTGRE_* / DJANGO_DB names exist in Label Studio 1.23.2's settings (its venv, if installed)."""
    venv = Path(os.environ.get("MCM_LS_VENV", Path.home() / ".cache/mcm/ls-venv"))
    settings = sorted(venv.glob("lib/python3*/site-packages/label_studio/core/settings"))
    if not settings:
        pytest.skip(f"Label Studio is not installed in {venv} (scripts/ls_server.sh ensure-venv)")
    source = (settings[0] / "base.py").read_text() + (settings[0] / "label_studio.py").read_text()
    read = set(re.findall(r"get_env\('([A-Z_]+)'", source))
    env = compose["services"]["label-studio"]["environment"]
    used = {name for name in env if name.startswith("POSTGRE_") or name == "DJANGO_DB"}
    assert len(used) == 6 and used <= read, f"Label Studio does not read {sorted(used - read)}"
    assert "DATABASES_ALL['default'] = DATABASES_ALL[DJANGO_DB_POSTGRESQL]" in source, \
        "DJANGO_DB=default no longer selects PostgreSQL"


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


# --------------------------------------------------------------------------- secure defaults (issue 19)


def test_backend_port_is_published_on_the_loopback_only(compose):
    ports = compose["services"]["backend"]["ports"]
    assert ports and all(str(p).startswith("127.0.0.1:") for p in ports), ports


def test_backend_requires_basic_auth(compose):
    """Label Studio reaches the backend over the compose network; without basic auth the backend would
    refuse it (it serves only loopback clients then), so compose requires the credentials."""
    env = compose["services"]["backend"]["environment"]
    for name in ("BASIC_AUTH_USER", "BASIC_AUTH_PASS"):
        assert _interpolated(env[name]) == name and ":?" in env[name], name
    assert compose["services"]["worker"]["environment"]["BASIC_AUTH_PASS"] == env["BASIC_AUTH_PASS"]


def _check_secrets_script(compose) -> str:
    entrypoint = compose["services"]["check-secrets"]["entrypoint"]
    assert entrypoint[:2] == ["sh", "-c"], entrypoint
    return entrypoint[2].replace("$$", "$")  # what compose hands to the container's shell


def _run_check(compose, values: dict[str, str]):
    import subprocess

    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), **values}
    return subprocess.run(["sh", "-c", _check_secrets_script(compose)], env=env, capture_output=True, text=True,
                          timeout=30)


def test_label_studio_and_postgres_wait_for_the_secrets_check(compose):
    services = compose["services"]
    check = services["check-secrets"]
    assert check.get("restart") == "no"
    for name in SECRETS:
        assert _interpolated(check["environment"][name]) == name and ":?" in check["environment"][name], name
    for service in ("label-studio", "db"):
        assert services[service]["depends_on"]["check-secrets"] == {"condition": "service_completed_successfully"}
    # the services read the very variables the check reads
    assert _interpolated(services["db"]["environment"]["POSTGRES_PASSWORD"]) == "POSTGRES_PASSWORD"
    assert _interpolated(services["label-studio"]["environment"]["LABEL_STUDIO_PASSWORD"]) == "LABEL_STUDIO_PASSWORD"


def test_the_example_secrets_are_refused_and_real_ones_accepted(compose):
    from backend.settings import PLACEHOLDER_PREFIXES, Settings

    example = _env_example_values()
    refused = _run_check(compose, {name: example[name] for name in SECRETS})
    assert refused.returncode != 0
    for name in SECRETS:
        assert f"{name} is still the example value" in refused.stderr, (name, refused.stderr)
        assert example[name] not in refused.stderr  # names, never values
    for prefix in PLACEHOLDER_PREFIXES:  # the same rule as the backend's
        one = {name: "a-real-secret-9f2c" for name in SECRETS} | {"POSTGRES_PASSWORD": prefix.upper() + "-x"}
        assert _run_check(compose, one).returncode != 0, prefix
    accepted = _run_check(compose, {name: f"{name.lower()}-9f2c71" for name in SECRETS})
    assert accepted.returncode == 0 and accepted.stderr == "", accepted.stderr
    # the backend (and each worker) refuses its own two secrets at start
    with pytest.raises(ValueError, match="BASIC_AUTH_PASS"):
        Settings.from_env({"BASIC_AUTH_USER": example["BASIC_AUTH_USER"],
                           "BASIC_AUTH_PASS": example["BASIC_AUTH_PASS"]})
    with pytest.raises(ValueError, match="LABEL_STUDIO_API_KEY"):
        Settings.from_env({"LABEL_STUDIO_API_KEY": example["LABEL_STUDIO_USER_TOKEN"]})


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


def test_dockerfile_command_equals_the_documented_gunicorn_line():
    lines = _docs_gunicorn_lines()
    assert lines, "docs/operations.md has no ```bash block line starting with 'gunicorn '"
    assert _dockerfile_command() in [shlex.split(line, comments=True) for line in lines], (
        f"Dockerfile CMD {' '.join(_dockerfile_command())!r} is not among docs/operations.md's {lines}")

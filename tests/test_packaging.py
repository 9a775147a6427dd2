"""pyproject.toml and the pinned requirement files describe the same dependencies.

requirements*.txt pin what the scripts install and CI tests; pyproject.toml's ranges are what
`pip install .` / `.[backend]` / `.[test]` bring. A package added to one and not the other breaks
either the installed library or CI, so the names must match.
"""
from __future__ import annotations

import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _name(requirement: str) -> str:
    return re.split(r"[<>=!~\[; ]", requirement.strip(), maxsplit=1)[0].lower().replace("_", "-")


def _pinned(path: Path) -> set[str]:
    lines = (line.split("#", 1)[0].strip() for line in path.read_text().splitlines())
    return {_name(line) for line in lines if line and not line.startswith("-")}


def test_every_pinned_requirement_is_declared_in_pyproject():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = {_name(r) for r in project["dependencies"]}
    for extra in project["optional-dependencies"].values():
        declared |= {_name(r) for r in extra}
    pinned = _pinned(ROOT / "requirements.txt") | _pinned(ROOT / "requirements-test.txt")
    assert pinned - declared == set(), "pinned in requirements*.txt but not in pyproject.toml"
    assert declared - pinned == set(), "in pyproject.toml but not pinned for CI"


def test_the_library_installs_without_the_backend_stack():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    core = {_name(r) for r in project["dependencies"]}
    assert core <= {"numpy", "torch", "torchvision", "pillow"}
    packages = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]
    assert set(packages["include"]) == {"mcm_core*", "backend*"}

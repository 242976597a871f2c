"""environment.yml (conda users) carries every runtime dependency of pyproject.toml."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

yaml = pytest.importorskip("yaml")
try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    tomllib = pytest.importorskip("tomli")

ROOT = Path(__file__).resolve().parents[1]
_NAME = re.compile(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)")


def normalise(requirement: str) -> str:
    """PEP 503 name of a pip or conda requirement string (``numpy>=1.24``, ``python=3.11``)."""
    match = _NAME.match(requirement)
    assert match, f"cannot read a package name from {requirement!r}"
    return re.sub(r"[-_.]+", "-", match.group(1)).lower()


@pytest.fixture(scope="module")
def env() -> dict:
    return yaml.safe_load((ROOT / "environment.yml").read_text())


@pytest.fixture(scope="module")
def env_packages(env) -> tuple[list[str], list[str]]:
    conda, pip = [], []
    for item in env["dependencies"]:
        if isinstance(item, dict):
            pip.extend(item["pip"])
        else:
            conda.append(item)
    return conda, pip


def test_shape(env, env_packages):
    assert env["name"] == "fluxon"
    assert env["channels"] == ["conda-forge"]
    conda, pip = env_packages
    assert "pip" in conda
    assert "-e ." in pip


def test_python_is_3_11(env_packages):
    conda, _ = env_packages
    pythons = [item for item in conda if normalise(item) == "python"]
    assert len(pythons) == 1
    assert re.fullmatch(r"python\s*=\s*3\.11(\.\*)?", pythons[0].strip()), pythons


def test_every_runtime_dependency_is_listed(env_packages):
    conda, pip = env_packages
    listed = {normalise(item) for item in conda + pip if not item.startswith("-")}
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    required = {normalise(dep) for dep in project["dependencies"]}
    assert required, "pyproject.toml lists no runtime dependencies?"
    missing = required - listed
    assert not missing, f"environment.yml lacks {sorted(missing)}"


def test_test_tools_are_listed(env_packages):
    _, pip = env_packages
    listed = {normalise(item) for item in pip if not item.startswith("-")}
    assert {"pytest", "pytest-timeout", "hypothesis", "pytest-benchmark"} <= listed


def test_normalise():
    assert normalise("PyYAML>=6") == "pyyaml"
    assert normalise("python3_etcd3 >= 0.13") == "python3-etcd3"
    assert normalise("python=3.11") == "python"

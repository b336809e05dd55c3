"""The pinned conda env of the rules stays consistent with pyproject.toml."""

import re

import tomllib
import yaml
from packaging.requirements import Requirement


def _env_pins(root):
    env = yaml.safe_load((root / "workflow" / "envs" / "cxrbench.yaml").read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d)
    pins = {}
    for line in pip:
        name, version = re.fullmatch(r"([A-Za-z0-9_.\-]+)==([^\s]+)", line).groups()
        pins[name.lower().replace("_", "-")] = version
    return env, pins


def test_env_pins_every_dependency_within_its_specifier(root):
    deps = tomllib.loads((root / "pyproject.toml").read_text())["project"]["dependencies"]
    _, pins = _env_pins(root)
    for dep in map(Requirement, deps):
        name = dep.name.lower().replace("_", "-")
        assert name in pins, f"{name} is in pyproject.toml but not pinned in workflow/envs/cxrbench.yaml"
        assert dep.specifier.contains(pins[name], prereleases=True), f"{name}=={pins[name]} violates {dep.specifier}"
    assert set(pins) == {Requirement(d).name.lower().replace("_", "-") for d in deps}


def test_env_python_matches_requires_python(root):
    env, _ = _env_pins(root)
    requires = tomllib.loads((root / "pyproject.toml").read_text())["project"]["requires-python"]
    python = next(d for d in env["dependencies"] if isinstance(d, str) and d.startswith("python="))
    from packaging.specifiers import SpecifierSet

    assert SpecifierSet(requires).contains(python.split("=")[1] + ".0")


def test_env_pins_equal_the_installed_versions(root):
    """The env file pins what `make install` installs (the pins are its constraints), not only what pyproject allows."""
    import sys
    from importlib.metadata import PackageNotFoundError, version

    env, pins = _env_pins(root)
    differ = {}
    for name, pinned in pins.items():
        try:
            installed = version(name)
        except PackageNotFoundError:
            installed = None
        if installed != pinned:
            differ[name] = (pinned, installed)
    assert differ == {}, f"workflow/envs/cxrbench.yaml pins (pinned, installed) that differ: {differ}"
    python = next(d for d in env["dependencies"] if isinstance(d, str) and d.startswith("python="))
    assert python.split("=")[1] == f"{sys.version_info.major}.{sys.version_info.minor}"


def test_local_profile_does_not_force_conda(root):
    profile = yaml.safe_load((root / "workflow" / "profiles" / "local" / "config.yaml").read_text())
    assert not profile.get("use-conda") and "software-deployment-method" not in profile

"""constraints.txt pins every requirement of pyproject.toml at a version its range admits, and the
environment running the tests is the pinned one (as .ci/run installs it)."""

from __future__ import annotations

import importlib.metadata
import tomllib

from conftest import REPO
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version


def pinned_versions() -> dict[str, Version]:
    pins = {}
    for line in (REPO / "constraints.txt").read_text(encoding="utf-8").splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, _, version = line.partition("==")
            assert version, f"constraints.txt: {line!r} is not an exact pin (name==version)"
            pins[canonicalize_name(name)] = Version(version)
    return pins


def declared_requirements() -> list[Requirement]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    extras = project.get("optional-dependencies", {})
    return [Requirement(r) for r in [*project["dependencies"], *(r for group in extras.values() for r in group)]]


def test_every_requirement_is_pinned_within_its_range():
    pins = pinned_versions()
    problems = []
    for requirement in declared_requirements():
        pin = pins.get(canonicalize_name(requirement.name))
        if pin is None:
            problems.append(f"{requirement.name}: not pinned")
        elif not requirement.specifier.contains(pin, prereleases=True):
            problems.append(f"{requirement.name}=={pin} is outside pyproject.toml's {requirement}")
    assert not problems, "constraints.txt no longer fits pyproject.toml (run .ci/refresh-constraints): " + "; ".join(problems)


def test_installed_versions_are_the_pins():
    """Catches an install that ignored constraints.txt (a CI run is only as reproducible as its pins)."""
    mismatched = []
    for name, pin in pinned_versions().items():
        try:
            installed = Version(importlib.metadata.version(name))
        except importlib.metadata.PackageNotFoundError:
            continue  # pinned for another platform's or extra's needs
        if Version(installed.public) != pin:
            mismatched.append(f"{name} {installed} (pinned {pin})")
    assert not mismatched, "installed versions differ from constraints.txt: " + ", ".join(mismatched)

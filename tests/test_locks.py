"""The lock files hold what ``pyproject.toml`` asks for, at versions it allows, each with its hashes, and
the runtime lock agrees with the development one (``make lock`` writes both)."""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parent.parent
RUNTIME_LOCK = ROOT / "requirements.lock"
DEV_LOCK = ROOT / "requirements-dev.lock"
#: Python 3.11 on the platforms the lock files are written for.
ENVIRONMENTS = [
    {
        "sys_platform": platform,
        "platform_system": system,
        "python_version": "3.11",
        "python_full_version": "3.11.7",
    }
    for platform, system in (("linux", "Linux"), ("darwin", "Darwin"), ("win32", "Windows"))
]


@dataclass(frozen=True)
class Pin:
    requirement: Requirement
    hashes: frozenset[str]

    @property
    def version(self) -> str:
        [specifier] = self.requirement.specifier
        assert specifier.operator == "==", self.requirement
        return specifier.version

    def applies(self, environment: dict[str, str]) -> bool:
        marker = self.requirement.marker
        return marker is None or marker.evaluate(environment)


def pins(path: Path) -> dict[str, list[Pin]]:
    """The pins of a lock file by package name (several for a package locked apart per platform)."""
    found: dict[str, list[Pin]] = {}
    text = path.read_text().replace("\\\n", " ")
    for line in text.splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        spec, *options = line.split(" --hash=")
        requirement = Requirement(spec.strip())
        hashes = frozenset(option.split()[0] for option in options)
        found.setdefault(canonicalize_name(requirement.name), []).append(Pin(requirement, hashes))
    return found


def project() -> dict[str, list[Requirement]]:
    table = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return {
        "runtime": [Requirement(line) for line in table["dependencies"]],
        "dev": [Requirement(line) for line in table["optional-dependencies"]["dev"]],
    }


@pytest.mark.parametrize("path", [RUNTIME_LOCK, DEV_LOCK], ids=lambda path: path.name)
def test_every_pin_is_exact_and_hashed(path: Path) -> None:
    locked = pins(path)
    assert locked
    for name, entries in locked.items():
        for pin in entries:
            assert pin.version, name
            assert pin.hashes and all(value.startswith("sha256:") for value in pin.hashes), name


@pytest.mark.parametrize(
    ("path", "groups"), [(RUNTIME_LOCK, ["runtime"]), (DEV_LOCK, ["runtime", "dev"])], ids=["runtime", "dev"]
)
def test_the_lock_holds_what_pyproject_asks_for_at_a_version_it_allows(path: Path, groups: list[str]) -> None:
    locked = pins(path)
    for group in groups:
        for wanted in project()[group]:
            for environment in ENVIRONMENTS:
                needed = wanted.marker is None or wanted.marker.evaluate(environment)
                applying = [
                    pin for pin in locked.get(canonicalize_name(wanted.name), []) if pin.applies(environment)
                ]
                where = f"{wanted} on {environment['sys_platform']} in {path.name}: run `make lock`"
                assert len(applying) == (1 if needed else 0), where
                if needed:
                    assert wanted.specifier.contains(applying[0].version, prereleases=True), where


def test_the_runtime_lock_agrees_with_the_development_lock() -> None:
    development = pins(DEV_LOCK)
    for name, entries in pins(RUNTIME_LOCK).items():
        assert {(str(pin.requirement), pin.hashes) for pin in entries} <= {
            (str(pin.requirement), pin.hashes) for pin in development.get(name, [])
        }, name

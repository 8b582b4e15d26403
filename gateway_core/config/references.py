"""Secret references in strings (``${VAR}``, ``${VAR:-default}``, ``${file:path}``), the removal of optional
deployments whose references are unset, and readable validation errors."""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from typing import Any

from pydantic import (
    ValidationError,
)

from gateway_core.errors import ConfigError

log = logging.getLogger("lockgate.config")

_REFERENCE = re.compile(r"\$(\$?)\{([^}]*)\}")


class _Unset:
    """Placeholder for a reference to an environment variable that is not set."""

    def __init__(self, variable: str) -> None:
        self.variable = variable


def _resolve_string(value: str, base: Path, found: set[str] | None = None) -> str | _Unset:
    """``value`` with its references resolved; the values taken from files and the environment are
    added to ``found`` (they are treated as secrets)."""
    unset: list[str] = []

    def replace(match: re.Match[str]) -> str:
        if match.group(1):  # $${...} escapes a literal ${...}
            return "${" + match.group(2) + "}"
        ref = match.group(2).strip()
        if ref.startswith("file:"):
            path = Path(os.path.expanduser(ref[5:].strip()))
            path = path if path.is_absolute() else base / path
            try:
                content = path.read_text(encoding="utf-8").rstrip("\r\n")
            except OSError as exc:
                raise ConfigError(f"cannot read secret file {path}: {exc.strerror}") from None
            if found is not None:
                found.add(content)
            return content
        name, sep, default = ref.partition(":-")
        value = os.environ.get(name)
        if value:
            if found is not None:
                found.add(value)
            return value
        if sep:
            return default
        unset.append(name)
        return ""

    resolved = _REFERENCE.sub(replace, value)
    return _Unset(unset[0]) if unset else resolved


def resolve_references(
    node: Any,
    base: Path,
    path: tuple[str | int, ...],
    unset: dict[tuple[str | int, ...], str],
    found: set[str] | None = None,
) -> Any:
    if isinstance(node, str):
        if "${" not in node:
            return node
        try:
            value = _resolve_string(node, base, found)
        except ConfigError as exc:
            raise ConfigError(f"{dotted_path(path)}: {exc}") from None
        if isinstance(value, _Unset):
            unset[path] = value.variable
            return ""
        return value
    if isinstance(node, dict):
        return {
            key: resolve_references(value, base, (*path, str(key)), unset, found)
            for key, value in node.items()
        }
    if isinstance(node, list):
        return [
            resolve_references(value, base, (*path, index), unset, found) for index, value in enumerate(node)
        ]
    return node


def dotted_path(path: tuple[str | int, ...]) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "<top>"


def format_validation_error(source: str, exc: ValidationError, prefix: tuple[str | int, ...] = ()) -> str:
    lines = [f"{source}: invalid configuration"]
    for error in exc.errors():
        loc = dotted_path((*prefix, *error["loc"]))
        message = error["msg"]
        if error["type"] == "extra_forbidden":
            message = "unknown key"
        lines.append(f"  {loc}: {message}")
    return "\n".join(lines)


def drop_unset_optional_deployments(data: dict[str, Any], unset: dict[tuple[str | int, ...], str]) -> None:
    models = data.get("models")
    if not isinstance(models, dict):
        return
    for group_name, group in list(models.items()):
        deployments = group.get("deployments") if isinstance(group, dict) else None
        if not isinstance(deployments, list):
            continue
        kept = []
        for index, deployment in enumerate(deployments):
            prefix = ("models", str(group_name), "deployments", index)
            missing = sorted({var for path, var in unset.items() if path[:4] == prefix})
            if missing and isinstance(deployment, dict) and deployment.get("optional") is True:
                log.info(
                    "deployment %s of model %r is off: %s not set",
                    index,
                    group_name,
                    ", ".join(missing),
                )
                for path in [p for p in unset if p[:4] == prefix]:
                    del unset[path]
                continue
            kept.append(deployment)
        if kept:
            group["deployments"] = kept
        else:
            del models[group_name]


def drop_unset_optional_providers(data: dict[str, Any], unset: dict[tuple[str | int, ...], str]) -> None:
    providers = data.get("providers")
    if not isinstance(providers, dict):
        return
    for name, section in list(providers.items()):
        prefix = ("providers", str(name))
        missing = sorted({var for path, var in unset.items() if path[:2] == prefix})
        if missing and isinstance(section, dict) and section.get("optional") is True:
            log.info("provider %r is off: %s not set", name, ", ".join(missing))
            for path in [p for p in unset if p[:2] == prefix]:
                del unset[path]
            del providers[name]

"""``devstack dev devspace | mirrord``: write the DevSpace or mirrord configuration that binds the laptop
to a preview (:mod:`devstack.devmode` builds them), then run the tool when it is installed.

Neither tool is bundled: when it is missing, the file is still written and devstack says where, and
how to install the tool, with exit status 2 (a user error, nothing failed).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from devstack import devmode, naming
from devstack.catalog import Settings
from devstack.errors import ConfigError

DEVSPACE_INSTALL = "https://www.devspace.sh/docs/getting-started/installation (e.g. `npm install -g devspace`)"
MIRRORD_INSTALL = ("https://metalbear.com/mirrord/docs/overview/quick-start/ "
                   "(e.g. `brew install metalbear-co/mirrord/mirrord`)")

Previews = Mapping[str, set[str]]  # feature -> the services it has a preview of


def _target(settings: Settings, feature: str, service: str) -> str:
    if service not in settings.services:
        raise ConfigError(f"unknown service {service[:40]!r}; the catalog has: {', '.join(sorted(settings.services))}")
    return feature if naming.is_feature_name(feature) else naming.feature_name(feature)


def write_devspace(*, settings: Settings, previews: Previews, feature: str, service: str, out: Path) -> Path:
    """``<out>/devspace.yaml`` for the preview of ``service`` in ``feature``; a ConfigError when there is
    none (DevSpace syncs into the preview's pod; it never touches the base)."""
    stack = _target(settings, feature, service)
    if settings.services[service].dev is None:
        raise ConfigError(f"{service} has no dev block in the catalog (services.{service}.dev: see docs/develop.md)")
    if service not in previews.get(stack, set()):
        raise ConfigError(f"{stack} has no preview of {service}: DevSpace syncs into a preview's pod. Open a "
                          f"pull request, or `devstack up {stack} --with {service}`, then "
                          f"`devstack dev on {stack} {service}`")
    config = devmode.devspace_config(settings=settings, feature=stack, service=service)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "devspace.yaml"
    header = "# written by `devstack dev devspace` (docs/develop.md)\n"
    path.write_text(header + yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    return path


def write_mirrord(
    *, settings: Settings, previews: Previews, feature: str, service: str, out: Path,
) -> tuple[Path, bool]:
    """``<out>/.mirrord/mirrord.json``; returns (path, whether it targets the preview rather than the base)."""
    stack = _target(settings, feature, service)
    preview = service in previews.get(stack, set())
    config = devmode.mirrord_config(settings=settings, feature=stack, service=service, preview=preview)
    folder = out / ".mirrord"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "mirrord.json"
    path.write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    return path, preview


def run_tool(
    *, tool: str, argv: Sequence[str], cwd: Path, install: str, written: Path,
    which: Callable[[str], str | None] = shutil.which,
) -> int:
    """Run ``tool`` with ``argv`` in ``cwd``; when it is not installed, say so (exit status 2)."""
    if which(tool) is None:
        print(f"devstack: wrote {written}; {tool} is not installed (not on PATH), so it was not started.\n"
              f"Install it: {install}; then run it again, or `{' '.join([tool, *argv])}` in {cwd}", file=sys.stderr)
        return 2
    return subprocess.run([tool, *argv], cwd=cwd, check=False).returncode


def previews_of(data: Sequence[Mapping[str, Any]]) -> dict[str, set[str]]:
    """feature -> services, from what ``/api/previews`` (or ``devstack previews --json``) gives."""
    return {str(p["feature"]): {str(s["service"]) for s in p.get("services", ())} for p in data}

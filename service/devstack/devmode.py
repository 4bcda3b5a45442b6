"""Dev mode: a preview service runs the hot-reload command of the catalog, for files synced from the
laptop (docs/develop.md). Pure: what dev mode does to an element, and the DevSpace and mirrord
configurations that bind a laptop to a preview (no I/O; :mod:`devstack.devtools` writes and runs them).

* An element in dev mode carries ``dev: {since, expiresAt}`` and the chart values ``dev: {command,
  workdirs, image?}``: the chart then runs ``command`` (one replica, probes relaxed, an ``emptyDir``
  at every sync path so the workdir is writable) and the ApplicationSet tells Argo CD to ignore the
  Deployment's drift (``ignoreDifferences`` with ``RespectIgnoreDifferences``), so its self-heal does
  not fight DevSpace's sync.
* Dev mode has its own expiry (``services.<name>.dev.ttl``, default 8 h, or ``--ttl``): the reaper
  turns it off, back to the PR's build.
* :func:`devspace_config` (config ``v2beta1``) targets the preview's pod by label selector in its
  namespace; :func:`mirrord_config` targets the preview's Deployment, or, for a feature with no
  preview of that service, the base Deployment with an HTTP filter on the feature header and baggage
  member, so only that feature's requests reach the laptop.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from devstack import naming

if TYPE_CHECKING:
    from devstack.catalog import ServiceSettings, Settings

BAGGAGE_KEY = "devstack-feature"  # the chart's routing.baggageKey default (docs/routing.md)


def is_on(element: Mapping[str, Any]) -> bool:
    return bool(element.get("dev"))


def turn_on(element: dict[str, Any], *, spec: ServiceSettings, since: str, expires: str) -> None:
    """Put ``element`` in dev mode (in place) until ``expires``."""
    assert spec.dev is not None
    values: dict[str, Any] = {"command": list(spec.dev.command), "workdirs": sorted({s.remote for s in spec.dev.sync})}
    if spec.dev.image:
        values["image"] = spec.dev.image
    element["dev"] = {"since": since, "expiresAt": expires}
    element["values"] = {**element["values"], "dev": values}


def turn_off(element: dict[str, Any]) -> bool:
    """Back to the PR's build (in place); False when it was not in dev mode."""
    if not is_on(element):
        return False
    element.pop("dev", None)
    element["values"] = {k: v for k, v in element["values"].items() if k != "dev"}
    return True


def carry(old: Mapping[str, Any], new: dict[str, Any]) -> None:
    """A rebuilt element (a push, resync) stays in dev mode: the developer is still syncing."""
    if is_on(old) and "dev" in old.get("values", {}):
        new["dev"] = dict(old["dev"])
        new["values"] = {**new["values"], "dev": dict(old["values"]["dev"])}


# --- DevSpace and mirrord ------------------------------------------------------------------------------


def selector(*, feature: str, service: str) -> dict[str, str]:
    """The labels of the preview's pods (templates/feature-release ``fr.selectorLabels``)."""
    return {"devstack.io/feature": feature, "devstack.io/service": service}


def devspace_config(*, settings: Settings, feature: str, service: str) -> dict[str, Any]:
    """``devspace.yaml`` (v2beta1) for ``devstack dev devspace``: sync, ports, the hot-reload command."""
    spec = settings.services[service]
    assert spec.dev is not None
    ports = spec.dev.ports or [spec.port]
    dev: dict[str, Any] = {
        "namespace": naming.namespace(feature),
        "labelSelector": selector(feature=feature, service=service),
        "container": service,
        "command": list(spec.dev.command),
        "sync": [{"path": f"{s.local}:{s.remote}", "startContainer": True, "excludePaths": [".git/"]}
                 for s in spec.dev.sync],
        "ports": [{"port": f"{port}:{port}"} for port in ports],
        "logs": {"enabled": True},
    }
    if spec.dev.image:
        dev["devImage"] = spec.dev.image
    return {
        "version": "v2beta1",
        "name": _devspace_name(f"{feature}-{service}"),
        "dev": {service: dev},
    }


def _devspace_name(text: str) -> str:
    return re.sub(r"[^a-z0-9-]", "-", text.lower()).strip("-")[:63] or "devstack"


def mirrord_config(*, settings: Settings, feature: str, service: str, preview: bool) -> dict[str, Any]:
    """``.mirrord/mirrord.json`` for ``devstack dev mirrord``.

    ``preview``: the feature has a preview of ``service`` (then its Deployment is the target and all of
    its incoming traffic is stolen); otherwise the base Deployment is, and only the requests that carry
    the feature (the routing header, or the baggage member) are stolen."""
    spec = settings.services[service]
    incoming: dict[str, Any] = {"mode": "steal"}
    if preview:
        target = {"path": f"deployment/{service}", "namespace": naming.namespace(feature)}
    else:
        base = spec.dev
        namespace = (base.base_namespace if base and base.base_namespace else "") or \
            settings.hooks.secrets_namespace or "default"
        deployment = (base.base_deployment if base and base.base_deployment else "") or service
        target = {"path": f"deployment/{deployment}", "namespace": namespace}
        header = re.escape(settings.routing.header)
        value = re.escape(feature)
        incoming["http_filter"] = {"any_of": [
            {"header": f"^(?i:{header}): {value}$"},
            {"header": rf"^(?i:baggage): (.*[,;\s])?{BAGGAGE_KEY}\s*=\s*{value}\s*([,;].*)?$"},
        ]}
    return {
        "target": target,
        "feature": {
            "network": {"incoming": incoming, "outgoing": True, "dns": True},
            "env": True,
            "fs": "read",
        },
    }

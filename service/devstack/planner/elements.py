"""Expiry, and building the elements of an entry (a PR build, a base or pinned version)."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta

from devstack import naming
from devstack.catalog import Settings
from devstack.durations import InvalidDuration, format_duration, parse_duration
from devstack.entries import Element
from devstack.events import PullRequestEvent
from devstack.hooks.values import hook_values
from devstack.planner.model import NEVER, _carry_overrides, _label_values, format_time

# --- expiry --------------------------------------------------------------------------------------


def _ttl(catalog: Settings, requested: str | None) -> tuple[timedelta | None, str]:
    """The TTL to use for a request (label, command, CLI) and a note when it was refused or capped."""
    if requested is None:
        return catalog.ttl.default, ""
    try:
        ttl = parse_duration(requested)
    except InvalidDuration as exc:
        return catalog.ttl.default, f"TTL not applied: {exc}"
    limit = catalog.ttl.max
    if limit is not None and (ttl is None or ttl > limit):
        capped = format_duration(limit)
        return limit, f"TTL capped at {capped} (`{requested[:20]}` is longer than this installation allows)"
    return ttl, ""


def _expires(start: datetime, ttl: timedelta | None) -> str:
    return NEVER if ttl is None else format_time(start + ttl)


def _later(a: str | None, b: str) -> str:
    if a is None:
        return b
    if NEVER in (a, b):
        return NEVER
    return max(a, b)


def _event_expiry(event: PullRequestEvent, catalog: Settings, *, prior: str | None) -> tuple[str, str]:
    requested = _label_values(event, catalog, "ttl")
    ttl, note = _ttl(catalog, requested[0] if requested else None)
    mine = _expires(event.received_at, ttl)
    if event.action == "resync" and prior is not None:
        return prior, note  # healing never extends a preview
    if requested and not note.startswith("TTL not applied"):
        return mine, note  # an explicit TTL label sets the expiry (it may shorten it)
    return _later(prior, mine), note


def stack_expiry(elements: Sequence[Element]) -> str | None:
    """The expiry of a stack (the latest of its elements'), None for an empty stack."""
    result: str | None = None
    for element in elements:
        result = _later(result, element["expiresAt"])
    return result


def _set_expiry(elements: list[Element], expiry: str) -> None:
    for element in elements:
        element["expiresAt"] = expiry
        element["values"] = {**element["values"], "expiresAt": expiry}


# --- building elements ---------------------------------------------------------------------------


def build_element(
    *, event: PullRequestEvent, catalog: Settings, feature: str, service: str, expires: str = NEVER
) -> Element:
    """The element of ``service`` built from the head of PR ``event``."""
    tag = pr_tag(event=event, catalog=catalog, service=service)
    return _element(
        catalog=catalog, feature=feature, service=service, tag=tag, expires=expires, requested=[event.key],
        source={
            "provider": event.provider.value,
            "repo": event.repo,
            "number": str(event.number),
            "url": event.url,
            "sha": event.head_sha,
            "branch": naming.display_text(event.head_branch),
            "author": event.author if _AUTHOR.fullmatch(event.author) else "",
        },
    )


def pr_tag(*, event: PullRequestEvent, catalog: Settings, service: str) -> str:
    """The image tag CI builds for ``service`` at the head of PR ``event`` (``services.<name>.tag``)."""
    return catalog.services[service].tag.format(
        sha=event.head_sha, short_sha=event.head_sha[:7], branch=naming.feature_name(event.head_branch),
        number=event.number,
    )


_AUTHOR = re.compile(r"[A-Za-z0-9_.\[\]-]{1,255}")


def base_element(
    *, catalog: Settings, feature: str, service: str, requester: str, tag: str | None = None,
    keep: Element | None = None,
) -> Element:
    """The element of ``service`` at its base tag (or a pinned ``tag``): not built from a PR."""
    spec = catalog.services[service]
    element = _element(
        catalog=catalog, feature=feature, service=service, tag=tag or spec.base_tag,
        expires=keep["expiresAt"] if keep else NEVER, requested=[requester],
        source={"provider": spec.provider, "repo": spec.repo, "number": "0", "url": "", "sha": "", "branch": ""},
    )
    if keep is not None:
        _carry_overrides(keep, element)
    return element


def _element(
    *, catalog: Settings, feature: str, service: str, tag: str, expires: str, requested: list[str],
    source: dict[str, str],
) -> Element:
    spec = catalog.services[service]
    values: Element = {
        "feature": feature,
        "service": service,
        "namespace": naming.namespace(feature),
        "image": {"repository": spec.image, "tag": tag},
        "port": spec.port,
        "host": host(catalog, feature=feature, service=service),
        "routing": {"header": catalog.routing.header},
        "expiresAt": expires,
        "env": dict(spec.env),
        "hooks": hook_values(service=service, declared=spec.hooks, platform=catalog.hooks),
    }
    if spec.base_host:
        values["baseHost"] = spec.base_host
    if spec.resources:  # the chart's default limits stay (Helm merges the maps)
        values["resources"] = {"requests": dict(sorted(spec.resources.items()))}
    return {
        "feature": feature,
        "service": service,
        "app": naming.app_name(feature, service),
        "namespace": naming.namespace(feature),
        "chart": {
            "repoURL": catalog.chart_repo_url,
            "path": catalog.chart.path,
            "targetRevision": catalog.chart_target_revision,
        },
        "values": values,
        "source": source,
        "requestedBy": requested,
        "expiresAt": expires,
    }


class _AppNames:
    """Existing elements keep their Application name (:func:`naming.legacy_app_name` before names were
    injective): renaming an Application makes Argo CD delete it and create a new one, whose PostDelete
    hooks drop the preview's database. New elements get :func:`naming.app_name`.

    An old name two elements of the repository share (``foo-payments`` + ``api`` and ``foo`` +
    ``payments-api`` both gave ``foo-payments-api``) stays with the first by (feature, service); the
    other gets its new name. New names never meet old ones (they contain ``---``, old ones no ``--``).
    """

    def __init__(self, entries: Mapping[str, Sequence[Element]]) -> None:
        self._entries = entries
        self._holders: dict[str, tuple[str, str]] | None = None  # old name -> its first holder, on demand

    def keep(self, feature: str, elements: Sequence[Element]) -> list[Element]:
        before = {e["service"]: e["app"] for e in self._entries.get(feature, ())}
        result = []
        for element in elements:
            service = element["service"]
            old = before.get(service)
            if old is not None and old != element["app"] and self._may_keep(old, feature, service):
                element = {**element, "app": old}
            result.append(element)
        return result

    def _may_keep(self, name: str, feature: str, service: str) -> bool:
        if name != naming.legacy_app_name(feature, service):
            return False
        if self._holders is None:
            self._holders = {}
            for other in sorted(self._entries):
                for element in sorted(self._entries[other], key=lambda e: str(e["service"])):
                    self._holders.setdefault(str(element["app"]), (other, str(element["service"])))
        return self._holders.get(name) == (feature, service)


def host(catalog: Settings, *, feature: str, service: str) -> str:
    return naming.preview_host(template=catalog.routing.host, feature=feature, service=service,
                               domain=catalog.domain)


def _with_namespace_owner(elements: list[Element]) -> list[Element]:
    """Mark exactly one element ``values.namespaceOwner: "true"``: the one whose Application owns the
    preview namespace (argocd/applicationset-namespaces.yaml renders it from that element).

    The owner is the element with the latest expiry (``never`` is the latest; ties: the first service
    by name), so the namespace's own expiry covers the whole stack.
    """
    ordered = sorted(elements, key=lambda e: str(e["service"]))
    owner = max(ordered, key=lambda e: "9999" if e["expiresAt"] == NEVER else str(e["expiresAt"]))
    result = []
    for element in ordered:
        values = {k: v for k, v in element["values"].items() if k != "namespaceOwner"}
        if element is owner:
            values["namespaceOwner"] = "true"
        result.append({**element, "values": values})
    return result

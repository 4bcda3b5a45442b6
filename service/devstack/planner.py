"""The planner: **pure** — (events, current entries, catalog, now) -> new entries + feedback to send.

No I/O, no clock, no git, no HTTP: everything it needs comes in as arguments, so a rejected push is
handled by planning again on the new tree, and a replayed event reaches the same state.

The planner is state based. Each :class:`PullRequestEvent` carries the PR's whole state; applying
it means: take back everything this PR asked for, then ask again for what its state wants now. So
opened / synchronize / labeled / edited / ready_for_review are one code path, and close, merge and
converting to draft are the same path wanting nothing.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from devstack import naming
from devstack.catalog import Settings
from devstack.durations import InvalidDuration, parse_duration
from devstack.entries import Element
from devstack.events import Provider, PullRequestEvent, PullRequestRef, PullRequestState

NEVER = "never"


def format_time(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True, kw_only=True)
class ServiceLink:
    """One service of a stack, as the PR comment and the API show it."""

    service: str
    url: str
    image: str
    source: str  # the PR key that builds this service


@dataclass(frozen=True, kw_only=True)
class Feedback:
    """What one PR should be told after a batch: the latest state only (coalesced per PR)."""

    pr: PullRequestRef
    pr_url: str
    status: str  # "active" | "removed"
    feature: str
    sha: str
    services: tuple[ServiceLink, ...] = ()
    header: str = ""
    expires_at: str = NEVER
    reason: str = ""  # why a preview was removed or not created


@dataclass(frozen=True, kw_only=True)
class Decision:
    """What the planner did with one event, for logs and the journal."""

    delivery_id: str
    pr: str
    outcome: str  # "applied" | "ignored"
    reason: str = ""


@dataclass(kw_only=True)
class Plan:
    entries: dict[str, list[Element]]  # the whole new state: feature -> elements
    changed: dict[str, list[Element] | None]  # only what differs from the input; None: delete
    feedback: list[Feedback] = field(default_factory=list)
    decisions: list[Decision] = field(default_factory=list)


def plan(
    *,
    events: Sequence[PullRequestEvent],
    entries: Mapping[str, Sequence[Element]],
    catalog: Settings,
    now: datetime,
) -> Plan:
    """Apply ``events`` in order to ``entries`` and say what changed and whom to tell."""
    before = {feature: [dict(e) for e in elements] for feature, elements in entries.items()}
    state = {feature: [dict(e) for e in elements] for feature, elements in entries.items()}
    decisions: list[Decision] = []
    latest: dict[str, PullRequestEvent] = {}
    why_not: dict[str, str] = {}
    for event in events:
        reason = _apply(state, event, catalog)
        decisions.append(
            Decision(
                delivery_id=event.delivery_id,
                pr=event.key,
                outcome="ignored" if reason else "applied",
                reason=reason or "",
            )
        )
        latest[event.key] = event
        why_not[event.key] = reason or ""
    state = {feature: _with_namespace_owner(elements) for feature, elements in state.items() if elements}
    changed: dict[str, list[Element] | None] = {}
    for feature in sorted(set(before) | set(state)):
        old, new = before.get(feature), state.get(feature)
        if _canonical(old) != _canonical(new):
            changed[feature] = new
    feedback = _feedback(before=before, after=state, latest=latest, why_not=why_not, catalog=catalog)
    del now  # the expiry is computed from each event's received_at, so replays are deterministic
    return Plan(entries=state, changed=changed, feedback=feedback, decisions=decisions)


# --- applying one event --------------------------------------------------------------------------


def _apply(state: dict[str, list[Element]], event: PullRequestEvent, catalog: Settings) -> str | None:
    """Change ``state`` for ``event``; return why it wants no preview (None when it has one)."""
    _withdraw(state, event.key)
    reason = _why_no_preview(event, catalog)
    if reason:
        return reason
    services = catalog.services_of_repo(provider=event.provider.value, repo=event.repo)
    feature = feature_of(event, catalog)
    expires = _expiry(event, catalog)
    elements = state.setdefault(feature, [])
    for service in services:
        element = build_element(event=event, catalog=catalog, feature=feature, service=service, expires=expires)
        existing = next((e for e in elements if e["service"] == service), None)
        if existing is not None:
            element["requestedBy"] = sorted(set(existing["requestedBy"]) | {event.key})
            elements.remove(existing)
        elements.append(element)
    return None


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


def _withdraw(state: dict[str, list[Element]], key: str) -> None:
    """Take back everything PR ``key`` asked for; elements nobody asks for any more go."""
    for feature, elements in state.items():
        kept = []
        for element in elements:
            requested = [k for k in element["requestedBy"] if k != key]
            if requested and _source_key(element) != key:
                kept.append({**element, "requestedBy": requested})
        state[feature] = kept


def _why_no_preview(event: PullRequestEvent, catalog: Settings) -> str | None:
    if event.state is PullRequestState.CLOSED:
        return "merged" if event.merged else "closed"
    if not catalog.repo_allowed(event.repo):
        return "repository not allowed"
    if not catalog.services_of_repo(provider=event.provider.value, repo=event.repo):
        return "no catalog service for this repository"
    if event.draft and not catalog.deploy_drafts:
        return "draft"
    if event.fork and not catalog.security.allow_forks:
        return "fork"
    if catalog.trigger == "label" and label(catalog, "preview") not in event.labels:
        return "no preview label"
    return None


def label(catalog: Settings, name: str) -> str:
    return f"{catalog.labels.prefix}{name}"


def _label_value(event: PullRequestEvent, catalog: Settings, name: str) -> str | None:
    prefix = label(catalog, f"{name}:")
    values = sorted(lbl[len(prefix) :] for lbl in event.labels if lbl.startswith(prefix))
    return values[0] if values else None


def feature_of(event: PullRequestEvent, catalog: Settings) -> str:
    """``devstack/feature:<name>`` when present, else the head branch: always through naming."""
    named = _label_value(event, catalog, "feature")
    return naming.feature_name(named if named else event.head_branch)


def _expiry(event: PullRequestEvent, catalog: Settings) -> str:
    ttl: timedelta | None = catalog.ttl.default
    requested = _label_value(event, catalog, "ttl")
    if requested is not None:
        try:
            ttl = parse_duration(requested)
        except InvalidDuration:
            ttl = catalog.ttl.default
        if ttl is None and catalog.ttl.max is not None:
            ttl = catalog.ttl.max
        if ttl is not None and catalog.ttl.max is not None:
            ttl = min(ttl, catalog.ttl.max)
    return NEVER if ttl is None else format_time(event.received_at + ttl)


def build_element(
    *, event: PullRequestEvent, catalog: Settings, feature: str, service: str, expires: str
) -> Element:
    spec = catalog.services[service]
    tag = spec.tag.format(
        sha=event.head_sha, short_sha=event.head_sha[:7], branch=naming.feature_name(event.head_branch),
        number=event.number,
    )
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
        "hooks": dict(spec.hooks),
    }
    if spec.base_host:
        values["baseHost"] = spec.base_host
    return {
        "feature": feature,
        "service": service,
        "app": naming.app_name(feature, service),
        "namespace": naming.namespace(feature),
        "chart": {
            "repoURL": catalog.chart_repo_url,
            "path": catalog.chart.path,
            "targetRevision": catalog.chart.target_revision,
        },
        "values": values,
        "source": {
            "provider": event.provider.value,
            "repo": event.repo,
            "number": str(event.number),
            "url": event.url,
            "sha": event.head_sha,
            "branch": naming.display_text(event.head_branch),
        },
        "requestedBy": [event.key],
        "expiresAt": expires,
    }


def host(catalog: Settings, *, feature: str, service: str) -> str:
    return naming.preview_host(template=catalog.routing.host, feature=feature, service=service, domain=catalog.domain)


# --- feedback ------------------------------------------------------------------------------------


def _source_key(element: Element) -> str:
    source = element["source"]
    return f"{source['provider']}:{source['repo']}#{source['number']}"


def _requesters(elements: Iterable[Element]) -> set[str]:
    return {key for element in elements for key in element["requestedBy"]}


def _stack_of(state: Mapping[str, list[Element]], key: str) -> str | None:
    for feature, elements in state.items():
        if key in _requesters(elements):
            return feature
    return None


def _feedback(
    *,
    before: Mapping[str, list[Element]],
    after: Mapping[str, list[Element]],
    latest: Mapping[str, PullRequestEvent],
    why_not: Mapping[str, str],
    catalog: Settings,
) -> list[Feedback]:
    """One :class:`Feedback` per PR whose comment must change: the PRs of this batch and the other PRs
    of every stack they touched (a multi-repo stack lists all its services in every PR)."""
    touched_features: set[str] = set()
    for key in latest:
        for state in (before, after):
            feature = _stack_of(state, key)
            if feature:
                touched_features.add(feature)
    keys = set(latest)
    for feature in touched_features:
        keys |= _requesters(before.get(feature, [])) | _requesters(after.get(feature, []))
    result = []
    for key in sorted(keys):
        feature = _stack_of(after, key)
        if feature is not None:
            result.append(_active(key=key, elements=after[feature], catalog=catalog, event=latest.get(key)))
            continue
        had = _stack_of(before, key)
        event = latest.get(key)
        if had is None:
            continue
        ref, url, sha = _pr_identity(key, before[had], event)
        result.append(
            Feedback(
                pr=ref, pr_url=url, status="removed", feature=had, sha=sha, reason=why_not.get(key, "") or "removed"
            )
        )
    return result


def _pr_identity(
    key: str, elements: Sequence[Element], event: PullRequestEvent | None
) -> tuple[PullRequestRef, str, str]:
    if event is not None:
        return event.ref, event.url, event.head_sha
    element = next(e for e in elements if _source_key(e) == key or key in e["requestedBy"])
    source = element["source"]
    provider, rest = key.split(":", 1)
    repo, number = rest.rsplit("#", 1)
    if _source_key(element) == key:
        return PullRequestRef(provider=Provider(provider), repo=repo, number=int(number)), source["url"], source["sha"]
    return PullRequestRef(provider=Provider(provider), repo=repo, number=int(number)), "", ""


def _active(*, key: str, elements: Sequence[Element], catalog: Settings, event: PullRequestEvent | None) -> Feedback:
    ref, url, sha = _pr_identity(key, elements, event)
    links = tuple(
        ServiceLink(
            service=e["service"],
            url=f"https://{e['values']['host']}",
            image=f"{e['values']['image']['repository']}:{e['values']['image']['tag']}",
            source=_source_key(e),
        )
        for e in sorted(elements, key=lambda e: e["service"])
    )
    own = [e for e in elements if key in e["requestedBy"]]
    expires = min((e["expiresAt"] for e in own), key=lambda t: "9999" if t == NEVER else t, default=NEVER)
    return Feedback(
        pr=ref,
        pr_url=url,
        status="active",
        feature=elements[0]["feature"],
        sha=sha,
        services=links,
        header=catalog.routing.header,
        expires_at=expires,
    )


def _canonical(elements: Sequence[Element] | None) -> list[Element] | None:
    if elements is None or not elements:
        return None
    return sorted(elements, key=lambda e: str(e["service"]))

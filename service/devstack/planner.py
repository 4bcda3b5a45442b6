"""The planner: **pure** — (events, current entries, catalog, now) -> new entries + feedback to send.

No I/O, no clock, no git, no HTTP: everything it needs comes in as arguments, so a rejected push is
handled by planning again on the new tree, and a replayed event reaches the same state.

The planner is state based. Each :class:`PullRequestEvent` carries the PR's whole state; applying
it means: take back everything this PR asked for, then ask again for what its state wants now. So
opened / synchronize / labeled / edited / ready_for_review are one code path, and close, merge and
converting to draft are the same path wanting nothing.

A **stack** is one entry file: every service of one feature. A PR asks for

* its own services (the catalog services built from its repository), at its head sha;
* the services of its ``devstack/with:<service>`` labels and their ``depends_on`` closure, at the
  head of an open PR of that service's repository in the same feature when there is one, else at
  the service's ``base_tag``.

``requestedBy`` records who asks for each element: a service goes when nobody asks for it any more,
and a PR-built service whose PR closes falls back to its base tag while others still ask for it.

The stack shares one expiry. Activity of any of its PRs moves it forward (``received_at`` + the PR's
TTL, never backwards), an explicit ``devstack/ttl:<duration>`` label sets it, resync never moves it.
:class:`~devstack.events.Command` events carry what the CLI, comment commands and the reaper ask for.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from devstack import devmode, naming
from devstack import sleep as sleeping
from devstack.catalog import Settings
from devstack.durations import InvalidDuration, format_duration, parse_duration
from devstack.entries import Element
from devstack.events import Command, Provider, PullRequestEvent, PullRequestRef, PullRequestState
from devstack.hooks.values import hook_values

NEVER = "never"
CLI_REQUESTER = "cli:up"

PlannerEvent = PullRequestEvent | Command


def format_time(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True, kw_only=True)
class ServiceLink:
    """One service of a stack, as the PR comment and the API show it."""

    service: str
    url: str
    image: str
    source: str  # the PR key that builds this service, or "" for a base / pinned build
    asleep_since: str = ""  # when it was put to sleep ("" while awake)
    dev_until: str = ""  # dev mode ends then ("" when not in dev mode)


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
    notes: tuple[str, ...] = ()  # things the PR author should know (unknown services, refused TTLs)
    warning: str = ""  # set by the reaper shortly before expiry


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
    active: dict[str, datetime] = field(default_factory=dict)  # feature -> its latest activity in this batch


@dataclass(kw_only=True)
class _Batch:
    """What applying a batch learns besides the entries: per PR, its last event, notes, reasons."""

    latest: dict[str, PullRequestEvent] = field(default_factory=dict)
    why_not: dict[str, str] = field(default_factory=dict)
    notes: dict[str, list[str]] = field(default_factory=dict)
    touched: set[str] = field(default_factory=set)  # features a command changed
    applied_with: dict[str, str] = field(default_factory=dict)  # delivery id -> what an applied change adjusted
    active: dict[str, datetime] = field(default_factory=dict)  # feature -> latest PR event / command applied
    activity: Mapping[str, float] = field(default_factory=dict)  # the journal's activity table (sleep guard)


class _State:
    """The entries while one batch is planned.

    Copy on write: a feature's elements are copied the first time the batch changes them, so the
    caller's entries (shared with the worker's cache and snapshot) are never mutated, and a batch
    costs what it touches, not what the repository holds. An index from PR key to the features that
    name it (as requester or builder) spares scanning every stack for every event.
    """

    def __init__(self, entries: Mapping[str, Sequence[Element]]) -> None:
        self.before = entries
        self.current: dict[str, Sequence[Element]] = dict(entries)
        self.touched: set[str] = set()
        self._keys: dict[str, set[str]] = {}  # feature -> PR keys it names
        self._features: dict[str, set[str]] = {}  # PR key -> features naming it
        for feature in entries:
            self._index(feature)
        self._features_before = {key: frozenset(features) for key, features in self._features.items()}

    def get(self, feature: str) -> Sequence[Element]:
        return self.current.get(feature, ())

    def own(self, feature: str) -> list[Element]:
        """The elements of ``feature``, copied once per batch, to be changed in place (then reindexed)."""
        if feature not in self.touched:
            self.current[feature] = [dict(e) for e in self.current.get(feature, ())]
            self.touched.add(feature)
        elements = self.current[feature]
        assert isinstance(elements, list)
        return elements

    def replace(self, feature: str, elements: list[Element]) -> None:
        self.touched.add(feature)
        self.current[feature] = elements
        self._index(feature)

    def reindex(self, feature: str) -> None:
        self._index(feature)

    def features_naming(self, key: str) -> list[str]:
        return sorted(self._features.get(key, ()))

    def stack_of(self, key: str) -> str | None:
        """The feature whose stack PR ``key`` asks for (first by name, should there be two)."""
        return next((f for f in self.features_naming(key) if key in _requesters(self.get(f))), None)

    def stack_before(self, key: str) -> str | None:
        """:meth:`stack_of` in the entries as they were before the batch."""
        features = sorted(self._features_before.get(key, ()))
        return next((f for f in features if key in _requesters(self.before.get(f, ()))), None)

    def _index(self, feature: str) -> None:
        for key in self._keys.pop(feature, ()):
            self._features[key].discard(feature)
        keys: set[str] = set()
        for element in self.current.get(feature, ()):
            keys.update(element["requestedBy"])
            built = source_key(element)
            if built:
                keys.add(built)
        self._keys[feature] = keys
        for key in keys:
            self._features.setdefault(key, set()).add(feature)


def plan(
    *,
    events: Sequence[PlannerEvent],
    entries: Mapping[str, Sequence[Element]],
    catalog: Settings,
    now: datetime,
    approvals: Mapping[str, str] | None = None,
    activity: Mapping[str, float] | None = None,
) -> Plan:
    """Apply ``events`` in order to ``entries`` and say what changed and whom to tell.

    ``approvals``: PR key -> the head sha a writer approved with ``/devstack approve`` (fork PRs).
    ``activity``: the journal's activity table (key -> epoch seconds, :func:`devstack.sleep.activity_key`):
    a ``sleep`` the reaper decided is not applied to a service active since the reaper looked.
    ``now`` is part of the contract but deliberately unused today: every time the planner needs is
    the ``received_at`` of an event (or command), so replaying a journal gives the same bytes.
    """
    state = _State(entries)
    batch = _Batch(activity=activity or {})
    decisions: list[Decision] = []
    for event in events:
        if isinstance(event, Command):
            reason = _command(state, event, catalog, batch)
            target = event.key
        else:
            reason = _apply(state, event, catalog, approvals or {}, batch)
            batch.latest[event.key] = event
            batch.why_not[event.key] = reason or ""
            target = event.key
        decisions.append(
            Decision(delivery_id=event.delivery_id, pr=target, outcome="ignored" if reason else "applied",
                     reason=reason or batch.applied_with.get(event.delivery_id, ""))
        )
    changed: dict[str, list[Element] | None] = {}
    names = _AppNames(entries)
    for feature in sorted(state.touched):
        elements = names.keep(feature, state.get(feature))
        new = _with_namespace_owner(elements) if elements else None
        if new is None:
            state.current.pop(feature, None)
        else:
            state.current[feature] = new
        if _canonical(entries.get(feature)) != _canonical(new):
            changed[feature] = new
    feedback = _feedback(state=state, batch=batch, catalog=catalog)
    del now
    after = {feature: list(elements) for feature, elements in state.current.items()}
    return Plan(entries=after, changed=changed, feedback=feedback, decisions=decisions, active=dict(batch.active))


# --- pull request events -------------------------------------------------------------------------


def _apply(
    state: _State,
    event: PullRequestEvent,
    catalog: Settings,
    approvals: Mapping[str, str],
    batch: _Batch,
) -> str | None:
    """Change ``state`` for ``event``; return why it wants no preview (None when it has one)."""
    feature, why_own = _choose_feature(state, event, catalog)
    prior = stack_expiry(state.get(feature))
    previous = {e["service"]: e for e in state.get(feature)}  # for the CLI overrides they carry
    _withdraw(state, event.key, catalog)
    reason = why_no_preview(event, catalog, approvals)
    if reason:
        return reason
    if why_own:
        batch.notes.setdefault(event.key, []).append(why_own)
    own = catalog.services_of_repo(provider=event.provider.value, repo=event.repo)
    wanted, unknown = _with_services(event, catalog)
    if unknown:
        batch.notes.setdefault(event.key, []).append(
            f"unknown service{'s' if len(unknown) > 1 else ''} {', '.join(f'`{u}`' for u in unknown)} "
            f"(in a `{label(catalog, 'with:')}` label); the catalog has: "
            + ", ".join(f"`{name}`" for name in sorted(catalog.services))
        )
    elements = state.own(feature)
    for service in own:
        element = build_element(event=event, catalog=catalog, feature=feature, service=service)
        if service in previous:
            _carry_overrides(previous[service], element)
        _put(elements, element, event.key)
    for service in sorted(set(wanted) - set(own)):
        existing = _find(elements, service)
        if existing is None:
            elements.append(base_element(catalog=catalog, feature=feature, service=service, requester=event.key,
                                         keep=previous.get(service)))
        elif event.key not in existing["requestedBy"]:
            existing["requestedBy"] = sorted({*existing["requestedBy"], event.key})
    expiry, note = _event_expiry(event, catalog, prior=prior)
    if note:
        batch.notes.setdefault(event.key, []).append(note)
    _set_expiry(elements, expiry)
    if event.action != "resync":  # activity wakes the whole stack; healing keeps it as it is
        for element in elements:
            sleeping.wake_up(element)
        _touch(batch, feature, event.received_at)
    state.reindex(feature)
    return None


def _touch(batch: _Batch, feature: str, at: datetime) -> None:
    if feature not in batch.active or batch.active[feature] < at:
        batch.active[feature] = at


def _withdraw(state: _State, key: str, catalog: Settings) -> None:
    """Take back everything ``key`` asked for.

    Elements nobody asks for any more go; an element ``key`` built that others still ask for falls
    back to its base tag.
    """
    for feature in state.features_naming(key):
        kept = []
        for element in state.get(feature):
            requested = [k for k in element["requestedBy"] if k != key]
            if not requested:
                continue
            if source_key(element) == key:
                element = base_element(catalog=catalog, feature=feature, service=element["service"],
                                       requester=requested[0], keep=element)
            kept.append({**element, "requestedBy": requested})
        state.replace(feature, kept)


def _put(elements: list[Element], element: Element, key: str) -> None:
    """Place a PR-built element, keeping who else asked for the service and the CLI overrides."""
    existing = _find(elements, element["service"])
    if existing is not None:
        element["requestedBy"] = sorted({*existing["requestedBy"], key})
        _carry_overrides(existing, element)
        elements.remove(existing)
    elements.append(element)


def _find(elements: Sequence[Element], service: str) -> Element | None:
    return next((e for e in elements if e["service"] == service), None)


def why_no_preview(event: PullRequestEvent, catalog: Settings, approvals: Mapping[str, str]) -> str | None:
    if event.state is PullRequestState.CLOSED:
        return "merged" if event.merged else "closed"
    if not catalog.repo_allowed(event.repo):
        return "repository not allowed"
    if not catalog.services_of_repo(provider=event.provider.value, repo=event.repo):
        return "no catalog service for this repository"
    if event.draft and not catalog.deploy_drafts:
        return "draft"
    if event.fork and not catalog.security.allow_forks and approvals.get(event.key) != event.head_sha:
        return "fork"
    if catalog.trigger == "label" and label(catalog, "preview") not in event.labels:
        return "no preview label"
    return None


def label(catalog: Settings, name: str) -> str:
    return f"{catalog.labels.prefix}{name}"


def _label_values(event: PullRequestEvent, catalog: Settings, name: str) -> list[str]:
    prefix = label(catalog, f"{name}:")
    return sorted(lbl[len(prefix):].strip() for lbl in event.labels if lbl.startswith(prefix))


def feature_text(event: PullRequestEvent, catalog: Settings) -> str:
    """The text a PR's feature is named from: its ``devstack/feature:<name>`` label, else its head branch."""
    named = _label_values(event, catalog, "feature")
    return named[0] if named else event.head_branch


def feature_of(event: PullRequestEvent, catalog: Settings) -> str:
    """The feature a PR's text maps to (:func:`feature_text`), always through naming."""
    return naming.feature_name(feature_text(event, catalog))


def _choose_feature(state: _State, event: PullRequestEvent, catalog: Settings) -> tuple[str, str]:
    """The stack PR ``event`` belongs in, and a note for its comment when that is not :func:`feature_of`.

    * A PR already in a stack named the old way for its text (:func:`naming.legacy_feature_name`) stays
      there: renaming a stack deletes and recreates its Applications (and drops their databases).
    * One stack holds at most one open PR per repository (two would build the same services and
      overwrite each other; closing either would drop the other to its base tag). The first PR keeps
      the feature; a second PR of the same repository gets its own stack,
      :func:`naming.pr_feature_name`, and keeps it while it lives (also once the first one closes).
    """
    text = feature_text(event, catalog)
    wanted = naming.feature_name(text)
    own = naming.pr_feature_name(wanted, pr_key=event.key, number=event.number)
    current = state.stack_of(event.key)
    if current is not None and current != wanted and current == naming.legacy_feature_name(text):
        return current, ""
    other = _same_repo_requester(state.get(wanted), event)
    if other is None and current != own:
        return wanted, ""
    why = (f"feature `{wanted}` has the preview of another open pull request of this repository "
           f"({_display_key(other)})" if other else
           f"feature `{wanted}` had the preview of another pull request of this repository when this one got its own")
    return own, (f"This pull request has its own preview stack `{own}`: {why}, and two pull requests of one "
                 "repository would build the same services.")


def _same_repo_requester(elements: Sequence[Element], event: PullRequestEvent) -> str | None:
    """Another PR of ``event``'s repository that asks for something in ``elements``, if any."""
    prefix = f"{event.provider.value}:{event.repo}#"
    return min((k for k in _requesters(elements) if k.startswith(prefix) and k != event.key), default=None)


def _display_key(key: str | None) -> str:
    """``#42`` (GitHub) or ``!42`` (GitLab) of a PR key."""
    if key is None:
        return ""
    number = key.rsplit("#", 1)[1]
    return f"!{number}" if key.startswith("gitlab:") else f"#{number}"


def _with_services(event: PullRequestEvent, catalog: Settings) -> tuple[list[str], list[str]]:
    """The services asked for by ``with:`` labels plus their ``depends_on`` closure; unknown names."""
    asked = _label_values(event, catalog, "with")
    unknown = sorted({name for name in asked if name not in catalog.services})
    return dependency_closure(catalog, [n for n in asked if n in catalog.services]), [u[:40] for u in unknown]


def dependency_closure(catalog: Settings, services: Iterable[str]) -> list[str]:
    """``services`` and everything they depend on, transitively (cycles are harmless)."""
    seen: set[str] = set()
    pending = list(services)
    while pending:
        name = pending.pop()
        if name in seen:
            continue
        seen.add(name)
        pending.extend(catalog.services[name].depends_on)
    return sorted(seen)


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
    spec = catalog.services[service]
    tag = spec.tag.format(
        sha=event.head_sha, short_sha=event.head_sha[:7], branch=naming.feature_name(event.head_branch),
        number=event.number,
    )
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


def _carry_overrides(old: Element, new: Element) -> None:
    """What ``devstack set`` / ``restart`` changed, and sleeping, survive a rebuild of the element."""
    sleeping.carry_sleep(old, new)
    devmode.carry(old, new)
    overrides = old.get("overrides")
    if not overrides:
        return
    new["overrides"] = overrides
    new["values"] = {**new["values"], "env": {**new["values"]["env"], **overrides.get("env", {})}}
    if overrides.get("restartedAt"):
        new["values"]["restartedAt"] = overrides["restartedAt"]


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


# --- commands (CLI, comment commands, reaper) ----------------------------------------------------


def _command(state: _State, command: Command, catalog: Settings, batch: _Batch) -> str | None:
    """Apply a command; return why it did nothing (None when it changed or confirmed the state)."""
    feature = command.feature or (state.stack_of(command.pr) if command.pr else None)
    if feature is None or (command.op != "up" and not state.get(feature)):
        return "no such preview"
    batch.touched.add(feature)
    elements = state.own(feature)
    try:
        reason = _run_command(state, elements, command, catalog, batch, feature=feature)
        if reason is None and command.op in _WAKES_THE_STACK:  # someone works on it: it wakes
            for element in elements:
                sleeping.wake_up(element)
            _touch(batch, feature, command.received_at)
        return reason
    finally:
        state.reindex(feature)


_WAKES_THE_STACK = ("up", "set", "restart", "redeploy", "extend", "ttl", "dev")


def _run_command(
    state: _State, elements: list[Element], command: Command, catalog: Settings, batch: _Batch, *, feature: str
) -> str | None:
    args = dict(command.args)
    if command.op == "up":
        refused, note = _up(elements, command, catalog, feature=feature)
        if note:
            batch.applied_with[command.delivery_id] = note  # applied, with the TTL capped: not a refusal
        return refused
    if command.op == "down":
        state.replace(feature, [])
        for key in _requesters(elements):
            batch.why_not[key] = "down"
        return None
    if command.op == "expire":
        if stack_expiry(elements) != args.get("expiresAt") or args.get("expiresAt") == NEVER:
            return "extended meanwhile"
        state.replace(feature, [])
        for key in _requesters(elements):
            batch.why_not[key] = "expired"
        return None
    if command.op in ("extend", "ttl"):
        ttl, note = _ttl(catalog, args.get("ttl"))
        mine = _expires(command.received_at, ttl)
        current = stack_expiry(elements)
        _set_expiry(elements, mine if command.op == "ttl" else _later(current, mine))
        if note:
            batch.applied_with[command.delivery_id] = note
            if command.pr:
                batch.notes.setdefault(command.pr, []).append(note)
        return None
    if command.op in ("set", "restart", "redeploy"):
        return _override(elements, command, args)
    if command.op == "sleep":
        return _sleep(elements, command, catalog, batch, feature=feature)
    if command.op == "wake":
        return _wake(elements, command, batch, feature=feature)
    if command.op == "dev":
        return _dev(elements, command, catalog)
    return f"unknown command {command.op!r}"


def _dev(elements: list[Element], command: Command, catalog: Settings) -> str | None:
    """``dev`` on / off one service (docs/develop.md); ``expire`` is the reaper's off, naming the expiry
    it saw (dev mode extended meanwhile stays on)."""
    args = dict(command.args)
    if len(command.services) != 1:
        return "dev takes one service"
    service = command.services[0][0]
    element = _find(elements, service)
    if element is None:
        return f"no preview of {service} in this stack (dev mode needs one: add it first)"
    mode = args.get("mode", "on")
    if mode == "off":
        return None if devmode.turn_off(element) else "not in dev mode"
    if mode == "expire":
        if not devmode.is_on(element) or element["dev"]["expiresAt"] != args.get("expiresAt"):
            return "extended meanwhile"
        devmode.turn_off(element)
        return None
    spec = catalog.services.get(service)
    if spec is None or spec.dev is None:
        return f"{service} has no dev block in the catalog (services.{service}.dev)"
    try:
        ttl = parse_duration(args["ttl"]) if args.get("ttl") else spec.dev.ttl
    except InvalidDuration as exc:
        return str(exc)
    ttl = ttl or spec.dev.ttl  # dev mode is never forever
    if catalog.ttl.max is not None and ttl > catalog.ttl.max:
        ttl = catalog.ttl.max
    devmode.turn_on(element, spec=spec, since=format_time(command.received_at),
                    expires=format_time(command.received_at + ttl))
    return None


def _targets(elements: list[Element], command: Command) -> tuple[list[Element], str | None]:
    """The elements a command names (all of the stack when it names none), or why it names wrongly."""
    named = [service for service, _ in command.services]
    missing = [s for s in named if _find(elements, s) is None]
    if missing:
        return [], f"not in this preview: {', '.join(missing)}"
    return [e for e in elements if not named or e["service"] in named], None


def _sleep(elements: list[Element], command: Command, catalog: Settings, batch: _Batch, *, feature: str) -> str | None:
    """Put services to sleep. A sleep the reaper decided names, per service, the activity it saw
    (``seen.<service>``): a service active since then (a push, a command, a request; also one earlier
    in this batch) stays awake."""
    targets, problem = _targets(elements, command)
    if problem:
        return problem
    args = dict(command.args)
    since, reason = format_time(command.received_at), args.get("reason", "command")
    wake = catalog.sleep.wake.model_dump()
    slept = active = 0
    for element in targets:
        if sleeping.is_asleep(element):
            continue
        seen = args.get(f"seen.{element['service']}")
        if seen is not None and _last_activity(batch, feature, element["service"]) > float(seen):
            active += 1
            continue
        sleeping.put_to_sleep(element, since=since, reason=reason, wake=wake)
        slept += 1
    if slept:
        return None
    return "active since the reaper looked" if active else "already asleep"


def _last_activity(batch: _Batch, feature: str, service: str) -> float:
    times = [batch.activity.get(sleeping.activity_key(feature), 0.0),
             batch.activity.get(sleeping.activity_key(feature, service), 0.0)]
    if feature in batch.active:
        times.append(batch.active[feature].timestamp())
    return max(times)


def _wake(elements: list[Element], command: Command, batch: _Batch, *, feature: str) -> str | None:
    targets, problem = _targets(elements, command)
    if problem:
        return problem
    woken = [e for e in targets if sleeping.wake_up(e)]
    if not woken:
        return "not asleep"
    _touch(batch, feature, command.received_at)  # its idle time starts again
    return None


def _up(elements: list[Element], command: Command, catalog: Settings, *, feature: str) -> tuple[str | None, str]:
    """Why ``up`` was refused (None when applied), and a note on what it adjusted (a capped TTL)."""
    pins = dict(command.services)
    unknown = sorted(name for name in pins if name not in catalog.services)
    if unknown:
        return f"unknown service {', '.join(unknown)}", ""
    prior = stack_expiry(elements)
    for service in dependency_closure(catalog, pins):
        existing = _find(elements, service)
        if existing is None:
            elements.append(base_element(catalog=catalog, feature=feature, service=service,
                                         requester=CLI_REQUESTER, tag=pins.get(service) or None))
            continue
        requested = sorted({*existing["requestedBy"], CLI_REQUESTER})
        if pins.get(service) and not source_key(existing):
            replacement = base_element(catalog=catalog, feature=feature, service=service,
                                       requester=CLI_REQUESTER, tag=pins[service], keep=existing)
            elements[elements.index(existing)] = replacement
            existing = replacement
        existing["requestedBy"] = requested
    ttl, note = _ttl(catalog, dict(command.args).get("ttl"))
    _set_expiry(elements, _later(prior, _expires(command.received_at, ttl)))
    return None, note


def _override(elements: list[Element], command: Command, args: Mapping[str, str]) -> str | None:
    services = [s for s, _ in command.services] or (
        [e["service"] for e in elements if command.pr and source_key(e) == command.pr] if command.op == "redeploy"
        else []
    )
    if not services:
        return "no service named"
    missing = [s for s in services if _find(elements, s) is None]
    if missing:
        return f"not in this preview: {', '.join(missing)}"
    for service in services:
        element = _find(elements, service)
        assert element is not None
        overrides = {**element.get("overrides", {})}
        if command.op == "set":
            overrides["env"] = {**overrides.get("env", {}), **{k[4:]: v for k, v in args.items() if k[:4] == "env."}}
        else:
            overrides["restartedAt"] = format_time(command.received_at)
        element["overrides"] = overrides
        element["values"] = {**element["values"], "env": {**element["values"]["env"], **overrides.get("env", {})}}
        if overrides.get("restartedAt"):
            element["values"]["restartedAt"] = overrides["restartedAt"]
    return None


# --- feedback ------------------------------------------------------------------------------------


def source_key(element: Element) -> str | None:
    """The PR that builds this element, or None for a base / pinned build."""
    source = element["source"]
    if source["number"] == "0":
        return None
    return f"{source['provider']}:{source['repo']}#{source['number']}"


def _requesters(elements: Iterable[Element]) -> set[str]:
    return {key for element in elements for key in element["requestedBy"]}




def _is_pr(key: str) -> bool:
    return key.startswith(("github:", "gitlab:"))


def _feedback(*, state: _State, batch: _Batch, catalog: Settings) -> list[Feedback]:
    """One :class:`Feedback` per PR whose comment must change: the PRs of this batch and the other PRs
    of every stack they touched (a multi-repo stack lists all its services in every PR)."""
    touched = set(batch.touched)
    for key in batch.latest:
        for feature in (state.stack_before(key), state.stack_of(key)):
            if feature:
                touched.add(feature)
    keys = set(batch.latest)
    for feature in touched:
        keys |= _requesters(state.before.get(feature, ())) | _requesters(state.get(feature))
    result = []
    for key in sorted(k for k in keys if _is_pr(k)):
        event = batch.latest.get(key)
        notes = tuple(batch.notes.get(key, ()))
        feature = state.stack_of(key)
        if feature is not None:
            result.append(stack_feedback(key=key, elements=state.get(feature), catalog=catalog, event=event,
                                         notes=notes))
            continue
        had = state.stack_before(key)
        if had is None:
            continue
        ref, url, sha = _pr_identity(key, state.before[had], event)
        result.append(Feedback(pr=ref, pr_url=url, status="removed", feature=had, sha=sha,
                               reason=batch.why_not.get(key, "") or "removed", notes=notes))
    return result


def _pr_identity(
    key: str, elements: Sequence[Element], event: PullRequestEvent | None
) -> tuple[PullRequestRef, str, str]:
    if event is not None:
        return event.ref, event.url, event.head_sha
    provider, rest = key.split(":", 1)
    repo, number = rest.rsplit("#", 1)
    ref = PullRequestRef(provider=Provider(provider), repo=repo, number=int(number))
    built = next((e for e in elements if source_key(e) == key), None)
    if built is None:
        return ref, "", ""
    return ref, built["source"]["url"], built["source"]["sha"]


def stack_feedback(
    *, key: str, elements: Sequence[Element], catalog: Settings, event: PullRequestEvent | None = None,
    notes: tuple[str, ...] = (), warning: str = "",
) -> Feedback:
    """The comment state of PR ``key`` in the stack ``elements``."""
    ref, url, sha = _pr_identity(key, elements, event)
    links = tuple(
        ServiceLink(
            service=e["service"],
            url=f"https://{e['values']['host']}",
            image=f"{e['values']['image']['repository']}:{e['values']['image']['tag']}",
            source=source_key(e) or "",
            asleep_since=e["sleep"]["since"] if sleeping.is_asleep(e) else "",
            dev_until=e["dev"]["expiresAt"] if devmode.is_on(e) else "",
        )
        for e in sorted(elements, key=lambda e: e["service"])
    )
    return Feedback(
        pr=ref,
        pr_url=url,
        status="active",
        feature=elements[0]["feature"],
        sha=sha,
        services=links,
        header=catalog.routing.header,
        expires_at=stack_expiry(elements) or NEVER,
        notes=notes,
        warning=warning,
    )


def _canonical(elements: Sequence[Element] | None) -> list[Element] | None:
    if elements is None or not elements:
        return None
    return sorted(elements, key=lambda e: str(e["service"]))

"""Planning a batch: pull request events (and commands, through :mod:`.commands`)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime

from devstack import naming
from devstack import sleep as sleeping
from devstack.catalog import Settings
from devstack.entries import Element
from devstack.events import Command, PullRequestEvent, PullRequestState
from devstack.gates import GateStatus
from devstack.planner.commands import _command
from devstack.planner.elements import (
    _AppNames,
    _event_expiry,
    _set_expiry,
    _with_namespace_owner,
    base_element,
    build_element,
    stack_expiry,
)
from devstack.planner.feedback import _canonical, _feedback
from devstack.planner.model import (
    Decision,
    GateNote,
    KeyIndex,
    Plan,
    PlannerEvent,
    _Batch,
    _carry_overrides,
    _find,
    _label_values,
    _put,
    _requesters,
    _State,
    _touch,
    dependency_closure,
    label,
    source_key,
)


def plan(
    *,
    events: Sequence[PlannerEvent],
    entries: Mapping[str, Sequence[Element]],
    catalog: Settings,
    now: datetime,
    approvals: Mapping[str, str] | None = None,
    activity: Mapping[str, float] | None = None,
    gates: Mapping[tuple[str, str], Mapping[str, GateStatus]] | None = None,
    index: KeyIndex | None = None,
) -> Plan:
    """Apply ``events`` in order to ``entries`` and say what changed and whom to tell.

    ``approvals``: PR key -> the head sha a writer approved with ``/devstack approve`` (fork PRs).
    ``activity``: the journal's activity table (key -> epoch seconds, :func:`devstack.sleep.activity_key`):
    a ``sleep`` the reaper decided is not applied to a service active since the reaper looked.
    ``gates``: (PR key, head sha) -> service -> its gate for that sha; a service not named has no gate.
    ``index``: a :class:`~devstack.planner.model.KeyIndex` kept between calls (the worker's), brought up to
    date with ``entries`` here; without one, ``entries`` are indexed from scratch.
    ``now`` is part of the contract but deliberately unused today: every time the planner needs is
    the ``received_at`` of an event (or command), so replaying a journal gives the same bytes.
    """
    state = _State(entries, index=index)
    batch = _Batch(activity=activity or {})
    decisions: list[Decision] = []
    for event in events:
        if isinstance(event, Command):
            reason = _command(state, event, catalog, batch)
            target = event.key
        else:
            reason = _apply(state, event, catalog, approvals or {}, batch,
                            (gates or {}).get((event.key, event.head_sha), {}))
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
    # what the batch did not touch is the caller's own (never changed in place): shared, not copied
    after = {feature: elements if isinstance(elements, list) else list(elements)
             for feature, elements in state.current.items()}
    return Plan(entries=after, changed=changed, feedback=feedback, decisions=decisions, active=dict(batch.active))


# --- pull request events -------------------------------------------------------------------------


def _apply(
    state: _State,
    event: PullRequestEvent,
    catalog: Settings,
    approvals: Mapping[str, str],
    batch: _Batch,
    gates: Mapping[str, GateStatus],
) -> str | None:
    """Change ``state`` for ``event``; return why it wants no preview (None when it has one)."""
    feature, why_own = _choose_feature(state, event, catalog)
    prior = stack_expiry(state.get(feature))
    previous = {e["service"]: e for e in state.get(feature)}  # for the CLI overrides they carry
    _withdraw(state, event.key, catalog)
    reason = why_no_preview(event, catalog, approvals)
    batch.gates.pop(event.key, None)
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
    held = _held_back(event, own, gates, previous)
    if held and len(held) == len(own) and not any(n.serving for n in held):
        batch.gates[event.key] = (feature, held)  # nothing of this PR is deployed yet: no entry until its gate opens
        return "gate closed"
    elements = state.own(feature)
    for service in own:
        if service in {n.service for n in held}:
            kept = previous.get(service)
            if kept is not None and source_key(kept) == event.key:
                _put(elements, dict(kept), event.key)  # the previous sha keeps serving
            continue
        element = build_element(event=event, catalog=catalog, feature=feature, service=service)
        if service in previous:
            _carry_overrides(previous[service], element)
        _put(elements, element, event.key)
    if held:
        batch.gates[event.key] = (feature, held)
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


def _held_back(
    event: PullRequestEvent, own: Sequence[str], gates: Mapping[str, GateStatus], previous: Mapping[str, Element]
) -> list[GateNote]:
    """The own services of ``event`` whose gate is closed for its head sha, with the sha each still serves."""
    held = []
    for service in own:
        status = gates.get(service)
        if status is None or status.state == "open" or status.sha != event.head_sha:
            continue
        kept = previous.get(service)
        serving = kept["source"]["sha"] if kept is not None and source_key(kept) == event.key else ""
        held.append(GateNote(service=service, state=status.state, sha=status.sha, serving=serving,
                             waiting=status.waiting, failed=status.failed, url=status.url, overdue=status.overdue))
    return held


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

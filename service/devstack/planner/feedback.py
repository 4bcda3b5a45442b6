"""What to tell each PR after a batch: its sticky comment's state."""

from __future__ import annotations

from collections.abc import Sequence

from devstack import devmode
from devstack import sleep as sleeping
from devstack.catalog import Settings
from devstack.entries import Element
from devstack.events import Provider, PullRequestEvent, PullRequestRef
from devstack.planner.elements import stack_expiry
from devstack.planner.model import (
    NEVER,
    Feedback,
    GateNote,
    ServiceLink,
    _Batch,
    _is_pr,
    _requesters,
    _State,
    source_key,
)


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
        gated, held = batch.gates.get(key, ("", []))
        if feature is not None:
            result.append(stack_feedback(key=key, elements=state.get(feature), catalog=catalog, event=event,
                                         notes=notes, gates=tuple(held)))
            continue
        if held and event is not None:  # nothing deployed yet: the comment says what it waits for
            result.append(Feedback(pr=event.ref, pr_url=event.url, status="waiting", feature=gated,
                                   sha=event.head_sha, notes=notes, gates=tuple(held)))
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
    notes: tuple[str, ...] = (), warning: str = "", gates: tuple[GateNote, ...] = (),
) -> Feedback:
    """The comment state of PR ``key`` in the stack ``elements``; ``gates``: its services whose head sha
    waits (then the sha shown is the one still serving)."""
    ref, url, sha = _pr_identity(key, elements, event)
    serving = next((note.serving for note in gates if note.serving), "")
    if serving:
        sha = serving
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
        gates=gates,
    )


def _canonical(elements: Sequence[Element] | None) -> list[Element] | None:
    if elements is None or not elements:
        return None
    return sorted(elements, key=lambda e: str(e["service"]))

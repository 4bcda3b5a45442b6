"""The pure planner: events + entries + catalog -> entries + feedback."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from devstack import entries
from devstack.catalog import Settings
from devstack.errors import InvalidEntry
from devstack.events import Provider, PullRequestEvent, PullRequestState
from devstack.planner import Plan, plan

T0 = datetime(2026, 11, 20, 10, 0, 0, tzinfo=UTC)
SHA1, SHA2 = "1" * 40, "2" * 40


def event(**kw: Any) -> PullRequestEvent:
    base: dict[str, Any] = {
        "delivery_id": "d1", "provider": Provider.GITHUB, "action": "opened", "repo": "acme/payments",
        "number": 42, "url": "https://github.com/acme/payments/pull/42", "title": "Fix login", "author": "octocat",
        "head_sha": SHA1, "head_branch": "login-fix", "base_branch": "main", "state": PullRequestState.OPEN,
        "received_at": T0,
    }
    base.update(kw)
    return PullRequestEvent(**base)


@pytest.fixture
def settings(make_settings: Callable[..., Settings]) -> Settings:
    return make_settings()


def run(settings: Settings, *events: PullRequestEvent, state: dict[str, Any] | None = None) -> Plan:
    result = plan(events=list(events), entries=state or {}, catalog=settings, now=T0)
    for feature, elements in result.changed.items():
        if elements is not None:
            entries.validate(feature, elements)  # every planned file satisfies the contract
    return result


def test_opened_creates_one_entry_per_service_of_the_repo(settings: Settings) -> None:
    result = run(settings, event())
    assert list(result.changed) == ["login-fix"]
    [element] = result.changed["login-fix"] or []
    assert element["service"] == "payments-api"
    assert element["app"] == "login-fix---payments-api"
    assert element["namespace"] == "preview-login-fix"
    assert element["values"]["image"] == {"repository": "ghcr.io/acme/payments-api", "tag": SHA1}
    assert element["values"]["host"] == "login-fix--payments-api.preview.example.com"
    assert element["source"] == {"provider": "github", "repo": "acme/payments", "number": "42",
                                 "url": "https://github.com/acme/payments/pull/42", "sha": SHA1,
                                 "branch": "login-fix", "author": "octocat"}
    assert element["requestedBy"] == ["github:acme/payments#42"]
    assert element["expiresAt"] == "2026-11-23T10:00:00Z"  # 72h default
    assert element["chart"]["repoURL"] == "https://git.example.com/acme/gitops.git"
    [fb] = result.feedback
    assert fb.status == "active" and fb.feature == "login-fix" and fb.sha == SHA1
    assert [s.url for s in fb.services] == ["https://login-fix--payments-api.preview.example.com"]


def test_synchronize_follows_the_head_sha_and_moves_the_expiry(settings: Settings) -> None:
    first = run(settings, event())
    later = T0 + timedelta(hours=5)
    second = run(settings, event(action="synchronize", head_sha=SHA2, delivery_id="d2", received_at=later),
                 state=first.entries)
    [element] = second.changed["login-fix"] or []
    assert element["values"]["image"]["tag"] == SHA2
    assert element["source"]["sha"] == SHA2
    assert element["expiresAt"] == "2026-11-23T15:00:00Z"


def test_replaying_an_event_changes_nothing(settings: Settings) -> None:
    first = run(settings, event())
    again = run(settings, event(), state=first.entries)
    assert again.changed == {}
    assert again.entries == first.entries


@pytest.mark.parametrize(("merged", "reason"), [(True, "merged"), (False, "closed")])
def test_close_removes_the_file_and_says_why(settings: Settings, merged: bool, reason: str) -> None:
    first = run(settings, event())
    closed = run(settings, event(action="closed", state=PullRequestState.CLOSED, merged=merged), state=first.entries)
    assert closed.changed == {"login-fix": None}
    assert closed.entries == {}
    [fb] = closed.feedback
    assert (fb.status, fb.reason, fb.feature) == ("removed", reason, "login-fix")


def test_draft_waits_for_ready_for_review(settings: Settings) -> None:
    draft = run(settings, event(draft=True))
    assert draft.changed == {} and draft.feedback == []
    assert draft.decisions[0].outcome == "ignored" and draft.decisions[0].reason == "draft"
    ready = run(settings, event(action="ready_for_review"), state=draft.entries)
    assert list(ready.changed) == ["login-fix"]
    back = run(settings, event(action="converted_to_draft", draft=True), state=ready.entries)
    assert back.changed == {"login-fix": None}
    assert back.feedback[0].reason == "draft"


def test_drafts_can_be_deployed_by_config(make_settings: Callable[..., Settings]) -> None:
    result = run(make_settings(deploy_drafts=True), event(draft=True))
    assert list(result.changed) == ["login-fix"]


def test_a_batch_is_applied_in_order(settings: Settings) -> None:
    result = run(
        settings,
        event(),
        event(action="synchronize", head_sha=SHA2, delivery_id="d2"),
        event(action="closed", state=PullRequestState.CLOSED, delivery_id="d3"),
        event(number=7, delivery_id="d4", head_branch="other", url="https://github.com/acme/payments/pull/7"),
    )
    assert set(result.changed) == {"other"}  # login-fix came and went inside the batch
    assert [d.outcome for d in result.decisions] == ["applied", "applied", "ignored", "applied"]


def test_feature_label_names_the_stack_and_moving_it_cleans_up(settings: Settings) -> None:
    first = run(settings, event(labels=("devstack/feature:checkout",)))
    assert list(first.changed) == ["checkout"]
    moved = run(settings, event(action="labeled", labels=("devstack/feature:pay-v2",)), state=first.entries)
    assert moved.changed.keys() == {"checkout", "pay-v2"}
    assert moved.changed["checkout"] is None


def test_multi_repo_feature_is_one_stack(settings: Settings) -> None:
    payments = event()
    ledger = event(repo="acme/ledger", number=9, url="https://github.com/acme/ledger/pull/9", delivery_id="d9",
                   head_sha=SHA2)
    both = run(settings, payments, ledger)
    stack = both.entries["login-fix"]
    assert sorted(e["service"] for e in stack) == ["ledger", "payments-api"]
    # each PR is told about the whole stack
    assert {fb.pr.key: len(fb.services) for fb in both.feedback} == {
        "github:acme/ledger#9": 2, "github:acme/payments#42": 2}
    closed = run(settings, replace(ledger, action="closed", state=PullRequestState.CLOSED), state=both.entries)
    assert [e["service"] for e in closed.entries["login-fix"]] == ["payments-api"]
    statuses = {fb.pr.key: (fb.status, len(fb.services)) for fb in closed.feedback}
    assert statuses == {"github:acme/ledger#9": ("removed", 0), "github:acme/payments#42": ("active", 1)}


def test_repository_without_services_is_ignored(settings: Settings) -> None:
    result = run(settings, event(repo="acme/unknown", url="https://github.com/acme/unknown/pull/1"))
    assert result.changed == {}
    assert result.decisions[0].reason == "repository not allowed"


def test_fork_is_not_deployed_unless_allowed(make_settings: Callable[..., Settings]) -> None:
    assert run(make_settings(), event(fork=True)).changed == {}
    assert list(run(make_settings(security={"allow_forks": True}), event(fork=True)).changed) == ["login-fix"]


def test_label_trigger(make_settings: Callable[..., Settings]) -> None:
    settings = make_settings(trigger="label")
    assert run(settings, event()).changed == {}
    with_label = run(settings, event(labels=("devstack/preview",)))
    assert list(with_label.changed) == ["login-fix"]
    removed = run(settings, event(action="unlabeled"), state=with_label.entries)
    assert removed.changed == {"login-fix": None}
    assert removed.feedback[0].reason == "no preview label"


def test_ttl_label_is_capped_by_max(settings: Settings) -> None:
    short = run(settings, event(labels=("devstack/ttl:30m",)))
    assert short.entries["login-fix"][0]["expiresAt"] == "2026-11-20T10:30:00Z"
    long = run(settings, event(labels=("devstack/ttl:90d",)))
    assert long.entries["login-fix"][0]["expiresAt"] == "2026-12-04T10:00:00Z"  # ttl.max 14d


def test_hostile_branch_yields_a_valid_entry(settings: Settings) -> None:
    branch = '../../etc/passwd\n{{ .Values }}: "x"'
    result = run(settings, event(head_branch=branch))
    [feature] = result.changed
    assert feature.startswith("etc-passwd-values-x-")
    element = result.entries[feature][0]
    assert element["source"]["branch"] == branch.replace("\n", " ")  # kept as data, without control characters
    assert b"{{ .Values }}" in entries.encode(result.entries[feature])  # JSON-escaped data, never a template


def test_tag_template(make_settings: Callable[..., Settings]) -> None:
    from tests.conftest import catalog

    services = catalog()
    services["payments-api"]["tag"] = "pr-{number}-{short_sha}"
    result = run(make_settings(services=services), event())
    assert result.entries["login-fix"][0]["values"]["image"]["tag"] == "pr-42-1111111"


def test_exactly_one_element_owns_the_namespace(settings: Settings) -> None:
    """The owner (values.namespaceOwner) is the element expiring last; argocd/ renders the namespace from it."""
    payments = event(labels=("devstack/ttl:1h",))
    ledger = event(repo="acme/ledger", number=9, url="https://github.com/acme/ledger/pull/9", delivery_id="d9")
    both = run(settings, payments, ledger)
    owners = {e["service"]: e["values"].get("namespaceOwner") for e in both.entries["login-fix"]}
    assert owners == {"ledger": "true", "payments-api": None}  # ledger expires in 72h, payments in 1h
    closed = run(settings, replace(ledger, action="closed", state=PullRequestState.CLOSED), state=both.entries)
    [left] = closed.entries["login-fix"]
    assert left["service"] == "payments-api" and left["values"]["namespaceOwner"] == "true"


def test_a_file_without_a_namespace_owner_is_invalid(settings: Settings) -> None:
    [element] = run(settings, event()).entries["login-fix"]
    del element["values"]["namespaceOwner"]
    with pytest.raises(InvalidEntry, match="namespace"):
        entries.validate("login-fix", [element])


def test_a_kept_index_plans_exactly_what_a_fresh_one_does_across_batches_and_hand_edits(
    settings: Settings,
) -> None:
    """The worker keeps one :class:`KeyIndex` between batches and it re-reads only the entries whose
    element lists are new objects (the entry cache hands back the same objects for unchanged files).
    Built to collide: between batches another writer moves a PR's elements to another file, deletes a
    file, and rewrites one with equal content; every plan must equal the plan of a fresh index."""
    from devstack.planner import KeyIndex

    kept = KeyIndex()
    state: dict[str, list[dict[str, Any]]] = {}

    def step(*events: PullRequestEvent) -> Plan:
        nonlocal state
        with_kept = plan(events=list(events), entries=state, catalog=settings, now=T0, index=kept)
        fresh = plan(events=list(events), entries=state, catalog=settings, now=T0)
        assert with_kept == fresh
        # as the worker's entry cache does: changed files decoded anew, unchanged ones the same objects
        state = {feature: (state[feature] if feature in state and feature not in with_kept.changed
                           else [dict(e) for e in elements])
                 for feature, elements in with_kept.entries.items()}
        return with_kept

    pay = event(labels=("devstack/feature:checkout",))
    ledger = event(repo="acme/ledger", number=9, url="https://github.com/acme/ledger/pull/9", delivery_id="d9",
                   head_sha=SHA2, labels=("devstack/feature:checkout",))
    billing = event(number=7, url="https://github.com/acme/payments/pull/7", delivery_id="d7", head_branch="billing")
    step(pay, ledger, billing)
    assert sorted(e["service"] for e in state["checkout"]) == ["ledger", "payments-api"]
    step(replace(billing, action="synchronize", delivery_id="d8"))  # the kept index has read every file now

    # a hand edit moves the ledger PR's element into another stack's file (an existing feature, new list)
    [ledger_element] = [e for e in state["checkout"] if e["service"] == "ledger"]
    state = {**state, "checkout": [e for e in state["checkout"] if e["service"] != "ledger"],
             "billing": [*state["billing"], {**ledger_element, "namespace": "preview-billing"}]}
    moved = step(replace(ledger, action="synchronize", head_sha=SHA1, delivery_id="d10"))
    assert moved.changed.keys() == {"billing", "checkout"}  # found where the hand put it, and taken back

    # equal content, new objects; and a file deleted behind the worker's back
    state = {feature: [dict(e) for e in elements] for feature, elements in state.items()}
    state.pop("billing", None)
    step(replace(ledger, action="synchronize", head_sha=SHA2, delivery_id="d11"))
    assert "billing" not in state and "billing" not in kept.features(billing.key)  # forgotten, not kept around
    closed = step(replace(pay, action="closed", state=PullRequestState.CLOSED, delivery_id="d12"))
    assert "payments-api" not in {e["service"] for elements in closed.entries.values() for e in elements}


def test_decoded_entries_share_their_keys_and_read_as_json_does() -> None:
    """The worker holds every entry decoded; ``entries.decode`` interns the object keys so 10,000 files do
    not each hold their own ~35 key strings. Same values as ``json.loads``; a file nested too deeply is an
    invalid entry (quarantined), not a crash."""
    import json

    one = b'[{"service": "api", "values": {"env": {"A": "1"}, "image": {"tag": "t"}}, "requestedBy": ["x"]}]'
    two = b'[{"service": "web", "values": {"env": {"A": "2"}, "image": {"tag": "u"}}, "requestedBy": []}]'
    first, second = entries.decode("one", one), entries.decode("two", two)
    assert first == json.loads(one) and second == json.loads(two)
    assert next(iter(first[0]["values"]["image"])) is next(iter(second[0]["values"]["image"]))
    assert next(iter(first[0]["values"]["env"])) is next(iter(second[0]["values"]["env"]))
    deep = b'[{"a": ' + b"[" * 5000 + b"]" * 5000 + b"}]"
    with pytest.raises(InvalidEntry, match=r"nested too deeply|not JSON"):
        entries.decode("deep", deep)

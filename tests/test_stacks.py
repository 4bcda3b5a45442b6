"""Stacks in the planner: with-labels, multi-repo features, shared expiry, commands."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from datetime import timedelta
from typing import Any

import pytest

from devstack.catalog import Settings
from devstack.events import Command, PullRequestState
from devstack.planner import CLI_REQUESTER, Plan, plan
from tests.test_planner import SHA1, SHA2, T0, event, run


def tags(result: Plan, feature: str = "login-fix") -> dict[str, str]:
    return {e["service"]: e["values"]["image"]["tag"] for e in result.entries.get(feature, [])}


def requested(result: Plan, feature: str = "login-fix") -> dict[str, list[str]]:
    return {e["service"]: e["requestedBy"] for e in result.entries.get(feature, [])}


PAYMENTS = "github:acme/payments#42"
LEDGER = "github:acme/ledger#9"


def ledger_pr(**kw: Any) -> Any:
    base: dict[str, Any] = {"repo": "acme/ledger", "number": 9, "url": "https://github.com/acme/ledger/pull/9",
                            "delivery_id": "l1", "head_sha": SHA2}
    return event(**{**base, **kw})


@pytest.fixture
def settings(make_settings: Callable[..., Settings]) -> Settings:
    return make_settings()


def test_with_label_adds_the_service_at_its_base_tag(settings: Settings) -> None:
    result = run(settings, event(labels=("devstack/with:ledger",)))
    assert tags(result) == {"payments-api": SHA1, "ledger": "main"}
    ledger = next(e for e in result.entries["login-fix"] if e["service"] == "ledger")
    assert ledger["source"]["number"] == "0" and ledger["source"]["sha"] == ""
    assert ledger["requestedBy"] == [PAYMENTS]
    [fb] = result.feedback
    assert [(s.service, s.source) for s in fb.services] == [("ledger", ""), ("payments-api", PAYMENTS)]


def test_with_label_pulls_in_depends_on_transitively(make_settings: Callable[..., Settings]) -> None:
    from tests.conftest import catalog

    services = catalog()
    services["ledger"]["depends_on"] = ["audit"]
    services["audit"] = {"repo": "acme/audit", "image": "ghcr.io/acme/audit", "base_tag": "v3"}
    result = run(make_settings(services=services), event(repo="acme/ledger", number=9,
                                                         url="https://github.com/acme/ledger/pull/9",
                                                         labels=("devstack/with:payments-api",)))
    # payments-api depends on ledger (this PR's own service) which depends on audit
    assert tags(result) == {"ledger": SHA1, "payments-api": "main", "audit": "v3"}


def test_with_label_uses_the_open_pr_of_that_service_in_the_same_feature(settings: Settings) -> None:
    ledger_first = run(settings, ledger_pr())
    both = run(settings, event(labels=("devstack/with:ledger",)), state=ledger_first.entries)
    assert tags(both) == {"payments-api": SHA1, "ledger": SHA2}  # the ledger PR's head, not base
    assert requested(both)["ledger"] == [LEDGER, PAYMENTS]
    # and the other order: the with-label first, the ledger PR later replaces the base build
    payments_first = run(settings, event(labels=("devstack/with:ledger",)))
    later = run(settings, ledger_pr(), state=payments_first.entries)
    assert tags(later) == {"payments-api": SHA1, "ledger": SHA2}
    assert requested(later)["ledger"] == [LEDGER, PAYMENTS]


def test_closing_the_builder_falls_back_to_base_while_others_ask(settings: Settings) -> None:
    both = run(settings, ledger_pr(), event(labels=("devstack/with:ledger",)))
    closed = run(settings, ledger_pr(action="closed", state=PullRequestState.CLOSED), state=both.entries)
    assert tags(closed) == {"payments-api": SHA1, "ledger": "main"}
    assert requested(closed)["ledger"] == [PAYMENTS]
    statuses = {fb.pr.key: fb.status for fb in closed.feedback}
    assert statuses == {LEDGER: "removed", PAYMENTS: "active"}


def test_removing_the_label_removes_the_service_unless_someone_else_asks(settings: Settings) -> None:
    with_label = run(settings, event(labels=("devstack/with:ledger",)))
    removed = run(settings, event(action="unlabeled"), state=with_label.entries)
    assert tags(removed) == {"payments-api": SHA1}
    # a second PR of the stack (another repository: one repository has one PR per stack) still asks
    drone = "github:bradrydzewski/drone-test-go#43"
    other = event(repo="bradrydzewski/drone-test-go", number=43, delivery_id="o",
                  url="https://github.com/bradrydzewski/drone-test-go/pull/43",
                  labels=("devstack/with:ledger", "devstack/feature:login-fix"), head_branch="other-branch")
    shared = run(settings, event(labels=("devstack/with:ledger",)), other)
    assert requested(shared)["ledger"] == [PAYMENTS, drone]
    dropped = run(settings, event(action="unlabeled"), state=shared.entries)
    assert requested(dropped)["ledger"] == [drone]


def test_unknown_service_is_named_and_nothing_else_changes(settings: Settings) -> None:
    result = run(settings, event(labels=("devstack/with:nope", "devstack/with:ledger")))
    assert tags(result) == {"payments-api": SHA1, "ledger": "main"}
    [fb] = result.feedback
    assert fb.notes and "`nope`" in fb.notes[0] and "`payments-api`" in fb.notes[0]


def test_prs_of_one_feature_in_two_repos_share_one_stack_and_expiry(settings: Settings) -> None:
    result = run(settings, event(), ledger_pr(received_at=T0 + timedelta(hours=2)))
    assert sorted(result.entries) == ["login-fix"]
    assert {e["expiresAt"] for e in result.entries["login-fix"]} == {"2026-11-23T12:00:00Z"}
    assert {fb.pr.key for fb in result.feedback} == {PAYMENTS, LEDGER}
    assert all(len(fb.services) == 2 for fb in result.feedback)


def test_expiry_moves_forward_never_back_and_a_ttl_label_sets_it(settings: Settings) -> None:
    first = run(settings, event(received_at=T0 + timedelta(hours=10)))
    assert first.entries["login-fix"][0]["expiresAt"] == "2026-11-23T20:00:00Z"
    older = run(settings, event(action="edited", received_at=T0), state=first.entries)
    assert older.entries["login-fix"][0]["expiresAt"] == "2026-11-23T20:00:00Z"  # not backwards
    shorter = run(settings, event(action="labeled", labels=("devstack/ttl:1h",), received_at=T0),
                  state=first.entries)
    assert shorter.entries["login-fix"][0]["expiresAt"] == "2026-11-20T11:00:00Z"  # an explicit TTL sets it


def test_forever_is_capped_unless_policy_allows(make_settings: Callable[..., Settings]) -> None:
    capped = run(make_settings(), event(labels=("devstack/ttl:forever",)))
    assert capped.entries["login-fix"][0]["expiresAt"] == "2026-12-04T10:00:00Z"
    assert "capped" in capped.feedback[0].notes[0]
    allowed = run(make_settings(ttl={"max": "forever"}), event(labels=("devstack/ttl:forever",)))
    assert allowed.entries["login-fix"][0]["expiresAt"] == "never"
    bad = run(make_settings(), event(labels=("devstack/ttl:soon",)))
    assert bad.entries["login-fix"][0]["expiresAt"] == "2026-11-23T10:00:00Z"
    assert "not a duration" in bad.feedback[0].notes[0]


def test_resync_heals_but_never_extends(settings: Settings) -> None:
    first = run(settings, event())
    healed = run(settings, event(action="resync", head_sha=SHA2, received_at=T0 + timedelta(days=2)),
                 state=first.entries)
    assert tags(healed) == {"payments-api": SHA2}  # a stale sha is fixed
    assert healed.entries["login-fix"][0]["expiresAt"] == "2026-11-23T10:00:00Z"  # not extended


def command(op: str, **kw: Any) -> Command:
    return Command(delivery_id=f"c-{op}", op=op, received_at=kw.pop("received_at", T0 + timedelta(hours=1)), **kw)


def test_expire_removes_the_stack_unless_it_was_extended(settings: Settings) -> None:
    first = run(settings, event(), ledger_pr())
    expiry = first.entries["login-fix"][0]["expiresAt"]
    stale = run(settings, command("expire", feature="login-fix", args=(("expiresAt", "2026-01-01T00:00:00Z"),)),
                state=first.entries)
    assert stale.changed == {} and stale.decisions[0].reason == "extended meanwhile"
    gone = run(settings, command("expire", feature="login-fix", args=(("expiresAt", expiry),)), state=first.entries)
    assert gone.changed == {"login-fix": None}
    assert {(fb.pr.key, fb.status, fb.reason) for fb in gone.feedback} == {
        (PAYMENTS, "removed", "expired"), (LEDGER, "removed", "expired")}


def test_extend_and_ttl_commands(settings: Settings) -> None:
    first = run(settings, event())
    extended = run(settings, command("extend", pr=PAYMENTS, received_at=T0 + timedelta(days=1)),
                   state=first.entries)
    assert extended.entries["login-fix"][0]["expiresAt"] == "2026-11-24T10:00:00Z"
    ttl = run(settings, command("ttl", pr=PAYMENTS, args=(("ttl", "30m"),)), state=first.entries)
    assert ttl.entries["login-fix"][0]["expiresAt"] == "2026-11-20T11:30:00Z"
    assert run(settings, command("extend", pr="github:acme/x#1"), state=first.entries).decisions[0].reason == (
        "no such preview")


def test_cli_up_down_set_restart(settings: Settings) -> None:
    up = run(settings, command("up", feature="demo", services=(("payments-api", "v1.2.3"),), args=(("ttl", "1d"),)))
    assert tags(up, "demo") == {"payments-api": "v1.2.3", "ledger": "main"}  # depends_on comes at base
    assert {e["expiresAt"] for e in up.entries["demo"]} == {"2026-11-21T11:00:00Z"}
    assert all(e["requestedBy"] == [CLI_REQUESTER] for e in up.entries["demo"])
    assert up.feedback == []  # nobody to comment to
    set_env = run(settings, command("set", feature="demo", services=(("ledger", ""),),
                                    args=(("env.LOG_LEVEL", "debug"),)), state=up.entries)
    ledger = next(e for e in set_env.entries["demo"] if e["service"] == "ledger")
    assert ledger["values"]["env"] == {"LOG_LEVEL": "debug"}
    restarted = run(settings, command("restart", feature="demo", services=(("ledger", ""),),
                                      received_at=T0 + timedelta(hours=3)), state=set_env.entries)
    ledger = next(e for e in restarted.entries["demo"] if e["service"] == "ledger")
    assert ledger["values"]["restartedAt"] == "2026-11-20T13:00:00Z"
    assert ledger["values"]["env"] == {"LOG_LEVEL": "debug"}  # overrides survive
    down = run(settings, command("down", feature="demo"), state=restarted.entries)
    assert down.changed == {"demo": None}
    assert run(settings, command("set", feature="demo", services=(("ledger", ""),)), state=down.entries
               ).decisions[0].reason == "no such preview"


def test_overrides_survive_a_push_of_the_pr(settings: Settings) -> None:
    first = run(settings, event())
    set_env = run(settings, command("set", feature="login-fix", services=(("payments-api", ""),),
                                    args=(("env.FLAG", "on"),)), state=first.entries)
    pushed = run(settings, event(action="synchronize", head_sha=SHA2, delivery_id="d2"), state=set_env.entries)
    [element] = pushed.entries["login-fix"]
    assert element["values"]["image"]["tag"] == SHA2 and element["values"]["env"] == {"FLAG": "on"}


def test_redeploy_restarts_the_prs_own_services(settings: Settings) -> None:
    first = run(settings, event(labels=("devstack/with:ledger",)))
    redeployed = run(settings, command("redeploy", pr=PAYMENTS), state=first.entries)
    restarted = {e["service"]: e["values"].get("restartedAt") for e in redeployed.entries["login-fix"]}
    assert restarted == {"payments-api": "2026-11-20T11:00:00Z", "ledger": None}


def test_fork_deployed_only_when_approved_for_that_sha(settings: Settings) -> None:
    fork = event(fork=True)
    assert plan(events=[fork], entries={}, catalog=settings, now=T0).changed == {}
    approved = plan(events=[fork], entries={}, catalog=settings, now=T0, approvals={PAYMENTS: SHA1})
    assert list(approved.changed) == ["login-fix"]
    pushed = plan(events=[replace(fork, head_sha=SHA2)], entries=approved.entries, catalog=settings, now=T0,
                  approvals={PAYMENTS: SHA1})
    assert pushed.changed == {"login-fix": None}  # a new push needs a new approval
    assert pushed.feedback[0].reason == "fork"


def test_the_planner_never_mutates_the_entries_it_is_given(settings: Settings) -> None:
    """The worker's cache and snapshot share the entries: planning copies what it changes."""
    import copy

    first = run(settings, event(labels=("devstack/with:ledger",)), ledger_pr(), event(number=7, head_branch="x",
                delivery_id="x", url="https://github.com/acme/payments/pull/7"))
    frozen = copy.deepcopy(first.entries)
    run(settings, ledger_pr(action="closed", state=PullRequestState.CLOSED),
        event(action="synchronize", head_sha=SHA2, delivery_id="s"), command("redeploy", pr=PAYMENTS),
        command("set", feature="x", services=(("payments-api", ""),), args=(("env.A", "b"),)),
        command("down", feature="x"), state=first.entries)
    assert first.entries == frozen

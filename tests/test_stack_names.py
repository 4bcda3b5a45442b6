"""Which stack a PR lands in, and the names its elements keep (pure planner, no I/O).

Pins two defects of issue 12:

* two open PRs of one repository in one feature (a fork PR from ``main``, a fix and its backport
  from the same branch name, two PRs with one ``devstack/feature:`` label) overwrote each other's
  elements, and closing either dropped the other to its base tag;
* Application names collided across features, and changing the naming scheme must not rename
  (delete and recreate, dropping its database) any Application that already exists.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from devstack import entries, naming
from devstack.catalog import Settings
from devstack.entries import Element
from devstack.events import Provider, PullRequestEvent, PullRequestState
from devstack.planner import Plan, plan

T0 = datetime(2026, 11, 20, 10, 0, 0, tzinfo=UTC)
SHA_A, SHA_B = "a" * 40, "b" * 40
A = "github:acme/payments#42"
B = "github:acme/payments#43"


def pr(number: int, **kw: Any) -> PullRequestEvent:
    base: dict[str, Any] = {
        "delivery_id": f"d{number}-{kw.get('action', 'opened')}", "provider": Provider.GITHUB, "action": "opened",
        "repo": "acme/payments", "number": number, "url": f"https://github.com/acme/payments/pull/{number}",
        "title": "t", "author": "someone", "head_sha": SHA_A if number == 42 else SHA_B,
        "head_branch": "login-fix", "base_branch": "main", "state": PullRequestState.OPEN, "received_at": T0,
    }
    base.update(kw)
    return PullRequestEvent(**base)


def closed(event: PullRequestEvent, *, merged: bool = False) -> PullRequestEvent:
    return replace(event, action="closed", state=PullRequestState.CLOSED, merged=merged,
                   delivery_id=event.delivery_id + "-closed", received_at=T0 + timedelta(hours=1))


@pytest.fixture
def settings(make_settings: Callable[..., Settings]) -> Settings:
    return make_settings()


def run(settings: Settings, *events: PullRequestEvent, state: dict[str, list[Element]] | None = None) -> Plan:
    result = plan(events=list(events), entries=state or {}, catalog=settings, now=T0)
    for feature, elements in result.changed.items():
        if elements is not None:
            entries.validate(feature, elements)
    return result


def own(number: int, feature: str = "login-fix") -> str:
    return naming.pr_feature_name(feature, pr_key=f"github:acme/payments#{number}", number=number)


def stacks(result: Plan) -> dict[str, dict[str, str]]:
    """feature -> service -> the PR key that builds it (or "base")."""
    return {feature: {e["service"]: (f"github:{e['source']['repo']}#{e['source']['number']}"
                                     if e["source"]["number"] != "0" else "base") for e in elements}
            for feature, elements in result.entries.items()}


# --- two PRs of one repository, one feature ------------------------------------------------------


@pytest.mark.parametrize("order", ["first-42", "first-43"])
@pytest.mark.parametrize("batched", [False, True])
def test_the_second_pr_of_a_repo_gets_its_own_stack_in_either_order(
    settings: Settings, order: str, batched: bool
) -> None:
    """Defect pinned: the second PR of a repository in a feature replaced the first one's elements."""
    first, second = (pr(42), pr(43)) if order == "first-42" else (pr(43), pr(42))
    result = run(settings, first, second) if batched else run(settings, second, state=run(settings, first).entries)
    stack_of_second = own(second.number)
    assert stacks(result) == {
        "login-fix": {"payments-api": first.key},
        stack_of_second: {"payments-api": second.key},
    }
    [note] = next(fb.notes for fb in result.feedback if fb.pr.key == second.key)
    assert f"own preview stack `{stack_of_second}`" in note and f"#{first.number}" in note
    assert "login-fix" in note
    assert all(not fb.notes for fb in result.feedback if fb.pr.key == first.key)
    images = {f: e[0]["values"]["image"]["tag"] for f, e in result.entries.items()}
    assert images == {"login-fix": first.head_sha, stack_of_second: second.head_sha}


@pytest.mark.parametrize("closing", [42, 43])
def test_closing_either_pr_leaves_the_other_untouched(settings: Settings, closing: int) -> None:
    """Defect pinned: closing one of two PRs of a repository in one feature dropped the other to its base
    tag."""
    both = run(settings, pr(42), pr(43))
    after = run(settings, closed(pr(closing), merged=True), state=both.entries)
    survivor = 43 if closing == 42 else 42
    expected = {"login-fix": {"payments-api": A}} if survivor == 42 else {own(43): {"payments-api": B}}
    assert stacks(after) == expected
    survivor_feature = next(iter(expected))
    assert after.entries[survivor_feature] == both.entries[survivor_feature]  # not a byte changed
    assert survivor_feature not in after.changed


def test_a_pr_keeps_its_own_stack_after_the_first_closes_and_the_first_reopens_into_the_feature(
    settings: Settings,
) -> None:
    """Moving the second PR into the freed feature would delete and recreate its Applications (and drop
    their databases): it keeps its own stack while it lives; the first PR, reopened, gets the feature back."""
    both = run(settings, pr(42), pr(43))
    first_closed = run(settings, closed(pr(42)), state=both.entries)
    pushed = run(settings, pr(43, action="synchronize", head_sha="c" * 40, delivery_id="push"),
                 state=first_closed.entries)
    assert stacks(pushed) == {own(43): {"payments-api": B}}
    [note] = next(fb.notes for fb in pushed.feedback if fb.pr.key == B)
    assert "had the preview" in note
    reopened = run(settings, pr(42, action="reopened", delivery_id="reopen"), state=pushed.entries)
    assert stacks(reopened) == {"login-fix": {"payments-api": A}, own(43): {"payments-api": B}}
    # the second one closes and reopens: the feature is taken again, so it gets the same own stack back
    again = run(settings, closed(pr(43)), pr(43, action="reopened", delivery_id="reopen-43"),
                state=reopened.entries)
    assert stacks(again) == stacks(reopened)


def test_resync_of_two_open_prs_without_previews_is_deterministic(settings: Settings) -> None:
    """Resync journals both in PR-key order: the same stacks whatever the listing order."""
    one = run(settings, pr(42, action="resync"), pr(43, action="resync"))
    two = run(settings, pr(43, action="resync"), pr(42, action="resync"))
    assert stacks(one) == {"login-fix": {"payments-api": A}, own(43): {"payments-api": B}}
    assert stacks(two) == {"login-fix": {"payments-api": B}, own(42): {"payments-api": A}}
    # a later resync moves nobody
    healed = run(settings, pr(42, action="resync", head_sha="d" * 40), pr(43, action="resync", head_sha="e" * 40),
                 state=one.entries)
    assert {f: set(s) for f, s in stacks(healed).items()} == {"login-fix": {"payments-api"}, own(43): {"payments-api"}}


def test_two_fork_prs_from_main_and_two_prs_with_one_feature_label(make_settings: Callable[..., Settings]) -> None:
    settings = make_settings(security={"allow_forks": True})
    forks = run(settings, pr(42, head_branch="main", fork=True), pr(43, head_branch="main", fork=True))
    assert stacks(forks) == {"main": {"payments-api": A}, own(43, "main"): {"payments-api": B}}
    labelled = run(settings, pr(42, head_branch="fix", labels=("devstack/feature:checkout",)),
                   pr(43, head_branch="backport/fix", labels=("devstack/feature:checkout",)))
    assert stacks(labelled) == {"checkout": {"payments-api": A}, own(43, "checkout"): {"payments-api": B}}


def test_prs_of_other_repositories_still_join_the_feature(settings: Settings) -> None:
    """One PR per repository per stack: a PR of another repository with the branch still joins it."""
    ledger = pr(9, repo="acme/ledger", url="https://github.com/acme/ledger/pull/9")
    result = run(settings, pr(42), pr(43), ledger)
    assert stacks(result) == {
        "login-fix": {"payments-api": A, "ledger": "github:acme/ledger#9"},
        own(43): {"payments-api": B},
    }


# --- names that exist keep them ------------------------------------------------------------------


def _as_written_by_older_devstack(elements: list[Element], *, feature: str | None = None) -> list[Element]:
    """The elements as devstack wrote them before names were injective: ``<feature>-<service>``."""
    result = []
    for element in elements:
        name = feature or element["feature"]
        values = {**element["values"], "feature": name, "namespace": naming.namespace(name),
                  "host": f"{name}--{element['service']}.preview.example.com"}
        result.append({**element, "feature": name, "namespace": naming.namespace(name), "values": values,
                       "app": naming.legacy_app_name(name, element["service"])})
    return result


def test_an_existing_application_keeps_its_old_name(settings: Settings) -> None:
    """Migration hazard pinned: renaming an Application makes Argo CD delete it and create a new one
    (PostDelete hooks drop its database). An element that exists keeps its name across pushes."""
    old = {"login-fix": _as_written_by_older_devstack(run(settings, pr(42)).entries["login-fix"])}
    assert old["login-fix"][0]["app"] == "login-fix-payments-api"
    pushed = run(settings, pr(42, action="synchronize", head_sha="c" * 40, delivery_id="push",
                               labels=("devstack/with:ledger",)), state=old)
    apps = {e["service"]: e["app"] for e in pushed.entries["login-fix"]}
    assert apps == {"payments-api": "login-fix-payments-api", "ledger": "login-fix---ledger"}  # only new ones


def test_an_old_name_two_features_share_stays_with_the_first_only(make_settings: Callable[..., Settings]) -> None:
    """Defect pinned: ``foo-payments`` + ``api`` and ``foo`` + ``payments-api`` both gave the Application
    ``foo-payments-api``. New elements never collide; of two existing ones that share an old name,
    the first (by feature, service) keeps it and the other is renamed, deterministically."""
    services = {"api": {"repo": "acme/api", "image": "ghcr.io/acme/api"},
                "payments-api": {"repo": "acme/payments", "image": "ghcr.io/acme/payments-api"}}
    settings = make_settings(services=services)
    api = pr(1, repo="acme/api", url="https://github.com/acme/api/pull/1", head_branch="foo-payments")
    payments = pr(2, head_branch="foo")
    fresh = run(settings, api, payments)
    assert {e["app"] for els in fresh.entries.values() for e in els} == {"foo-payments---api", "foo---payments-api"}
    old = {f: _as_written_by_older_devstack(els) for f, els in fresh.entries.items()}
    assert {e["app"] for els in old.values() for e in els} == {"foo-payments-api"}  # the collision, as committed
    for later in ([replace(payments, action="synchronize", delivery_id="p")],
                  [replace(api, action="synchronize", delivery_id="a")],
                  [replace(api, action="synchronize", delivery_id="a"), replace(payments, action="synchronize",
                                                                                delivery_id="p")]):
        result = run(settings, *later, state=old)
        apps = {(e["feature"], e["service"]): e["app"] for els in result.entries.values() for e in els}
        assert apps[("foo", "payments-api")] == "foo-payments-api"  # "foo" sorts first: it keeps the name
        assert apps[("foo-payments", "api")] in ("foo-payments-api", "foo-payments---api")
        if "foo-payments" in result.changed:
            assert apps[("foo-payments", "api")] == "foo-payments---api"


def test_a_pr_keeps_a_stack_named_the_old_way(settings: Settings) -> None:
    """Migration hazard pinned: ``release-202612`` was kept as it is before names that look hashed were
    hashed; its PR stays in that stack (no rename) while a new PR of that branch gets the new name."""
    branch = "release-202612"
    assert naming.feature_name(branch) != branch
    planned = run(settings, pr(42, head_branch=branch)).entries
    old = {branch: _as_written_by_older_devstack(next(iter(planned.values())), feature=branch)}
    pushed = run(settings, pr(42, head_branch=branch, action="synchronize", head_sha="c" * 40, delivery_id="p"),
                 state=old)
    assert list(pushed.entries) == [branch]
    [element] = pushed.entries[branch]
    assert element["app"] == f"{branch}-payments-api" and element["values"]["image"]["tag"] == "c" * 40
    # a label moving the PR elsewhere still moves it
    moved = run(settings, pr(42, head_branch=branch, labels=("devstack/feature:other",), delivery_id="l"),
                state=old)
    assert list(moved.entries) == ["other"]

"""The sticky comment, against golden files (tests/golden/*.md). Regenerate with
``DEVSTACK_UPDATE_GOLDEN=1 pytest tests/test_feedback.py`` and review the diff."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from devstack.events import Provider, PullRequestRef
from devstack.feedback import MARKER, feedback_from_dict, feedback_to_dict, render_comment
from devstack.planner import Feedback, GateNote, ServiceLink

GOLDEN = Path(__file__).parent / "golden"
PR = PullRequestRef(provider=Provider.GITHUB, repo="acme/payments", number=42)

CASES = {
    "comment-active": Feedback(
        pr=PR, pr_url="https://github.com/acme/payments/pull/42", status="active", feature="login-fix",
        sha="0123456789abcdef0123456789abcdef01234567", header="x-devstack-feature",
        expires_at="2026-11-23T10:00:00Z",
        services=(
            ServiceLink(service="ledger", url="https://login-fix--ledger.preview.example.com",
                        image="ghcr.io/acme/ledger:" + "f" * 40, source="github:acme/ledger#7"),
            ServiceLink(service="payments-api", url="https://login-fix--payments-api.preview.example.com",
                        image="ghcr.io/acme/payments-api:0123456789abcdef0123456789abcdef01234567",
                        source="github:acme/payments#42"),
        ),
    ),
    "comment-active-forever": Feedback(
        pr=PR, pr_url="https://github.com/acme/payments/pull/42", status="active", feature="login-fix",
        sha="0123456789abcdef0123456789abcdef01234567", header="x-devstack-feature", expires_at="never",
        services=(ServiceLink(service="payments-api", url="https://login-fix--payments-api.preview.example.com",
                              image="ghcr.io/acme/payments-api:pr-42", source="github:acme/payments#42"),),
    ),
    "comment-asleep": Feedback(
        pr=PR, pr_url="https://github.com/acme/payments/pull/42", status="active", feature="login-fix",
        sha="0123456789abcdef0123456789abcdef01234567", header="x-devstack-feature",
        expires_at="2026-11-23T10:00:00Z",
        services=(
            ServiceLink(service="ledger", url="https://login-fix--ledger.preview.example.com",
                        image="ghcr.io/acme/ledger:main", source="", asleep_since="2026-11-21T18:00:00Z"),
            ServiceLink(service="payments-api", url="https://login-fix--payments-api.preview.example.com",
                        image="ghcr.io/acme/payments-api:0123456789abcdef0123456789abcdef01234567",
                        source="github:acme/payments#42", asleep_since="2026-11-21T18:30:00Z"),
        ),
    ),
    "comment-dev-mode": Feedback(
        pr=PR, pr_url="https://github.com/acme/payments/pull/42", status="active", feature="login-fix",
        sha="0123456789abcdef0123456789abcdef01234567", header="x-devstack-feature",
        expires_at="2026-11-23T10:00:00Z",
        services=(
            ServiceLink(service="ledger", url="https://login-fix--ledger.preview.example.com",
                        image="ghcr.io/acme/ledger:main", source="", asleep_since="2026-11-21T18:00:00Z"),
            ServiceLink(service="payments-api", url="https://login-fix--payments-api.preview.example.com",
                        image="ghcr.io/acme/payments-api:0123456789abcdef0123456789abcdef01234567",
                        source="github:acme/payments#42", dev_until="2026-11-21T18:30:00Z"),
        ),
    ),
    "comment-partly-asleep": Feedback(
        pr=PR, pr_url="https://github.com/acme/payments/pull/42", status="active", feature="login-fix",
        sha="0123456789abcdef0123456789abcdef01234567", header="x-devstack-feature",
        expires_at="2026-11-23T10:00:00Z",
        services=(
            ServiceLink(service="ledger", url="https://login-fix--ledger.preview.example.com",
                        image="ghcr.io/acme/ledger:main", source="", asleep_since="2026-11-21T18:00:00Z"),
            ServiceLink(service="payments-api", url="https://login-fix--payments-api.preview.example.com",
                        image="ghcr.io/acme/payments-api:0123456789abcdef0123456789abcdef01234567",
                        source="github:acme/payments#42"),
        ),
    ),
    "comment-gate-waiting": Feedback(
        pr=PR, pr_url="https://github.com/acme/payments/pull/42", status="waiting", feature="login-fix",
        sha="0123456789abcdef0123456789abcdef01234567",
        gates=(GateNote(service="payments-api", state="waiting", sha="0123456789abcdef0123456789abcdef01234567",
                        waiting=("build", "image"), url="https://github.com/acme/payments/runs/1"),),
    ),
    "comment-gate-failed-first": Feedback(
        pr=PR, pr_url="https://github.com/acme/payments/pull/42", status="waiting", feature="login-fix",
        sha="0123456789abcdef0123456789abcdef01234567",
        gates=(GateNote(service="payments-api", state="failed", sha="0123456789abcdef0123456789abcdef01234567",
                        failed=("build",), url="https://github.com/acme/payments/runs/2"),),
    ),
    "comment-gate-serving": Feedback(
        pr=PR, pr_url="https://github.com/acme/payments/pull/42", status="active", feature="login-fix",
        sha="fedcba9876543210fedcba9876543210fedcba98", header="x-devstack-feature",
        expires_at="2026-11-23T10:00:00Z",
        services=(ServiceLink(service="payments-api", url="https://login-fix--payments-api.preview.example.com",
                              image="ghcr.io/acme/payments-api:fedcba9876543210fedcba9876543210fedcba98",
                              source="github:acme/payments#42"),),
        gates=(GateNote(service="payments-api", state="waiting", sha="0123456789abcdef0123456789abcdef01234567",
                        serving="fedcba9876543210fedcba9876543210fedcba98", waiting=("build",),
                        url="https://github.com/acme/payments/runs/3", overdue=True),),
    ),
    "comment-gate-failed-serving": Feedback(
        pr=PR, pr_url="https://github.com/acme/payments/pull/42", status="active", feature="login-fix",
        sha="fedcba9876543210fedcba9876543210fedcba98", header="x-devstack-feature",
        expires_at="2026-11-23T10:00:00Z",
        services=(ServiceLink(service="payments-api", url="https://login-fix--payments-api.preview.example.com",
                              image="ghcr.io/acme/payments-api:fedcba9876543210fedcba9876543210fedcba98",
                              source="github:acme/payments#42"),),
        gates=(GateNote(service="payments-api", state="failed", sha="0123456789abcdef0123456789abcdef01234567",
                        serving="fedcba9876543210fedcba9876543210fedcba98", failed=("build", "lint")),),
    ),
    "comment-removed-merged": Feedback(
        pr=PR, pr_url="https://github.com/acme/payments/pull/42", status="removed", feature="login-fix",
        sha="0" * 40, reason="merged",
    ),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_comment_matches_golden_file(name: str) -> None:
    body = render_comment(CASES[name])
    path = GOLDEN / f"{name}.md"
    if os.environ.get("DEVSTACK_UPDATE_GOLDEN"):
        path.write_text(body)
    assert body == path.read_text(), f"{name} differs from {path}; regenerate and review if intended"


@pytest.mark.parametrize("name", sorted(name for name in CASES if "gate" in name))
def test_gate_states_survive_the_outbox(name: str) -> None:
    """What the planner said about gates is what the sender renders after the journal round trip."""
    again = feedback_from_dict(feedback_to_dict(CASES[name]))
    assert again == CASES[name]
    assert render_comment(again) == render_comment(CASES[name])


def test_comment_starts_with_the_marker_and_lists_every_url() -> None:
    body = render_comment(CASES["comment-active"])
    assert body.startswith(MARKER + "\n")
    for link in CASES["comment-active"].services:
        assert link.url in body
    assert "x-devstack-feature: login-fix" in body
    assert "2026-11-23 10:00:00 UTC" in body
    assert "`0123456789ab`" in body


def test_feedback_round_trips_through_the_outbox_format() -> None:
    for feedback in CASES.values():
        assert feedback_from_dict(feedback_to_dict(feedback)) == feedback


def test_feature_text_cannot_break_out_of_code_spans() -> None:
    feedback = Feedback(pr=PR, pr_url="", status="removed", feature="a`b", sha="", reason="closed")
    assert "`ab`" in render_comment(feedback)


def test_live_status_is_shown_when_known() -> None:
    body = render_comment(CASES["comment-active"], live=("degraded", "payments-api: CrashLoopBackOff"))
    assert "**Status:** :x: degraded (payments-api: CrashLoopBackOff)" in body
    assert render_comment(CASES["comment-active"]) == (GOLDEN / "comment-active.md").read_text()  # unknown: no line


@pytest.mark.parametrize(
    ("live", "headline"),
    [
        (None, "### :memo: Preview `login-fix` is written to the GitOps repo"),
        (("pending", ""), "### :hourglass: Preview `login-fix` is being deployed"),
        (("synced", ""), "### :hourglass: Preview `login-fix` is being deployed"),
        (("degraded", "payments-api: CrashLoopBackOff"), "### :x: Preview `login-fix` failed to deploy"),
        (("healthy", ""), "### :rocket: Preview `login-fix` is deployed"),
    ],
)
def test_the_headline_says_deployed_only_when_argo_cd_reports_it_healthy(
    live: tuple[str, str] | None, headline: str
) -> None:
    """Defect pinned (issue 13.11): with no cluster (local mode) the comment said "is **deployed**" when
    nothing was deployed; it now says what is true, and "deployed" only once the preview is healthy."""
    lines = render_comment(CASES["comment-active"], live=live).splitlines()
    assert lines[1] == headline
    assert "**Head sha:** `0123456789ab`" in "\n".join(lines)

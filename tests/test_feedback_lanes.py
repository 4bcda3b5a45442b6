"""Feedback lanes (issue 12.7): a provider's rate limit never starves another provider, and within a
lane what a human waits for goes first. The provider APIs are stand-ins here (they cannot run on
this machine); the journal, the outbox and the sender are the real ones."""

from __future__ import annotations

import threading
import time
from pathlib import Path

from devstack.catalog import load_settings
from devstack.errors import ProviderError
from devstack.events import Provider, PullRequestRef
from devstack.feedback import FeedbackSender, feedback_to_dict
from devstack.journal import Journal
from devstack.planner import Feedback, ServiceLink


def _feedback(provider: Provider, repo: str, number: int) -> Feedback:
    pr = PullRequestRef(provider=provider, repo=repo, number=number)
    return Feedback(pr=pr, pr_url="", status="active", feature=f"f{number}", sha="a" * 40,
                    header="x-devstack-feature", expires_at="2026-12-08T10:00:00Z",
                    services=(ServiceLink(service="api", url=f"https://f{number}--api.example.com",
                                          image="ghcr.io/acme/api:" + "a" * 40, source=pr.key),))


def _queued(tmp_path: Path, *, github: int, gitlab: int, where: Path | str | None = None) -> Journal:
    """A journal (SQLite in ``tmp_path``, or ``where``) whose outbox holds ``github`` new PRs' and ``gitlab``
    new MRs' comments."""
    journal = Journal(where or tmp_path / "j.sqlite3")
    for provider, repo, count in ((Provider.GITHUB, "acme/payments", github),
                                  (Provider.GITLAB, "platform/ledger", gitlab)):
        for n in range(1, count + 1):
            f = _feedback(provider, repo, n)
            journal.enqueue_feedback(pr=f.pr.key, provider=provider.value, payload=feedback_to_dict(f))
    return journal


class RateLimited:
    """GitHub answering every request with a 403 rate limit (reset in an hour)."""

    def __init__(self) -> None:
        self.attempts = 0

    def upsert_comment(self, **_: object) -> int:
        self.attempts += 1
        raise ProviderError("GitHub: 403 API rate limit exceeded", delay=3600)

    def deploy(self, **_: object) -> int:
        raise AssertionError("not reached")

    def deactivate(self, **_: object) -> int:
        raise AssertionError("not reached")

    def reply(self, **_: object) -> int:
        self.attempts += 1
        raise ProviderError("GitHub: 403 API rate limit exceeded", delay=3600)


class Recorder:
    def __init__(self) -> None:
        self.notes: list[tuple[str, int]] = []

    def upsert_comment(self, *, repo: str, number: int, **_: object) -> int:
        self.notes.append((repo, number))
        return 100 + number

    def deploy(self, **_: object) -> int:
        return 1

    def deactivate(self, **_: object) -> int:
        return 1

    def reply(self, *, repo: str, number: int, **_: object) -> int:
        self.notes.append((repo, -number))
        return 1


def test_a_github_rate_limit_never_starves_gitlab(tmp_path: Path) -> None:
    """Defect pinned (12.7): with GitHub rate-limited, 50 GitHub items filled every pass (the outbox was
    read oldest first, 20 at a time, then skipped), so GitLab got 0 notes in 50 passes."""
    journal = _queued(tmp_path, github=50, gitlab=5)
    github, gitlab = RateLimited(), Recorder()
    sender = FeedbackSender(settings=load_settings(None, overrides={"feedback": {"deployments": False}}),
                            journal=journal, clients={"github": github, "gitlab": gitlab})
    for _ in range(3):
        sender.run_once(limit=20)
    assert sorted(gitlab.notes) == [("platform/ledger", n) for n in range(1, 6)]
    assert github.attempts == 1  # the lane paused after its first 403: no request until the reset
    assert all(item.attempts <= 1 and item.status == "pending"
               for item in journal.feedback() if item.provider == "github")


def test_replies_then_first_comments_then_edits(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "j.sqlite3")
    edited = _feedback(Provider.GITHUB, "acme/payments", 1)
    journal.enqueue_feedback(pr=edited.pr.key, provider="github", payload=feedback_to_dict(edited))
    [first] = journal.take_feedback(limit=10)
    journal.feedback_sent(first, body="v1", comment_id=501)  # its comment exists: the next send is an edit
    journal.enqueue_feedback(pr=edited.pr.key, provider="github", payload={**feedback_to_dict(edited), "sha": "b" * 40})
    new = _feedback(Provider.GITHUB, "acme/payments", 2)
    journal.enqueue_feedback(pr=new.pr.key, provider="github", payload=feedback_to_dict(new))
    journal.enqueue_feedback(pr="reply:d9", provider="github",
                             payload={"kind": "reply", "repo": "acme/payments", "number": 1, "body": "no"})
    order = [item.pr for item in journal.take_feedback(limit=1)]
    assert order == ["reply:d9"]  # one item per lane per step: the most urgent
    journal.feedback_sent(journal.take_feedback(limit=1)[0], body="replied")
    assert [item.pr for item in journal.take_feedback(limit=1)] == [new.pr.key]  # then the first comment
    journal.feedback_sent(journal.take_feedback(limit=1)[0], body="v1", comment_id=502)
    assert [item.pr for item in journal.take_feedback(limit=1)] == [edited.pr.key]  # the edit, queued first, last


class Writes:
    """A provider stand-in that logs every write in order (what it is, for which PR)."""

    def __init__(self) -> None:
        self.log: list[tuple[str, int]] = []

    def upsert_comment(self, *, number: int, comment_id: int | None = None, **_: object) -> int:
        self.log.append(("edit" if comment_id else "comment", number))
        return 1000 + number

    def deploy(self, *, sha: str, **_: object) -> int:
        self.log.append(("deploy", int(sha[:8], 16)))
        return 2000 + int(sha[:8], 16)

    def deactivate(self, *, deployment_id: int | None = None, **_: object) -> int:
        self.log.append(("deactivate", (deployment_id or 0) - 2000))
        return 1

    def reply(self, *, number: int, **_: object) -> int:
        self.log.append(("reply", number))
        return 1


def _opened(number: int) -> Feedback:
    pr = PullRequestRef(provider=Provider.GITHUB, repo="acme/payments", number=number)
    return Feedback(pr=pr, pr_url="", status="active", feature=f"f{number}", sha=f"{number:08x}" + "0" * 32,
                    header="x-devstack-feature", expires_at="2026-12-08T10:00:00Z",
                    services=(ServiceLink(service="api", url=f"https://f{number}--api.example.com",
                                          image="ghcr.io/acme/api:x", source=pr.key),))


def test_under_a_burst_every_pr_gets_its_comment_before_any_deployment_write(tmp_path: Path) -> None:
    """Issue 14.1: 25 PRs opened at once (more than one pass takes): all 25 comments are written before
    the first deployment; a command reply and a PR opened while the deployments drain go next."""
    journal = Journal(tmp_path / "j.sqlite3")
    for n in range(1, 26):
        f = _opened(n)
        journal.enqueue_feedback(pr=f.pr.key, provider="github", payload=feedback_to_dict(f))
    github = Writes()
    roomy = {"feedback": {"max_writes_per_minute": 1000, "max_writes_per_hour": 1000}}  # the caps are tested below
    sender = FeedbackSender(settings=load_settings(None, overrides=roomy), journal=journal, clients={"github": github})
    arrived = False
    while sender.run_once(limit=1):  # one write at a time, so that work can arrive between any two
        if not arrived and len([w for w in github.log if w[0] == "deploy"]) == 3:  # mid-drain: two arrive
            arrived = True
            journal.enqueue_feedback(pr="reply:d1", provider="github",
                                     payload={"kind": "reply", "repo": "acme/payments", "number": 3, "body": "ok"})
            late = _opened(26)
            journal.enqueue_feedback(pr=late.pr.key, provider="github", payload=feedback_to_dict(late))
    kinds = [kind for kind, _ in github.log]
    assert kinds[:25] == ["comment"] * 25
    assert kinds[25:28] == ["deploy"] * 3
    assert github.log[28:30] == [("reply", 3), ("comment", 26)]  # before the remaining deployments
    assert sorted(n for kind, n in github.log if kind == "deploy") == list(range(1, 27))  # one per head sha
    assert journal.outbox_counts()["pending"] == 0


class Slow(Recorder):
    """A provider whose every write takes ``pause`` seconds (GitHub's one write a second, shortened)."""

    def __init__(self, pause: float) -> None:
        super().__init__()
        self.pause = pause

    def upsert_comment(self, *, repo: str, number: int, **kw: object) -> int:
        time.sleep(self.pause)
        return super().upsert_comment(repo=repo, number=number, **kw)


def test_lanes_run_in_parallel_so_one_providers_pacing_never_delays_another(tmp_path: Path) -> None:
    """Each lane has its own thread: while GitHub's lane is paced through 6 writes (0.3 s each), GitLab's
    notes go out at once instead of waiting between GitHub's writes."""
    journal = _queued(tmp_path, github=6, gitlab=3)
    github, gitlab = Slow(0.3), Recorder()
    sender = FeedbackSender(settings=load_settings(None, overrides={"feedback": {"deployments": False}}),
                            journal=journal, clients={"github": github, "gitlab": gitlab})
    stop = threading.Event()
    thread = threading.Thread(target=sender.run_forever, args=(stop,), kwargs={"interval": 0.05})
    started = time.monotonic()
    thread.start()
    try:
        deadline = started + 10
        while len(gitlab.notes) < 3 and time.monotonic() < deadline:
            time.sleep(0.01)
        gitlab_done = time.monotonic() - started
        while len(github.notes) < 6 and time.monotonic() < deadline:
            time.sleep(0.01)
        github_done = time.monotonic() - started
    finally:
        stop.set()
        thread.join(10)
    assert len(gitlab.notes) == 3 and len(github.notes) == 6
    assert gitlab_done < 0.6 < github_done, (gitlab_done, github_done)  # not behind GitHub's 1.8 s of writes


def test_a_lane_slows_down_before_the_write_cap_and_the_budget_is_visible(tmp_path: Path) -> None:
    """Issue 14.4: with ``feedback.max_writes_per_minute: 3`` the lane stops after its third write in a
    minute (before the provider's cap, not after a 403), the other lane goes on, and /metrics shows
    the writes per window and the queue per lane."""
    from prometheus_client import generate_latest

    from devstack.metrics import FeedbackCollector, Metrics

    journal = _queued(tmp_path, github=5, gitlab=1)
    github, gitlab = Recorder(), Recorder()
    settings = load_settings(None, overrides={"feedback": {"deployments": False, "max_writes_per_minute": 3}})
    sender = FeedbackSender(settings=settings, journal=journal, clients={"github": github, "gitlab": gitlab})
    metrics = Metrics()
    metrics.watch(FeedbackCollector(queues=sender.queues, writes=sender.writes))
    while sender.run_once():
        pass
    assert len(github.notes) == 3 and len(gitlab.notes) == 1
    assert sender.writes() == {"github": (3, 3), "gitlab": (1, 1)}
    text = generate_latest(metrics.registry).decode()
    assert 'devstack_feedback_writes{lane="github",window="1m"} 3.0' in text
    assert 'devstack_feedback_queue_depth{lane="github",phase="comment"} 2.0' in text
    assert 'devstack_feedback_queue_age_seconds{lane="github",phase="comment"}' in text


def test_a_provider_without_a_token_has_its_feedback_recorded_in_bulk_and_a_newer_state_stays(
    tmp_path: Path, where: Path | str,
) -> None:
    """No GitLab token: its feedback is only recorded (``GET /api/feedback``), so what is due is recorded
    in one pass and one transaction, not one PR per pass; the body is the same sticky comment a send would
    write; a state that arrives while the pass renders stays pending for the next pass; GitHub, which has a
    client, still sends one by one."""
    from devstack.feedback import render_comment

    journal = _queued(tmp_path, github=3, gitlab=25, where=where)
    github = Recorder()
    sender = FeedbackSender(settings=load_settings(None, overrides={"feedback": {"deployments": False}}),
                            journal=journal, clients={"github": github})
    transactions = [0]
    original_tx = journal._tx

    def counted() -> object:
        transactions[0] += 1
        return original_tx()

    journal._tx = counted  # type: ignore[method-assign]
    newer = _feedback(Provider.GITLAB, "platform/ledger", 7)
    render = sender._rendered

    def render_then_push(item: object) -> tuple[Feedback | None, str]:  # MR 7's new state comes while rendering
        rendered = render(item)  # type: ignore[arg-type]
        if getattr(item, "pr", "") == newer.pr.key:
            journal.enqueue_feedback(pr=newer.pr.key, provider="gitlab",
                                     payload={**feedback_to_dict(newer), "sha": "b" * 40})
        return rendered

    sender._rendered = render_then_push  # type: ignore[method-assign]
    assert sender.run_once(lanes={"gitlab"}, limit=100) == 25
    assert transactions[0] == 2  # the newer state's enqueue, and the one that recorded all 25
    items = {item.pr: item for item in journal.feedback() if item.provider == "gitlab"}
    assert sorted(item.status for key, item in items.items() if key != newer.pr.key) == ["recorded"] * 24
    assert items[newer.pr.key].status == "pending" and items[newer.pr.key].payload["sha"] == "b" * 40
    first = items["gitlab:platform/ledger#1"]
    assert first.sent_body == render_comment(_feedback(Provider.GITLAB, "platform/ledger", 1), live=None)
    assert sender.run_once(lanes={"gitlab"}, limit=100) == 1  # the newer state, on the next pass
    assert github.notes == []
    assert sender.run_once(lanes={"github"}, limit=1) == 1 and github.notes == [("acme/payments", 1)]

"""Gates: a PR's head is deployed only once CI built it (docs/gates.md).

Real parts: the providers' recorded check payloads (tests/fixtures, sources in SOURCES.md), the real
server on loopback with signed deliveries, a real bare GitOps remote, the journal, Debian's
docker-registry for image gates (tests/registry_helpers.py). The GitHub API is the `responses` fake.
"""

from __future__ import annotations

import copy
import json
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from devstack import entries
from devstack.catalog import Settings
from devstack.errors import BadPayload
from devstack.events import CheckEvent, Provider, PullRequestEvent, PullRequestState, event_from_json
from devstack.gatekeeper import GateKeeper
from devstack.gates import CheckResult, GateSettings, decide
from devstack.gitops import GitStore
from devstack.journal import Journal
from devstack.planner import plan
from devstack.providers import checks
from devstack.registry import Registry
from devstack.runtime import open_store
from devstack.worker import Worker
from tests.conftest import API_URL, RunningServer, pr_payload, remote_files
from tests.fake_github import FakeGitHub, fake_github
from tests.registry_helpers import oci_registry

FIXTURES = Path(__file__).parent / "fixtures"
T0 = datetime(2026, 12, 1, 10, 0, tzinfo=UTC)
SHA1, SHA2 = "1" * 40, "2" * 40
PR = "github:acme/payments#42"
REPO = "github:acme/payments"


def fixture(path: str) -> dict[str, Any]:
    return json.loads((FIXTURES / path).read_text())


def check_run(*, sha: str, name: str = "build", conclusion: str | None = "success", repo: str = "acme/payments",
              run_id: int = 1) -> dict[str, Any]:
    """GitHub's recorded ``check_run`` payload, pointed at our repository, commit and check."""
    payload = copy.deepcopy(fixture("github/check_run.completed.json"))
    run = payload["check_run"]
    run.update(name=name, head_sha=sha, status="completed" if conclusion else "in_progress", conclusion=conclusion,
               html_url=f"https://github.com/{repo}/runs/{run_id}")
    payload["repository"]["full_name"] = repo
    return payload


def gated(make_settings: Callable[..., Settings], **gate: Any) -> Settings:
    services = {
        "payments-api": {"repo": "acme/payments", "image": "ghcr.io/acme/payments-api", "port": 8080,
                         "depends_on": ["ledger"], "gate": {"checks": ["build"], **gate}},
        "ledger": {"repo": "acme/ledger", "image": "ghcr.io/acme/ledger", "port": 9000},
    }
    return make_settings(services=services)


def event(*, sha: str = SHA1, action: str = "opened", delivery: str | None = None, at: datetime = T0,
          state: PullRequestState = PullRequestState.OPEN) -> PullRequestEvent:
    return PullRequestEvent(
        delivery_id=delivery or f"d-{uuid.uuid4().hex[:8]}", provider=Provider.GITHUB, action=action,
        repo="acme/payments", number=42, url="https://github.com/acme/payments/pull/42", title="Fix login",
        author="octocat", head_sha=sha, head_branch="login-fix", base_branch="main", state=state, received_at=at,
    )


# --- translation of the providers' recorded payloads ------------------------------------------------------------


@pytest.mark.parametrize(
    ("event_name", "path", "expected"),
    [
        ("check_run", "github/check_run.completed.json",
         ("Codertocat/Hello-World", "ec26c3e57ca3a959ca5aad62de7213c562f8c821",
          (("Octocoders-linter", "success", "https://github.com/Codertocat/Hello-World/runs/128620228"),))),
        ("check_run", "github/check_run.completed.failure.json",
         ("Codertocat/Hello-World", "ec26c3e57ca3a959ca5aad62de7213c562f8c821",
          (("Octocoders-linter", "failure", "https://github.com/Codertocat/Hello-World/runs/128620228"),))),
        ("check_run", "github/check_run.created.json",
         ("Codertocat/Hello-World", "ec26c3e57ca3a959ca5aad62de7213c562f8c821",
          (("Octocoders-linter", "pending", "https://github.com/Codertocat/Hello-World/runs/128620228"),))),
        ("check_suite", "github/check_suite.completed.json",
         ("Codertocat/Hello-World", "ec26c3e57ca3a959ca5aad62de7213c562f8c821",
          (("github-actions", "success", ""),))),
        ("status", "github/status.success.json",
         ("Codertocat/Hello-World", "6113728f27ae82c7b1a177c8d03f9e96e0adf246", (("default", "success", ""),))),
    ],
)
def test_github_check_payloads_translate(event_name: str, path: str, expected: tuple[Any, ...]) -> None:
    result = checks.github_check(event=event_name, delivery_id="d", payload=fixture(path), received_at=T0)
    assert isinstance(result, CheckEvent)
    assert (result.repo, result.sha, result.results) == expected
    assert event_from_json(result.to_json()) == result  # what the journal stores reads back the same


def test_gitlab_pipeline_payload_translates_the_pipeline_and_each_job() -> None:
    result = checks.gitlab_pipeline(delivery_id="d", payload=fixture("gitlab/pipeline.success.json"), received_at=T0)
    assert isinstance(result, CheckEvent)
    assert (result.provider, result.repo, result.sha) == (
        Provider.GITLAB, "gitlab-org/gitlab-test", "bcbb5ec396a2c0f828686f14fac9b80b780504f2")
    states = {name: state for name, state, _ in result.results}
    assert states == {"pipeline": "success", "build-image": "success", "test-image": "success",
                      "test-build": "success", "production": "success",  # skipped: does not block
                      "staging": "pending"}  # created: not run yet
    urls = {name: url for name, _, url in result.results}
    assert urls["build-image"] == "http://192.168.64.1:3005/gitlab-org/gitlab-test/-/jobs/376"
    assert urls["pipeline"] == "http://192.168.64.1:3005/gitlab-org/gitlab-test/-/pipelines/31"


@pytest.mark.parametrize(
    ("mutate", "field"),
    [
        (lambda p: p["check_run"].update(head_sha="../../etc/passwd"), "check_run.head_sha"),
        (lambda p: p["check_run"].update(name="build\n/devstack deploy"), "check_run.name"),
        (lambda p: p["check_run"].pop("name"), "check_run.name"),
        (lambda p: p["repository"].update(full_name="acme/../x y"), "repository.full_name"),
        (lambda p: p.update(check_run=[]), "check_run"),
    ],
)
def test_hostile_check_payloads_are_refused_naming_the_field(mutate: Callable[[dict[str, Any]], Any],
                                                             field: str) -> None:
    payload = fixture("github/check_run.completed.json")
    mutate(payload)
    with pytest.raises(BadPayload) as raised:
        checks.github_check(event="check_run", delivery_id="d", payload=payload, received_at=T0)
    assert field in str(raised.value)


# --- the decision ------------------------------------------------------------------------------------------------


def results(**states: str) -> dict[str, CheckResult]:
    return {name: CheckResult(name=name, state=state, url=f"https://ci/{name}") for name, state in states.items()}  # type: ignore[arg-type]


def test_decide() -> None:
    gate = GateSettings(checks=["build", "test"], image=True)
    assert decide(gate=gate, sha=SHA1, checks={}, image_present=False).waiting == ("build", "test", "image")
    waiting = decide(gate=gate, sha=SHA1, checks=results(build="success", test="pending"), image_present=True)
    assert (waiting.state, waiting.waiting, waiting.url) == ("waiting", ("test",), "https://ci/test")
    failed = decide(gate=gate, sha=SHA1, checks=results(build="success", test="failure"), image_present=False,
                    overdue=True)
    assert (failed.state, failed.failed, failed.waiting, failed.overdue) == ("failed", ("test",), ("image",), False)
    passed = decide(gate=gate, sha=SHA1, checks=results(build="success", test="success"), image_present=True)
    assert passed.state == "open"
    bypassed = decide(gate=gate, sha=SHA1, checks=results(build="failure"), image_present=False, bypass=True)
    assert (bypassed.state, bypassed.bypassed) == ("open", True)
    # a check of another name (a prefix, another case) is not the one named
    assert decide(gate=GateSettings(checks=["build"]), sha=SHA1, checks=results(Build="success", build2="success"),
                  image_present=False).state == "waiting"


def test_a_late_pending_never_closes_a_reported_check(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "j.sqlite3")
    journal.record_checks(repo=REPO, sha=SHA1, results=[("build", "success", "u1")])
    journal.record_checks(repo=REPO, sha=SHA1, results=[("build", "pending", "u2")])  # "queued" delivered late
    assert journal.checks_of([(REPO, SHA1)])[(REPO, SHA1)]["build"].state == "success"
    journal.record_checks(repo=REPO, sha=SHA1, results=[("build", "failure", "u3")])  # a re-run that failed
    assert journal.checks_of([(REPO, SHA1)])[(REPO, SHA1)]["build"].state == "failure"
    # the same sha in another repository (a fork with the same commit) is another commit
    assert journal.checks_of([("github:evil/payments", SHA1)])[("github:evil/payments", SHA1)] == {}


# --- the planner -------------------------------------------------------------------------------------------------


def test_planner_first_push_waits_then_deploys_and_the_previous_sha_keeps_serving(
    make_settings: Callable[..., Settings],
) -> None:
    settings = gated(make_settings)
    waiting = decide(gate=settings.gate_of("payments-api"), sha=SHA1, checks={}, image_present=False)
    first = plan(events=[event()], entries={}, catalog=settings, now=T0,
                 gates={(PR, SHA1): {"payments-api": waiting}})
    assert first.changed == {} and first.entries == {}  # nothing written, not even the dependency
    [fb] = first.feedback
    assert (fb.status, fb.feature, fb.sha, fb.gates[0].waiting) == ("waiting", "login-fix", SHA1, ("build",))
    assert first.decisions[0].reason == "gate closed"

    opened = decide(gate=settings.gate_of("payments-api"), sha=SHA1, checks=results(build="success"),
                    image_present=False)
    second = plan(events=[event(action="gate")], entries={}, catalog=settings, now=T0,
                  gates={(PR, SHA1): {"payments-api": opened}})
    deployed = {e["service"]: e for e in second.changed["login-fix"] or []}
    assert deployed["payments-api"]["values"]["image"]["tag"] == SHA1
    entries.validate("login-fix", second.changed["login-fix"] or [])

    pushed = decide(gate=settings.gate_of("payments-api"), sha=SHA2, checks={}, image_present=False)
    third = plan(events=[event(sha=SHA2, action="synchronize")], entries=second.entries, catalog=settings, now=T0,
                 gates={(PR, SHA2): {"payments-api": pushed}})
    assert third.changed == {}  # the entry still says SHA1: the previous sha keeps serving
    [fb] = third.feedback
    assert (fb.status, fb.sha, fb.gates[0].sha, fb.gates[0].serving) == ("active", SHA1, SHA2, SHA1)

    failed = decide(gate=settings.gate_of("payments-api"), sha=SHA2, checks=results(build="failure"),
                    image_present=False)
    fourth = plan(events=[event(sha=SHA2, action="gate")], entries=second.entries, catalog=settings, now=T0,
                  gates={(PR, SHA2): {"payments-api": failed}})
    assert fourth.changed == {}
    assert fourth.feedback[0].gates[0].state == "failed"

    # the PR closes while its head waits: the preview goes as always
    closed = plan(events=[event(sha=SHA2, action="closed", state=PullRequestState.CLOSED)], entries=second.entries,
                  catalog=settings, now=T0, gates={})
    assert closed.changed == {"login-fix": None}


def test_a_gate_of_another_sha_never_holds_the_head(make_settings: Callable[..., Settings]) -> None:
    """Gates are per (PR, sha): a closed gate of an older sha does not hold back a newer head."""
    settings = gated(make_settings)
    stale = decide(gate=settings.gate_of("payments-api"), sha=SHA1, checks={}, image_present=False)
    result = plan(events=[event(sha=SHA2)], entries={}, catalog=settings, now=T0,
                  gates={(PR, SHA1): {"payments-api": stale}})
    assert (result.changed["login-fix"] or [])[0]["source"]["sha"] == SHA2


# --- worker and gatekeeper on a real remote: the seams -----------------------------------------------------------


@pytest.fixture
def parts(
    make_settings: Callable[..., Settings], tmp_path: Path, where: Path | str,
) -> Iterator[tuple[Settings, Journal, Worker, GateKeeper]]:
    """On both journals: SQLite and PostgreSQL."""
    settings = gated(make_settings)
    journal = Journal(where)
    store: GitStore = open_store(settings, workdir=tmp_path / "clone")
    worker = Worker(settings=settings, journal=journal, store=store)
    worker.start()
    yield settings, journal, worker, GateKeeper(settings=settings, journal=journal, registry=Registry())
    journal.close()


def journal_event(journal: Journal, pr_event: PullRequestEvent) -> None:
    journal.record(delivery_id=pr_event.delivery_id, provider="github", event="pull_request", pr=pr_event.key,
                   payload=pr_event.to_json())


def journal_check(journal: Journal, *, sha: str, state: str, name: str = "build", repo: str = "acme/payments") -> None:
    check = CheckEvent(delivery_id=f"c-{uuid.uuid4().hex[:8]}", provider=Provider.GITHUB, repo=repo, sha=sha,
                       results=((name, state, "https://ci/1"),), received_at=T0)
    journal.record(delivery_id=check.delivery_id, provider="github", event="check_run", pr=check.key,
                   payload=check.to_json(), queue="checks")


def settle(worker: Worker, keeper: GateKeeper) -> None:
    for _ in range(10):
        if not (worker.drain() + keeper.run_once()):
            return


def test_a_check_arriving_while_its_pr_is_planned_is_never_lost(
    parts: tuple[Settings, Journal, Worker, GateKeeper], bare_remote: str,
) -> None:
    """The check succeeds after the worker read the (pending) checks of the head and before it pushed: the
    gatekeeper sees the head the worker wrote first, and plans the PR again."""
    _, journal, worker, keeper = parts
    journal_event(journal, event())
    read = journal.checks_of

    def checks_then_ci_finishes(commits: Any) -> Any:
        seen = read(commits)  # the worker has read: nothing yet
        journal_check(journal, sha=SHA1, state="success")
        assert keeper.take_checks() == 1  # ... and the gatekeeper handles the result before the worker pushes
        return seen

    journal.checks_of = checks_then_ci_finishes  # type: ignore[method-assign]
    assert worker.run_once() is not None
    journal.checks_of = read  # type: ignore[method-assign]
    assert "login-fix" not in remote_files(bare_remote)  # that plan still saw no result
    settle(worker, keeper)
    assert remote_files(bare_remote)["login-fix"][0]["source"]["sha"] == SHA1


def test_a_check_that_arrived_first_opens_the_gate_at_once(
    parts: tuple[Settings, Journal, Worker, GateKeeper], bare_remote: str,
) -> None:
    _, journal, worker, keeper = parts
    journal_check(journal, sha=SHA1, state="success")
    keeper.take_checks()  # no PR has this head yet: stored, nobody planned
    journal_event(journal, event())
    worker.drain()
    assert remote_files(bare_remote)["login-fix"][0]["source"]["sha"] == SHA1


def test_checks_of_another_repository_or_name_never_open_the_gate(
    parts: tuple[Settings, Journal, Worker, GateKeeper], bare_remote: str,
) -> None:
    _, journal, worker, keeper = parts
    journal_event(journal, event())
    worker.drain()
    journal_check(journal, sha=SHA1, state="success", repo="evil/payments")  # the same commit in a fork
    journal_check(journal, sha=SHA1, state="success", name="build ")  # a name built to look the same
    journal_check(journal, sha=SHA1, state="success", name="Build")
    settle(worker, keeper)
    assert "login-fix" not in remote_files(bare_remote)
    assert journal.gate_heads()[0].state == "waiting"


def test_push_while_waiting_keeps_the_previous_sha_until_its_own_build(
    parts: tuple[Settings, Journal, Worker, GateKeeper], bare_remote: str,
) -> None:
    _, journal, worker, keeper = parts
    journal_check(journal, sha=SHA1, state="success")
    journal_event(journal, event())
    settle(worker, keeper)
    journal_event(journal, event(sha=SHA2, action="synchronize"))
    journal_check(journal, sha=SHA1, state="failure")  # a late result of the old head changes nothing
    settle(worker, keeper)
    assert remote_files(bare_remote)["login-fix"][0]["source"]["sha"] == SHA1
    journal_check(journal, sha=SHA2, state="failure")
    settle(worker, keeper)
    assert remote_files(bare_remote)["login-fix"][0]["source"]["sha"] == SHA1
    assert journal.gate_heads()[0].state == "failed"
    journal_check(journal, sha=SHA2, state="success")  # a re-run succeeds
    settle(worker, keeper)
    assert remote_files(bare_remote)["login-fix"][0]["source"]["sha"] == SHA2
    assert journal.gate_heads()[0].state == "open"


def test_deadline_is_reported_once_per_head(make_settings: Callable[..., Settings], tmp_path: Path,
                                            bare_remote: str) -> None:
    settings = make_settings(services={"payments-api": {"repo": "acme/payments", "image": "ghcr.io/acme/payments-api",
                                                        "gate": {"checks": ["build"]}}}, gate={"deadline": "10m"})
    now = [1_000_000.0]
    journal = Journal(settings.journal_path, clock=lambda: now[0])
    worker = Worker(settings=settings, journal=journal, store=open_store(settings, workdir=tmp_path / "clone"))
    worker.start()
    keeper = GateKeeper(settings=settings, journal=journal, registry=Registry())
    journal_event(journal, event())
    settle(worker, keeper)
    assert keeper.report_deadlines() == 0
    now[0] += 601
    assert keeper.report_deadlines() == 1 and keeper.report_deadlines() == 0
    worker.drain()
    latest = json.loads(journal._query("SELECT payload FROM outbox WHERE pr = ?", (PR,))[0]["payload"])
    assert latest["status"] == "waiting" and latest["gates"][0]["overdue"] is True
    journal.close()


# --- end to end: the real server, signed deliveries, the GitHub fake, the real remote ----------------------------


@pytest.fixture
def github() -> Iterator[FakeGitHub]:
    with fake_github(API_URL) as fake:
        fake.permissions.update({"maintainer": "write", "visitor": "read"})
        yield fake


def comment(body: str, *, user: str = "maintainer") -> dict[str, Any]:
    return {"action": "created",
            "issue": {"number": 42, "html_url": "https://github.com/acme/payments/pull/42",
                      "pull_request": {"url": "https://api.github.com/repos/acme/payments/pulls/42"}},
            "comment": {"id": 7000 + len(body), "body": body, "user": {"login": user, "type": "User"}},
            "repository": {"full_name": "acme/payments"}, "sender": {"login": user}}


def settled(server: RunningServer, timeout: float = 20) -> None:
    """Every queue (git, comments, checks) and the outbox done."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        journal = server.runtime.journal
        if journal.counts()["pending"] == 0 and journal.outbox_counts()["pending"] == 0:
            time.sleep(0.05)  # what the last step journaled is counted again
            if journal.counts()["pending"] == 0 and journal.outbox_counts()["pending"] == 0:
                return
        time.sleep(0.02)
    raise AssertionError(f"not settled: {server.runtime.journal.counts()}")


def sticky(github: FakeGitHub) -> str:
    [body] = [c["body"] for c in github.comments_on("acme/payments", 42) if "devstack:preview" in c["body"]]
    return body


def test_e2e_waits_for_the_check_run_then_deploys_and_deployment_statuses_follow(
    make_settings: Callable[..., Settings], serve: Callable[..., RunningServer], github: FakeGitHub, bare_remote: str,
    where: Path | str,
) -> None:
    settings = gated(make_settings)
    if isinstance(where, str):  # the journal on PostgreSQL (journal.url)
        settings = settings.model_copy(update={"journal": settings.journal.model_copy(update={"url": where})})
    server = serve(settings)
    assert server.runtime.journal.backend == ("postgresql" if isinstance(where, str) else "sqlite")
    opened = pr_payload(sha=SHA1)
    github.add_pull(opened["pull_request"])
    assert server.send_github(opened, delivery="open").status_code == 202
    settled(server)
    assert "login-fix" not in remote_files(bare_remote)  # a first push: no entry until the gate opens
    assert "waits for CI" in sticky(github) and "waiting for `build` on `1111111`" in sticky(github)
    [queued] = github.deployments.values()
    assert queued["ref"] == SHA1 and [s["state"] for s in github.statuses[queued["id"]]] == ["queued"]
    [waiting] = server.get("/api/gates").json()
    assert (waiting["pr"], waiting["sha"], waiting["state"], waiting["waitingFor"], waiting["overdue"]) == (
        PR, SHA1, "waiting", ["build"], False)
    page = server.get("/").text
    assert 'id="gates"' in page and f'data-pr="{PR}"' in page

    pending = server.send_github(check_run(sha=SHA1, conclusion=None), event="check_run", delivery="c1")
    assert pending.status_code == 202 and pending.json()["status"] == "queued"
    settled(server)
    assert "login-fix" not in remote_files(bare_remote)

    done = server.send_github(check_run(sha=SHA1), event="check_run", delivery="c2")
    assert done.status_code == 202
    settled(server)
    assert remote_files(bare_remote)["login-fix"][0]["source"]["sha"] == SHA1
    body = sticky(github)
    assert "https://login-fix--payments-api.preview.example.com" in body and "waits for CI" not in body
    assert len(github.deployments) == 1  # the queued deployment moved on: no second one
    assert server.get("/api/gates").json() == [] and 'id="gates"' not in server.get("/").text
    assert [s["state"] for s in github.statuses[queued["id"]]] == ["queued", "success"]

    # a push: the previous sha keeps serving while the new head waits
    pushed = pr_payload(action="synchronize", sha=SHA2)
    github.add_pull(pushed["pull_request"])
    assert server.send_github(pushed, delivery="push").status_code == 202
    settled(server)
    assert remote_files(bare_remote)["login-fix"][0]["source"]["sha"] == SHA1
    body = sticky(github)
    assert "`2222222`" in body and "`1111111` keeps serving meanwhile" in body
    second = max(github.deployments)
    assert github.deployments[second]["ref"] == SHA2 and github.statuses[second][-1]["state"] == "queued"

    failing = server.send_github(check_run(sha=SHA2, conclusion="failure", run_id=2), event="check_run",
                                 delivery="c3")
    assert failing.status_code == 202
    settled(server)
    assert remote_files(bare_remote)["login-fix"][0]["source"]["sha"] == SHA1
    assert "`build` failed on `2222222`" in sticky(github) and "stays at `1111111`" in sticky(github)
    assert github.statuses[second][-1]["state"] == "failure"

    # /devstack deploy: the current head, without its gate, once
    said = server.send_github(comment("/devstack deploy"), event="issue_comment", delivery="deploy")
    assert said.status_code == 202
    settled(server)
    assert remote_files(bare_remote)["login-fix"][0]["source"]["sha"] == SHA2
    assert github.statuses[second][-1]["state"] == "success"
    outcome = [d.outcome for d in server.runtime.journal.recent(limit=50) if d.delivery_id == "deploy"]
    assert outcome == [f"deploy {SHA2[:12]} without its gate"]


def test_e2e_deploy_needs_write_access(
    make_settings: Callable[..., Settings], serve: Callable[..., RunningServer], github: FakeGitHub, bare_remote: str,
) -> None:
    server = serve(gated(make_settings))
    opened = pr_payload(sha=SHA1)
    github.add_pull(opened["pull_request"])
    server.send_github(opened, delivery="open")
    assert server.send_github(comment("/devstack deploy", user="visitor"), event="issue_comment",
                              delivery="x").status_code == 202
    settled(server)
    assert "login-fix" not in remote_files(bare_remote)
    assert server.runtime.journal.bypasses() == {}


def test_e2e_check_events_without_a_gate_are_ignored_and_malformed_ones_are_400(
    make_settings: Callable[..., Settings], serve: Callable[..., RunningServer], github: FakeGitHub,
) -> None:
    server = serve(make_settings())  # no gate anywhere
    response = server.send_github(check_run(sha=SHA1), event="check_run", delivery="c1")
    assert response.status_code == 200 and response.json()["reason"] == "no service of this repository has a gate"
    gated_server = serve(gated(make_settings, image=False), run_workers=False)
    broken = check_run(sha=SHA1)
    broken["check_run"]["head_sha"] = "not-a-sha"
    bad = gated_server.send_github(broken, event="check_run", delivery="c2")
    assert bad.status_code == 400 and "check_run.head_sha" in bad.text
    assert gated_server.runtime.journal.counts()["pending"] == 0


def test_e2e_resync_reads_the_checks_a_lost_webhook_never_brought(
    make_settings: Callable[..., Settings], serve: Callable[..., RunningServer], github: FakeGitHub, bare_remote: str,
) -> None:
    server = serve(gated(make_settings))
    opened = pr_payload(sha=SHA1)
    github.add_pull(opened["pull_request"])
    server.send_github(opened, delivery="open")
    settled(server)
    assert "login-fix" not in remote_files(bare_remote)
    # CI finished, but its check_run webhook was lost: only the API knows
    github.commit_checks[("acme/payments", SHA1)] = {
        "check_runs": [{"name": "build", "status": "completed", "conclusion": "success",
                        "html_url": "https://github.com/acme/payments/runs/9"}],
        "check_suites": [], "statuses": [],
    }
    summary = server.runtime.resyncer.run_once()
    assert summary.checks == [PR] and "checks github:acme/payments#42" in summary.format()
    settled(server)
    assert remote_files(bare_remote)["login-fix"][0]["source"]["sha"] == SHA1


def test_e2e_image_gate_against_a_real_registry(
    make_settings: Callable[..., Settings], serve: Callable[..., RunningServer], github: FakeGitHub, bare_remote: str,
    tmp_path: Path,
) -> None:
    with oci_registry(tmp_path / "registry") as registry:
        settings = make_settings(
            services={"payments-api": {"repo": "acme/payments", "image": f"{registry.host}/acme/payments-api",
                                       "gate": {"image": True}}},
            gate={"insecure_registries": [registry.host], "poll_initial": "1s", "poll_max": "1s"},
        )
        server = serve(settings)
        opened = pr_payload(sha=SHA1)
        github.add_pull(opened["pull_request"])
        server.send_github(opened, delivery="open")
        settled(server)
        time.sleep(1.5)  # the gatekeeper has asked the registry at least once: the tag is not there
        assert "login-fix" not in remote_files(bare_remote)
        assert "the image in its registry" in sticky(github)
        registry.push("acme/payments-api", SHA1)
        deadline = time.monotonic() + 20
        while "login-fix" not in remote_files(bare_remote) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert remote_files(bare_remote)["login-fix"][0]["values"]["image"] == {
            "repository": f"{registry.host}/acme/payments-api", "tag": SHA1}
        assert server.runtime.journal.images_found([f"{registry.host}/acme/payments-api:{SHA1}"])


def test_registry_answers_with_and_without_credentials(tmp_path: Path) -> None:
    import base64

    with oci_registry(tmp_path / "private", user=("ci", "s3cret")) as registry:
        registry.push("acme/api", "v1")
        secret = tmp_path / "config.json"
        secret.write_text(json.dumps({"auths": {registry.host: {"auth": base64.b64encode(b"ci:s3cret").decode()}}}))
        with_secret = Registry(pull_secret=secret, insecure=[registry.host])
        assert with_secret.exists(f"{registry.host}/acme/api:v1") is True
        assert with_secret.exists(f"{registry.host}/acme/api:v2") is False
        from devstack.registry import RegistryError

        with pytest.raises(RegistryError, match="refused the credentials"):
            Registry(insecure=[registry.host]).exists(f"{registry.host}/acme/api:v1")
    with pytest.raises(RegistryError, match="unreachable"):
        Registry(insecure=[registry.host], timeout=1).exists(f"{registry.host}/acme/api:v1")  # stopped
    with pytest.raises(ValueError, match="registry/name:tag"):
        Registry().exists("acme/api:v1")  # no registry host: image gates need one


@pytest.mark.parametrize(
    ("overrides", "says"),
    [
        ({"services": {"api": {"repo": "acme/api", "image": "acme/api", "gate": {"image": True}}}},
         "services.api.image: 'acme/api' does not name its registry"),
        ({"services": {"api": {"repo": "acme/api", "image": "acme/api"}}, "gate": {"image": True}},
         "does not name its registry"),
        ({"services": {"api": {"repo": "acme/api", "image": "ghcr.io/acme/api", "gate": {"checks": ["a\nb"]}}}},
         "is not a check name"),
        ({"services": {"api": {"repo": "acme/api", "image": "ghcr.io/acme/api", "gate": {"check": ["build"]}}}},
         "check"),
        ({"gate": {"deadline": "soon"}}, "deadline"),
    ],
)
def test_gate_config_errors_name_the_key(make_settings: Callable[..., Settings], overrides: dict[str, Any],
                                         says: str) -> None:
    from devstack.errors import ConfigError

    with pytest.raises(ConfigError) as raised:
        make_settings(**overrides)
    assert says in str(raised.value)


def test_the_global_gate_is_every_services_default_and_a_service_may_turn_it_off(
    make_settings: Callable[..., Settings],
) -> None:
    settings = make_settings(
        services={"api": {"repo": "acme/api", "image": "ghcr.io/acme/api"},
                  "web": {"repo": "acme/api", "image": "ghcr.io/acme/web", "gate": {"checks": []}}},
        gate={"checks": ["build"]})
    assert settings.gate_of("api").checks == ["build"]
    assert settings.gate_of("web").active is False
    assert settings.gated(provider="github", repo="acme/api") == ["api"]
    assert make_settings().gated(provider="github", repo="acme/payments") == []  # no gate: today's behaviour


def test_prune_forgets_old_ci_results_but_not_those_a_waiting_head_needs(tmp_path: Path) -> None:
    now = [1_000_000.0]
    journal = Journal(tmp_path / "j.sqlite3", clock=lambda: now[0])
    journal.heads_seen([(PR, REPO, SHA1, [])])
    journal.record_checks(repo=REPO, sha=SHA1, results=[("build", "pending", "")])
    journal.record_checks(repo=REPO, sha=SHA2, results=[("build", "success", "")])  # an old head
    journal.image_found("ghcr.io/acme/api:old")
    now[0] += 30 * 86400
    assert journal.prune(older_than=now[0] - 14 * 86400)["checks"] == 1
    assert journal.checks_of([(REPO, SHA1)])[(REPO, SHA1)]["build"].state == "pending"
    assert journal.checks_of([(REPO, SHA2)])[(REPO, SHA2)] == {}
    assert journal.images_found(["ghcr.io/acme/api:old"]) == set()


def test_metrics_count_the_closed_gates(
    make_settings: Callable[..., Settings], serve: Callable[..., RunningServer], github: FakeGitHub,
) -> None:
    server = serve(gated(make_settings))
    opened = pr_payload(sha=SHA1)
    github.add_pull(opened["pull_request"])
    server.send_github(opened, delivery="open")
    settled(server)
    text = server.get("/metrics").text
    assert 'devstack_gates_closed{state="waiting"} 1.0' in text
    assert 'devstack_gates_closed{state="overdue"} 0.0' in text


def test_a_pr_that_wants_no_preview_waits_for_nothing(
    parts: tuple[Settings, Journal, Worker, GateKeeper], bare_remote: str,
) -> None:
    """A draft (or a PR without the preview label, an unapproved fork) is not listed as waiting for CI, and
    a PR that becomes a draft while it waits leaves the list."""
    _, journal, worker, keeper = parts
    draft = event()
    journal_event(journal, PullRequestEvent(**{**draft.__dict__, "draft": True}))
    settle(worker, keeper)
    assert journal.gate_heads() == []
    journal_event(journal, event(action="ready_for_review"))
    settle(worker, keeper)
    assert [h.state for h in journal.gate_heads()] == ["waiting"]
    journal_event(journal, PullRequestEvent(**{**event(action="converted_to_draft").__dict__, "draft": True}))
    settle(worker, keeper)
    assert journal.gate_heads() == []
    assert "login-fix" not in remote_files(bare_remote)

"""Usage (issue 17.3): preview-hours and CPU/memory-hours from the GitOps repo's history.

A real git history is built with commits at chosen times (``GIT_COMMITTER_DATE``), each holding the
entry files the real planner produced for a PR opening, a sleep, a wake, a CLI stack and a close; the
report is then read back by ``devstack usage`` (direct mode, through a bare remote), by ``/api/usage``
on the real server, and checked against hours worked out by hand."""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from devstack import entries, usage
from devstack.catalog import Settings
from devstack.cli import main
from devstack.commands import cli_command
from devstack.events import Command, PullRequestState
from devstack.planner import plan
from tests.conftest import SECRET, RunningServer, catalog, pr_payload
from tests.test_planner import SHA1, event

D0 = datetime(2026, 11, 2, 9, 0, 0, tzinfo=UTC)  # a Monday
UNTIL = D0 + timedelta(hours=12)


def _catalog() -> dict[str, Any]:
    services = catalog()
    services["payments-api"] = {**services["payments-api"], "team": "payments",
                                "resources": {"cpu": "250m", "memory": "128Mi"}}
    services["ledger"] = {**services["ledger"], "hooks": {"redis": True}}
    return services


@pytest.fixture
def settings(make_settings: Callable[..., Settings]) -> Settings:
    return make_settings(services=_catalog(), teams={"acme/*": "platform", "acme/ledger": "ledger-team"},
                         providers={"github": {"webhook_secrets": [SECRET]}})


def _git(repo: Path, *args: str, when: datetime | None = None) -> str:
    env = {**os.environ, "GIT_AUTHOR_NAME": "devstack", "GIT_AUTHOR_EMAIL": "devstack@localhost",
           "GIT_COMMITTER_NAME": "devstack", "GIT_COMMITTER_EMAIL": "devstack@localhost"}
    if when is not None:
        env["GIT_COMMITTER_DATE"] = env["GIT_AUTHOR_DATE"] = when.strftime("%Y-%m-%dT%H:%M:%S+0000")
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True, text=True, env=env).stdout


def _history(settings: Settings, repo: Path) -> None:
    """The day of login-fix (PR 42: payments-api + its ledger) and of a CLI stack, committed at their times."""
    repo.mkdir(parents=True)
    _git(repo, "init", "-q", "-b", "main")
    state: dict[str, list[dict[str, Any]]] = {}

    def step(hours: float, *events: Any) -> None:
        nonlocal state
        when = D0 + timedelta(hours=hours)
        result = plan(events=list(events), entries=state, catalog=settings, now=when)
        assert all(d.outcome in ("applied", "ignored") for d in result.decisions), result.decisions
        assert result.changed, result.decisions  # every step changes the entries
        for feature, elements in result.changed.items():
            path = repo / "previews" / entries.entry_filename(feature)
            if elements is None:
                path.unlink()
            else:
                entries.validate(feature, elements)
                path.parent.mkdir(exist_ok=True)
                path.write_bytes(entries.encode(elements))
        (repo / "README.md").write_text(f"not an entry {hours}\n")  # a change outside previews/
        (repo / "previews" / "notes").mkdir(exist_ok=True)
        (repo / "previews" / "notes" / "x.json").write_text("[]")  # not an entry file: a subfolder
        _git(repo, "add", "-A")
        _git(repo, "commit", "-q", "-m", f"step {hours}", when=when)
        state = result.entries

    def command(op: str, hours: float, feature: str = "login-fix") -> Command:
        return Command(delivery_id=f"{op}-{hours}", op=op, feature=feature, actor="test",
                       received_at=D0 + timedelta(hours=hours))

    step(0, event(received_at=D0, labels=("devstack/with:ledger",)))
    step(2, command("sleep", 2))
    step(5, command("wake", 5))
    up = cli_command(op="up", feature="demo", catalog=settings, services=["ledger"])
    step(6, Command(delivery_id="up", op="up", feature="demo", services=up.services, args=up.args, actor="cli",
                    received_at=D0 + timedelta(hours=6)))
    step(8, event(action="closed", state=PullRequestState.CLOSED, delivery_id="d2", labels=("devstack/with:ledger",),
                  received_at=D0 + timedelta(hours=8)))
    step(10, Command(delivery_id="down", op="down", feature="demo", actor="cli",
                     received_at=D0 + timedelta(hours=10)))
    # a hand-made file devstack cannot read, later in the history: counted as nothing, never a crash
    (repo / "previews" / "broken.json").write_text("{not json")
    _git(repo, "add", "-A")
    _git(repo, "commit", "-q", "-m", "hand edit", when=D0 + timedelta(hours=11))


def _report(settings: Settings, repo: Path, *, by: str, since: datetime = D0 - timedelta(days=1)) -> dict[str, Any]:
    start, changes = usage.read_history(repo=repo, ref="HEAD", path="previews", since=since)
    result = usage.tally(start=start, changes=changes, settings=settings, since=since, until=UNTIL,
                         by=usage._by(by))
    return {row["key"]: row for row in result.view()["rows"]}


# payments-api: 250m/128Mi; ledger: 50m/64Mi plus its Redis 20m/32Mi (hooks.redis)
PAYMENTS_CPU, PAYMENTS_MEM = 0.25, 0.125
LEDGER_CPU, LEDGER_MEM = 0.05 + 0.02, (64 + 32) / 1024


def test_hours_by_author_follow_the_history_awake_asleep_and_gone(settings: Settings, tmp_path: Path) -> None:
    _history(settings, tmp_path / "repo")
    rows = _report(settings, tmp_path / "repo", by="author")
    assert set(rows) == {"octocat", "cli"}
    # login-fix: awake 0-2 h and 5-8 h, asleep 2-5 h, gone at 8 h; two services (ledger counts for the PR)
    assert rows["octocat"]["previews"] == 1
    assert rows["octocat"]["awake_hours"] == 10.0 and rows["octocat"]["asleep_hours"] == 6.0
    assert rows["octocat"]["cpu_hours"] == round(5 * (PAYMENTS_CPU + LEDGER_CPU), 2)
    assert rows["octocat"]["memory_gib_hours"] == round(5 * (PAYMENTS_MEM + LEDGER_MEM), 2)
    # demo from the CLI: ledger awake 6-10 h
    assert rows["cli"]["awake_hours"] == 4.0 and rows["cli"]["asleep_hours"] == 0.0
    assert rows["cli"]["cpu_hours"] == round(4 * LEDGER_CPU, 2)


def test_the_window_cuts_hours_at_since_and_starts_from_the_state_then(settings: Settings, tmp_path: Path) -> None:
    _history(settings, tmp_path / "repo")
    rows = _report(settings, tmp_path / "repo", by="author", since=D0 + timedelta(hours=1))
    assert rows["octocat"]["awake_hours"] == 8.0  # 1-2 h and 5-8 h, two services
    assert rows["octocat"]["asleep_hours"] == 6.0
    later = _report(settings, tmp_path / "repo", by="author", since=D0 + timedelta(hours=3, minutes=30))
    assert later["octocat"]["asleep_hours"] == 3.0  # 3.5-5 h asleep: the state at since was "asleep"
    assert later["octocat"]["awake_hours"] == 6.0


def test_by_repo_and_by_team(settings: Settings, tmp_path: Path) -> None:
    _history(settings, tmp_path / "repo")
    by_repo = _report(settings, tmp_path / "repo", by="repo")
    assert set(by_repo) == {"acme/payments", "-"}  # ledger counts for the PR that needed it
    assert by_repo["acme/payments"]["awake_hours"] == 10.0
    by_team = _report(settings, tmp_path / "repo", by="team")
    # login-fix counts for payments (services.payments-api.team); the CLI ledger for its repo's team,
    # where the last matching `teams` pattern wins (acme/ledger after acme/*)
    assert set(by_team) == {"payments", "ledger-team"}
    assert by_team["ledger-team"]["awake_hours"] == 4.0


def test_the_cli_prints_table_json_and_csv_from_the_gitops_remote(
    settings: Settings, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
) -> None:
    repo = tmp_path / "repo"
    _history(settings, repo)
    _git(repo, "push", "-q", settings.gitops.url, "main")
    config = tmp_path / "devstack.yaml"
    config.write_text(yaml.safe_dump({
        "state_dir": str(tmp_path / "cli-state"), "gitops": {"url": settings.gitops.url, "path": "previews"},
        "services": _catalog(), "teams": {"acme/*": "platform", "acme/ledger": "ledger-team"},
    }))
    # the history is from November: a window that reaches it from today
    since = f"{(datetime.now(UTC) - D0).days + 2}d"
    assert main(["usage", "--config", str(config), "--since", since, "--by", "author", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    rows = {row["key"]: row for row in data["rows"]}
    assert rows["cli"]["awake_hours"] == 4.0 and data["by"] == "author"
    # octocat's preview is gone, so the window's end (now) does not matter: 10 h awake, 6 asleep
    assert (rows["octocat"]["awake_hours"], rows["octocat"]["asleep_hours"]) == (10.0, 6.0)
    assert main(["usage", "--config", str(config), "--since", since, "--by", "team", "--csv"]) == 0
    table = list(csv.reader(io.StringIO(capsys.readouterr().out)))
    assert table[0] == ["team", "previews", "awake_hours", "asleep_hours", "cpu_hours", "memory_gib_hours"]
    assert {row[0] for row in table[1:]} == {"payments", "ledger-team"}
    assert main(["usage", "--config", str(config), "--since", since, "--by", "repo"]) == 0
    printed = capsys.readouterr().out
    assert printed.splitlines()[0].split() == ["REPO", "PREVIEWS", "AWAKE_H", "ASLEEP_H", "CPU_H", "MEM_GIB_H"]
    assert "acme/payments" in printed
    # user errors: exit 2, one line, no traceback
    assert main(["usage", "--config", str(config), "--since", "yesterday"]) == 2
    assert "--since" in capsys.readouterr().err


def test_the_api_and_the_dashboard_show_usage_and_the_metrics_count_sleeping_previews(
    settings: Settings, serve: Callable[..., RunningServer],
) -> None:
    server = serve(settings)
    response = server.send_github(pr_payload(sha=SHA1, labels=("devstack/with:ledger",)), delivery=str(uuid.uuid4()))
    assert response.status_code == 202
    server.wait_idle()
    report = server.get("/api/usage?since=1d&by=team").json()
    [row] = report["rows"]
    assert row["key"] == "payments" and row["previews"] == 1 and row["asleep_hours"] == 0.0
    token = server.app.state.api_tokens[0].get_secret_value()
    slept = httpx.post(server.url + "/api/commands", json={"op": "sleep", "feature": "login-fix"},
                       headers={"Authorization": f"Bearer {token}"}, timeout=30)
    assert slept.status_code == 202
    server.wait_idle()
    metrics = server.get("/metrics").text
    assert 'devstack_previews{state="asleep"} 1.0' in metrics
    assert 'devstack_preview_services{state="asleep"} 2.0' in metrics
    assert 'devstack_preview_services{state="awake"} 0.0' in metrics
    assert 'devstack_preview_service_hours_total{state="asleep"}' in metrics
    page = server.get("/?refresh=0").text
    assert 'id="usage"' in page and 'data-key="payments"' in page and "b-asleep" in page
    for query, says in (("since=999d", "a duration up to 400d"), ("since=forever", "should match pattern"),
                        ("by=colour", "'author', 'repo' or 'team'"), ("since=" + "9" * 30, "at most 20")):
        bad = server.get(f"/api/usage?{query}")
        assert bad.status_code in (400, 422), bad.text
        assert says in bad.text


def test_a_changing_history_is_read_as_of_one_commit(settings: Settings, tmp_path: Path) -> None:
    """A report follows one commit: a push while it is read (the worker writing) is not half-counted."""
    repo = tmp_path / "repo"
    _history(settings, repo)
    head = _git(repo, "rev-parse", "HEAD").strip()
    before = usage.read_history(repo=repo, ref=head, path="previews", since=D0 - timedelta(days=1))
    (repo / "previews" / "late.json").write_text("[]")
    _git(repo, "add", "-A")
    _git(repo, "commit", "-q", "-m", "late", when=D0 + timedelta(hours=11, minutes=30))
    assert usage.read_history(repo=repo, ref=head, path="previews", since=D0 - timedelta(days=1)) == before


def test_a_gitops_repo_without_any_commit_is_an_empty_report(settings: Settings, tmp_path: Path) -> None:
    repo = tmp_path / "empty"
    repo.mkdir()
    _git(repo, "init", "-q", "-b", "main")
    result = usage.UsageCache().report(repo=repo, settings=settings, window=timedelta(days=30), by="team",
                                       now=UNTIL)
    assert result.rows == [] and "no previews between" in result.table()


@pytest.mark.parametrize("text", ["250m", "128Mi", "1", "1.5", "2Gi", "100k", "1e3", "0", "-1", "12xx", "", "Mi",
                                  "1.5.5", "9" * 30 + "Ei"])
def test_quantities_parse_exactly_as_the_kubernetes_client_parses_them(text: str) -> None:
    """devstack loads the client's quantity module on its own (not the 36 MB client); same answers, same
    errors."""
    from kubernetes.utils import parse_quantity as theirs

    from devstack.quantity import parse_quantity as ours

    try:
        expected: object = theirs(text)
    except ValueError as exc:
        expected = ("ValueError", str(exc))
    try:
        got: object = ours(text)
    except ValueError as exc:
        got = ("ValueError", str(exc))
    assert got == expected


def test_the_webhook_processes_never_load_the_kubernetes_client_nor_pygithub(tmp_path: Path) -> None:
    """``devstack intake`` and a local ``devstack serve`` never talk to a cluster, and the intake never to the
    GitHub API: the Kubernetes client (36 MB) and PyGithub (19 MB) stay out of a process that imports every
    module the webhook route uses and translates a delivery, even with resource quantities in the catalog
    and the usage report built."""
    import sys

    code = (
        "import sys, json\n"
        "from datetime import UTC, datetime\n"
        "import devstack.app, devstack.cli, devstack.intake, devstack.runtime, devstack.usage, devstack.dashboard\n"
        "from devstack.catalog import ServiceSettings\n"
        "from devstack.decode import decode\n"
        "ServiceSettings.model_validate({'repo': 'acme/api', 'image': 'ghcr.io/acme/api',"
        " 'resources': {'cpu': '250m', 'memory': '128Mi'}})\n"
        "body = sys.stdin.buffer.read()\n"
        "event = decode(provider='github', event='pull_request', delivery_id='d1', body=body,"
        " content_type='application/json', received_at=datetime.now(UTC))\n"
        "print(type(event).__name__, 'kubernetes' in sys.modules, 'github' in sys.modules)\n"
    )
    body = json.dumps(pr_payload(number=7, sha="a" * 40, branch="login")).encode()
    result = subprocess.run([sys.executable, "-c", code], input=body, capture_output=True, timeout=60, check=False,
                            cwd=tmp_path)
    assert result.returncode == 0, result.stderr.decode()[-2000:]
    assert result.stdout.decode().split() == ["PullRequestEvent", "False", "False"]

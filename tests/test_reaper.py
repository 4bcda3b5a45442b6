"""TTL reaper and resync, through the real server and real git, with an injected clock."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml

from devstack.catalog import Settings
from devstack.reaper import Reaper, due
from tests.conftest import API_URL, RunningServer, pr_payload, remote_files
from tests.fake_github import FakeGitHub, fake_github
from tests.test_commands import wait_all
from tests.test_planner import event, run


@pytest.fixture
def github() -> Any:
    with fake_github(API_URL) as fake:
        yield fake


def test_due_is_pure_and_exact(make_settings: Callable[..., Settings]) -> None:
    settings = make_settings()
    state = run(settings, event(), event(number=7, head_branch="old", delivery_id="o",
                                         url="https://github.com/acme/payments/pull/7",
                                         received_at=datetime(2026, 11, 10, tzinfo=UTC))).entries
    now = datetime(2026, 11, 23, 5, 0, tzinfo=UTC)  # login-fix expires 2026-11-23T10:00Z
    expired, warn = due(state, now=now, warn_before=timedelta(hours=6))
    assert expired == [("old", "2026-11-13T00:00:00Z")]
    assert warn == [("login-fix", "2026-11-23T10:00:00Z")]
    assert due(state, now=now, warn_before=timedelta(hours=1)) == ([("old", "2026-11-13T00:00:00Z")], [])


def expiry(remote: str, feature: str = "login-fix") -> datetime:
    text = remote_files(remote)[feature][0]["expiresAt"]
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)


def test_warn_once_then_expire_through_the_journal(
    make_settings: Callable[..., Settings], serve: Callable[..., RunningServer], github: FakeGitHub,
    bare_remote: str,
) -> None:
    server = serve(make_settings())
    server.send_github(pr_payload(), delivery="open")
    server.wait_idle()
    expires = expiry(bare_remote)
    clock = {"now": expires - timedelta(hours=2)}
    reaper = Reaper(settings=server.settings, journal=server.runtime.journal,
                    entries=server.runtime.worker.snapshot, clock=lambda: clock["now"])

    dry = reaper.run_once(dry_run=True)
    assert dry.warned == [("login-fix", expires.strftime("%Y-%m-%dT%H:%M:%SZ"))]
    assert "to warn (dry run)" in dry.format()
    assert server.runtime.journal.outbox_counts()["pending"] == 0  # a dry run changes nothing

    assert reaper.run_once().warned
    wait_all(server)
    [comment] = github.comments_on("acme/payments", 42)
    assert "This preview expires at" in comment["body"]
    edits = github.count("PATCH", r"/issues/comments/")
    assert reaper.run_once().warned == []  # warned once per expiry
    wait_all(server)
    assert github.count("PATCH", r"/issues/comments/") == edits

    clock["now"] = expires + timedelta(minutes=1)
    summary = reaper.run_once()
    assert [feature for feature, _ in summary.expired] == ["login-fix"]
    wait_all(server)
    assert remote_files(bare_remote) == {}
    [comment] = github.comments_on("acme/payments", 42)
    assert "was removed because it expired" in comment["body"]


def test_a_stack_extended_meanwhile_survives_its_old_expiry(
    make_settings: Callable[..., Settings], serve: Callable[..., RunningServer], github: FakeGitHub,
    bare_remote: str,
) -> None:
    server = serve(make_settings(), run_workers=False)
    server.send_github(pr_payload(), delivery="open")
    server.runtime.worker.start()
    server.runtime.worker.drain()
    old = expiry(bare_remote)
    reaper = Reaper(settings=server.settings, journal=server.runtime.journal,
                    entries=server.runtime.worker.snapshot, clock=lambda: old + timedelta(minutes=1))
    assert [f for f, _ in reaper.run_once().expired] == ["login-fix"]  # journals "expire at <old>" ...
    server.send_github(pr_payload(action="synchronize", sha="b" * 40, labels=("devstack/ttl:5d",)),
                       delivery="push")  # ... and a push with a longer TTL arrives before the worker runs
    assert [r.event for r in server.runtime.journal.take_batch(limit=10)] == ["command:expire", "pull_request"]
    server.runtime.worker.drain()
    [element] = remote_files(bare_remote)["login-fix"]
    assert element["source"]["sha"] == "b" * 40 and expiry(bare_remote) > old


def test_expire_loses_to_an_extension_in_the_same_batch(make_settings: Callable[..., Settings]) -> None:
    from devstack.events import Command

    settings = make_settings()
    first = run(settings, event())
    old = first.entries["login-fix"][0]["expiresAt"]
    push = event(action="synchronize", delivery_id="p", received_at=event().received_at + timedelta(days=1))
    expire = Command(delivery_id="x", op="expire", feature="login-fix", args=(("expiresAt", old),))
    result = run(settings, push, expire, state=first.entries)
    assert "login-fix" in result.entries and result.decisions[1].reason == "extended meanwhile"


def test_resync_heals_a_missed_open_a_missed_close_and_a_stale_sha(
    make_settings: Callable[..., Settings], serve: Callable[..., RunningServer], github: FakeGitHub,
    bare_remote: str,
) -> None:
    server = serve(make_settings())
    # PR 7 got its webhook, then was closed while devstack was not listening
    server.send_github(pr_payload(number=7, branch="gone"), delivery="seven")
    # PR 8 got its webhook, then two pushes were missed
    server.send_github(pr_payload(number=8, branch="stale", sha="1" * 40), delivery="eight")
    server.wait_idle()
    github.add_pull(pr_payload(number=7, branch="gone", state="closed")["pull_request"])
    github.add_pull(pr_payload(number=8, branch="stale", sha="2" * 40)["pull_request"])
    # PR 42's opened webhook was missed entirely; PR 43 is a draft (no preview wanted)
    github.add_pull(pr_payload(number=42, branch="login-fix")["pull_request"])
    github.add_pull(pr_payload(number=43, branch="wip", draft=True)["pull_request"])
    summary = server.runtime.resyncer.run_once()
    assert summary.healed == ["github:acme/payments#42", "github:acme/payments#8"]
    assert summary.pruned == ["github:acme/payments#7"]
    assert any("acme/ledger" in f for f in summary.failed) is False
    wait_all(server)
    files = remote_files(bare_remote)
    assert sorted(files) == ["login-fix", "stale"]
    assert files["stale"][0]["source"]["sha"] == "2" * 40
    again = server.runtime.resyncer.run_once()
    assert (again.healed, again.pruned) == ([], [])  # converged: nothing journaled on the next pass


def test_resync_never_prunes_a_repo_it_could_not_list(
    make_settings: Callable[..., Settings], serve: Callable[..., RunningServer], github: FakeGitHub,
    bare_remote: str,
) -> None:
    server = serve(make_settings())
    server.send_github(pr_payload(number=7, branch="keep"), delivery="seven")
    server.wait_idle()
    github.fail_next = [(502, {})] * 20
    summary = server.runtime.resyncer.run_once()
    github.fail_next = []
    assert summary.pruned == [] and any("acme/payments" in f for f in summary.failed)
    assert list(remote_files(bare_remote)) == ["keep"]


def devstack(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "devstack.cli", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=120)


def test_cli_up_set_restart_reap_down_on_the_gitops_repo(tmp_path: Path, bare_remote: str) -> None:
    config = tmp_path / "devstack.yaml"
    from devstack.catalog import SAMPLE_CATALOG

    config.write_text(yaml.safe_dump({"state_dir": str(tmp_path / "state"), "gitops": {"url": bare_remote},
                                      "domain": "preview.example.com", "ttl": {"max": "forever"},
                                      "services": SAMPLE_CATALOG}))
    c = ["--config", str(config)]
    up = devstack("up", "demo", "--with", "payments-api@v1.2.3", "--ttl", "forever", *c, cwd=tmp_path)
    assert up.returncode == 0, up.stderr
    assert up.stdout.startswith("demo: applied (commit ")
    tags = {e["service"]: e["values"]["image"]["tag"] for e in remote_files(bare_remote)["demo"]}
    assert tags == {"payments-api": "v1.2.3", "ledger": "main"}
    assert devstack("set", "demo", "ledger", "LOG_LEVEL=debug", "MODE=x=y", *c, cwd=tmp_path).returncode == 0
    assert devstack("restart", "demo", "ledger", *c, cwd=tmp_path).returncode == 0
    ledger = next(e for e in remote_files(bare_remote)["demo"] if e["service"] == "ledger")
    assert ledger["values"]["env"] == {"LOG_LEVEL": "debug", "MODE": "x=y"}
    assert ledger["values"]["restartedAt"].endswith("Z")
    reap = devstack("reap", "--dry-run", *c, cwd=tmp_path)
    assert "reap: 1 preview(s) checked, 0 expired, 0 to warn (dry run)" in reap.stdout
    bad = devstack("set", "demo", "ledger", "NOEQUALS", *c, cwd=tmp_path)
    assert bad.returncode == 2 and "KEY=VALUE" in bad.stderr
    assert devstack("down", "demo", *c, cwd=tmp_path).returncode == 0
    assert remote_files(bare_remote) == {}
    gone = devstack("down", "demo", *c, cwd=tmp_path)
    assert gone.returncode == 1 and "no such preview" in gone.stdout


def test_cli_against_a_running_server(
    make_settings: Callable[..., Settings], serve: Callable[..., RunningServer], bare_remote: str, tmp_path: Path,
) -> None:
    settings = make_settings()
    server = serve(settings)
    token = (settings.state_dir / "api-token").read_text().strip()
    config = tmp_path / "devstack.yaml"
    config.write_text(yaml.safe_dump({"state_dir": str(tmp_path / "elsewhere")}))
    base = ["--config", str(config), "--url", server.url]
    refused = devstack("up", "demo", "--with", "ledger", *base, "--token", "wrong", cwd=tmp_path)
    assert refused.returncode == 1 and "401" in refused.stderr
    up = devstack("up", "demo", "--with", "ledger", *base, "--token", token, cwd=tmp_path)
    assert up.returncode == 0, up.stderr
    assert up.stdout.strip() == "demo: applied"
    assert [e["service"] for e in remote_files(bare_remote)["demo"]] == ["ledger"]
    reap = devstack("reap", "--dry-run", *base, "--token", token, cwd=tmp_path)
    assert "1 preview(s) checked" in reap.stdout

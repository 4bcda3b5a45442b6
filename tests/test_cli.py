"""The CLI as a user runs it: real `devstack serve` processes, `replay`, `previews`, bad config."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.conftest import REPO_ROOT, git, make_bare_remote, pr_payload, remote_commits, remote_files, sign

pytestmark = pytest.mark.e2e
DEVSTACK = [sys.executable, "-m", "devstack.cli"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Serve:
    def __init__(self, *, cwd: Path, args: list[str], env: dict[str, str] | None = None,
                 log_args: list[str] | None = None) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = cwd / f"serve-{self.port}.log"
        self.process = subprocess.Popen(
            [*DEVSTACK, *(log_args or []), "serve", "--port", str(self.port), *args], cwd=cwd,
            stdout=self.log.open("wb"),
            stderr=subprocess.STDOUT, env={**os.environ, **(env or {})},
        )
        deadline = time.monotonic() + 30
        while True:
            if self.process.poll() is not None:
                raise AssertionError(f"devstack serve exited: {self.log.read_text()}")
            try:
                if httpx.get(self.url + "/readyz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError(f"devstack serve not ready: {self.log.read_text()}")
            time.sleep(0.05)

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(30)

    def output(self) -> str:
        return self.log.read_text()

    def wait_idle(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            deliveries = httpx.get(self.url + "/api/deliveries?limit=500", timeout=10).json()
            if all(d["status"] != "pending" for d in deliveries):
                return
            time.sleep(0.05)
        raise AssertionError("still pending")


@pytest.fixture
def processes() -> Iterator[list[Serve]]:
    running: list[Serve] = []
    yield running
    for serve in running:
        if serve.process.poll() is None:
            serve.stop()


def run(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*DEVSTACK, *args], cwd=cwd, capture_output=True, text=True, timeout=60)


def test_the_readme_flow_on_embedded_defaults(tmp_path: Path, processes: list[Serve]) -> None:
    """Start with no configuration, replay a recorded PR, see the entry and the preview."""
    fixture = REPO_ROOT / "tests" / "fixtures" / "github" / "pull_request.opened.json"
    server = Serve(cwd=tmp_path, args=[])
    processes.append(server)
    secret = (tmp_path / ".devstack" / "webhook-secret").read_text().strip()
    assert secret in server.output()  # printed once, on first start
    assert oct((tmp_path / ".devstack" / "webhook-secret").stat().st_mode & 0o777) == "0o600"

    replay = run("replay", str(fixture), "--event", "pull_request", "--url", server.url, cwd=tmp_path)
    assert replay.returncode == 0, replay.stderr
    assert replay.stdout.startswith("202 ")
    server.wait_idle()

    payload = json.loads(fixture.read_text())
    sha = payload["pull_request"]["head"]["sha"]
    files = remote_files(str(tmp_path / ".devstack" / "gitops.git"))
    tags = {e["service"]: e["values"]["image"]["tag"] for e in files["login-fix"]}
    assert tags == {"payments-api": sha, "ledger": "main"}  # ledger from the PR's devstack/with:ledger label
    previews = run("previews", "--url", server.url, cwd=tmp_path)
    assert "https://login-fix--payments-api.preview.localhost" in previews.stdout
    assert "https://github.com/acme/payments/pull/42" in previews.stdout
    [feedback] = httpx.get(server.url + "/api/feedback").json()
    assert feedback["status"] == "recorded" and "login-fix--payments-api" in feedback["body"]

    server.stop()
    again = Serve(cwd=tmp_path, args=[])
    processes.append(again)
    assert secret not in again.output()  # not printed a second time
    deadline = time.monotonic() + 30  # /readyz is 200 "degraded" until the worker has opened its clone
    while httpx.get(again.url + "/readyz").json()["status"] != "ready":
        assert time.monotonic() < deadline, again.output()
        time.sleep(0.05)
    assert [p["feature"] for p in httpx.get(again.url + "/api/previews").json()] == ["login-fix"]


def test_replay_with_a_wrong_secret_fails(tmp_path: Path, processes: list[Serve]) -> None:
    server = Serve(cwd=tmp_path, args=[])
    processes.append(server)
    fixture = REPO_ROOT / "tests" / "fixtures" / "github" / "pull_request.opened.json"
    result = run("replay", str(fixture), "--event", "pull_request", "--url", server.url, "--secret", "nope",
                 cwd=tmp_path)
    assert result.returncode == 1 and result.stdout.startswith("401 ")


def test_bad_config_stops_startup_naming_the_key(tmp_path: Path) -> None:
    config = tmp_path / "devstack.yaml"
    config.write_text("ttl: {default: soon}\nservices: {api: {repo: a/b, image: x, port: 0}}\n")
    result = run("serve", "--config", str(config), cwd=tmp_path)
    assert result.returncode == 2
    assert "ttl.default" in result.stderr and "not a duration" in result.stderr
    assert "services.api.port" in result.stderr
    assert not (tmp_path / ".devstack").exists()


def test_previews_straight_from_the_gitops_repo(tmp_path: Path) -> None:
    remote = make_bare_remote(tmp_path / "remote.git")
    seed = tmp_path / "seed"
    subprocess.run(["git", "clone", "-q", remote, str(seed)], check=True)
    (seed / "previews").mkdir()
    from devstack.catalog import load_settings
    from devstack.entries import encode
    from devstack.planner import plan
    from tests.test_planner import event

    settings = load_settings(None, overrides={"domain": "preview.example.com"})
    state = plan(events=[event()], entries={}, catalog=settings, now=event().received_at).entries
    (seed / "previews" / "login-fix.json").write_bytes(encode(state["login-fix"]))
    subprocess.run(["git", "-C", str(seed), "add", "."], check=True)
    subprocess.run(["git", "-C", str(seed), "commit", "-qm", "seed"], check=True)
    subprocess.run(["git", "-C", str(seed), "push", "-q", "origin", "HEAD:main"], check=True)
    config = tmp_path / "devstack.yaml"
    config.write_text(yaml.safe_dump({"gitops": {"url": remote}, "state_dir": str(tmp_path / "state")}))
    result = run("previews", "--config", str(config), "--json", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    [preview] = json.loads(result.stdout)
    assert preview["services"][0]["url"] == "https://login-fix--payments-api.preview.example.com"


def config_file(tmp_path: Path, name: str, remote: str) -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump({
        "state_dir": str(tmp_path / name),
        "gitops": {"url": remote},
        "domain": "preview.example.com",
        "providers": {"github": {"webhook_secrets": ["s3cret"]}},
        "services": {
            "payments-api": {"repo": "acme/payments", "image": "ghcr.io/acme/payments-api"},
            "ledger": {"repo": "acme/ledger", "image": "ghcr.io/acme/ledger"},
        },
        "worker": {"poll_interval": 0.01, "backoff_max": 1, "batch_size": 5},
        "gitops_extra": None,
    } | {}).replace("gitops_extra: null\n", ""))
    return path


def post(url: str, payload: dict[str, Any], delivery: str) -> int:
    body = json.dumps(payload).encode()
    response = httpx.post(url + "/webhooks/github", content=body, timeout=30, headers={
        "Content-Type": "application/json", "X-GitHub-Event": "pull_request", "X-GitHub-Delivery": delivery,
        "X-Hub-Signature-256": sign(body, "s3cret")})
    return response.status_code


def test_two_processes_on_one_remote_lose_no_update(tmp_path: Path, processes: list[Serve]) -> None:
    """Two `devstack serve` processes write the same feature files of one remote at the same time."""
    remote = make_bare_remote(tmp_path / "gitops.git")
    git(remote, "config", "receive.denyNonFastForwards", "true")  # a force push would fail loudly
    a = Serve(cwd=tmp_path, args=["--config", str(config_file(tmp_path, "a", remote))])
    b = Serve(cwd=tmp_path, args=["--config", str(config_file(tmp_path, "b", remote))])
    processes.extend([a, b])
    branches = [f"feat-{i}" for i in range(30)]
    jobs = []
    for i, branch in enumerate(branches):
        for round_ in range(2):  # opened, then synchronize to the final sha
            sha = f"{round_ + 1}{i:039d}"
            action = "opened" if round_ == 0 else "synchronize"
            jobs.append((a.url, pr_payload(action=action, repo="acme/payments", number=i + 1, sha=sha,
                                           branch=branch), f"a-{i}-{round_}"))
            jobs.append((b.url, pr_payload(action=action, repo="acme/ledger", number=i + 1, sha=sha,
                                           branch=branch), f"b-{i}-{round_}"))
    # each server gets its deliveries in order; the two servers race each other
    def send_all(url: str) -> list[int]:
        return [post(u, p, d) for u, p, d in jobs if u == url]

    with ThreadPoolExecutor(2) as pool:
        statuses = [s for result in pool.map(send_all, [a.url, b.url]) for s in result]
    assert statuses == [202] * len(jobs)
    a.wait_idle()
    b.wait_idle()
    files = remote_files(remote)
    assert sorted(files) == sorted(branches)
    for i, branch in enumerate(branches):
        tags = {e["service"]: e["values"]["image"]["tag"] for e in files[branch]}
        assert tags == {"payments-api": f"2{i:039d}", "ledger": f"2{i:039d}"}, branch
    history = git(remote, "rev-list", "--parents", "main").splitlines()
    assert all(len(line.split()) <= 2 for line in history)  # linear: no merges, nothing rewritten
    assert len(remote_commits(remote)) >= 2


def test_direct_mode_cli_next_to_a_running_server_one_writer_and_the_server_catches_up(
    tmp_path: Path, processes: list[Serve]
) -> None:
    """Defects pinned: (1) CLI commands in direct mode (no ``--url``) and a running server drained the
    same journal and could both take the same batch; (2) the server never looked at the remote while
    idle, so after ``devstack down demo`` in direct mode ``/api/previews`` kept listing ``demo`` (over
    90 s, until another webhook), and a preview made by ``devstack up`` did not show. Now rows are
    claimed (each delivery is applied by one process: it appears in exactly one commit), and the idle
    server fetches the remote every ``worker.refresh_interval`` and re-reads its entries when the
    head moved."""
    remote = make_bare_remote(tmp_path / "gitops.git")
    config = config_file(tmp_path, "shared", remote)
    data = yaml.safe_load(config.read_text())
    # the server polls the journal slowly, so the CLI (which drains at once) applies its own commands
    # and the server has to notice them on the remote; it fetches every 0.5 s while idle
    data["worker"].update(refresh_interval=0.5, poll_interval=2)
    config.write_text(yaml.safe_dump(data))
    server = Serve(cwd=tmp_path, args=["--config", str(config)])
    processes.append(server)

    def listed() -> list[str]:
        return [p["feature"] for p in httpx.get(server.url + "/api/previews", timeout=10).json()]

    def wait_until(condition: Any, what: str, timeout: float = 5.0) -> float:
        started = time.monotonic()
        while not condition():
            assert time.monotonic() - started < timeout, f"{what} not within {timeout}s: {listed()}"
            time.sleep(0.1)
        return time.monotonic() - started

    up = run("up", "demo", "--with", "ledger", "--config", str(config), cwd=tmp_path)
    assert up.returncode == 0, up.stdout + up.stderr
    assert up.stdout.startswith("demo: applied") and "(commit " in up.stdout, up.stdout
    wait_until(lambda: listed() == ["demo"], "the server listing demo after `devstack up` in direct mode")
    previews = run("previews", "--url", server.url, cwd=tmp_path)
    assert "demo" in previews.stdout

    # webhooks to the server and direct-mode commands on the same journal, at the same time
    with ThreadPoolExecutor(max_workers=4) as pool:
        posted = pool.map(lambda n: post(server.url, pr_payload(number=n, branch=f"feat-{n}", sha=f"{n:040d}"),
                                         f"hook-{n}"), range(1, 13))
        commands = [pool.submit(run, "up", f"cli-{n}", "--with", "ledger", "--config", str(config), cwd=tmp_path)
                    for n in range(1, 4)]
        assert set(posted) == {202}
        for done in commands:
            result = done.result()
            assert result.returncode == 0, result.stdout + result.stderr
    server.wait_idle()
    trailers = git(remote, "log", "--format=%b", "main")
    applied = [line.split()[1] for line in trailers.splitlines() if line.startswith("Delivery: ")]
    hooks = [d for d in applied if d.startswith("hook-")]
    assert sorted(hooks) == sorted(set(hooks)) and len(hooks) == 12, "a delivery applied by two processes"
    assert sorted(remote_files(remote)) == sorted(["demo", *(f"feat-{n}" for n in range(1, 13)),
                                                   *(f"cli-{n}" for n in range(1, 4))])

    down = run("down", "demo", "--config", str(config), cwd=tmp_path)
    assert down.returncode == 0, down.stdout + down.stderr
    assert "demo" not in remote_files(remote)
    waited = wait_until(lambda: "demo" not in listed(), "the server dropping demo after `devstack down`")
    assert waited < 5.0
    assert "demo" not in run("previews", "--url", server.url, cwd=tmp_path).stdout
    assert "Traceback" not in server.output()

"""What every scenario shares: figures and targets, percentiles, bounded waits, plain git, payloads, and
the real server (``devstack serve``) run as a subprocess so that client and server never share a GIL.

Everything talks to loopback only, and every wait has a deadline (:class:`BenchTimeout`).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import math
import os
import platform
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import httpx
import yaml

SECRET = "bench-webhook-secret"
TOKEN = "bench-token-not-a-real-one"
BRANCH = "main"
ENTRY_DIR = "previews"
REPO = "acme/payments"
SERVICE = "payments-api"
DOMAIN = "preview.example.com"
CHART_REPO = "https://git.example.com/acme/gitops.git"


class BenchError(Exception):
    """A scenario could not be measured (the message says why)."""


class BenchTimeout(BenchError):
    """A bounded wait ran out of time."""


# --------------------------------------------------------------------------------------- figures


@dataclass(frozen=True, kw_only=True)
class Target:
    """A goal for a figure: ``<on> <op> <value>``, where ``on`` is the figure's value or its ratio."""

    op: Literal["<", "<=", ">", ">=", "=="]
    value: float
    on: Literal["value", "ratio"] = "value"

    def check(self, figure: Figure) -> bool | None:
        actual = figure.value if self.on == "value" else figure.ratio
        if actual is None:
            return None
        return {
            "<": actual < self.value,
            "<=": actual <= self.value,
            ">": actual > self.value,
            ">=": actual >= self.value,
            "==": actual == self.value,
        }[self.op]

    def text(self, unit: str) -> str:
        if self.on == "ratio":
            return f"ratio {self.op} {_number(self.value)}x"
        return f"{self.op} {_number(self.value)} {unit}".rstrip()


@dataclass(kw_only=True)
class Figure:
    """One measured number, optionally beside its plain-git baseline from the same run."""

    scenario: str
    name: str
    value: float | None
    unit: str = ""
    baseline: float | None = None
    ratio: float | None = None
    ratio_of: str = ""  # how the ratio is formed, e.g. "devstack / git" or "git / devstack"
    target: Target | None = None
    stand_in: str = ""  # set when the figure stands in for something not built yet
    note: str = ""
    samples: int | None = None

    @property
    def passed(self) -> bool | None:
        return None if self.target is None else self.target.check(self)

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["target"] = None if self.target is None else {**asdict(self.target), "text": self.target.text(self.unit)}
        data["passed"] = self.passed
        return data


def error_figure(scenario: str, exc: BaseException) -> Figure:
    return Figure(scenario=scenario, name="error", value=None, note=f"{type(exc).__name__}: {exc}"[:300])


def _number(value: float) -> str:
    if value == 0:
        return "0"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    if abs(value) >= 1:
        return f"{value:.2f}"
    return f"{value:.3g}"


def fmt(value: float | None, unit: str = "") -> str:
    if value is None:
        return "-"
    return f"{_number(value)} {unit}".rstrip()


def table(figures: Sequence[Figure]) -> str:
    rows = [("scenario", "figure", "value", "baseline (git)", "ratio", "target", "result")]
    for f in figures:
        result = {True: "PASS", False: "FAIL", None: "-"}[f.passed]
        if f.name == "error":
            result = "ERROR"
        name = f.name + (" *" if f.stand_in else "")
        ratio = "-" if f.ratio is None else f"{_number(f.ratio)}x" + (f" ({f.ratio_of})" if f.ratio_of else "")
        value = f.note[:70] if f.name == "error" else fmt(f.value, f.unit)
        rows.append(
            (f.scenario, name, value, fmt(f.baseline, f.unit), ratio, f.target.text(f.unit) if f.target else "-",
             result)
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    notes = [f for f in figures if f.note and f.name != "error"]
    if notes:
        lines.append("")
        lines.append("notes:")
        lines.extend(f"  {f.scenario} / {f.name}: {f.note}" for f in notes)
    if any(f.stand_in for f in figures):
        lines.append("")
        lines.append("* stands in for a figure whose feature is not built yet:")
        for f in figures:
            if f.stand_in:
                lines.append(f"  {f.scenario}/{f.name}: {f.stand_in}")
    return "\n".join(lines)


def percentile(samples: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0..100) with linear interpolation between closest ranks."""
    if not samples:
        raise BenchError("no samples")
    ordered = sorted(samples)
    if len(ordered) == 1:
        return ordered[0]
    rank = (len(ordered) - 1) * q / 100.0
    low, high = math.floor(rank), math.ceil(rank)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def wait_until(
    predicate: Callable[[], bool], *, timeout: float, what: str, interval: float = 0.01
) -> float:
    """Poll ``predicate`` until true; the monotonic time it became true. Raises :class:`BenchTimeout`."""
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return time.monotonic()
        if time.monotonic() > deadline:
            raise BenchTimeout(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


def say(message: str) -> None:
    print(f"  {message}", file=sys.stderr, flush=True)


def load_average() -> float:
    """The 1-minute load average (how busy the machine was: other processes skew every figure)."""
    return float(Path("/proc/loadavg").read_text(encoding="ascii").split()[0])


def machine() -> dict[str, Any]:
    git_version = subprocess.run(["git", "--version"], capture_output=True, text=True, check=True).stdout.strip()
    return {
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "git": git_version,
    }


# ------------------------------------------------------------------------------------------- git


@dataclass(kw_only=True)
class Env:
    """The process environment shared by plain git and the server: same git config for both."""

    root: Path
    vars: dict[str, str] = field(default_factory=dict)

    @classmethod
    def create(cls, root: Path) -> Env:
        home = root / "home"
        home.mkdir(parents=True, exist_ok=True)
        (home / ".gitconfig").write_text(
            "[user]\n\tname = bench\n\temail = bench@localhost\n[init]\n\tdefaultBranch = main\n", encoding="utf-8"
        )
        keep = {k: v for k, v in os.environ.items() if k in ("PATH", "LANG", "TMPDIR", "VIRTUAL_ENV")}
        env = {
            **keep,
            "HOME": str(home),
            "XDG_CONFIG_HOME": str(home / ".config"),
            "GIT_CONFIG_NOSYSTEM": "1",
            "GIT_TERMINAL_PROMPT": "0",
            "LC_ALL": "C",
        }
        return cls(root=root, vars=env)


def git(env: Env, *args: str, cwd: Path | None = None, stdin: bytes | None = None) -> str:
    result = subprocess.run(
        ["git", *args], cwd=cwd, env=env.vars, input=stdin, capture_output=True, check=False, timeout=300
    )
    if result.returncode != 0:
        raise BenchError(f"git {' '.join(args[:3])} failed: {result.stderr.decode(errors='replace')[:500]}")
    return result.stdout.decode()


def make_remote(env: Env, path: Path, *, files: dict[str, bytes] | None = None) -> Path:
    """A bare repository (the kind of remote both devstack and plain git push to), seeded with a README
    and ``files`` (``{relative path: bytes}``) in one commit made with plain git."""
    git(env, "init", "--quiet", "--bare", "-b", BRANCH, str(path))
    work = path.parent / f".{path.name}.seed"
    git(env, "clone", "--quiet", str(path), str(work))
    (work / "README.md").write_text("# GitOps repository (benchmark)\n", encoding="utf-8")
    for rel, data in (files or {}).items():
        target = work / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
    quiet = ("-c", "gc.auto=0", "-c", "maintenance.auto=false")  # no detached gc racing the rmtree below
    git(env, *quiet, "add", "--all", cwd=work)
    git(env, *quiet, "commit", "--quiet", "-m", "seed", cwd=work)
    git(env, *quiet, "push", "--quiet", "origin", f"HEAD:{BRANCH}", cwd=work)
    shutil.rmtree(work)
    return path


class PlainGit:
    """The baseline: a working clone where each change is ``git add && git commit && git push``."""

    def __init__(self, env: Env, *, remote: Path, workdir: Path) -> None:
        self._env = env
        self.workdir = workdir
        git(env, "clone", "--quiet", str(remote), str(workdir))

    def change(self, rel: str, data: bytes, *, message: str = "update") -> float:
        """Write one file and add, commit and push it, as one shell command; seconds it took."""
        started = time.perf_counter()
        target = self.workdir / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
        result = subprocess.run(
            ["sh", "-c", 'git add -- "$1" && git commit --quiet -m "$2" && git push --quiet origin HEAD:main',
             "sh", rel, message],
            cwd=self.workdir, env=self._env.vars, capture_output=True, check=False, timeout=120,
        )
        elapsed = time.perf_counter() - started
        if result.returncode != 0:
            raise BenchError(f"plain git change failed: {result.stderr.decode(errors='replace')[:500]}")
        return elapsed


class RefWatcher:
    """Reads the branch head of a bare remote from its ref files (no subprocess): cheap to poll."""

    def __init__(self, remote: Path, *, branch: str = BRANCH) -> None:
        self._loose = remote / "refs" / "heads" / branch
        self._packed = remote / "packed-refs"
        self._name = f"refs/heads/{branch}"

    def head(self) -> str | None:
        try:
            return self._loose.read_text(encoding="ascii").strip() or None
        except FileNotFoundError:
            pass
        try:
            for line in self._packed.read_text(encoding="ascii").splitlines():
                sha, _, name = line.partition(" ")
                if name == self._name:
                    return sha
        except FileNotFoundError:
            return None
        return None

    def wait_change(self, old: str | None, *, timeout: float, interval: float = 0.001) -> tuple[str, float]:
        """Wait until the head differs from ``old``; (new head, monotonic time it was seen)."""
        deadline = time.monotonic() + timeout
        while True:
            head = self.head()
            if head is not None and head != old:
                return head, time.monotonic()
            if time.monotonic() > deadline:
                raise BenchTimeout(f"the remote branch did not move within {timeout:.0f} s")
            time.sleep(interval)


def commit_count(env: Env, remote: Path) -> int:
    return int(git(env, f"--git-dir={remote}", "rev-list", "--count", BRANCH).strip())


def remote_entries(env: Env, remote: Path) -> dict[str, list[dict[str, Any]]]:
    """The entry files on the remote branch, parsed (one ``git cat-file --batch`` for all of them)."""
    listing = git(env, f"--git-dir={remote}", "ls-tree", f"{BRANCH}:{ENTRY_DIR}")
    names = [line.split("\t", 1)[1] for line in listing.splitlines() if line.endswith(".json")]
    if not names:
        return {}
    request = "".join(f"{BRANCH}:{ENTRY_DIR}/{name}\n" for name in names).encode()
    result = subprocess.run(
        ["git", f"--git-dir={remote}", "cat-file", "--batch"], input=request, env=env.vars, capture_output=True,
        check=True, timeout=120,
    )
    out, pos, files = result.stdout, 0, {}
    for name in names:
        header_end = out.index(b"\n", pos)
        size = int(out[pos:header_end].split()[2])
        files[name[: -len(".json")]] = json.loads(out[header_end + 1 : header_end + 1 + size])
        pos = header_end + 1 + size + 1
    return files


# -------------------------------------------------------------------------------------- payloads


_REPO_URL_KEYS = (
    "forks", "keys", "collaborators", "teams", "hooks", "issue_events", "events", "assignees", "branches", "tags",
    "blobs", "git_tags", "git_refs", "trees", "statuses", "languages", "stargazers", "contributors", "subscribers",
    "subscription", "commits", "git_commits", "comments", "issue_comment", "contents", "compare", "merges",
    "archive", "downloads", "issues", "pulls", "milestones", "notifications", "labels", "releases", "deployments",
)
_USER_URL_KEYS = (
    "followers", "following", "gists", "starred", "subscriptions", "organizations", "repos", "events",
    "received_events",
)
PAYLOAD_BYTES = 25_000  # recorded GitHub pull_request deliveries weigh 20-30 KB


def _user(login: str) -> dict[str, Any]:
    api = f"https://api.github.com/users/{login}"
    return {"login": login, "id": 583231, "node_id": "MDQ6VXNlcjU4MzIzMQ==", "type": "User", "site_admin": False,
            "avatar_url": "https://avatars.githubusercontent.com/u/583231?v=4", "gravatar_id": "",
            "url": api, "html_url": f"https://github.com/{login}",
            **{f"{key}_url": f"{api}/{key}" for key in _USER_URL_KEYS}}


def _repository(full_name: str) -> dict[str, Any]:
    api = f"https://api.github.com/repos/{full_name}"
    owner, name = full_name.split("/")
    return {"id": 1296269, "node_id": "MDEwOlJlcG9zaXRvcnkxMjk2MjY5", "name": name, "full_name": full_name,
            "private": False, "owner": _user(owner), "html_url": f"https://github.com/{full_name}",
            "description": "This your first repo!", "fork": False, "url": api,
            **{f"{key}_url": f"{api}/{key}{{/id}}" for key in _REPO_URL_KEYS},
            "created_at": "2011-01-26T19:01:12Z", "updated_at": "2011-01-26T19:14:43Z",
            "pushed_at": "2011-01-26T19:06:43Z", "size": 108, "stargazers_count": 80, "watchers_count": 80,
            "language": "Go", "has_issues": True, "forks_count": 9, "open_issues_count": 0,
            "default_branch": "main", "visibility": "public"}


def pr_payload(
    *, number: int, sha: str, branch: str, action: str = "synchronize", repo: str = REPO, state: str = "open",
    merged: bool = False, size: int = PAYLOAD_BYTES,
) -> dict[str, Any]:
    """A ``pull_request`` delivery shaped like GitHub's, padded (in the PR body) to about ``size`` bytes."""
    repository = _repository(repo)
    pr: dict[str, Any] = {
        "url": f"https://api.github.com/repos/{repo}/pulls/{number}", "id": 1000 + number, "number": number,
        "html_url": f"https://github.com/{repo}/pull/{number}", "state": state, "locked": False,
        "title": f"Change {number}", "user": _user("octocat"), "body": "", "draft": False, "merged": merged,
        "labels": [], "created_at": "2024-01-01T00:00:00Z", "updated_at": "2024-01-01T00:00:00Z",
        "head": {"label": f"acme:{branch}", "ref": branch, "sha": sha, "user": _user("acme"), "repo": repository},
        "base": {"label": "acme:main", "ref": "main", "sha": "b" * 40, "user": _user("acme"), "repo": repository},
        "author_association": "MEMBER", "commits": 3, "additions": 120, "deletions": 7, "changed_files": 4,
    }
    payload = {"action": action, "number": number, "pull_request": pr, "repository": repository,
               "sender": _user("octocat")}
    missing = size - len(json.dumps(payload))
    if missing > 0:
        pr["body"] = ("Fixes the login flow. " * (missing // 22 + 1))[:missing]
    return payload


def sign(body: bytes, secret: str = SECRET) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def signed(payload: dict[str, Any], *, delivery: str, event: str = "pull_request") -> tuple[bytes, dict[str, str]]:
    """The body and headers of a delivery signed as GitHub signs it."""
    body = json.dumps(payload).encode()
    headers = {"Content-Type": "application/json", "X-GitHub-Event": event, "X-GitHub-Delivery": delivery,
               "X-Hub-Signature-256": sign(body), "User-Agent": "GitHub-Hookshot/bench"}
    return body, headers


def sha_of(*parts: object) -> str:
    return hashlib.sha1(":".join(map(str, parts)).encode(), usedforsecurity=False).hexdigest()


def catalog() -> dict[str, Any]:
    return {SERVICE: {"repo": REPO, "image": "ghcr.io/acme/payments-api", "port": 8080}}


def settings_data(*, state_dir: Path, remote: Path, **overrides: Any) -> dict[str, Any]:
    """A devstack configuration for the benchmark: one service, the given remote, a known secret."""
    data: dict[str, Any] = {
        "state_dir": str(state_dir),
        "gitops": {"url": str(remote), "branch": BRANCH, "path": ENTRY_DIR},
        "chart": {"repo_url": CHART_REPO},
        "domain": DOMAIN,
        "providers": {"github": {"webhook_secrets": [SECRET]}},
        "services": catalog(),
    }
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(data.get(key), dict):
            data[key] = {**data[key], **value}
        else:
            data[key] = value
    return data


# ---------------------------------------------------------------------------------------- server


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass(kw_only=True)
class Server:
    """``devstack serve`` running in its own process on a loopback port."""

    proc: subprocess.Popen[bytes]
    url: str
    state_dir: Path
    log: Path
    started_at: float
    ready_after: float = 0.0
    journal_url: str = ""  # the PostgreSQL journal (``journal.url``); empty: the SQLite file in state_dir

    @property
    def pid(self) -> int:
        return self.proc.pid

    def journal_counts(self) -> dict[str, int]:
        rows = self._journal("SELECT status, COUNT(*) FROM deliveries GROUP BY status")
        counts = {"pending": 0, "done": 0, "ignored": 0, "dead": 0}
        counts.update({str(status): int(n) for status, n in rows})
        return counts

    def journal_ids(self) -> set[str]:
        return {str(row[0]) for row in self._journal("SELECT delivery_id FROM deliveries")}

    def _journal(self, sql: str) -> list[tuple[Any, ...]]:
        if self.journal_url:
            import psycopg

            with psycopg.connect(self.journal_url, connect_timeout=10) as conn:
                return list(conn.execute(sql).fetchall())
        db = sqlite3.connect(str(self.state_dir / "journal.sqlite3"), timeout=30)
        try:
            return db.execute(sql).fetchall()
        finally:
            db.close()

    def memory_mb(self) -> dict[str, float]:
        """Peak (VmHWM) and current (VmRSS) resident memory of the server process, in MB."""
        result = {}
        for line in Path(f"/proc/{self.pid}/status").read_text(encoding="ascii").splitlines():
            key, _, value = line.partition(":")
            if key in ("VmHWM", "VmRSS"):
                result[key] = int(value.split()[0]) / 1024
        return result

    def cpu_seconds(self) -> float:
        """User + system CPU time the server process has used so far."""
        fields = Path(f"/proc/{self.pid}/stat").read_text(encoding="ascii").rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def alive(self) -> bool:
        return self.proc.poll() is None

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


@contextmanager
def server(
    env: Env, *, workdir: Path, settings: dict[str, Any], log_level: str = "INFO", ready_timeout: float = 120.0,
    launcher: Sequence[str] = (), command: str = "serve", config_name: str = "devstack.yaml",
) -> Iterator[Server]:
    """Start ``devstack serve`` (a subprocess, this interpreter) and wait until ``/readyz`` says ``ready``
    (the worker has opened the git store).

    ``launcher``: the command that runs devstack's CLI (default ``python -m devstack.cli``); profiling
    scripts pass a wrapper here."""
    workdir.mkdir(parents=True, exist_ok=True)
    config = workdir / config_name
    config.write_text(yaml.safe_dump(settings), encoding="utf-8")
    port = free_port()
    log = workdir / f"{command}.log"
    started = time.monotonic()
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [*(launcher or (sys.executable, "-m", "devstack.cli")), "--log-level", log_level, command,
             "--config", str(config),
             "--host", "127.0.0.1", "--port", str(port)],
            stdout=out, stderr=subprocess.STDOUT, env=env.vars, cwd=workdir,
        )
    running = Server(proc=proc, url=f"http://127.0.0.1:{port}", state_dir=Path(settings["state_dir"]), log=log,
                     started_at=started, journal_url=settings.get("journal", {}).get("url", ""))
    try:
        with httpx.Client(timeout=5) as client:

            def ready() -> bool:
                if not running.alive():
                    raise BenchError(f"devstack {command} exited ({proc.returncode}):\n{running.log_tail()}")
                try:
                    response = client.get(running.url + "/readyz")
                except httpx.HTTPError:
                    return False
                # "ready" (not "degraded"): the worker has opened the git store and read the entries.
                return response.status_code == 200 and response.json().get("status") == "ready"

            ready_at = wait_until(ready, timeout=ready_timeout, what="devstack serve to be ready", interval=0.02)
        running.ready_after = ready_at - started
        yield running
    finally:
        running.stop()


def wait_drained(srv: Server, *, expected_done: int, timeout: float) -> float:
    """Wait until the journal has ``expected_done`` deliveries done and none pending; monotonic time."""

    def drained() -> bool:
        counts = srv.journal_counts()
        if counts["dead"]:
            raise BenchError(f"{counts['dead']} deliveries became dead letters:\n{srv.log_tail()}")
        return counts["pending"] == 0 and counts["done"] >= expected_done

    return wait_until(drained, timeout=timeout, what=f"{expected_done} deliveries to be done", interval=0.01)


JournalKind = Literal["sqlite", "postgresql"]


@contextmanager
def journal_settings(env: Env, kind: JournalKind) -> Iterator[dict[str, Any]]:
    """The ``journal:`` settings of a scenario: ``{}`` (SQLite in state_dir), or a throwaway PostgreSQL
    server started for the scenario (initdb in the scratch directory, loopback, ``fsync=off``, the same
    server the test suite runs: :func:`tests.hook_helpers.running_postgres`) and a database on it."""
    if kind == "sqlite":
        yield {}
        return
    import pytest
    from tests.hook_helpers import running_postgres

    try:
        with running_postgres(env.root / "postgresql") as pg:
            with pg.superconnect() as conn:
                conn.execute("CREATE DATABASE bench_journal")
            yield {"url": f"postgresql://{pg.superuser}:{pg.superpassword}@{pg.host}:{pg.port}/bench_journal"}
    except (pytest.skip.Exception, pytest.fail.Exception) as exc:  # the helper speaks pytest; the bench does not
        raise BenchError(f"no PostgreSQL for the journal: {exc}") from None


@contextmanager
def servers(env: Env, *, workdir: Path, remote: Path, journal: JournalKind, intake: bool
            ) -> Iterator[tuple[Server, Server]]:
    """``devstack serve`` (its worker applies) and the server the webhooks go to: a ``devstack intake``
    beside it on the same journal, or serve itself; the journal on SQLite or a PostgreSQL of its own."""
    with ExitStack() as stack:
        data = settings_data(state_dir=workdir / "state", remote=remote,
                             journal=stack.enter_context(journal_settings(env, journal)))
        worker = stack.enter_context(server(env, workdir=workdir, settings=data))
        front = (stack.enter_context(server(env, workdir=workdir, settings=data, command="intake",
                                            config_name="intake.yaml")) if intake else worker)
        yield worker, front


@contextmanager
def standin(env: Env, workdir: Path, *, write_interval: float = 0.0) -> Iterator[str]:
    """Run :mod:`bench.standin_github` in its own process on a loopback port; yields its base URL.
    ``write_interval``: the stand-in refuses a token's writes closer together than this."""
    port = free_port()
    log = workdir / "standin.log"
    workdir.mkdir(parents=True, exist_ok=True)
    with log.open("wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "bench.standin_github", "--port", str(port),
                                 "--write-interval", str(write_interval)],
                                cwd=Path(__file__).resolve().parents[1], stdout=out, stderr=subprocess.STDOUT,
                                env=env.vars)
    url = f"http://127.0.0.1:{port}"
    try:
        with httpx.Client(timeout=2) as client:

            def up() -> bool:
                if proc.poll() is not None:
                    raise BenchError(f"the stand-in GitHub exited: {log.read_text(errors='replace')[-500:]}")
                try:
                    return client.get(url + "/_bench/health").status_code == 200
                except httpx.HTTPError:
                    return False

            wait_until(up, timeout=30, what="the stand-in GitHub API")
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)

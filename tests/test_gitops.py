"""The GitOps git store against real git: bare remotes in tmp_path, real clones, real pushes."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from devstack.errors import ConfigError, GitError, InvalidEntry, PushRejected
from devstack.gitops import CommitResult, GitStore, mask_url

BRANCH = "main"


def git(*args: str, cwd: Path | None = None, check: bool = True) -> str:
    """Plain git, as a user would run it (identity given inline)."""
    done = subprocess.run(
        ["git", "-c", "user.name=Other Writer", "-c", "user.email=other@example.test", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "GIT_TERMINAL_PROMPT": "0"},
    )
    if check and done.returncode != 0:
        raise AssertionError(f"git {' '.join(args)} failed: {done.stderr}")
    return done.stdout.strip()


def remote_file(remote: Path, rel: str) -> bytes:
    return subprocess.run(
        ["git", "--git-dir", str(remote), "show", f"{BRANCH}:{rel}"], capture_output=True, check=True
    ).stdout


def remote_head(remote: Path) -> str:
    return git("--git-dir", str(remote), "rev-parse", f"refs/heads/{BRANCH}")


def remote_files(remote: Path) -> list[str]:
    return git("--git-dir", str(remote), "ls-tree", "-r", "--name-only", BRANCH).splitlines()


def is_ancestor(remote: Path, older: str, newer: str) -> bool:
    done = subprocess.run(["git", "--git-dir", str(remote), "merge-base", "--is-ancestor", older, newer], check=False)
    return done.returncode == 0


def entry(feature: str, **extra: str) -> bytes:
    return json.dumps([{"feature": feature, **extra}], sort_keys=True).encode() + b"\n"


@pytest.fixture
def remote(tmp_path: Path) -> Path:
    url = GitStore.init_local_remote(tmp_path / "remote.git", branch=BRANCH)
    return Path(url)


@pytest.fixture
def make_store(tmp_path: Path, remote: Path) -> Iterator[Callable[..., GitStore]]:
    stores: list[GitStore] = []

    def make(name: str = "clone", **kwargs: object) -> GitStore:
        options: dict[str, object] = {
            "url": str(remote),
            "branch": BRANCH,
            "path": "previews",
            "workdir": tmp_path / "state" / name,
            **kwargs,
        }
        store = GitStore(**options)  # type: ignore[arg-type]
        stores.append(store)
        return store

    yield make
    for store in stores:
        store.close()


@pytest.fixture
def other(tmp_path: Path, remote: Path) -> Path:
    """Somebody else's plain clone of the same remote."""
    path = tmp_path / "other"
    git("clone", "-q", "-b", BRANCH, str(remote), str(path))
    return path


def push_from(clone: Path, files: dict[str, bytes], message: str = "other writer") -> str:
    git("pull", "-q", "--ff-only", cwd=clone)
    for rel, data in files.items():
        (clone / rel).parent.mkdir(parents=True, exist_ok=True)
        (clone / rel).write_bytes(data)
    git("add", "-A", cwd=clone)
    git("commit", "-q", "-m", message, cwd=clone)
    git("push", "-q", "origin", f"HEAD:{BRANCH}", cwd=clone)
    return git("rev-parse", "HEAD", cwd=clone)


# ---------------------------------------------------------------------------- init_local_remote


def test_init_local_remote_creates_a_bare_repo_with_the_branch_and_is_idempotent(tmp_path: Path) -> None:
    path = tmp_path / "state" / "gitops.git"
    url = GitStore.init_local_remote(path, branch="gitops")
    assert url == str(path.absolute())
    assert git("--git-dir", url, "rev-parse", "--is-bare-repository") == "true"
    first = git("--git-dir", url, "rev-parse", "refs/heads/gitops")
    assert git("--git-dir", url, "rev-list", "--count", "gitops") == "1"
    assert git("--git-dir", url, "symbolic-ref", "HEAD") == "refs/heads/gitops"
    readme = git("--git-dir", url, "show", "gitops:README.md")
    assert "devstack" in readme
    assert "previews/<feature>.json" in readme

    assert GitStore.init_local_remote(path, branch="gitops") == url
    assert git("--git-dir", url, "rev-parse", "refs/heads/gitops") == first
    assert git("--git-dir", url, "rev-list", "--count", "--all") == "1"

    # A plain clone checks the branch out: Argo CD and people have something to track.
    git("clone", "-q", url, str(tmp_path / "look"))
    assert (tmp_path / "look" / "README.md").is_file()
    assert git("rev-parse", "--abbrev-ref", "HEAD", cwd=tmp_path / "look") == "gitops"


def test_init_local_remote_adds_the_branch_to_an_existing_empty_repo_and_refuses_a_work_tree(
    tmp_path: Path,
) -> None:
    bare = tmp_path / "empty.git"
    git("init", "-q", "--bare", "-b", "trunk", str(bare))
    GitStore.init_local_remote(bare, branch=BRANCH)
    assert git("--git-dir", str(bare), "rev-list", "--count", BRANCH) == "1"
    # HEAD pointed to a branch that did not exist: it now names the one that does.
    assert git("--git-dir", str(bare), "symbolic-ref", "HEAD") == f"refs/heads/{BRANCH}"

    work = tmp_path / "work"
    git("init", "-q", "-b", BRANCH, str(work))
    (work / "f").write_text("x")
    with pytest.raises(ConfigError):
        GitStore.init_local_remote(work, branch=BRANCH)


# ---------------------------------------------------------------------------- apply


def test_apply_writes_files_in_one_commit_and_pushes(remote: Path, make_store: Callable[..., GitStore]) -> None:
    store = make_store(author_name="devstack bot", author_email="bot@devstack.test")
    store.open()
    before = remote_head(remote)
    seen: list[dict[str, bytes]] = []

    def change(current: dict[str, bytes]) -> dict[str, bytes | None]:
        seen.append(current)
        return {"login-fix": entry("login-fix"), "payments": entry("payments")}

    result = store.apply(change, message="preview: login-fix, payments")

    assert isinstance(result, CommitResult)
    assert result.sha == remote_head(remote) == store.head
    assert result.attempts == 1
    assert result.changed == ("login-fix", "payments")
    assert seen == [{}]
    log = git("--git-dir", str(remote), "log", "--format=%H|%an <%ae>|%cn <%ce>|%s", BRANCH).splitlines()
    assert log == [
        f"{result.sha}|devstack bot <bot@devstack.test>|devstack bot <bot@devstack.test>|preview: login-fix, payments",
        git("--git-dir", str(remote), "log", "-1", "--format=%H|%an <%ae>|%cn <%ce>|%s", before),
    ]
    changed = git("--git-dir", str(remote), "diff-tree", "--no-commit-id", "--name-status", "-r", BRANCH)
    assert changed.splitlines() == ["A\tpreviews/login-fix.json", "A\tpreviews/payments.json"]
    assert remote_file(remote, "previews/login-fix.json") == entry("login-fix")
    assert remote_file(remote, "previews/payments.json") == entry("payments")
    # The clone is clean and tracks the remote.
    assert git("status", "--porcelain", cwd=store.workdir) == ""
    assert git("rev-parse", f"refs/remotes/origin/{BRANCH}", cwd=store.workdir) == result.sha
    assert store.read() == {"login-fix": entry("login-fix"), "payments": entry("payments")}


def test_apply_without_change_makes_no_commit_and_deletion_removes_the_file(
    remote: Path, make_store: Callable[..., GitStore]
) -> None:
    store = make_store()
    first = store.apply(lambda _: {"a": entry("a"), "b": entry("b")}, message="add")
    assert first.sha is not None

    same = store.apply(lambda _: {"a": entry("a"), "gone": None}, message="nothing")
    assert same == CommitResult(sha=None, attempts=1, changed=())
    assert remote_head(remote) == first.sha
    assert git("--git-dir", str(remote), "rev-list", "--count", BRANCH) == "2"

    deleted = store.apply(lambda current: {"b": None, "a": current["a"]}, message="remove b")
    assert deleted.changed == ("b",)
    assert deleted.sha == remote_head(remote)
    assert remote_files(remote) == ["README.md", "previews/a.json"]
    assert git("--git-dir", str(remote), "diff-tree", "--no-commit-id", "--name-status", "-r", BRANCH) == (
        "D\tpreviews/b.json"
    )
    assert not (store.workdir / "previews" / "b.json").exists()
    assert store.read() == {"a": entry("a")}


def test_apply_refuses_a_bad_feature_name_and_leaves_the_clone_untouched(
    remote: Path, make_store: Callable[..., GitStore]
) -> None:
    store = make_store()
    store.open()
    head = store.head
    with pytest.raises(InvalidEntry):
        store.apply(lambda _: {"ok": entry("ok"), "../escape": b"x"}, message="bad")

    def broken(_: dict[str, bytes]) -> dict[str, bytes | None]:
        raise RuntimeError("planner broke")

    with pytest.raises(RuntimeError, match="planner broke"):
        store.apply(broken, message="boom")
    assert store.head == head == remote_head(remote)
    assert git("status", "--porcelain", "--ignored", cwd=store.workdir) == ""
    assert not (store.workdir.parent / "escape.json").exists()


def test_large_change_sets_stage_only_entry_changes(
    remote: Path, make_store: Callable[..., GitStore], other: Path
) -> None:
    push_from(other, {"previews/notes.txt": b"kept", "previews/keep.json": entry("keep")})
    store = make_store()
    many = {f"f-{i}": entry(f"f-{i}") for i in range(60)}
    added = store.apply(lambda _: dict(many), message="resync: 60 previews")
    assert added.changed == tuple(sorted(many))
    assert len(remote_files(remote)) == 1 + 2 + 60
    removed = store.apply(lambda _: {f"f-{i}": None for i in range(55)}, message="prune 55")
    assert len(removed.changed) == 55
    assert remote_files(remote) == sorted(
        ["README.md", "previews/notes.txt", "previews/keep.json"] + [f"previews/f-{i}.json" for i in range(55, 60)]
    )
    assert remote_file(remote, "previews/notes.txt") == b"kept"
    assert git("--git-dir", str(remote), "rev-list", "--count", BRANCH) == "4"


def test_a_nested_entries_folder_works(remote: Path, make_store: Callable[..., GitStore]) -> None:
    store = make_store(path="/deploy/previews/")
    result = store.apply(lambda _: {"x": entry("x")}, message="nested")
    assert result.sha == remote_head(remote)
    assert remote_file(remote, "deploy/previews/x.json") == entry("x")
    assert store.read() == {"x": entry("x")}


# ---------------------------------------------------------------------------- concurrency


def test_rejected_push_replans_on_the_new_tree_without_force(
    remote: Path, make_store: Callable[..., GitStore], other: Path
) -> None:
    store = make_store()
    store.open()
    # Another writer pushes after our clone was made: our first push must be rejected.
    theirs = push_from(other, {"previews/theirs.json": entry("theirs"), "previews/shared.json": b'["t"]'})
    seen: list[dict[str, bytes]] = []

    def change(current: dict[str, bytes]) -> dict[str, bytes | None]:
        seen.append(current)
        shared = json.loads(current.get("shared", b"[]"))
        return {"mine": entry("mine"), "shared": json.dumps([*shared, "m"]).encode()}

    result = store.apply(change, message="mine")

    assert result.attempts == 2
    assert len(seen) == 2
    assert "theirs" not in seen[0]
    assert seen[1]["theirs"] == entry("theirs")  # the callback ran again on the new tree
    assert result.sha == remote_head(remote)
    assert remote_file(remote, "previews/theirs.json") == entry("theirs")
    assert remote_file(remote, "previews/mine.json") == entry("mine")
    assert json.loads(remote_file(remote, "previews/shared.json")) == ["t", "m"]
    # Linear history on top of the other writer's commit: nothing was forced or merged.
    assert is_ancestor(remote, theirs, result.sha)
    assert git("--git-dir", str(remote), "rev-list", "--merges", BRANCH) == ""
    assert git("--git-dir", str(remote), "rev-list", "--count", BRANCH) == "3"
    assert git("--git-dir", str(remote), "rev-parse", f"{result.sha}^") == theirs


def test_no_change_after_a_stale_read_fetches_once_and_replans(
    remote: Path, make_store: Callable[..., GitStore], other: Path
) -> None:
    store = make_store()
    store.open()
    push_from(other, {"previews/closed-pr.json": entry("closed-pr")})
    calls: list[set[str]] = []

    def delete_closed(current: dict[str, bytes]) -> dict[str, bytes | None]:
        calls.append(set(current))
        return {"closed-pr": None}

    result = store.apply(delete_closed, message="prune closed-pr")
    assert calls == [set(), {"closed-pr"}]
    assert result.changed == ("closed-pr",)
    assert remote_files(remote) == ["README.md"]


def test_push_rejected_after_max_attempts_resets_to_the_remote(
    remote: Path, make_store: Callable[..., GitStore], other: Path
) -> None:
    store = make_store(max_attempts=3)
    store.open()
    calls = 0

    def always_beaten(current: dict[str, bytes]) -> dict[str, bytes | None]:
        nonlocal calls
        calls += 1
        push_from(other, {f"previews/rival-{calls}.json": entry(f"rival-{calls}")})
        return {"mine": entry("mine")}

    with pytest.raises(PushRejected):
        store.apply(always_beaten, message="mine")
    assert calls == 3
    assert "previews/mine.json" not in remote_files(remote)
    assert store.head == git("rev-parse", f"refs/remotes/origin/{BRANCH}", cwd=store.workdir)
    assert git("status", "--porcelain", cwd=store.workdir) == ""
    # The next apply starts from the remote's state and succeeds.
    result = store.apply(lambda _: {"mine": entry("mine")}, message="mine again")
    assert result.sha == remote_head(remote)
    assert {"rival-1", "rival-2", "rival-3", "mine"} <= set(store.read())


def test_two_stores_in_parallel_lose_no_update(remote: Path, make_store: Callable[..., GitStore]) -> None:
    stores = [make_store("a"), make_store("b")]
    for store in stores:
        store.open()
    per_thread = 15
    rejected = 0
    rounds = 0
    counter = threading.Lock()

    def work(store: GitStore, who: str) -> None:
        nonlocal rejected, rounds
        for i in range(per_thread):
            item = f"{who}-{i}"

            def change(current: dict[str, bytes], item: str = item) -> dict[str, bytes | None]:
                items = json.loads(current.get("shared", b"[]"))
                return {"shared": json.dumps([*items, item]).encode(), item: entry(item)}

            while True:  # what the worker does with a TemporaryError: try again
                try:
                    result = store.apply(change, message=f"add {item}")
                    with counter:
                        rounds += result.attempts
                    break
                except PushRejected:
                    with counter:
                        rejected += 1

    with ThreadPoolExecutor(max_workers=4) as pool:
        futures = [
            pool.submit(work, store, f"{name}{n}") for name, store in zip("ab", stores, strict=True) for n in range(2)
        ]
        for future in futures:
            future.result(timeout=120)
    # The stores really raced: pushes were rejected and re-planned. (Two writers that never pause
    # can starve the slower one for max_attempts rounds: PushRejected, which the worker retries.)
    assert rounds > 60 or rejected > 0

    items = json.loads(remote_file(remote, "previews/shared.json"))
    expected = {f"{who}-{i}" for who in ("a0", "a1", "b0", "b1") for i in range(per_thread)}
    assert len(items) == len(expected) == 60
    assert set(items) == expected
    assert set(remote_files(remote)) == {"README.md", "previews/shared.json"} | {
        f"previews/{item}.json" for item in expected
    }
    assert git("--git-dir", str(remote), "rev-list", "--merges", BRANCH) == ""
    assert git("--git-dir", str(remote), "rev-list", "--count", BRANCH) == "61"
    for store in stores:
        store.fetch()
        assert json.loads(store.read()["shared"]) == items


# ---------------------------------------------------------------------------- recovery


def test_open_recovers_locks_dirty_files_and_a_half_done_rebase(
    remote: Path, make_store: Callable[..., GitStore], tmp_path: Path
) -> None:
    store = make_store()
    store.apply(lambda _: {"a": entry("a")}, message="a")
    store.close()
    clone = store.workdir
    git_dir = clone / ".git"
    # What a crash leaves behind: locks, an unpushed commit, a detached half-done rebase,
    # a modified tracked file and untracked files.
    (clone / "previews" / "unpushed.json").write_bytes(entry("unpushed"))
    git("add", "-A", cwd=clone)
    git("commit", "-q", "-m", "never pushed", cwd=clone)
    git("checkout", "-q", "--detach", cwd=clone)
    (git_dir / "rebase-merge").mkdir()
    (git_dir / "rebase-merge" / "head-name").write_text(f"refs/heads/{BRANCH}\n")
    (git_dir / "index.lock").write_text("")
    (git_dir / "refs" / "heads" / f"{BRANCH}.lock").write_text("")
    (clone / "previews" / "a.json").write_bytes(b"half-written")
    (clone / "previews" / "junk.json").write_bytes(entry("junk"))
    (clone / "stray.txt").write_text("stray")
    (git_dir / "info" / "kept-if-recovered-in-place").write_text("x")
    # The lock really blocks git.
    assert (
        "index.lock"
        in subprocess.run(["git", "add", "-A"], cwd=clone, capture_output=True, text=True, check=False).stderr
    )

    again = make_store()
    again.open()

    assert (git_dir / "info" / "kept-if-recovered-in-place").exists()  # recovered, not re-cloned
    assert not (git_dir / "index.lock").exists()
    assert not (git_dir / "refs" / "heads" / f"{BRANCH}.lock").exists()
    assert not (git_dir / "rebase-merge").exists()
    assert git("symbolic-ref", "HEAD", cwd=clone) == f"refs/heads/{BRANCH}"
    assert git("status", "--porcelain", "--ignored", cwd=clone) == ""
    assert not (clone / "stray.txt").exists()
    assert again.head == remote_head(remote)
    assert again.read() == {"a": entry("a")}
    result = again.apply(lambda current: {"b": entry("b"), **current}, message="b")
    assert result.sha == remote_head(remote)
    assert remote_files(remote) == ["README.md", "previews/a.json", "previews/b.json"]
    assert remote_file(remote, "previews/a.json") == entry("a")


def _delete_head(git_dir: Path) -> None:
    (git_dir / "HEAD").unlink()


def _garbage_head(git_dir: Path) -> None:
    (git_dir / "HEAD").write_bytes(b"\x00\xffgarbage")


def _garbage_config(git_dir: Path) -> None:
    (git_dir / "config").write_text("[[[ not a config\n")


def _garbage_index(git_dir: Path) -> None:
    (git_dir / "index").write_bytes(b"DIRC garbage" * 10)


def _garbage_ref(git_dir: Path) -> None:
    (git_dir / "refs" / "remotes" / "origin" / BRANCH).write_text("0" * 39 + "1\n")


def _wrong_remote(git_dir: Path) -> None:
    git("--git-dir", str(git_dir), "remote", "set-url", "origin", "/somewhere/else.git")


@pytest.mark.parametrize(
    "corrupt",
    [_delete_head, _garbage_head, _garbage_config, _garbage_index, _garbage_ref, _wrong_remote],
)
def test_open_rebuilds_a_corrupt_clone(
    remote: Path, make_store: Callable[..., GitStore], corrupt: Callable[[Path], None]
) -> None:
    store = make_store()
    store.apply(lambda _: {"a": entry("a")}, message="a")
    store.close()
    marker = store.workdir / "marker-left-in-old-clone"
    marker.write_text("old")
    corrupt(store.workdir / ".git")

    again = make_store()
    again.open()

    assert not marker.exists()  # it was rebuilt, not patched
    assert git("config", "remote.origin.url", cwd=again.workdir) == str(remote)
    assert again.read() == {"a": entry("a")}
    result = again.apply(lambda _: {"b": entry("b")}, message="b")
    assert result.sha == remote_head(remote)
    assert remote_file(remote, "previews/b.json") == entry("b")
    leftovers = [p.name for p in again.workdir.parent.iterdir() if p.name != again.workdir.name]
    assert leftovers == []


def test_open_refuses_to_delete_a_directory_that_is_not_a_clone(tmp_path: Path, remote: Path) -> None:
    workdir = tmp_path / "precious"
    workdir.mkdir()
    (workdir / "thesis.txt").write_text("do not delete")
    store = GitStore(url=str(remote), branch=BRANCH, path="previews", workdir=workdir)
    with pytest.raises(ConfigError):
        store.open()
    assert (workdir / "thesis.txt").read_text() == "do not delete"


# ---------------------------------------------------------------------------- remote failures


def test_unreachable_remote_raises_git_error_then_works_once_it_appears(tmp_path: Path) -> None:
    path = tmp_path / "later.git"
    workdir = tmp_path / "state" / "clone"
    store = GitStore(url=str(path), branch=BRANCH, path="previews", workdir=workdir)
    with pytest.raises(GitError) as raised:
        store.open()
    assert not isinstance(raised.value, PushRejected)
    assert str(path) in str(raised.value)
    assert not workdir.exists()
    assert list(workdir.parent.iterdir()) == []  # no half-written clone left behind

    GitStore.init_local_remote(path, branch=BRANCH)
    store.open()
    result = store.apply(lambda _: {"late": entry("late")}, message="late")
    assert result.sha == remote_head(path)
    store.close()


def test_remote_gone_mid_flight_resets_the_local_branch_and_recovers(
    remote: Path, make_store: Callable[..., GitStore], tmp_path: Path
) -> None:
    store = make_store()
    first = store.apply(lambda _: {"a": entry("a")}, message="a")
    moved = tmp_path / "moved-away.git"
    remote.rename(moved)
    with pytest.raises(GitError) as raised:
        store.apply(lambda _: {"b": entry("b")}, message="b")
    assert not isinstance(raised.value, PushRejected)
    assert store.head == first.sha  # the unpushed commit was dropped
    assert store.read() == {"a": entry("a")}
    assert git("status", "--porcelain", cwd=store.workdir) == ""

    moved.rename(remote)
    result = store.apply(lambda _: {"b": entry("b")}, message="b")
    assert result.sha == remote_head(remote)
    assert remote_files(remote) == ["README.md", "previews/a.json", "previews/b.json"]


def test_push_refused_by_the_remote_is_a_git_error_not_a_rejection(
    remote: Path, make_store: Callable[..., GitStore]
) -> None:
    store = make_store()
    store.open()
    before = remote_head(remote)
    hook = remote / "hooks" / "pre-receive"
    hook.write_text("#!/bin/sh\necho 'protected branch' >&2\nexit 1\n")
    hook.chmod(0o755)
    calls = 0

    def change(_: dict[str, bytes]) -> dict[str, bytes | None]:
        nonlocal calls
        calls += 1
        return {"a": entry("a")}

    with pytest.raises(GitError) as raised:
        store.apply(change, message="a")
    assert not isinstance(raised.value, PushRejected)
    assert "protected branch" in str(raised.value)
    assert calls == 1  # not retried: re-planning cannot cure a refusal
    assert remote_head(remote) == before == store.head


def test_empty_remote_works_and_the_first_apply_creates_the_branch(
    tmp_path: Path,
) -> None:
    bare = tmp_path / "empty.git"
    git("init", "-q", "--bare", str(bare))
    store = GitStore(url=str(bare), branch="previews", path="previews", workdir=tmp_path / "clone")
    store.open()
    assert store.head is None
    assert store.read() == {}
    assert store.fetch() is False
    result = store.apply(lambda _: {"first": entry("first")}, message="first")
    assert result.sha is not None
    assert git("--git-dir", str(bare), "rev-parse", "refs/heads/previews") == result.sha
    assert git("--git-dir", str(bare), "rev-list", "--count", "previews") == "1"
    store.close()


def test_credentials_in_the_url_never_reach_errors(tmp_path: Path) -> None:
    with socket.socket() as sock:  # a loopback port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"http://deploy-bot:s3cr3t-t0ken@127.0.0.1:{port}/acme/gitops.git"
    store = GitStore(url=url, branch=BRANCH, path="previews", workdir=tmp_path / "clone", timeout=20)
    with pytest.raises(GitError) as raised:
        store.open()
    text = str(raised.value)
    assert "s3cr3t-t0ken" not in text
    assert "deploy-bot" not in text
    assert "***@127.0.0.1" in text
    # Tracebacks do not show the original git error, whose text held the URL unmasked.
    assert raised.value.__cause__ is None
    assert raised.value.__suppress_context__
    assert mask_url(f"clone {url} failed") == f"clone http://***@127.0.0.1:{port}/acme/gitops.git failed"
    assert "s3cr3t" not in store.url


def test_a_hung_remote_times_out(tmp_path: Path) -> None:
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    port = server.getsockname()[1]
    accepted: list[socket.socket] = []

    def accept_and_say_nothing() -> None:
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            accepted.append(conn)

    threading.Thread(target=accept_and_say_nothing, daemon=True).start()
    store = GitStore(
        url=f"http://127.0.0.1:{port}/gitops.git",
        branch=BRANCH,
        path="previews",
        workdir=tmp_path / "clone",
        timeout=1.5,
    )
    started = time.monotonic()
    try:
        with pytest.raises(GitError, match=r"(?i)timeout"):
            store.open()
    finally:
        server.close()
        for conn in accepted:
            conn.close()
    assert time.monotonic() - started < 15
    assert accepted  # git really connected and waited


# ---------------------------------------------------------------------------- read


def test_read_returns_only_entry_files(remote: Path, make_store: Callable[..., GitStore], other: Path) -> None:
    store = make_store()
    store.open()
    push_from(
        other,
        {
            "previews/good.json": entry("good"),
            "previews/also-good-2.json": entry("also-good-2"),
            "previews/Bad_Name.json": b"[]",
            "previews/a--b.json": b"[]",
            "previews/-lead.json": b"[]",
            "previews/notes.txt": b"hello",
            "previews/README.md": b"# entries",
            "previews/nested/deep.json": b"[]",
            "other/elsewhere.json": b"[]",
            "top.json": b"[]",
        },
    )
    os.symlink("good.json", other / "previews" / "link.json")
    git("add", "-A", cwd=other)
    git("commit", "-q", "-m", "symlink", cwd=other)
    git("push", "-q", "origin", f"HEAD:{BRANCH}", cwd=other)

    assert store.read() == {}  # nothing fetched yet: read is local
    assert store.fetch() is True
    assert store.head == remote_head(remote)
    assert store.read() == {"good": entry("good"), "also-good-2": entry("also-good-2")}
    assert store.fetch() is False


def test_read_prefers_the_committed_bytes_over_a_tampered_work_tree(
    make_store: Callable[..., GitStore],
) -> None:
    store = make_store()
    store.apply(lambda _: {"a": entry("a"), "b": entry("b")}, message="ab")
    store.close()
    (store.workdir / "previews" / "a.json").write_bytes(b"tampered")
    reader = make_store()  # same workdir, a fresh process
    reader.open()
    (reader.workdir / "previews" / "b.json").write_bytes(b"tampered after open")
    assert reader.read() == {"a": entry("a"), "b": entry("b")}


def test_git_subprocesses_never_prompt(make_store: Callable[..., GitStore]) -> None:
    store = make_store()
    store.open()
    env = store._r.git.environment()  # what every git process of the store runs with
    assert env["GIT_TERMINAL_PROMPT"] == "0"
    assert env["GIT_DIR"] == str(store.workdir / ".git")

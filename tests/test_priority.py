"""The background loops give way to acknowledging webhooks (``worker.nice``, issue 19): a lower CPU
priority for the loop threads of ``devstack serve`` and for the git processes they start, none for the
threads that take requests. Read back from ``/proc`` (Linux: a nice value belongs to a thread)."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from devstack.loops import in_background, lower_priority
from tests.conftest import pr_payload, remote_files

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="nice values per thread: Linux only")


def nice_of(tid: int | str, *, pid: str = "self") -> int:
    """Field 19 of /proc/<pid>/task/<tid>/stat (after the parenthesised command name)."""
    fields = Path(f"/proc/{pid}/task/{tid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[16])


def test_lower_priority_is_the_threads_own_and_what_it_starts_inherits_it() -> None:
    base = nice_of(threading.get_native_id())
    seen: dict[str, Any] = {}

    def run() -> None:
        seen["value"] = lower_priority(6)
        seen["thread"] = nice_of(threading.get_native_id())
        child = subprocess.run(["sh", "-c", "cut -d')' -f2 /proc/self/stat"], capture_output=True, text=True,
                               check=True).stdout.split()
        seen["child"] = int(child[16])
        seen["again"] = lower_priority(30)  # capped at 19

    thread = threading.Thread(target=run)
    thread.start()
    thread.join()
    assert seen["value"] == seen["thread"] == seen["child"] == min(19, base + 6)
    assert seen["again"] == 19
    assert nice_of(threading.get_native_id()) == base  # the calling thread only, not the process
    assert lower_priority(0) is None


def test_in_background_lowers_first_then_runs() -> None:
    base = nice_of(threading.get_native_id())
    seen: list[int] = []
    thread = threading.Thread(target=in_background(lambda: seen.append(nice_of(threading.get_native_id())), nice=3))
    thread.start()
    thread.join()
    assert seen == [min(19, base + 3)]


def test_serve_runs_its_loops_and_their_git_below_the_request_threads(
    make_settings: Callable[..., Any], serve: Callable[..., Any], bare_remote: str,
) -> None:
    """The worker's thread and the ``git push`` it runs (seen by a ``pre-receive`` hook of the remote, a
    grandchild of the worker) run ``worker.nice`` steps below the thread serving HTTP."""
    hook = Path(bare_remote) / "hooks" / "pre-receive"
    seen = Path(bare_remote).parent / "push-nice"
    hook.write_text(f"#!/bin/sh\ncut -d')' -f2 /proc/self/stat > {seen}\ncat > /dev/null\n")
    hook.chmod(0o755)
    server = serve(make_settings(worker={"nice": 7}))
    base = nice_of(server.thread.native_id)
    loops = {thread.name: nice_of(thread.native_id) for thread in server.runtime.threads if thread.is_alive()}
    assert loops and set(loops.values()) == {min(19, base + 7)}, loops
    assert "devstack-worker" in loops

    assert server.send_github(pr_payload(), delivery="d1").status_code == 202
    deadline = time.monotonic() + 20
    while "login-fix" not in remote_files(bare_remote):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert int(seen.read_text().split()[16]) == min(19, base + 7)


def test_nice_zero_keeps_one_priority(make_settings: Callable[..., Any], serve: Callable[..., Any]) -> None:
    server = serve(make_settings(worker={"nice": 0}))
    base = nice_of(server.thread.native_id)
    assert {nice_of(t.native_id) for t in server.runtime.threads if t.is_alive()} == {base}


@pytest.mark.parametrize("command", ["serve", "intake"])
def test_the_servers_take_turns_at_the_gil_every_millisecond(
    command: str, tmp_path: Path, bare_remote: str, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``devstack serve`` and ``devstack intake`` shorten the interpreter's switch interval before they
    serve (a transaction holding the journal's lock no longer waits 5 ms per statement for the GIL)."""
    import uvicorn
    import yaml

    from devstack.cli import main
    from devstack.loops import SWITCH_INTERVAL

    served: list[object] = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **kwargs: served.append(app))
    config = tmp_path / "devstack.yaml"
    config.write_text(yaml.safe_dump({"state_dir": str(tmp_path / "s"), "gitops": {"url": bare_remote},
                                      "providers": {"github": {"webhook_secrets": ["x" * 32]}}}))
    before = sys.getswitchinterval()
    try:
        sys.setswitchinterval(0.005)
        assert main([command, "--config", str(config)]) == 0
        assert served and sys.getswitchinterval() == pytest.approx(SWITCH_INTERVAL)
    finally:
        sys.setswitchinterval(before)

"""No traceback from any CLI command on user error (issue 13, items 8, 9 and 13).

Every subcommand of ``devstack`` is walked with a bad input built for it: a missing file, a config that
is not a mapping, a bad duration, a server that is not running. Each must answer with clean lines
(``devstack: ...`` or argparse's usage), the documented exit status, and no ``Traceback``. The table is
checked against the parser, so a new subcommand without a bad-input case fails here.
"""

from __future__ import annotations

import argparse
import socket
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from devstack import cli
from devstack.catalog import load_settings


def _closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    for name in ("DEVSTACK_API_TOKEN", "DEVSTACK_HOOK_FEATURE"):
        monkeypatch.delenv(name, raising=False)
    (tmp_path / "not-a-mapping.yaml").write_text("just a string\n", encoding="utf-8")
    return tmp_path


def _cases(down: str) -> dict[str, tuple[list[str], int, str]]:
    """subcommand -> (argv, exit status, a phrase the one-line error must contain)."""
    return {
        "serve": (["serve", "--config", "missing.yaml"], 2, "missing.yaml: cannot be read"),
        "intake": (["intake", "--config", "missing.yaml"], 2, "missing.yaml: cannot be read"),
        "previews": (["previews", "--url", down], 1, f"no devstack server is reachable at {down}"),
        "replay": (["replay", "missing.json", "--event", "pull_request", "--secret", "s"], 2,
                   "missing.json: No such file or directory"),
        "up": (["up", "demo", "--with", "payments-api", "--ttl", "banana"], 2, "'banana' is not a duration"),
        "down": (["down", "demo", "--url", down, "--token", "t"], 1, "read the GitOps repo directly with --config"),
        "set": (["set", "demo", "payments-api", "NOEQUALS"], 2, "'NOEQUALS' is not KEY=VALUE"),
        "restart": (["restart", "demo", "payments-api", "--config", "missing.yaml"], 2, "cannot be read"),
        "sleep": (["sleep", "demo", "no-such-service"], 2, "unknown service 'no-such-service'"),
        "usage": (["usage", "--since", "forever", "--url", down], 2, "a duration up to 400d"),
        "dev": (["dev", "on", "demo", "no-such-service"], 2, "unknown service 'no-such-service'"),
        "wake": (["wake", "demo", "--url", down, "--token", "t"], 1, "no devstack server is reachable"),
        "reap": (["reap", "--config", "not-a-mapping.yaml"], 2, "must be a mapping"),
        "resync": (["resync", "--config", "not-a-mapping.yaml"], 2, "must be a mapping"),
        "redrive": (["redrive", "--url", down, "--token", "t"], 1, "no devstack server is reachable"),
        "bootstrap": (["bootstrap", "--config", "missing.yaml"], 2, "cannot be read"),
        "doctor": (["doctor", "--config", "missing.yaml"], 1, "cannot be read"),
        "render": (["render", "missing.json"], 1, "missing.json: cannot be read"),
        "hook": (["hook", "postgres"], 2, "the following arguments are required: action"),
    }


def _subcommands() -> set[str]:
    parser = cli.build_parser()
    actions = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return set(actions[0].choices)


def test_every_subcommand_has_a_bad_input_case() -> None:
    assert _subcommands() == set(_cases("http://127.0.0.1:1"))


@pytest.mark.parametrize("command", sorted(_cases("http://127.0.0.1:1")))
def test_a_user_error_is_one_clean_line_and_its_exit_status(
    command: str, workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Defect pinned: ``devstack replay <missing file>`` printed a traceback (13.9); with the server down,
    ``devstack previews`` printed urllib3's retry line instead of where and what to do (13.13)."""
    argv, status, phrase = _cases(f"http://127.0.0.1:{_closed_port()}")[command]
    try:
        code = cli.main(argv)
    except SystemExit as exc:  # argparse's own usage errors
        code = int(exc.code or 0)
    out, err = capsys.readouterr()
    assert code == status, (out, err)
    assert "Traceback" not in out + err
    assert phrase in out + err
    assert "Max retries exceeded" not in err and "HTTPConnectionPool" not in err


def test_the_installed_command_prints_no_traceback_for_a_missing_file(workdir: Path) -> None:
    """Through the real entry point (a process), not only ``main()``: the error is one line, exit 2."""
    done = subprocess.run(
        [sys.executable, "-m", "devstack.cli", "replay", "nofile.json", "--event", "pull_request", "--secret", "s"],
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == ["devstack: nofile.json: No such file or directory"]


def test_an_unexpected_error_is_one_line_with_how_to_see_the_traceback(
    workdir: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A bug is not a user error, but it still answers in one line, exit 1, and says how to get the traceback."""
    def boom(args: argparse.Namespace) -> int:
        raise RuntimeError("the planner fell over")

    monkeypatch.setattr(cli, "cmd_previews", boom)
    code = cli.main(["previews"])
    err = capsys.readouterr().err
    assert code == 1
    assert err.strip() == ("devstack: unexpected error: RuntimeError: the planner fell over (run with --log-level "
                           "DEBUG for the traceback, and please report it)")


def test_a_capped_ttl_is_applied_and_says_so_with_exit_0(workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Defect pinned (13.8): ``up x --ttl forever`` printed ``ignored: ... capped`` and exited 1 although the
    preview was created. Result word, commit and exit status now agree."""
    code = cli.main(["up", "capped", "--with", "payments-api", "--ttl", "forever"])
    out = capsys.readouterr().out.strip()
    assert code == 0, out
    assert out.startswith("capped: applied, TTL capped at 2w (`forever` is longer than this installation allows)")
    assert "(commit " in out
    previews = {p["feature"]: p for p in cli._previews_from_repo(load_settings(None))}
    expires = datetime.fromisoformat(previews["capped"]["expiresAt"].replace("Z", "+00:00"))
    assert timedelta(days=13, hours=23) < expires - datetime.now(UTC) <= timedelta(days=14)

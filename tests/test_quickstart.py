"""docs/quickstart.md and the product agree (issue 13.12): its commands are run as written, against
a real `devstack serve` on embedded defaults, and what they print is compared with the page.

The only liberty taken: the server listens on a free port, so `--url` is added to the two commands
that talk to it (the page uses the default, 127.0.0.1:8080). In the page's output, `…` stands for a
run-specific token (a delivery id, an expiry).
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.conftest import REPO_ROOT
from tests.test_cli import Serve, processes  # noqa: F401 - the fixture

pytestmark = pytest.mark.e2e
QUICKSTART = REPO_ROOT / "docs" / "quickstart.md"


def _blocks(section: str) -> list[tuple[str, str]]:
    """(language, text) of each fenced block in the section headed ``section``."""
    text = QUICKSTART.read_text(encoding="utf-8")
    body = text.split(f"## {section}", 1)[1].split("\n## ", 1)[0]
    return [(m.group(1), m.group(2)) for m in re.finditer(r"```(\w*)\n(.*?)```", body, flags=re.S)]


def _pattern(expected_line: str) -> re.Pattern[str]:
    """A documented output line as a pattern: `…` is any token, runs of spaces are column padding."""
    parts = [re.escape(part).replace("…", r"\S*") for part in expected_line.split()]
    return re.compile(r"\s*" + r"\s+".join(parts) + r"\s*")


def test_the_quickstart_prints_what_the_page_shows(tmp_path: Path, processes: list[Serve]) -> None:  # noqa: F811
    blocks = _blocks("Locally, in two minutes")
    [serve_line] = blocks[0][1].strip().splitlines()
    assert serve_line.endswith(".venv/bin/devstack serve"), "the first block installs and serves"
    commands = blocks[1][1].strip().splitlines()
    expected = blocks[2][1].strip().splitlines()
    git_commands = blocks[3][1].strip().splitlines()

    (tmp_path / "tests").symlink_to(REPO_ROOT / "tests")  # the page runs from a checkout
    bindir = tmp_path / ".venv" / "bin"
    bindir.mkdir(parents=True)
    (bindir / "devstack").symlink_to(Path(sys.executable).parent / "devstack")
    server = Serve(cwd=tmp_path, args=[])
    processes.append(server)

    printed: list[str] = []
    for command in commands:
        argv = shlex.split(command)
        assert argv[0] == ".venv/bin/devstack"
        argv += ["--url", server.url]
        done = subprocess.run(argv, cwd=tmp_path, capture_output=True, text=True, timeout=60, check=False)
        assert done.returncode == 0, (command, done.stdout, done.stderr)
        printed += done.stdout.strip().splitlines()
        if argv[1] == "replay":
            server.wait_idle()
    assert len(printed) == len(expected), (printed, expected)
    for line, documented in zip(printed, expected, strict=True):
        assert _pattern(documented).fullmatch(line), f"printed:\n{line}\ndocumented:\n{documented}"

    for command in git_commands:
        done = subprocess.run(shlex.split(command), cwd=tmp_path, capture_output=True, text=True, timeout=60,
                              check=False)
        assert done.returncode == 0, (command, done.stderr)
    shown = subprocess.run(shlex.split(git_commands[-1]), cwd=tmp_path, capture_output=True, text=True,
                           timeout=60, check=True).stdout
    assert {e["service"] for e in json.loads(shown)} == {"ledger", "payments-api"}

    [feedback] = httpx.get(server.url + "/api/feedback", timeout=10).json()
    assert "is written to the GitOps repo" in feedback["body"]  # what the page says of the comment
    assert "is deployed" not in feedback["body"]

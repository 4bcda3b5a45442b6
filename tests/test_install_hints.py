"""Every install hint installs devstack (issue 13.7).

The distribution was named ``devstack``, and ``pip install 'devstack[render]'`` (in an error message and
in docs/argocd.md) installed an unrelated PyPI project of that name. The distribution is now
``devstack-previews`` (checked free on PyPI when it was chosen; the command and the import name stay
``devstack``), and a hint either installs the checkout (``pip install -e '.[extra]'``) or names
``devstack-previews``. This test reads every place a user copies a hint from.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

from tests.conftest import REPO_ROOT

_COMMAND = re.compile(r"pip install ([^\n`()]*)")
_BARE = re.compile(r"devstack(\[[^\]]*\])?")


def wrong_hint(line: str) -> bool:
    """Whether a `pip install` on this line names the bare `devstack` distribution as a requirement."""
    for command in _COMMAND.finditer(line):
        for token in command.group(1).split():
            if _BARE.fullmatch(token.strip("'\",;")):
                return True
    return False


def _sources() -> list[Path]:
    roots = [REPO_ROOT / "service", REPO_ROOT / "docs", REPO_ROOT / "tests", REPO_ROOT / "manifests",
             REPO_ROOT / "bench", REPO_ROOT / ".ci"]
    files = [REPO_ROOT / name for name in ("README.md", "Dockerfile", "pyproject.toml", "setup.py")]
    for root in roots:
        files += [p for p in root.rglob("*") if p.is_file() and p.suffix in (".py", ".md", ".yaml", ".toml", "")
                  and ".egg-info" not in str(p) and "__pycache__" not in p.parts and "fixtures" not in p.parts]
    return [f for f in files if f.exists() and f != Path(__file__)]


def test_the_pattern_catches_the_old_hint() -> None:
    assert wrong_hint("error: pip install 'devstack[render]'")
    assert wrong_hint("run `pip install devstack` first")
    assert wrong_hint("pip install -U devstack, then")
    assert not wrong_hint("pip install 'devstack-previews[render]'")
    assert not wrong_hint("pip install -e '.[render]' (in a devstack checkout)")
    assert not wrong_hint("/opt/devstack/bin/pip install \"${wheel}[hooks]\"")


def test_no_hint_installs_the_unrelated_devstack_project() -> None:
    offenders = []
    for path in _sources():
        for number, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
            if wrong_hint(line):
                offenders.append(f"{path.relative_to(REPO_ROOT)}:{number}: {line.strip()}")
    assert offenders == []


def test_the_distribution_and_its_self_references_agree() -> None:
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    assert project["name"] == "devstack-previews"
    assert project["scripts"] == {"devstack": "devstack.cli:main"}  # the command keeps its name
    assert "devstack-previews[render,hooks,postgres]" in project["optional-dependencies"]["test"]


def test_the_render_hint_works_from_a_clone_and_from_the_index() -> None:
    from devstack.render import RENDER_EXTRA

    assert "pip install -e '.[render]'" in RENDER_EXTRA
    assert "pip install 'devstack-previews[render]'" in RENDER_EXTRA

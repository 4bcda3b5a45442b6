"""``devstack bootstrap`` against real bare remotes: one commit, idempotent, upgrades touch only the chart,
previews/ never touched, a concurrent writer is re-planned on (never forced), and the chart ships in the wheel."""

from __future__ import annotations

import importlib.metadata
import json
import shutil
import subprocess
import sys
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from devstack import __version__, bootstrap, bundle
from devstack.catalog import Settings, load_settings
from devstack.cli import main
from devstack.errors import ConfigError
from tests.conftest import REPO_ROOT, git, remote_commits

CHART = "templates/feature-release"


def tree(remote: str, ref: str = "main") -> dict[str, bytes]:
    """Every file of ``ref`` on the remote: {path: bytes}."""
    names = git(remote, "ls-tree", "-r", "--name-only", ref).split()
    return {name: subprocess.run(["git", f"--git-dir={remote}", "show", f"{ref}:{name}"], check=True,
                                 capture_output=True).stdout for name in names}


def changed_paths(remote: str, commit: str) -> set[str]:
    return set(git(remote, "diff-tree", "--no-commit-id", "--name-only", "-r", "--root", commit).split())


def other_writer(remote: str, tmp_path: Path, files: dict[str, str], *, message: str = "someone else") -> str:
    """Another writer (devstack's worker, a person) pushes ``files`` to main from a clone of its own."""
    work = tmp_path / f"other-{len(list(tmp_path.glob('other-*')))}"
    subprocess.run(["git", "clone", "-q", remote, str(work)], check=True)
    for name, text in files.items():
        (work / name).parent.mkdir(parents=True, exist_ok=True)
        (work / name).write_text(text)
    subprocess.run(["git", "-C", str(work), "add", "-A"], check=True)
    subprocess.run(["git", "-C", str(work), "commit", "-q", "-m", message], check=True)
    subprocess.run(["git", "-C", str(work), "push", "-q", "origin", "HEAD:main"], check=True)
    return subprocess.run(["git", "-C", str(work), "rev-parse", "HEAD"], check=True, capture_output=True,
                          text=True).stdout.strip()


def copy_bundle(tmp_path: Path) -> Path:
    """A copy of what devstack ships, to play a newer devstack's chart."""
    root = tmp_path / "newer"
    for relative, source in bundle.bundle_files(REPO_ROOT).items():
        (root / relative).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, root / relative)
    return root


@pytest.fixture
def settings(make_settings: Callable[..., Settings]) -> Settings:
    return make_settings(chart={"repo_url": ""})


def test_first_run_writes_everything_in_one_commit_and_the_second_changes_nothing(
    settings: Settings, bare_remote: str
) -> None:
    first = bootstrap.bootstrap(settings)
    assert first.commit is not None and first.attempts == 1 and first.chart_written
    assert remote_commits(bare_remote) == [first.commit]
    files = tree(bare_remote)
    shipped = {rel for rel in bundle.bundle_files(REPO_ROOT) if rel.startswith(CHART + "/")}
    assert {p for p in files if p.startswith(CHART + "/")} == shipped
    assert set(files) == shipped | {"argocd/appproject.yaml", "argocd/applicationset.yaml",
                                    "argocd/applicationset-namespaces.yaml", "argocd/kustomization.yaml", "README.md"}
    assert set(first.changed) == set(files)
    chart = yaml.safe_load(files[f"{CHART}/Chart.yaml"])
    assert (chart["version"], chart["appVersion"]) == (__version__, __version__)
    for rel in shipped - {f"{CHART}/Chart.yaml"}:
        assert files[rel] == (REPO_ROOT / rel).read_bytes(), rel
    # The ApplicationSets and the AppProject point at this repository, branch and folder.
    for name in ("applicationset.yaml", "applicationset-namespaces.yaml"):
        generator = yaml.safe_load(files[f"argocd/{name}"])["spec"]["generators"][0]["git"]
        assert (generator["repoURL"], generator["revision"], generator["files"]) == (
            bare_remote, "main", [{"path": "previews/*.json"}])
    project = yaml.safe_load(files["argocd/appproject.yaml"])
    assert project["spec"]["sourceRepos"] == [bare_remote, bare_remote]
    assert b"gitops.invalid" not in b"".join(files.values())
    kustomization = yaml.safe_load(files["argocd/kustomization.yaml"])
    assert sorted(kustomization["resources"]) == ["applicationset-namespaces.yaml", "applicationset.yaml",
                                                  "appproject.yaml"]
    assert b"`previews/<feature>.json`" in files["README.md"]

    second = bootstrap.bootstrap(settings)
    assert (second.commit, second.changed) == (None, ())
    assert remote_commits(bare_remote) == [first.commit]


def test_previews_and_a_readme_of_its_own_are_never_touched(
    settings: Settings, bare_remote: str, tmp_path: Path
) -> None:
    entry = json.dumps([{"feature": "login-fix"}])
    before = other_writer(bare_remote, tmp_path, {"previews/login-fix.json": entry, "README.md": "# Platform GitOps\n",
                                                  "argocd/other-app.yaml": "kind: Application\n"})
    result = bootstrap.bootstrap(settings)
    assert result.commit is not None
    files = tree(bare_remote)
    assert files["previews/login-fix.json"] == entry.encode()
    assert files["README.md"] == b"# Platform GitOps\n"
    assert files["argocd/other-app.yaml"] == b"kind: Application\n"
    assert files["DEVSTACK.md"].startswith(b"# GitOps repository of devstack")
    assert not any(p.startswith("previews/") for p in changed_paths(bare_remote, result.commit))
    assert git(bare_remote, "rev-parse", f"{result.commit}^").strip() == before


def test_an_upgrade_changes_only_the_chart_in_one_commit(settings: Settings, bare_remote: str, tmp_path: Path) -> None:
    bootstrap.bootstrap(settings)
    platform = "traefik: {entryPoints: [web]}\n"
    other_writer(bare_remote, tmp_path, {"previews/login-fix.json": "[]", f"{CHART}/values-platform.yaml": platform})
    newer = copy_bundle(tmp_path)
    (newer / CHART / "templates" / "redis.yaml").unlink()  # the new chart dropped a template ...
    (newer / CHART / "templates" / "cache.yaml").write_text("# new in 0.2.0\n")  # ... and added one
    with (newer / CHART / "values.yaml").open("a") as handle:
        handle.write("# 0.2.0\n")
    before = remote_commits(bare_remote)

    result = bootstrap.bootstrap(settings, root=newer, version="0.2.0")

    assert result.commit is not None and remote_commits(bare_remote) == [result.commit, *before]
    assert changed_paths(bare_remote, result.commit) == {
        f"{CHART}/Chart.yaml", f"{CHART}/values.yaml", f"{CHART}/templates/redis.yaml", f"{CHART}/templates/cache.yaml"}
    files = tree(bare_remote)
    assert f"{CHART}/templates/redis.yaml" not in files
    assert yaml.safe_load(files[f"{CHART}/Chart.yaml"])["appVersion"] == "0.2.0"
    assert files["previews/login-fix.json"] == b"[]"
    assert files[f"{CHART}/values-platform.yaml"] == platform.encode()  # the platform's settings stay
    assert "devstack bootstrap 0.2.0: the feature-release chart at 0.2.0" in git(
        bare_remote, "log", "-1", "--format=%B", result.commit)
    assert bootstrap.bootstrap(settings, root=newer, version="0.2.0").commit is None


def test_an_upgrade_for_review_goes_to_a_branch_and_main_stays(
    settings: Settings, bare_remote: str, tmp_path: Path
) -> None:
    first = bootstrap.bootstrap(settings)
    newer = copy_bundle(tmp_path)
    (newer / CHART / "values.yaml").write_text((newer / CHART / "values.yaml").read_text() + "# 0.2.0\n")

    result = bootstrap.bootstrap(settings, branch="devstack-0.2.0", root=newer, version="0.2.0")

    assert result.branch == "devstack-0.2.0" and result.commit is not None
    assert remote_commits(bare_remote) == [first.commit]
    assert remote_commits(bare_remote, branch="devstack-0.2.0") == [result.commit, first.commit]
    assert changed_paths(bare_remote, result.commit) == {f"{CHART}/Chart.yaml", f"{CHART}/values.yaml"}
    # Again: the branch already holds it, nothing new; and nothing on main either.
    assert bootstrap.bootstrap(settings, branch="devstack-0.2.0", root=newer, version="0.2.0").commit is None
    assert remote_commits(bare_remote) == [first.commit]
    with pytest.raises(ConfigError, match="--branch 'main'"):
        bootstrap.bootstrap(settings, branch="main")


def test_a_concurrent_writer_is_re_planned_on_never_forced(
    settings: Settings, bare_remote: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Pins the seam between commit and push: another writer pushes there; the push is rejected, bootstrap
    fetches, plans again on the new tip and pushes on top of it (no force: the other commit stays)."""
    real_push = bootstrap._push
    pushed: list[str] = []

    def push_after_someone_else(clone: Any, branch: str) -> str | None:
        if not pushed:
            pushed.append(other_writer(bare_remote, tmp_path, {"previews/login-fix.json": "[]"}, message="worker"))
        return real_push(clone, branch)

    monkeypatch.setattr(bootstrap, "_push", push_after_someone_else)
    result = bootstrap.bootstrap(settings)

    assert result.attempts == 2 and result.commit is not None
    assert remote_commits(bare_remote) == [result.commit, pushed[0]]  # linear, the other commit kept
    assert tree(bare_remote)["previews/login-fix.json"] == b"[]"
    assert "previews/login-fix.json" not in changed_paths(bare_remote, result.commit)


def test_argo_cd_gets_no_credentials_and_the_configured_names(make_settings: Callable[..., Settings]) -> None:
    settings = make_settings(gitops={"url": "https://bot:s3cr3t@git.example.com/acme/gitops.git", "branch": "live",
                                     "path": "envs"},
                             chart={"repo_url": "https://bot:s3cr3t@git.example.com/acme/charts.git"},
                             cluster={"argocd": {"namespace": "gitops"}},
                             hooks={"platform_namespace": "platform-hooks"})
    files = bootstrap.desired_files(settings)
    assert not any(path.startswith(CHART) for path in files)  # the chart lives in the other repository
    text = b"".join(files.values())
    assert b"s3cr3t" not in text and b"bot@" not in text
    project = yaml.safe_load(files["argocd/appproject.yaml"])
    assert project["spec"]["sourceRepos"] == ["https://git.example.com/acme/gitops.git",
                                              "https://git.example.com/acme/charts.git"]
    hooks_destination = {"server": "https://kubernetes.default.svc", "namespace": "platform-hooks"}
    assert hooks_destination in project["spec"]["destinations"]
    appset = yaml.safe_load(files["argocd/applicationset.yaml"])
    assert appset["metadata"]["namespace"] == "gitops"
    assert appset["spec"]["generators"][0]["git"]["revision"] == "live"
    assert appset["spec"]["generators"][0]["git"]["files"] == [{"path": "envs/*.json"}]
    assert settings.chart_repo_url == "https://git.example.com/acme/charts.git"


def test_the_filled_in_applicationsets_validate_against_the_crd(settings: Settings) -> None:
    """The ApplicationSet CRD is in ../shared; the AppProject's is not (its fields are asserted above)."""
    from tests.render_helpers import validate_manifest

    files = bootstrap.desired_files(settings)
    validated = [validate_manifest(yaml.safe_load(files[f"argocd/{name}"]))
                 for name in ("applicationset.yaml", "applicationset-namespaces.yaml")]
    assert validated == ["CRD argoproj.io/ApplicationSet", "CRD argoproj.io/ApplicationSet"]


@pytest.mark.parametrize(("chart_path", "message"), [
    ("previews/chart", "overlaps gitops.path"),
    ("argocd", "overlaps argocd/"),
    ("../chart", "must be a folder inside the repository"),
])
def test_a_chart_path_that_would_touch_previews_is_refused(
    make_settings: Callable[..., Settings], chart_path: str, message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        bootstrap.desired_files(make_settings(chart={"repo_url": "", "path": chart_path}))


def test_the_zero_config_local_mode_bootstraps_its_own_repo_and_entries_point_at_the_chart(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from devstack.runtime import open_store

    monkeypatch.chdir(tmp_path)
    settings = load_settings(None)
    with open_store(settings, workdir=tmp_path / "clone") as store:
        store.read()
    remote = str(settings.local_remote_path)
    files = tree(remote)
    chart = f"{settings.chart.path}/Chart.yaml"
    assert yaml.safe_load(files[chart])["appVersion"] == __version__
    # What an entry's chart source names exists at that revision in that repository.
    assert settings.chart_repo_url == str(settings.local_remote_path.resolve())
    assert git(settings.chart_repo_url, "cat-file", "-e", f"{settings.chart_target_revision}:{chart}") == ""
    commits = remote_commits(remote)
    assert bootstrap.up_to_date(settings, repo=settings.local_remote_path)  # the next start clones nothing
    with open_store(settings, workdir=tmp_path / "clone"):
        pass
    assert remote_commits(remote) == commits  # starting again commits nothing
    newer = load_settings(None, overrides={"gitops": {"path": "envs"}})
    assert not bootstrap.up_to_date(newer, repo=settings.local_remote_path)  # a changed config is noticed


def test_the_command_pushes_then_says_up_to_date(
    tmp_path: Path, bare_remote: str, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "devstack.yaml"
    config.write_text(yaml.safe_dump({"state_dir": str(tmp_path / "state"), "gitops": {"url": bare_remote}}))
    assert main(["bootstrap", "--config", str(config)]) == 0
    out = capsys.readouterr().out
    head = remote_commits(bare_remote)[0]
    assert out.startswith(f"pushed {head[:12]} to {bare_remote} (main): ")
    assert "next: kubectl apply -k argocd/" in out
    assert main(["bootstrap", "--config", str(config)]) == 0
    assert capsys.readouterr().out == (
        f"{bare_remote} (main) is up to date: chart {CHART} at {__version__}, argocd/ filled in. Nothing to commit.\n")


def test_an_unreachable_remote_is_one_line_without_credentials(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "devstack.yaml"
    config.write_text(yaml.safe_dump({"state_dir": str(tmp_path / "state"),
                                      "gitops": {"url": "http://bot:s3cr3t@127.0.0.1:9/acme/gitops.git"}}))
    assert main(["bootstrap", "--config", str(config)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("devstack: git fetch from http://***@127.0.0.1:9/acme/gitops.git failed: ")
    assert "s3cr3t" not in err and "Traceback" not in err


def test_the_wheel_carries_the_chart_and_argocd(tmp_path: Path) -> None:
    """The chart ships inside the package (copied at build time from the one source, templates/)."""
    setuptools_version = importlib.metadata.version("setuptools")
    if int(setuptools_version.split(".")[0]) < 77:
        pytest.skip(f"setuptools {setuptools_version} cannot build this project (>= 77): pip install -e '.[test]'")
    source = tmp_path / "src"
    shutil.copytree(REPO_ROOT, source, ignore=shutil.ignore_patterns(".venv", ".git", "*.egg-info", "build", ".*cache",
                                                                     "__pycache__", "tests", "bench", ".devstack"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                    "-w", str(tmp_path / "dist"), str(source)], check=True, capture_output=True, timeout=240)
    wheel = next((tmp_path / "dist").glob("devstack_previews-*.whl"))
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        for relative, path in bundle.bundle_files(REPO_ROOT).items():
            assert f"devstack/_bundle/{relative}" in names, relative
            assert archive.read(f"devstack/_bundle/{relative}") == path.read_bytes()
        archive.extractall(tmp_path / "site")
    found = subprocess.run(
        [sys.executable, "-S", "-c", "import sys; sys.path.insert(0, sys.argv[1]); "
         "from devstack.bundle import bundle_root; print(bundle_root())", str(tmp_path / "site")],
        check=True, capture_output=True, text=True, cwd=tmp_path).stdout.strip()
    assert found == str(tmp_path / "site" / "devstack" / "_bundle")


def test_the_platform_values_file_reaches_the_rendered_manifests(settings: Settings, tmp_path: Path) -> None:
    """Both ApplicationSets read values-platform.yaml beside the chart's values (the entry wins over it);
    without it they render with the chart's defaults (ignoreMissingValueFiles)."""
    pytest.importorskip("helm_python", reason="the render extra is not installed: pip install -e '.[render]'")
    from devstack import render
    from devstack.planner import plan
    from tests.render_helpers import mark_namespace_owner, pr_event
    from tests.render_helpers import settings as catalog

    root = copy_bundle(tmp_path)
    result = plan(events=[pr_event()], entries={}, catalog=catalog(), now=pr_event().received_at)
    elements = mark_namespace_owner(result.entries["login-fix"])

    def entry_points() -> list[list[str]]:
        apps = render.render_elements("login-fix", elements, repo_root=root)
        return [m["spec"]["entryPoints"] for a in apps for m in a.manifests if m["kind"] == "IngressRoute"]

    default = entry_points()
    assert default and all(points == ["websecure"] for points in default)
    (root / CHART / "values-platform.yaml").write_text("traefik: {entryPoints: [web-internal]}\n")
    assert all(points == ["web-internal"] for points in entry_points())

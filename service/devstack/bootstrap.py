"""``devstack bootstrap``: make the configured GitOps repository ready for Argo CD, in one commit.

What it writes (and nothing else; ``previews/`` is never staged):

* the feature-release chart at ``chart.path`` (default ``templates/feature-release``), at the version
  of this devstack (``Chart.yaml`` ``version`` and ``appVersion``); files the new chart no longer has
  are removed, except ``values-platform.yaml``, the platform's settings (never written by bootstrap);
* ``argocd/``: the two ApplicationSets and the AppProject with the repository URLs, the branch, the
  entries folder and the namespaces of this configuration filled in, and a ``kustomization.yaml``
  listing them (``kubectl apply -k argocd/``);
* ``README.md`` saying what is what (``DEVSTACK.md`` when the repository has a README of its own).

It is idempotent: the files are planned on the branch's newest commit and git decides what differs;
nothing differs, no commit. It never force-pushes: a rejected push (someone else pushed first) means
fetch, plan again on the new tip and push again, like the entry store (``gitops.py``). With
``branch=NAME`` the commit goes to a branch of its own for review (created from the GitOps branch,
or continued when it exists).

When ``chart.repo_url`` names another repository than the GitOps repository, the chart is not
written (it lives there); the ApplicationSets and the AppProject still are.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import subprocess
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import yaml

from devstack import __version__, bundle
from devstack.catalog import Settings, load_settings, public_url
from devstack.errors import ConfigError, GitError, PushRejected
from devstack.gitops import _RETRYABLE_PUSH, mask_url

MAX_ATTEMPTS = 5
TIMEOUT = 120.0
README = "README.md"
OWN_README = "DEVSTACK.md"
README_MARK = "# GitOps repository of devstack"
PLATFORM_VALUES = "values-platform.yaml"  # the platform's settings of the chart: bootstrap never touches it
ARGOCD = "argocd"
KUSTOMIZATION = "kustomization.yaml"
_PLACEHOLDER = re.compile(r"https://gitops\.invalid/\S+[^\n]*")

_README_TEXT = """\
# GitOps repository of devstack

devstack (preview environments per pull request) writes here; Argo CD reads it. Written by
`devstack bootstrap`; run it again after upgrading devstack (it changes only what it owns).

- `{entries}/<feature>.json`: one entry file per preview (a JSON list, one element per service of
  the preview). devstack writes them on every PR event; never edit them by hand.
- `{chart}/`: the feature-release Helm chart every preview Application renders. Put your platform's
  settings of it (Traefik entry points and TLS, quota, limits, the ingress controller's namespace) in
  `{chart}/values-platform.yaml`: both ApplicationSets read it, and bootstrap never overwrites it.
- `argocd/applicationset.yaml`: ApplicationSet `devstack-previews`, one Application per element of
  every entry file.
- `argocd/applicationset-namespaces.yaml`: ApplicationSet `devstack-preview-namespaces`, one
  Application per preview that owns its Namespace and guardrails.
- `argocd/appproject.yaml`: AppProject `devstack-previews`, the repositories, namespaces and kinds
  previews may use.
- `argocd/kustomization.yaml`: `kubectl apply -k argocd/` applies the three above (namespace
  `{argocd_namespace}`).

`devstack bootstrap` writes the chart and `argocd/`; it never touches `{entries}/`.
Branch `{branch}` is what Argo CD watches. devstack only fast-forwards it, never force-pushes.
Apply `argocd/` once per cluster (Argo CD needs read credentials for this repository); then every
PR of a catalog repository gets a preview. `devstack doctor` checks the whole setup.
"""


@dataclass(frozen=True, kw_only=True)
class BootstrapResult:
    """What :func:`bootstrap` did."""

    url: str
    """The GitOps repository (credentials masked)."""
    branch: str
    """The branch written (the GitOps branch, or the review branch)."""
    commit: str | None
    """The pushed commit; None when the repository already was as it should be."""
    changed: tuple[str, ...]
    """Paths added, changed or removed by the commit (sorted)."""
    attempts: int
    chart_written: bool
    """False when the chart lives in another repository (``chart.repo_url``)."""


def chart_in_gitops_repo(settings: Settings) -> bool:
    return not settings.chart.repo_url or public_url(settings.chart.repo_url) == public_url(settings.gitops_url)


def _check_layout(settings: Settings) -> PurePosixPath:
    chart = PurePosixPath(settings.chart.path.strip("/"))
    entries = PurePosixPath(settings.gitops.path)
    if not settings.chart.path.strip("/") or chart.is_absolute() or ".." in chart.parts or ".git" in chart.parts:
        raise ConfigError(f"chart.path: {settings.chart.path!r} must be a folder inside the repository")
    for other, what in ((entries, "gitops.path"), (PurePosixPath(ARGOCD), "argocd/")):
        if chart == other or other in chart.parents or chart in other.parents:
            raise ConfigError(f"chart.path {chart} overlaps {what} ({other}): give the chart a folder of its own")
    if entries == PurePosixPath(ARGOCD) or PurePosixPath(ARGOCD) in entries.parents:
        raise ConfigError(f"gitops.path {entries} is inside argocd/: keep the entries in a folder of their own")
    return chart


def _fill(name: str, text: str, replacements: list[tuple[str, str]]) -> str:
    """Replace the placeholder URL lines of ``text``, in order, with ``(url, what)``."""
    found = _PLACEHOLDER.findall(text)
    if len(found) != len(replacements):
        raise RuntimeError(f"argocd/{name}: expected {len(replacements)} placeholder URL(s), found {len(found)}")
    for url, what in replacements:
        text = _PLACEHOLDER.sub(f"{json.dumps(url)}  # {what}, written by devstack bootstrap", text, count=1)
    return text


def argocd_files(settings: Settings, *, root: Path) -> dict[str, bytes]:
    """argocd/ with this configuration filled in (comments kept: they explain each rule)."""
    gitops_url = public_url(settings.gitops_url)
    chart_url = public_url(settings.chart_repo_url)
    fill = {
        "applicationset.yaml": [(gitops_url, "the GitOps repo (gitops.url)")],
        "applicationset-namespaces.yaml": [(gitops_url, "the GitOps repo (gitops.url)")],
        "appproject.yaml": [(gitops_url, "the GitOps repo (gitops.url)"),
                            (chart_url, "the repo of the feature-release chart (chart.repo_url)")],
    }
    namespace = settings.cluster.argocd.namespace
    files: dict[str, bytes] = {}
    for name in bundle.ARGOCD_FILES:
        text = _fill(name, (root / ARGOCD / name).read_text(encoding="utf-8"), fill[name])
        text = re.sub(r"(?m)^  namespace: argocd$", f"  namespace: {namespace}", text)
        text = re.sub(r"(?m)^(\s+)revision: main\b.*$", rf"\g<1>revision: {json.dumps(settings.gitops.branch)}", text)
        text = re.sub(r'(?m)^(\s+- path: )"previews/\*\.json".*$',
                      rf"\g<1>{json.dumps(settings.gitops.path + '/*.json')}", text)
        text = re.sub(r"(?m)^(\s+namespace: )devstack-hooks$", rf"\g<1>{settings.hooks.platform_namespace}", text)
        _check_filled(name, text, settings=settings, gitops_url=gitops_url)
        files[f"{ARGOCD}/{name}"] = text.encode()
    files[f"{ARGOCD}/{KUSTOMIZATION}"] = (
        "# kubectl apply -k argocd/  (written by devstack bootstrap: the repository URLs are filled in)\n"
        "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nresources:\n"
        + "".join(f"  - {name}\n" for name in bundle.ARGOCD_FILES)
    ).encode()
    return files


def _check_filled(name: str, text: str, *, settings: Settings, gitops_url: str) -> None:
    """The filled-in file says what the configuration says (a changed upstream file fails here, loudly)."""
    document = yaml.safe_load(text)
    if document["metadata"]["namespace"] != settings.cluster.argocd.namespace:
        raise RuntimeError(f"argocd/{name}: the namespace was not filled in")
    if document["kind"] == "ApplicationSet":
        git = document["spec"]["generators"][0]["git"]
        wanted = (gitops_url, settings.gitops.branch, [f"{settings.gitops.path}/*.json"])
        if (git["repoURL"], git["revision"], [f["path"] for f in git["files"]]) != wanted:
            raise RuntimeError(f"argocd/{name}: the generator was not filled in")


def chart_files(settings: Settings, *, root: Path, version: str) -> dict[str, bytes]:
    """The feature-release chart at ``chart.path``, its Chart.yaml at ``version``."""
    chart = _check_layout(settings)
    files: dict[str, bytes] = {}
    for relative, source in bundle.bundle_files(root).items():
        if not relative.startswith(bundle.CHART + "/"):
            continue
        inner = relative[len(bundle.CHART) + 1:]
        data = source.read_bytes()
        if inner == "Chart.yaml":
            text = data.decode()
            text, versions = re.subn(r"(?m)^version: .*$", f"version: {version}", text)
            text, app_versions = re.subn(r"(?m)^appVersion: .*$", f"appVersion: {json.dumps(version)}", text)
            if (versions, app_versions) != (1, 1):
                raise RuntimeError(f"{source}: expected one version and one appVersion line")
            data = text.encode()
        files[(chart / inner).as_posix()] = data
    return files


def readme(settings: Settings) -> bytes:
    """The README (no version in it: an upgrade changes only the chart)."""
    return _README_TEXT.format(
        entries=settings.gitops.path,
        chart=settings.chart.path.strip("/"), branch=settings.gitops.branch,
        argocd_namespace=settings.cluster.argocd.namespace,
    ).encode()


def desired_files(settings: Settings, *, root: Path | None = None, version: str = __version__) -> dict[str, bytes]:
    """Everything bootstrap owns, except the README (whose name depends on the repository)."""
    root = root or bundle.bundle_root()
    _check_layout(settings)
    files = argocd_files(settings, root=root)
    if chart_in_gitops_repo(settings):
        files.update(chart_files(settings, root=root, version=version))
    return files


# --- git ------------------------------------------------------------------------------------------


class Clone:
    """A throwaway clone driven through the git CLI; credentials never appear in an error."""

    def __init__(self, *, url: str, path: Path, settings: Settings) -> None:
        self.url = url
        self.path = path
        self.env = {
            **os.environ,
            "GIT_TERMINAL_PROMPT": "0",
            "GIT_AUTHOR_NAME": settings.gitops.author_name,
            "GIT_AUTHOR_EMAIL": settings.gitops.author_email,
            "GIT_COMMITTER_NAME": settings.gitops.author_name,
            "GIT_COMMITTER_EMAIL": settings.gitops.author_email,
        }
        if not (os.environ.get("GIT_SSH_COMMAND") or os.environ.get("GIT_SSH")):
            self.env["GIT_SSH_COMMAND"] = "ssh -o BatchMode=yes"

    def run(self, *args: str, check: bool = True, input_text: str | None = None) -> subprocess.CompletedProcess[str]:
        try:
            result = subprocess.run(
                ["git", "-c", "core.hooksPath=/dev/null", "-c", "commit.gpgSign=false", *args],
                cwd=self.path, env=self.env, capture_output=True, text=True, timeout=TIMEOUT, check=False,
                input=input_text,
            )
        except subprocess.TimeoutExpired:
            raise GitError(f"git {args[0]} on {mask_url(self.url)} took longer than {TIMEOUT:.0f}s") from None
        if check and result.returncode != 0:
            raise GitError(f"git {args[0]} on {mask_url(self.url)} failed: {self.text(result)}")
        return result

    @staticmethod
    def text(result: subprocess.CompletedProcess[str]) -> str:
        return mask_url(" ".join((result.stderr + " " + result.stdout).split()))[:500]

    def show(self, commit: str, path: str) -> bytes | None:
        """The bytes of ``path`` at ``commit``; None when it is not there."""
        result = subprocess.run(["git", "cat-file", "blob", f"{commit}:{path}"], cwd=self.path, env=self.env,
                                capture_output=True, timeout=TIMEOUT, check=False)
        return result.stdout if result.returncode == 0 else None

    def fetch(self, branch: str) -> str | None:
        """Fetch ``branch``; its sha, or None when the remote has no such branch (yet)."""
        result = self.run("fetch", "--quiet", "--no-tags", "origin",
                          f"+refs/heads/{branch}:refs/remotes/origin/{branch}", check=False)
        if result.returncode != 0:
            if "couldn't find remote ref" in (result.stderr + result.stdout):
                return None
            raise GitError(f"git fetch from {mask_url(self.url)} failed: {self.text(result)}")
        return self.run("rev-parse", f"refs/remotes/origin/{branch}").stdout.strip()


@contextmanager
def temporary_clone(settings: Settings, workdir: Path | None) -> Iterator[Clone]:
    with tempfile.TemporaryDirectory(prefix="devstack-bootstrap-", dir=workdir) as tmp:
        clone = Clone(url=settings.gitops_url, path=Path(tmp), settings=settings)
        clone.run("init", "--quiet")
        clone.run("remote", "add", "origin", settings.gitops_url)
        yield clone


def _push(clone: Clone, branch: str) -> str | None:
    """Push HEAD to ``branch``, never forced. None on success, else the rejection (fetch and re-plan)."""
    result = clone.run("push", "--porcelain", "--no-verify", "origin", f"HEAD:refs/heads/{branch}", check=False)
    if result.returncode == 0:
        return None
    if _RETRYABLE_PUSH.search(result.stderr + result.stdout):  # matched before shortening: hints come first
        return clone.text(result)
    raise GitError(f"git push to {mask_url(clone.url)} failed: {clone.text(result)}")


def _write(clone: Clone, files: Mapping[str, bytes], *, owned: list[str]) -> None:
    """Replace what bootstrap owns by ``files`` (the platform's values file of the chart stays)."""
    for path in owned:
        target = clone.path / path
        if target.is_dir():
            for item in sorted(target.rglob("*"), reverse=True):
                if item.relative_to(target).as_posix() == PLATFORM_VALUES:
                    continue
                if not item.is_dir() or item.is_symlink():
                    item.unlink()
                elif not any(item.iterdir()):
                    item.rmdir()
        elif target.exists() or target.is_symlink():
            target.unlink()
    for path, data in files.items():
        target = clone.path / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)


def _readme_name(clone: Clone) -> str:
    existing = clone.path / README
    if not existing.is_file():
        return README
    try:
        head = existing.read_text(encoding="utf-8").lstrip()
    except (OSError, UnicodeDecodeError):
        return OWN_README
    return README if head.startswith(README_MARK) else OWN_README


def up_to_date(settings: Settings, *, repo: Path) -> bool:
    """Whether the local bare ``repo`` already holds what :func:`bootstrap` would write (one ``git ls-tree``
    and no clone: the zero-config mode asks this at every start)."""
    files = desired_files(settings)
    result = subprocess.run(["git", f"--git-dir={repo}", "ls-tree", "-r", "--full-tree", settings.gitops.branch],
                            capture_output=True, text=True, timeout=TIMEOUT, check=False)
    if result.returncode != 0:
        return False
    blobs = {}
    for line in result.stdout.splitlines():
        meta, _, path = line.partition("\t")
        blobs[path] = meta.split()[-1]
    if README not in blobs and OWN_README not in blobs:
        return False
    return all(blobs.get(path) == _blob_id(data) for path, data in files.items())


def _blob_id(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data, usedforsecurity=False).hexdigest()


def bootstrap(settings: Settings, *, branch: str | None = None, root: Path | None = None,
              version: str = __version__, workdir: Path | None = None) -> BootstrapResult:
    """Bring the GitOps repository to what this devstack ships; one commit, or none when it already is."""
    files = desired_files(settings, root=root, version=version)
    target = branch or settings.gitops.branch
    if branch is not None and (branch == settings.gitops.branch or not _valid_branch(branch)):
        raise ConfigError(f"--branch {branch!r}: give a new branch name other than {settings.gitops.branch!r}")
    owned = sorted({f"{ARGOCD}/{name}" for name in (*bundle.ARGOCD_FILES, KUSTOMIZATION)}
                   | ({settings.chart.path.strip("/")} if chart_in_gitops_repo(settings) else set()))
    with temporary_clone(settings, workdir) as clone:
        for attempt in range(1, MAX_ATTEMPTS + 1):
            base = clone.fetch(target) if branch else None
            if base is None:
                base = clone.fetch(settings.gitops.branch)
            if base is not None:
                clone.run("checkout", "--quiet", "--force", "-B", "bootstrap", base)
            else:
                clone.run("checkout", "--quiet", "--orphan", "bootstrap")
            clone.run("clean", "-ffdxq")
            readme_name = _readme_name(clone)
            wanted = {**files, readme_name: readme(settings)}
            _write(clone, wanted, owned=owned)
            paths = sorted({*owned, readme_name})
            clone.run("add", "--all", "--", *paths)
            changed = tuple(clone.run("diff", "--cached", "--name-only", "--no-renames").stdout.split())
            if not changed:
                return BootstrapResult(url=mask_url(settings.gitops_url), branch=target, commit=None, changed=(),
                                       attempts=attempt, chart_written=chart_in_gitops_repo(settings))
            clone.run("commit", "--quiet", "--no-verify", "-m", _message(changed, settings=settings, version=version))
            commit = clone.run("rev-parse", "HEAD").stdout.strip()
            if _push(clone, target) is None:
                return BootstrapResult(url=mask_url(settings.gitops_url), branch=target, commit=commit,
                                       changed=changed, attempts=attempt, chart_written=chart_in_gitops_repo(settings))
    raise PushRejected(f"push to {mask_url(settings.gitops_url)} rejected {MAX_ATTEMPTS} times: "
                       "another writer keeps pushing; run devstack bootstrap again")


def _valid_branch(name: str) -> bool:
    return bool(re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._/-]{0,200}", name)) and ".." not in name and \
        not name.endswith((".lock", "/", "."))


def _message(changed: tuple[str, ...], *, settings: Settings, version: str) -> str:
    chart = settings.chart.path.strip("/")
    parts = []
    if any(p == chart or p.startswith(chart + "/") for p in changed):
        parts.append(f"the feature-release chart at {version}")
    if any(p.startswith(ARGOCD + "/") for p in changed):
        parts.append("the Argo CD ApplicationSets and AppProject")
    if any(p in (README, OWN_README) for p in changed):
        parts.append("the README")
    summary = f"{len(changed)} file(s) written by devstack bootstrap."
    return f"devstack bootstrap {version}: " + ", ".join(parts) + "\n\n" + summary


# --- the command ---------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, default=None,
                        help="devstack.yaml (default: embedded defaults; DEVSTACK_* variables override either)")
    parser.add_argument("--branch", metavar="NAME", default=None,
                        help="push the commit to this new branch for review instead of the GitOps branch")


def run(args: argparse.Namespace) -> int:
    settings = load_settings(args.config)
    if not settings.gitops.url:
        from devstack.gitops import GitStore

        GitStore.init_local_remote(settings.local_remote_path, branch=settings.gitops.branch)
    result = bootstrap(settings, branch=args.branch)
    print(format_result(result, settings=settings))
    return 0


def format_result(result: BootstrapResult, *, settings: Settings) -> str:
    where = f"{result.url} ({result.branch})"
    chart = (f"chart {settings.chart.path.strip('/')} at {__version__}" if result.chart_written
             else f"chart not written: it lives in {public_url(settings.chart_repo_url)} (chart.repo_url)")
    if result.commit is None:
        return f"{where} is up to date: {chart}, argocd/ filled in. Nothing to commit."
    lines = [f"pushed {result.commit[:12]} to {where}: {len(result.changed)} file(s); {chart}"]
    if result.branch != settings.gitops.branch:
        lines.append(f"review it: open a pull request from {result.branch} into {settings.gitops.branch}")
    else:
        lines.append("next: kubectl apply -k argocd/ (from a clone of that repository), then devstack doctor")
    return "\n".join(lines)

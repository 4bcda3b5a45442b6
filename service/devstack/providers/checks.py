"""CI results as webhooks report them, translated into :class:`~devstack.events.CheckEvent`.

GitHub: ``check_run`` (a check of an app: its ``name``), ``check_suite`` (all the checks of one app:
named by the app's slug, e.g. ``github-actions``) and ``status`` (a commit status: its ``context``).
GitLab: ``Pipeline Hook``: the pipeline itself as ``pipeline`` (and as its ``name`` when it has one)
and each of its jobs by name. Every state maps to ``pending``, ``success`` or ``failure``; a state
devstack does not know is ``pending`` (it never opens a gate). Only translation here.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import datetime

from devstack.errors import BadPayload
from devstack.events import CheckEvent, Provider
from devstack.providers import Ignored
from devstack.providers.payload import field, object_at, short, string

_SHA = re.compile(r"[0-9a-fA-F]{40}")
_NAME = re.compile(r"[^\x00-\x1f\x7f]{1,200}")
_URL = re.compile(r"https?://[^\s\"'<>]{1,500}")
_FULL_NAME = re.compile(r"[A-Za-z0-9_.-]{1,100}/[A-Za-z0-9_.-]{1,100}")
_PROJECT_PATH = re.compile(r"[A-Za-z0-9_.][A-Za-z0-9_.-]{0,254}(/[A-Za-z0-9_.][A-Za-z0-9_.-]{0,254}){1,20}")
_MAX_JOBS = 500

# GitHub: check run / suite conclusions and commit status states
_GITHUB_SUCCESS = frozenset({"success", "neutral", "skipped"})
_GITHUB_FAILURE = frozenset({"failure", "cancelled", "timed_out", "action_required", "stale", "startup_failure",
                             "error"})
# GitLab: pipeline and job statuses (a skipped job does not block; a manual one waits)
_GITLAB_SUCCESS = frozenset({"success", "skipped"})
_GITLAB_FAILURE = frozenset({"failed", "canceled", "canceling"})

GITHUB_EVENTS = frozenset({"check_run", "check_suite", "status"})
GITLAB_PIPELINE_HOOK = "Pipeline Hook"


def github_check(*, event: str, delivery_id: str, payload: object, received_at: datetime) -> CheckEvent | Ignored:
    root = object_at(payload, "payload")
    repo = _github_repo(root)
    if event == "status":
        sha = _sha(root, "sha", "sha")
        name = _name(root, "context", "context")
        state = string(root, "state", "state")
        result = (name, github_state(state), _url(root.get("target_url")))
        return CheckEvent(delivery_id=delivery_id, provider=Provider.GITHUB, repo=repo, sha=sha, results=(result,),
                          received_at=received_at)
    obj = object_at(field(root, event, event), event)
    sha = _sha(obj, "head_sha", f"{event}.head_sha")
    status = string(obj, "status", f"{event}.status")
    conclusion = obj.get("conclusion")
    state = github_state(conclusion) if status == "completed" and isinstance(conclusion, str) else "pending"
    if event == "check_run":
        name = _name(obj, "name", "check_run.name")
        url = _url(obj.get("html_url")) or _url(obj.get("details_url"))
    else:
        app = object_at(field(obj, "app", "check_suite.app"), "check_suite.app")
        slug = app.get("slug") or app.get("name")
        if not isinstance(slug, str) or not _NAME.fullmatch(slug):
            raise BadPayload("check_suite.app.slug: missing or not a name")
        name, url = slug, ""
    return CheckEvent(delivery_id=delivery_id, provider=Provider.GITHUB, repo=repo, sha=sha,
                      results=((name, state, url),), received_at=received_at)


def gitlab_pipeline(*, delivery_id: str, payload: object, received_at: datetime) -> CheckEvent | Ignored:
    root = object_at(payload, "payload")
    if root.get("object_kind") != "pipeline":
        return Ignored(reason="pipeline hook without object_kind pipeline")
    attrs = object_at(field(root, "object_attributes", "object_attributes"), "object_attributes")
    project = object_at(field(root, "project", "project"), "project")
    repo = string(project, "path_with_namespace", "project.path_with_namespace")
    if not _PROJECT_PATH.fullmatch(repo):
        raise BadPayload("project.path_with_namespace: not 'group/project'")
    sha = _sha(attrs, "sha", "object_attributes.sha")
    web = project.get("web_url")
    pipeline_id = attrs.get("id")
    base = _url(web)
    pipeline_url = f"{base}/-/pipelines/{pipeline_id}" if base and isinstance(pipeline_id, int) else ""
    state = gitlab_state(string(attrs, "status", "object_attributes.status"))
    results: list[tuple[str, str, str]] = [("pipeline", state, pipeline_url)]
    name = attrs.get("name")
    if isinstance(name, str) and _NAME.fullmatch(name) and name != "pipeline":
        results.append((name, state, pipeline_url))
    builds = root.get("builds") or []
    if not isinstance(builds, list):
        raise BadPayload("builds: not a list")
    for i, build in enumerate(builds[:_MAX_JOBS]):
        job = object_at(build, f"builds[{i}]")
        job_name = _name(job, "name", f"builds[{i}].name")
        job_id = job.get("id")
        job_url = f"{base}/-/jobs/{job_id}" if base and isinstance(job_id, int) else ""
        results.append((job_name, gitlab_state(string(job, "status", f"builds[{i}].status")), job_url))
    return CheckEvent(delivery_id=delivery_id, provider=Provider.GITLAB, repo=repo, sha=sha,
                      results=tuple(_latest_per_name(results)), received_at=received_at)


def _latest_per_name(results: list[tuple[str, str, str]]) -> list[tuple[str, str, str]]:
    """One result per name: a job retried in one pipeline appears twice; failure and pending beat success
    only when no attempt succeeded (GitLab lists the newest attempt with the highest id)."""
    chosen: dict[str, tuple[str, str, str]] = {}
    for result in results:
        if result[0] not in chosen or result[1] == "success":
            chosen[result[0]] = result
    return [chosen[name] for name in sorted(chosen)]


def _github_repo(root: Mapping[str, object]) -> str:
    repository = object_at(field(root, "repository", "repository"), "repository")
    repo = string(repository, "full_name", "repository.full_name")
    if not _FULL_NAME.fullmatch(repo):
        raise BadPayload("repository.full_name: not 'owner/name'")
    return repo


def github_state(value: str) -> str:
    if value in _GITHUB_SUCCESS:
        return "success"
    if value in _GITHUB_FAILURE:
        return "failure"
    return "pending"


def gitlab_state(value: str) -> str:
    if value in _GITLAB_SUCCESS:
        return "success"
    if value in _GITLAB_FAILURE:
        return "failure"
    return "pending"


def _sha(obj: Mapping[str, object], key: str, path: str) -> str:
    value = string(obj, key, path)
    if not _SHA.fullmatch(value):
        raise BadPayload(f"{path}: not 40 hex digits")
    return value.lower()


def _name(obj: Mapping[str, object], key: str, path: str) -> str:
    value = string(obj, key, path)
    if not _NAME.fullmatch(value):
        raise BadPayload(f"{path}: not a check name ({short(value)})")
    return value


def _url(value: object) -> str:
    return value if isinstance(value, str) and _URL.fullmatch(value) else ""

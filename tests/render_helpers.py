"""Helpers of tests/test_chart.py and tests/test_appset.py: schemas, strict validation, entry builders.

* :func:`validate_manifest` validates one object strictly: Kubernetes kinds with ``kubernetes-validate``
  (strict schemas: unknown fields are errors), Traefik and Argo CD kinds against the CRD schemas in
  ``../shared/schemas/`` (made strict the way the API server's strict field validation is: unknown
  fields are errors unless the schema preserves them), plus the metadata rules no schema states
  (names, label keys and values, annotation keys).
* :func:`mark_namespace_owner` is the rule devstack's planner applies to an entry file (one element
  owns the preview namespace); :func:`pr_event` and :func:`settings` build inputs for the planner.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from devstack.catalog import Settings
from devstack.events import Provider, PullRequestEvent, PullRequestState

kubernetes_validate = pytest.importorskip(
    "kubernetes_validate", reason="the render extra is not installed: pip install -e '.[render]'"
)

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED = REPO_ROOT.parent / "shared"
CHART_DIR = REPO_ROOT / "templates" / "feature-release"
ARGOCD_DIR = REPO_ROOT / "argocd"
KUBERNETES_VERSION = "1.33"  # a version kubernetes-validate ships strict schemas for
SHA = "3f786850e387550fdab836ed7e6dc881de23001b"
RECEIVED = datetime(2026, 11, 20, 10, 0, tzinfo=UTC)

CRD_FILES = {
    ("argoproj.io", "Application"): "argocd/application-crd.yaml",
    ("argoproj.io", "ApplicationSet"): "argocd/applicationset-crd.yaml",
    ("argoproj.io", "AppProject"): "argocd/appproject-crd.yaml",
    ("traefik.io", "IngressRoute"): "traefik/traefik.io_ingressroutes.yaml",
    ("traefik.io", "Middleware"): "traefik/traefik.io_middlewares.yaml",
}
# Traefik v2 CRDs are not in ../shared: the v2 objects are checked against the v3 schemas, whose
# IngressRoute and Middleware fields are a superset of v2's (what the chart uses exists in both).
GROUP_ALIASES = {"traefik.containo.us": "traefik.io"}

_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_LABEL_NAME = re.compile(r"^[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$")
_LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")


def shared_schemas() -> Path:
    path = SHARED / "schemas"
    if not path.is_dir():
        pytest.skip(f"../shared is absent ({SHARED}): the CRD schemas are not available")
    return path


# --- strict validation ---------------------------------------------------------------------------


def _strict(schema: Any) -> Any:
    """An OpenAPI v3 CRD schema as a JSON schema that rejects unknown fields (strict field validation)."""
    if isinstance(schema, list):
        return [_strict(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    result = {key: _strict(value) for key, value in schema.items()}
    if result.pop("nullable", False) and "type" in result:
        result["type"] = [result["type"], "null"]
    if (
        "properties" in result
        and "additionalProperties" not in result
        and not result.get("x-kubernetes-preserve-unknown-fields")
    ):
        result["additionalProperties"] = False
    return result


@cache
def crd_validator(group: str, kind: str) -> jsonschema.Draft7Validator | None:
    """A strict validator for ``group/kind`` from ../shared/schemas, None when no CRD is there."""
    relative = CRD_FILES.get((GROUP_ALIASES.get(group, group), kind))
    if relative is None or not (shared_schemas() / relative).is_file():
        return None
    documents = [d for d in yaml.safe_load_all((shared_schemas() / relative).read_text()) if d]
    crd = next(d for d in documents if d.get("kind") == "CustomResourceDefinition")
    version = next(v for v in crd["spec"]["versions"] if v.get("storage", v.get("served")))
    schema = _strict(version["schema"]["openAPIV3Schema"])
    jsonschema.Draft7Validator.check_schema(schema)
    return jsonschema.Draft7Validator(schema)


def metadata_problems(obj: Mapping[str, Any]) -> list[str]:
    """What the API server would refuse in ``metadata`` (no schema carries these rules)."""
    problems: list[str] = []
    metadata = obj.get("metadata") or {}
    name = str(metadata.get("name", ""))
    name_rule = _DNS_LABEL if obj.get("kind") in {"Namespace", "Service"} else _DNS_SUBDOMAIN
    if not name or len(name) > 253 or not name_rule.match(name):
        problems.append(f"metadata.name {name!r} is not a valid name")
    if obj.get("kind") in {"Application", "Service", "Namespace"} and len(name) > 63:
        problems.append(f"metadata.name {name!r} is longer than 63")
    namespace = metadata.get("namespace")
    if namespace is not None and not (_DNS_LABEL.match(namespace) and len(namespace) <= 63):
        problems.append(f"metadata.namespace {namespace!r} is not a DNS label")
    for what in ("labels", "annotations"):
        for key, value in (metadata.get(what) or {}).items():
            prefix, _, key_name = key.rpartition("/")
            if prefix and not (len(prefix) <= 253 and _DNS_SUBDOMAIN.match(prefix)):
                problems.append(f"{what} key {key!r}: bad prefix")
            if not (len(key_name) <= 63 and _LABEL_NAME.match(key_name)):
                problems.append(f"{what} key {key!r}: bad name")
            if not isinstance(value, str):
                problems.append(f"{what} {key!r}: value is not a string")
            elif what == "labels" and not (len(value) <= 63 and _LABEL_VALUE.match(value)):
                problems.append(f"label {key}={value!r} is not a valid label value")
    return problems


def validate_manifest(obj: Mapping[str, Any]) -> str:
    """Validate ``obj`` strictly; return what it was validated against (raise on any problem)."""
    problems = metadata_problems(obj)
    assert not problems, f"{obj.get('kind')} {obj.get('metadata', {}).get('name')}: {problems}"
    group, _, _version = str(obj["apiVersion"]).rpartition("/")
    if group in {"argoproj.io", "traefik.io", "traefik.containo.us"}:
        validator = crd_validator(group, obj["kind"])
        if validator is None:
            pytest.fail(f"no CRD schema for {obj['apiVersion']} {obj['kind']} in ../shared")
        errors = sorted(validator.iter_errors(dict(obj)), key=lambda e: list(e.absolute_path))
        assert not errors, f"{obj['kind']}: " + "; ".join(
            f"{'/'.join(map(str, e.absolute_path))}: {e.message[:200]}" for e in errors[:5]
        )
        return f"CRD {GROUP_ALIASES.get(group, group)}/{obj['kind']}"
    try:
        kubernetes_validate.validate(dict(obj), KUBERNETES_VERSION, strict=True)
    except kubernetes_validate.ValidationError as exc:
        path = "/".join(str(p) for p in exc.absolute_path)
        pytest.fail(f"{obj['kind']} {obj['metadata'].get('name')}: {path}: {exc.message[:300]}")
    return f"Kubernetes {KUBERNETES_VERSION} (strict)"


def validate_all(objects: Iterable[Mapping[str, Any]]) -> list[str]:
    return [validate_manifest(obj) for obj in objects]


# --- inputs of the planner -----------------------------------------------------------------------


def settings(**services: dict[str, Any]) -> Settings:
    """A catalog on the example domain; ``services`` replace the default two."""
    catalog = services or {
        "payments-api": {
            "repo": "acme/payments", "image": "ghcr.io/acme/payments-api", "port": 8080,
            "base_host": "payments-api.example.com", "env": {"LOG_LEVEL": "debug", "QUOTE": 'a "b" <c>'},
        },
        "ledger": {"repo": "acme/ledger", "image": "ghcr.io/acme/ledger", "port": 9000},
    }
    return Settings(
        domain="preview.example.com",
        gitops={"url": "https://git.example.com/acme/gitops.git"},
        services=catalog,
        ttl={"default": "72h", "max": None},
    )


def pr_event(
    *, repo: str = "acme/payments", number: int = 42, branch: str = "login-fix", sha: str = SHA,
    labels: tuple[str, ...] = (), author: str = "octocat",
) -> PullRequestEvent:
    return PullRequestEvent(
        delivery_id=f"delivery-{repo}-{number}",
        provider=Provider.GITHUB,
        action="opened",
        repo=repo,
        number=number,
        url=f"https://github.com/{repo}/pull/{number}",
        title="A change",
        author=author,
        head_sha=sha,
        head_branch=branch,
        base_branch="main",
        state=PullRequestState.OPEN,
        labels=labels,
        received_at=RECEIVED,
    )


def mark_namespace_owner(elements: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The planner's rule: exactly one element per entry file carries ``values.namespaceOwner: "true"``,
    the one with the latest expiry ("never" is the latest; ties: the first service by name), so the
    namespace Application carries the expiry of the whole stack."""
    marked = copy.deepcopy(elements)
    for element in marked:
        element["values"].pop("namespaceOwner", None)
    by_service = sorted(marked, key=lambda e: str(e["service"]))
    owner = max(by_service, key=lambda e: "9999" if e["expiresAt"] == "never" else str(e["expiresAt"]))
    owner["values"]["namespaceOwner"] = "true"
    return marked


# --- a small kustomize ---------------------------------------------------------------------------


def _pointer(path: str) -> list[str]:
    return [part.replace("~1", "/").replace("~0", "~") for part in path.lstrip("/").split("/")]


def _walk(node: Any, parts: list[str]) -> Any:
    for part in parts:
        node = node[int(part)] if isinstance(node, list) else node[part]
    return node


def _selected(obj: Mapping[str, Any], selector: Mapping[str, Any]) -> bool:
    group = str(obj["apiVersion"]).rpartition("/")[0]
    wanted = (selector.get("kind", obj["kind"]), selector.get("name", obj["metadata"]["name"]),
              selector.get("group", group))
    return bool(wanted == (obj["kind"], obj["metadata"]["name"], group))


def kustomize_build(directory: Path) -> list[dict[str, Any]]:
    """``kustomize build`` for what argocd/kustomization.yaml uses: resources, JSON 6902 ``replace``
    patches with a target, and replacements (patches run first, as in kustomize). Anything else is an
    error, so a kustomization that outgrows this is noticed."""
    kustomization = yaml.safe_load((directory / "kustomization.yaml").read_text())
    unknown = set(kustomization) - {"apiVersion", "kind", "resources", "patches", "replacements"}
    assert not unknown, f"kustomize_build does not implement {unknown}"
    objects: list[dict[str, Any]] = []
    for resource in kustomization["resources"]:
        objects.extend(d for d in yaml.safe_load_all((directory / resource).read_text()) if d)
    for patch in kustomization.get("patches") or []:
        targets = [o for o in objects if _selected(o, patch["target"])]
        assert len(targets) == 1, f"patch target {patch['target']} selects {len(targets)} objects"
        for operation in yaml.safe_load(patch["patch"]):
            assert operation["op"] == "replace", operation
            parts = _pointer(operation["path"])
            parent = _walk(targets[0], parts[:-1])
            key: Any = int(parts[-1]) if isinstance(parent, list) else parts[-1]
            _ = parent[key]  # replace needs an existing field
            parent[key] = operation["value"]
    for replacement in kustomization.get("replacements") or []:
        source = replacement["source"]
        sources = [o for o in objects if _selected(o, source)]
        assert len(sources) == 1, f"replacement source {source} selects {len(sources)} objects"
        value = _walk(sources[0], source["fieldPath"].split("."))
        for target in replacement["targets"]:
            selected = [o for o in objects if _selected(o, target["select"])]
            assert selected, f"replacement target {target['select']} selects nothing"
            for obj in selected:
                for field_path in target["fieldPaths"]:
                    parts = field_path.split(".")
                    parent = _walk(obj, parts[:-1])
                    key = int(parts[-1]) if isinstance(parent, list) else parts[-1]
                    _ = parent[key]  # the target field must exist
                    parent[key] = copy.deepcopy(value)
    return objects

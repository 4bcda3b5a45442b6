"""argocd/: the ApplicationSets expanded for the entries the planner writes, the way Argo CD does it
(git files generator parameters, Go templates with sprig and missingkey=error through Helm's engine,
templatePatch), every Application validated against the Application CRD, the manifests rendered and
validated; the AppProject and the kustomization; and ``devstack render``."""

from __future__ import annotations

import copy
import json
import re
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from devstack import entries, naming
from devstack.hooks.config import HooksSettings
from devstack.planner import plan
from tests.render_helpers import (
    ARGOCD_DIR,
    CHART_DIR,
    REPO_ROOT,
    SHA,
    SHARED,
    kustomize_build,
    pr_event,
    settings,
    validate_all,
    validate_manifest,
)

pytest.importorskip("helm_python", reason="the render extra is not installed: pip install -e '.[render]'")
from devstack import render

SERVICES = ARGOCD_DIR / "applicationset.yaml"
NAMESPACES = ARGOCD_DIR / "applicationset-namespaces.yaml"
GITOPS_URL = "https://git.example.com/acme/gitops.git"
HOSTILE_BRANCH = '../../etc/passwd\n{{ .Values }}: "x"'


def load(path: Path) -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(path.read_text())
    return loaded


def planned(*events: Any, catalog: Any = None) -> dict[str, list[dict[str, Any]]]:
    """Entry files as the planner writes them (validated like the worker does, namespace owner included)."""
    result = plan(events=list(events), entries={}, catalog=catalog or settings(), now=events[0].received_at)
    for feature, elements in result.entries.items():
        entries.validate(feature, elements)
    return result.entries


def filename(feature: str) -> str:
    return f"previews/{naming.entry_filename(feature)}"


# --- the ApplicationSets, the AppProject, the kustomization --------------------------------------


@pytest.mark.parametrize("path", [SERVICES, NAMESPACES], ids=lambda p: p.name)
def test_applicationsets_validate_and_keep_the_rules(path: Path) -> None:
    appset = load(path)
    assert validate_manifest(appset) == "CRD argoproj.io/ApplicationSet"
    spec = appset["spec"]
    assert spec["goTemplate"] is True and spec["goTemplateOptions"] == ["missingkey=error"]
    [generator] = spec["generators"]
    assert generator["git"]["files"] == [{"path": "previews/*.json"}]
    assert "values" not in generator["git"]  # it would replace the element's own `values`
    template = spec["template"]
    assert template["spec"]["project"] == "devstack-previews"  # fixed, never templated
    assert template["metadata"]["finalizers"] == ["resources-finalizer.argocd.argoproj.io"]
    assert template["spec"]["syncPolicy"]["automated"] == {"prune": True, "selfHeal": True}
    assert template["spec"]["destination"] == {
        "server": "https://kubernetes.default.svc", "namespace": "{{ .namespace }}",
    }
    # The patch is parsed as YAML after rendering: it may print nothing but toJson output (and decide on
    # whether the element is in dev mode).
    actions = re.findall(r"{{(.*?)}}", spec["templatePatch"], flags=re.S)
    allowed = {"toJson .values", "toJson .service", '- if hasKey . "dev"', "- end"}
    assert actions and all(action.strip() in allowed for action in actions), actions
    # Label values come only from fields that are valid label values.
    for value in template["metadata"]["labels"].values():
        fields = set(re.findall(r"\.([a-zA-Z.]+)", value))
        assert fields <= {"feature", "service", "source.provider", "source.number", "source.sha"}, value


def test_strict_crd_validation_can_fail() -> None:
    appset = load(SERVICES)
    appset["spec"]["template"]["spec"]["syncPolicy"]["automated"]["purge"] = True
    with pytest.raises(AssertionError, match="purge"):
        validate_manifest(appset)


def test_appproject_allows_only_preview_namespaces_and_what_the_chart_renders() -> None:
    project = load(ARGOCD_DIR / "appproject.yaml")
    assert project["kind"] == "AppProject" and project["metadata"]["name"] == "devstack-previews"
    if (SHARED / "schemas" / "argocd" / "appproject-crd.yaml").is_file():
        validate_manifest(project)
    spec = project["spec"]
    # Besides the previews, only the platform namespace of the provisioning hooks (docs/hooks.md).
    assert spec["destinations"] == [
        {"server": "https://kubernetes.default.svc", "namespace": "preview-*"},
        {"server": "https://kubernetes.default.svc", "namespace": HooksSettings().platform_namespace},
    ]
    assert spec["clusterResourceWhitelist"] == [{"group": "", "kind": "Namespace"}]
    assert len(spec["sourceRepos"]) == 2 and "*" not in spec["sourceRepos"]
    allowed = {(item["group"], item["kind"]) for item in spec["namespaceResourceWhitelist"]}
    assert "namespaceResourceBlacklist" not in spec and "*" not in {kind for _, kind in allowed}
    # Everything the chart renders is allowed (else Argo CD refuses the sync).
    helm = pytest.importorskip("helm_python")
    values = {
        "feature": "f", "service": "s", "namespace": "preview-f", "image": {"repository": "r", "tag": "t"},
        "port": 80, "host": "f--s.example.com", "baseHost": "s.example.com", "expiresAt": "never",
        "rbac": {"groups": ["g"]},
    }
    for version in ("v3", "v2"):
        for component in ("service", "namespace"):
            with helm.Chart.load(CHART_DIR) as chart:
                files = chart.render(values={**values, "component": component, "traefik": {"version": version}},
                                     name="s", namespace="preview-f")
            for obj in (d for text in files.values() for d in yaml.safe_load_all(text) if d):
                group = obj["apiVersion"].rpartition("/")[0]
                if obj["kind"] == "Namespace":
                    continue
                assert (group, obj["kind"]) in allowed, obj["kind"]


def test_kustomization_sets_exactly_the_two_urls(tmp_path: Path) -> None:
    kustomization = (ARGOCD_DIR / "kustomization.yaml").read_text()
    assert [line.strip() for line in kustomization.splitlines() if line.strip().startswith("value:")] == [
        f"value: {GITOPS_URL}", f"value: {GITOPS_URL}",
    ]
    built = kustomize_build(ARGOCD_DIR)
    assert sorted((o["kind"], o["metadata"]["name"]) for o in built) == [
        ("AppProject", "devstack-previews"),
        ("ApplicationSet", "devstack-preview-namespaces"),
        ("ApplicationSet", "devstack-previews"),
    ]
    assert "gitops.invalid" not in json.dumps(built)  # every placeholder was replaced
    for obj in built:
        if obj["kind"] == "ApplicationSet":
            assert obj["spec"]["generators"][0]["git"]["repoURL"] == GITOPS_URL
            validate_manifest(obj)
        else:
            assert obj["spec"]["sourceRepos"] == [GITOPS_URL, GITOPS_URL]
    # Changing the two values changes everything that depends on them.
    other = (
        kustomization.replace(f"value: {GITOPS_URL}", "value: https://git.example.com/acme/other-gitops.git", 1)
        .replace(f"value: {GITOPS_URL}", "value: https://git.example.com/acme/charts.git", 1)
    )
    copy_dir = tmp_path
    for path in ARGOCD_DIR.glob("*.yaml"):
        (copy_dir / path.name).write_text(path.read_text())
    (copy_dir / "kustomization.yaml").write_text(other)
    repos = {o["metadata"]["name"]: o for o in kustomize_build(copy_dir)}
    assert repos["devstack-previews"]["spec"].get("generators", [{}])[0]["git"]["repoURL"] == (
        "https://git.example.com/acme/other-gitops.git"
    )
    assert repos["devstack-preview-namespaces"]["spec"]["generators"][0]["git"]["repoURL"] == (
        "https://git.example.com/acme/other-gitops.git"
    )
    project = next(o for o in kustomize_build(copy_dir) if o["kind"] == "AppProject")
    assert project["spec"]["sourceRepos"] == [
        "https://git.example.com/acme/other-gitops.git", "https://git.example.com/acme/charts.git",
    ]


# --- expanding entries the planner writes --------------------------------------------------------


SCENARIOS: dict[str, list[Any]] = {
    "one-repo-base-host-env": [pr_event()],
    "forever": [pr_event(labels=("devstack/ttl:forever",))],
    "hostile-branch": [pr_event(branch=HOSTILE_BRANCH)],
    "multi-repo-stack": [
        pr_event(labels=("devstack/feature:checkout",)),
        pr_event(repo="acme/ledger", number=7, branch="ledger-change", sha="b" * 40,
                 labels=("devstack/feature:checkout", "devstack/ttl:5d")),
    ],
}


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_planner_entries_expand_to_valid_applications_and_manifests(scenario: str) -> None:
    files = planned(*SCENARIOS[scenario])
    assert len(files) == 1
    [(feature, elements)] = files.items()
    apps = render.render_elements(feature, elements, repo_root=REPO_ROOT)
    services = [a for a in apps if a.applicationset == "devstack-previews"]
    namespaces = [a for a in apps if a.applicationset == "devstack-preview-namespaces"]
    assert len(services) == len(elements) and len(namespaces) == 1
    for rendered, element in zip(services, elements, strict=True):
        app = rendered.application
        assert validate_manifest(app) == "CRD argoproj.io/Application"
        metadata, spec = app["metadata"], app["spec"]
        assert metadata["name"] == element["app"] and metadata["namespace"] == "argocd"
        assert metadata["labels"]["devstack.io/feature"] == feature
        assert metadata["labels"]["devstack.io/service"] == element["service"]
        assert metadata["labels"]["devstack.io/pr"] == element["source"]["number"]
        assert metadata["labels"]["devstack.io/sha"] == element["source"]["sha"]
        assert metadata["annotations"]["devstack.io/repo"] == element["source"]["repo"]
        assert metadata["annotations"]["devstack.io/pr-url"] == element["source"]["url"]
        assert metadata["annotations"]["devstack.io/branch"] == element["source"]["branch"]
        assert metadata["annotations"]["devstack.io/entry"] == filename(feature)
        assert metadata["finalizers"] == ["resources-finalizer.argocd.argoproj.io"]
        assert spec["project"] == "devstack-previews"
        assert spec["destination"]["namespace"] == element["namespace"] == f"preview-{feature}"
        assert spec["source"]["repoURL"] == GITOPS_URL and spec["source"]["path"] == "templates/feature-release"
        assert spec["source"]["helm"]["valuesObject"] == element["values"]  # numbers stay numbers
        assert spec["source"]["helm"]["parameters"] == [{"name": "component", "value": "service"}]
        kinds = [m["kind"] for m in rendered.manifests]
        assert kinds == ["Service", "Deployment", "Middleware", "IngressRoute"]
        validate_all(rendered.manifests)
        route = rendered.manifests[-1]["spec"]["routes"][0]
        assert route["match"] == f"Host(`{feature}--{element['service']}.preview.example.com`)"
    [owner] = namespaces
    owner_element = next(e for e in elements if e["values"].get("namespaceOwner") == "true")
    assert owner.application["metadata"]["name"] == f"{feature}--namespace"
    assert owner.application["spec"]["source"]["helm"]["parameters"] == [
        {"name": "component", "value": "namespace"}
    ]
    validate_manifest(owner.application)
    validate_all(owner.manifests)
    namespace = owner.manifests[0]
    assert namespace["kind"] == "Namespace" and namespace["metadata"]["name"] == f"preview-{feature}"
    latest = max(elements, key=lambda e: "9999" if e["expiresAt"] == "never" else e["expiresAt"])
    assert owner_element["expiresAt"] == latest["expiresAt"]
    assert namespace["metadata"]["annotations"]["devstack.io/expires-at"] == latest["expiresAt"]
    assert ("janitor/expires" in namespace["metadata"]["annotations"]) is (latest["expiresAt"] != "never")


def test_hostile_branch_stays_data() -> None:
    [(feature, elements)] = planned(pr_event(branch=HOSTILE_BRANCH)).items()
    assert naming.is_feature_name(feature) and feature.startswith("etc-passwd-values-x-")
    apps = render.render_elements(feature, elements, repo_root=REPO_ROOT)
    app = apps[0].application
    branch = app["metadata"]["annotations"]["devstack.io/branch"]
    assert branch == elements[0]["source"]["branch"]
    assert "{{ .Values }}" in branch  # printed as text, never evaluated
    for rendered in apps:
        for manifest in rendered.manifests:
            text = json.dumps(manifest)
            assert "{{" not in text and "etc/passwd" not in text
        assert rendered.application["spec"]["project"] == "devstack-previews"


def test_namespace_application_only_for_the_marked_element() -> None:
    [(feature, elements)] = planned(pr_event()).items()
    unmarked = copy.deepcopy(elements[0])
    del unmarked["values"]["namespaceOwner"]
    with pytest.raises(render.NotSelected):
        render.expand_applicationset(unmarked, appset_path=NAMESPACES, filename=filename(feature))
    app = render.expand_applicationset(unmarked, appset_path=SERVICES, filename=filename(feature))
    assert app["metadata"]["name"] == elements[0]["app"]


def test_element_missing_a_key_is_an_error_not_an_empty_string() -> None:
    [(feature, elements)] = planned(pr_event()).items()
    broken = copy.deepcopy(elements[0])
    del broken["source"]["sha"]
    with pytest.raises(render.RenderError, match='map has no entry for key "sha"'):
        render.expand_applicationset(broken, appset_path=SERVICES, filename=filename(feature))


def test_file_outside_the_generator_glob_is_refused() -> None:
    [(_, elements)] = planned(pr_event()).items()
    with pytest.raises(render.RenderError, match="not matched"):
        render.expand_applicationset(elements[0], appset_path=SERVICES, filename="elsewhere/login-fix.json")


def test_template_patch_cannot_change_the_project(tmp_path: Path) -> None:
    appset = load(SERVICES)
    appset["spec"]["templatePatch"] = "spec:\n  project: '{{ .feature }}'\n  revisionHistoryLimit: 1\n"
    path = tmp_path / "appset.yaml"
    path.write_text(yaml.safe_dump(appset))
    [(feature, elements)] = planned(pr_event()).items()
    app = render.expand_applicationset(elements[0], appset_path=path, filename=filename(feature))
    assert app["spec"]["project"] == "devstack-previews" and app["spec"]["revisionHistoryLimit"] == 1


# --- the Go template engine: Argo CD's semantics through Helm ------------------------------------


def test_go_template_semantics_match_argo_cd() -> None:
    params = render.generator_params(
        {"port": 8080, "big": 1000000, "name": "a<b>", "list": ["x", "y"], "nested": {"k": "v"}},
        filename="previews/login-fix.json",
    )
    texts = [
        "{{ .port }} {{ .big }}",                       # JSON numbers are float64: 1e+06, like Argo CD
        '{{ range .list }}{{ $.nested.k }}{{ . }}{{ end }}',  # $ is the parameters
        "{{ toJson .name }}",                           # Go's JSON escaping
        "{{ .path.path }}|{{ .path.basename }}|{{ .path.filename }}|{{ .path.filenameNormalized }}"
        "|{{ .path.basenameNormalized }}|{{ join \"/\" .path.segments }}",
        '{{ .nested.k | upper }} {{ hasKey . "missing" }}',  # sprig; a missing key is only safe via hasKey
    ]
    assert render.go_template(texts, params, missingkey_error=True) == [
        "8080 1e+06", "vxvy", '"a\\u003cb\\u003e"',
        "previews|previews|login-fix.json|login-fix.json|previews|previews", "V false",
    ]


def test_missingkey_error_is_the_engines_strict_mode() -> None:
    """helm_render's undocumented "strict" option is what gives missingkey=error: keep it working."""
    with pytest.raises(render.RenderError, match='map has no entry for key "nope"'):
        render.go_template(["{{ .nope }}"], {"yes": 1}, missingkey_error=True)
    # Without the option, Go's default: Argo CD prints "<no value>" too.
    assert render.go_template(["[{{ .nope }}]"], {"yes": 1}, missingkey_error=False) == ["[<no value>]"]


def test_path_params_and_selectors() -> None:
    assert render.path_params("previews/Login_Fix.json") == {
        "path": "previews", "basename": "previews", "filename": "Login_Fix.json",
        "basenameNormalized": "previews", "filenameNormalized": "login-fix.json", "segments": ["previews"],
    }
    assert render.path_params("top.json")["path"] == "." and render.path_params("a/b/c.json")["segments"] == ["a", "b"]
    params = {"values": {"namespaceOwner": "true", "port": 1000000}, "tags": ["a"], "on": True}
    assert render.flatten_params(params) == {
        "values.namespaceOwner": "true", "values.port": "1e+06", "tags.0": "a", "on": "true",
    }
    assert render.selector_matches({"matchLabels": {"values.namespaceOwner": "true"}}, params)
    assert not render.selector_matches({"matchLabels": {"values.namespaceOwner": "false"}}, params)
    assert render.selector_matches({"matchExpressions": [{"key": "tags.0", "operator": "In", "values": ["a"]}]}, params)
    assert not render.selector_matches({"matchExpressions": [{"key": "x", "operator": "Exists"}]}, params)


# --- render_entry_file, format_render, the CLI ---------------------------------------------------


def write_entry(tmp_path: Path, feature: str, elements: list[dict[str, Any]]) -> Path:
    path = tmp_path / "previews" / naming.entry_filename(feature)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(entries.encode(elements))
    return path


def test_render_entry_file_and_its_yaml_stream(tmp_path: Path) -> None:
    [(feature, elements)] = planned(pr_event()).items()
    rendered = render.render_entry_file(write_entry(tmp_path, feature, elements), repo_root=REPO_ROOT)
    documents = list(yaml.safe_load_all(render.format_render(rendered)))
    assert [d["kind"] for d in documents] == [
        "Application", "Service", "Deployment", "Middleware", "IngressRoute",
        "Application", "Namespace", "NetworkPolicy", "ResourceQuota", "LimitRange",
    ]
    assert [d["metadata"]["name"] for d in documents if d["kind"] == "Application"] == [
        "login-fix---payments-api", "login-fix--namespace",
    ]
    validate_all(documents)


def run_cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    from devstack.cli import main

    code = main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_cli_renders_an_entry_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    [(feature, elements)] = planned(pr_event()).items()
    path = write_entry(tmp_path, feature, elements)
    code, out, err = run_cli(["render", str(path), "--repo-root", str(REPO_ROOT)], capsys)
    assert code == 0, err
    assert "match: Host(`login-fix--payments-api.preview.example.com`)" in out
    assert "match: Host(`payments-api.example.com`) && Header(`x-devstack-feature`, `login-fix`)" in out
    assert "# previews/login-fix.json[0] -> Application login-fix---payments-api" in out


def test_cli_refuses_an_invalid_entry(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    [(feature, elements)] = planned(pr_event()).items()
    elements[0]["values"]["port"] = "8080; rm -rf /"
    code, out, err = run_cli(["render", str(write_entry(tmp_path, feature, elements)),
                              "--repo-root", str(REPO_ROOT)], capsys)
    assert code == 1 and out == ""
    assert "login-fix.json: 0/values/port" in err


def test_cli_without_helm_says_how_to_install_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    [(feature, elements)] = planned(pr_event()).items()
    path = write_entry(tmp_path, feature, elements)
    monkeypatch.setitem(sys.modules, "helm_python", None)  # import helm_python now raises ImportError
    code, out, err = run_cli(["render", str(path), "--repo-root", str(REPO_ROOT)], capsys)
    assert code == 2 and out == ""
    assert "pip install -e '.[render]'" in err


def test_cli_needs_an_entry_file_or_an_event(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_cli(["render", "--repo-root", str(REPO_ROOT)], capsys)
    assert code == 2 and "ENTRY_FILE or --event" in err


def _config(tmp_path: Path, services: dict[str, Any]) -> Path:
    path = tmp_path / "devstack.yaml"
    path.write_text(yaml.safe_dump({
        "domain": "preview.example.com", "gitops": {"url": GITOPS_URL}, "state_dir": str(tmp_path / "state"),
        "services": services,
    }))
    return path


def test_cli_dry_run_from_a_payload(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    payload = REPO_ROOT / "tests" / "fixtures" / "github" / "pull_request.opened.json"
    config = _config(tmp_path, {"payments-api": {"repo": "acme/payments", "image": "ghcr.io/acme/payments-api",
                                                 "base_host": "payments-api.example.com"}})
    code, out, err = run_cli(["render", "--event", str(payload), "--event-name", "pull_request",
                              "--config", str(config), "--repo-root", str(REPO_ROOT)], capsys)
    assert code == 0, err
    documents = list(yaml.safe_load_all(out))
    app = documents[0]
    assert app["kind"] == "Application" and app["metadata"]["labels"]["devstack.io/pr"] == "42"
    head = json.loads(payload.read_text())["pull_request"]["head"]
    assert app["metadata"]["annotations"]["devstack.io/sha"] == head["sha"]
    route = next(d for d in documents if d["kind"] == "IngressRoute")
    assert [r["match"] for r in route["spec"]["routes"]][:2] == [
        "Host(`login-fix--payments-api.preview.example.com`)",
        "Host(`payments-api.example.com`) && Header(`x-devstack-feature`, `login-fix`)",
    ]
    validate_all(documents)


def test_cli_dry_run_explains_why_nothing_is_deployed(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    payload = REPO_ROOT / "tests" / "fixtures" / "github" / "pull_request.opened.json"
    config = _config(tmp_path, {"other": {"repo": "acme/other", "image": "ghcr.io/acme/other"}})
    code, out, err = run_cli(["render", "--event", str(payload), "--config", str(config),
                              "--repo-root", str(REPO_ROOT)], capsys)
    assert code == 1 and out == "" and "no preview" in err


@pytest.mark.shared
def test_cli_dry_run_from_a_recorded_github_payload(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    payload = SHARED / "fixtures" / "github-webhooks" / "pull_request.opened.6.json"
    if not payload.is_file():
        pytest.skip(f"../shared is absent ({SHARED}): recorded payloads are not available")
    config = _config(tmp_path, {"drone-test": {"repo": "bradrydzewski/drone-test-go",
                                               "image": "registry.example.com/drone-test"}})
    code, out, err = run_cli(["render", "--event", str(payload), "--config", str(config),
                              "--repo-root", str(REPO_ROOT)], capsys)
    assert code == 0, err
    documents = list(yaml.safe_load_all(out))
    assert documents[0]["metadata"]["name"] == "master---drone-test"
    validate_all(documents)
    # Either the planner marked the namespace owner, or the output says there is no namespace Application.
    names = [d["metadata"]["name"] for d in documents if d["kind"] == "Application"]
    assert ("master--namespace" in names) is ("no element has values.namespaceOwner" not in out)


def test_sha_label_is_valid_for_sha256_repositories() -> None:
    [(feature, elements)] = planned(pr_event(sha="c" * 64)).items()
    app = render.expand_applicationset(elements[0], appset_path=SERVICES, filename=filename(feature))
    assert app["metadata"]["labels"]["devstack.io/sha"] == "c" * 63
    assert app["metadata"]["annotations"]["devstack.io/sha"] == "c" * 64
    validate_manifest(app)
    assert SHA not in json.dumps(app)

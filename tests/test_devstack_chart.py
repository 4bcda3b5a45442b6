"""manifests/helm/devstack, devstack's own chart, rendered and linted with the real Helm engine; every
object validated strictly (Kubernetes schemas). The ServiceMonitor's CRD schema is not in ../shared:
its structure is checked by hand here (the fields Prometheus Operator needs, and that they point at
the Service's port and labels)."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from devstack import __version__
from devstack.catalog import load_settings
from tests.kube_stand_in import KubeStandIn
from tests.render_helpers import REPO_ROOT, validate_all

helm = pytest.importorskip("helm_python", reason="the render extra is not installed: pip install -e '.[render]'")

CHART = REPO_ROOT / "manifests" / "helm" / "devstack"
NAMESPACE = "devstack"


def render(values: dict[str, Any] | None = None, *, name: str = "devstack") -> list[dict[str, Any]]:
    with helm.Chart.load(CHART) as chart:
        files = chart.render(values=values or {}, name=name, namespace=NAMESPACE, is_install=True)
    return [doc for path in sorted(files) if not path.endswith("NOTES.txt")
            for doc in yaml.safe_load_all(files[path]) if doc]


def one(objects: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    found = [o for o in objects if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)]
    assert len(found) == 1, f"{len(found)} {kind} {name or ''}: {[o['kind'] for o in objects]}"
    return found[0]


def config_of(objects: list[dict[str, Any]]) -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(one(objects, "ConfigMap")["data"]["devstack.yaml"])
    return data


def container(objects: list[dict[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = one(objects, "Deployment")["spec"]["template"]["spec"]["containers"][0]
    return result


EVERYTHING = {"serviceMonitor": {"enabled": True, "labels": {"release": "prometheus"}},
              "githubAppKey": {"secretName": "devstack-github-app"},
              "ingress": {"className": "traefik", "annotations": {"cert-manager.io/cluster-issuer": "letsencrypt"}}}


@pytest.mark.parametrize("values", [{}, EVERYTHING, {"ingress": {"enabled": False}, "networkPolicy": {"enabled": False},
                                                    "rbac": {"create": False}, "serviceAccount": {"create": False}},
                                    {"journal": {"postgresql": True, "replicas": 3}}])
def test_lint_is_clean_and_every_object_validates_strictly(values: dict[str, Any]) -> None:
    report = helm.lint(CHART, values, strict=True, namespace=NAMESPACE)
    serious = [m for m in report["messages"] if m["severity"] >= 2]
    assert not report["errors"] and not serious, report
    objects = render(values)
    kubernetes = [o for o in objects if o["kind"] != "ServiceMonitor"]
    assert set(validate_all(kubernetes)) == {"Kubernetes 1.33 (strict)"}


def test_the_default_install() -> None:
    objects = render()
    kinds = sorted(o["kind"] for o in objects)
    assert kinds == sorted(["ConfigMap", "Deployment", "Ingress", "NetworkPolicy", "PersistentVolumeClaim",
                            "PodDisruptionBudget", "Role", "Role", "RoleBinding", "RoleBinding", "Service",
                            "ServiceAccount"])
    assert {o["metadata"]["namespace"] for o in objects if o["kind"] != "Role" and o["kind"] != "RoleBinding"} == {
        NAMESPACE}
    assert one(objects, "Role", "devstack")["metadata"]["namespace"] == "argocd"


def test_the_image_is_set_in_one_place_and_is_the_hooks_default() -> None:
    objects = render({"image": {"repository": "registry.acme.dev/devstack", "tag": "0.1.0-acme"}})
    assert container(objects)["image"] == "registry.acme.dev/devstack:0.1.0-acme"
    assert config_of(objects)["hooks"]["image"] == {"repository": "registry.acme.dev/devstack", "tag": "0.1.0-acme"}
    default = render()
    assert container(default)["image"] == f"registry.example.com/platform/devstack:{__version__}"
    assert config_of(default)["hooks"]["image"]["tag"] == __version__
    # config may still set the hooks' image explicitly
    explicit = render({"config": {"hooks": {"image": {"repository": "ghcr.io/acme/hooks", "tag": "1"}}}})
    assert config_of(explicit)["hooks"]["image"] == {"repository": "ghcr.io/acme/hooks", "tag": "1"}


def test_the_rendered_configuration_loads_and_matches_the_rbac(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The ConfigMap is a devstack.yaml devstack accepts, with the cluster section the Roles allow; and
    devstack doctor's SelfSubjectAccessReviews pass against those Roles (the stand-in enforces them)."""
    from devstack import doctor

    objects = render({"config": {"gitops": {"url": "https://git.acme.dev/gitops.git"}, "domain": "preview.acme.dev",
                                 "services": {"web": {"repo": "acme/web", "image": "ghcr.io/acme/web"}}}})
    path = tmp_path / "devstack.yaml"
    config = config_of(objects)
    config["state_dir"] = str(tmp_path / "state")
    path.write_text(yaml.safe_dump(config))
    settings = load_settings(path)
    assert settings.gitops.url == "https://git.acme.dev/gitops.git" and list(settings.services) == ["web"]
    assert settings.cluster.leader_election.enabled and settings.cluster.argocd.enabled
    rules = {o["metadata"]["namespace"]: o["rules"] for o in objects if o["kind"] == "Role"}
    monkeypatch.setenv("POD_NAMESPACE", NAMESPACE)
    with KubeStandIn(rules=rules).running() as kube:
        for name in settings.cluster.argocd.applicationsets:
            kube.put("applicationsets", "argocd", {"metadata": {"name": name}, "spec": {}})
        checks = [c.line() for c in doctor.check_cluster(settings, api=kube.api_client())]
    assert checks[0] == "[ok] kubernetes rbac: 9 calls allowed (SelfSubjectAccessReview)"
    # the bindings bind the ServiceAccount the Pod runs as
    account = container and one(objects, "Deployment")["spec"]["template"]["spec"]["serviceAccountName"]
    for binding in (o for o in objects if o["kind"] == "RoleBinding"):
        assert binding["subjects"] == [{"kind": "ServiceAccount", "name": account, "namespace": NAMESPACE}]


def test_secrets_come_from_an_existing_secret_by_reference() -> None:
    objects = render({"existingSecret": "platform-devstack"})
    env = {e["name"]: e for e in container(objects)["env"]}
    token = env["DEVSTACK_PROVIDERS__GITHUB__TOKEN"]["valueFrom"]["secretKeyRef"]
    assert token == {"name": "platform-devstack", "key": "github-token", "optional": True}
    assert not [o for o in objects if o["kind"] == "Secret"]
    assert "token" not in yaml.safe_dump(config_of(objects)).lower()
    app = render(EVERYTHING)
    spec = one(app, "Deployment")["spec"]["template"]["spec"]
    volume = next(v for v in spec["volumes"] if v["name"] == "github-app")
    assert volume["secret"]["secretName"] == "devstack-github-app"
    mount = next(m for m in spec["containers"][0]["volumeMounts"] if m["name"] == "github-app")
    assert mount == {"name": "github-app", "mountPath": "/etc/devstack/github", "readOnly": True}


def test_the_pvc_or_an_existing_claim() -> None:
    objects = render({"persistence": {"size": "5Gi", "storageClassName": "fast"}})
    pvc = one(objects, "PersistentVolumeClaim")
    assert (pvc["spec"]["resources"]["requests"]["storage"], pvc["spec"]["storageClassName"]) == ("5Gi", "fast")
    volumes = one(objects, "Deployment")["spec"]["template"]["spec"]["volumes"]
    assert volumes[0]["persistentVolumeClaim"]["claimName"] == pvc["metadata"]["name"]
    existing = render({"persistence": {"existingClaim": "journal"}})
    assert not [o for o in existing if o["kind"] == "PersistentVolumeClaim"]
    assert one(existing, "Deployment")["spec"]["template"]["spec"]["volumes"][0]["persistentVolumeClaim"] == {
        "claimName": "journal"}


def test_the_network_policy_admits_the_ingress_controller_and_labelled_namespaces() -> None:
    policy = one(render({"networkPolicy": {"ingressControllerNamespace": "traefik"}}), "NetworkPolicy")
    selectors = [peer["namespaceSelector"]["matchLabels"] for rule in policy["spec"]["ingress"]
                 for peer in rule["from"] if "namespaceSelector" in peer]
    assert selectors == [{"kubernetes.io/metadata.name": "traefik"}, {"devstack-api-access": "true"}]
    selector = one(render(), "Deployment")["spec"]["selector"]["matchLabels"]
    assert policy["spec"]["podSelector"]["matchLabels"] == selector
    ports = {p["port"] for rule in policy["spec"]["egress"] for p in rule["ports"]}
    assert ports == {53, 443, 6443, 22}


def test_the_service_monitor_scrapes_the_metrics_of_the_service() -> None:
    """No ServiceMonitor CRD schema in ../shared: the structure Prometheus Operator reads, by hand."""
    objects = render(EVERYTHING)
    monitor = one(objects, "ServiceMonitor")
    service = one(objects, "Service")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert set(monitor["spec"]) == {"selector", "namespaceSelector", "endpoints"}
    labels = service["metadata"]["labels"]
    assert all(labels.get(k) == v for k, v in monitor["spec"]["selector"]["matchLabels"].items())
    assert monitor["spec"]["namespaceSelector"] == {"matchNames": [NAMESPACE]}
    assert monitor["spec"]["endpoints"] == [{"port": "http", "path": "/metrics", "interval": "30s"}]
    assert service["spec"]["ports"][0]["name"] == "http"
    assert monitor["metadata"]["labels"]["release"] == "prometheus"


def test_a_config_change_rolls_the_pod() -> None:
    before = one(render(), "Deployment")["spec"]["template"]["metadata"]["annotations"]["checksum/config"]
    after = one(render({"config": {"domain": "preview.acme.dev"}}), "Deployment")
    assert after["spec"]["template"]["metadata"]["annotations"]["checksum/config"] != before


def test_the_chart_is_at_this_version() -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert (chart["version"], chart["appVersion"]) == (__version__, __version__)


def test_values_are_not_mutated_by_rendering() -> None:
    values = copy.deepcopy(EVERYTHING)
    render(values)
    assert values == EVERYTHING


@pytest.mark.parametrize(("name", "port"), [("devstack", 80), ("previews", 8081)])
def test_sleeping_previews_are_routed_to_this_releases_own_service(name: str, port: int) -> None:
    """docs/sleep.md: the wake target follows the release's Service (its name and port) and namespace,
    so a release not called devstack, or a changed service.port, still wakes its previews."""
    objects = render({"service": {"port": port}}, name=name)
    service = one(objects, "Service")
    env = {e["name"]: e for e in container(objects)["env"]}
    assert env["DEVSTACK_SLEEP__WAKE__SERVICE"]["value"] == service["metadata"]["name"]
    assert env["DEVSTACK_SLEEP__WAKE__PORT"]["value"] == str(service["spec"]["ports"][0]["port"]) == str(port)
    assert env["DEVSTACK_SLEEP__WAKE__NAMESPACE"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.namespace"}}


def test_the_kustomize_deployment_wakes_through_the_namespace_it_is_applied_to() -> None:
    manifest = yaml.safe_load((REPO_ROOT / "manifests" / "deployment.yaml").read_text())
    [container_] = manifest["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e for e in container_["env"]}
    assert env["DEVSTACK_SLEEP__WAKE__NAMESPACE"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.namespace"}}
    service = yaml.safe_load((REPO_ROOT / "manifests" / "service.yaml").read_text())
    assert (service["metadata"]["name"], service["spec"]["ports"][0]["port"]) == ("devstack", 80)  # the defaults


def test_a_postgresql_journal_runs_two_replicas_rolled_with_no_volume() -> None:
    """Issue 19: with the journal on PostgreSQL every replica takes webhooks; no PVC, no Recreate."""
    objects = render({"journal": {"postgresql": True}})
    assert not [o for o in objects if o["kind"] == "PersistentVolumeClaim"]
    deployment = one(objects, "Deployment")["spec"]
    assert deployment["replicas"] == 2
    assert deployment["strategy"] == {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}}
    volumes = {v["name"]: v for v in deployment["template"]["spec"]["volumes"]}
    assert volumes["state"] == {"name": "state", "emptyDir": {}}
    env = {e["name"]: e for e in container(objects)["env"]}
    assert env["DEVSTACK_JOURNAL__URL"]["valueFrom"]["secretKeyRef"] == {"name": "devstack-secrets",
                                                                          "key": "journal-url"}
    pdb = one(objects, "PodDisruptionBudget")["spec"]
    assert pdb["maxUnavailable"] == 1  # of two: a drain never takes both
    # the default stays one replica on its volume
    default = one(render(), "Deployment")["spec"]
    assert (default["replicas"], default["strategy"]) == (1, {"type": "Recreate"})

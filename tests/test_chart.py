"""templates/feature-release rendered and linted with the real Helm engine (helm-python-sdk), every
object validated strictly (Kubernetes schemas, Traefik CRDs), and the routing rules asserted exactly."""

from __future__ import annotations

import copy
import re
from collections.abc import Iterator
from typing import Any

import pytest
import yaml

from tests.render_helpers import CHART_DIR, SHA, validate_all

helm = pytest.importorskip("helm_python", reason="the render extra is not installed: pip install -e '.[render]'")

FEATURE = "login-fix"
NAMESPACE = "preview-login-fix"
EXPIRES = "2026-11-23T10:00:00Z"
PREVIEW_HOST = "login-fix--payments-api.preview.example.com"
BASE_HOST = "payments-api.example.com"


def entry_values(**overrides: Any) -> dict[str, Any]:
    """Values as an entry element carries them (devstack.planner.build_element)."""
    values: dict[str, Any] = {
        "feature": FEATURE,
        "service": "payments-api",
        "namespace": NAMESPACE,
        "image": {"repository": "ghcr.io/acme/payments-api", "tag": SHA},
        "port": 8080,
        "host": PREVIEW_HOST,
        "routing": {"header": "x-devstack-feature"},
        "expiresAt": EXPIRES,
        "env": {},
        "hooks": {},
    }
    values.update(copy.deepcopy(overrides))
    return values


CATALOGS: dict[str, dict[str, Any]] = {
    "minimal": {},
    "base-host": {"baseHost": BASE_HOST},
    "port-and-env": {"port": 9000, "env": {"DATABASE_URL": "postgres://db:5432/app", "ODD": 'a "b" <c> {{ .Values }}'}},
    "never-expires": {"expiresAt": "never", "baseHost": BASE_HOST},
    "traefik-v2": {"baseHost": BASE_HOST, "traefik": {"version": "v2"}},
    "rbac": {"rbac": {"groups": ["acme:developers"], "users": ["octocat@example.com"]}},
    "http-probes-plain-http": {
        "probes": {"type": "http", "path": "/healthz"},
        "traefik": {"version": "v3", "entryPoints": ["web"], "tls": {"enabled": False}},
    },
    "tls-secret-no-guardrails": {
        "traefik": {"version": "v3", "tls": {"enabled": True, "secretName": "preview-wildcard"}},
        "quota": {"enabled": False}, "limitRange": {"enabled": False}, "networkPolicy": {"enabled": False},
        "probes": {"type": "none"},
    },
}


def render(values: dict[str, Any], *, component: str = "service", namespace: str | None = None) -> list[dict[str, Any]]:
    """``helm template`` as Argo CD runs it: release = service, namespace = the destination."""
    with helm.Chart.load(CHART_DIR) as chart:
        files = chart.render(
            values={**values, "component": component},
            name=values.get("service", "namespace") if component == "service" else "namespace",
            namespace=namespace or values["namespace"],
            is_install=True,
        )
    return [doc for name in sorted(files) for doc in yaml.safe_load_all(files[name]) if doc]


def by_kind(objects: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    kinds = [o["kind"] for o in objects]
    assert len(kinds) == len(set(kinds)), f"one object per kind expected: {kinds}"
    return {o["kind"]: o for o in objects}


def routes(values: dict[str, Any]) -> list[dict[str, Any]]:
    route: list[dict[str, Any]] = by_kind(render(values))["IngressRoute"]["spec"]["routes"]
    return route


@pytest.fixture(params=sorted(CATALOGS), ids=str)
def catalog(request: pytest.FixtureRequest) -> dict[str, Any]:
    return entry_values(**CATALOGS[request.param])


# --- the real engine: lint and render -----------------------------------------------------------


@pytest.mark.parametrize("component", ["service", "namespace"])
def test_helm_lint_is_clean_for_every_catalog(catalog: dict[str, Any], component: str) -> None:
    report = helm.lint(CHART_DIR, {**catalog, "component": component}, strict=True, namespace=NAMESPACE)
    serious = [m for m in report["messages"] if m["severity"] >= 2]
    assert report["total_charts_linted"] == 1
    assert not report["errors"] and not serious, report


def test_chart_refuses_to_render_without_an_entry() -> None:
    """The entry values have no defaults: a missing one fails instead of deploying something made up."""
    report = helm.lint(CHART_DIR, None, strict=True, namespace="preview-example")
    assert report["errors"], report
    assert any("missing properties" in error for error in report["errors"]), report
    for key in ("feature", "namespace", "expiresAt"):
        assert any(key in error for error in report["errors"]), (key, report["errors"])


@pytest.mark.parametrize("component", ["service", "namespace"])
def test_every_rendered_object_validates_strictly(catalog: dict[str, Any], component: str) -> None:
    objects = render(catalog, component=component)
    validated = validate_all(objects)
    assert len(validated) == len(objects) >= 1
    if component == "service":
        assert {o["kind"] for o in objects} == {"Deployment", "Service", "Middleware", "IngressRoute"}
        assert "CRD traefik.io/IngressRoute" in validated
        assert "Kubernetes 1.33 (strict)" in validated
    else:
        kinds = {o["kind"] for o in objects}
        assert "Namespace" in kinds
        assert kinds <= {"Namespace", "ResourceQuota", "LimitRange", "NetworkPolicy", "RoleBinding"}
    for obj in objects:
        if obj["kind"] != "Namespace":
            assert obj["metadata"]["namespace"] == NAMESPACE, obj["kind"]


def test_strict_validation_rejects_an_unknown_field() -> None:
    """The validation above can fail: a field Kubernetes does not know is an error."""
    deployment = by_kind(render(entry_values()))["Deployment"]
    deployment["spec"]["template"]["spec"]["containers"][0]["imagePolicy"] = "Always"
    with pytest.raises(pytest.fail.Exception, match="imagePolicy"):
        validate_all([deployment])
    route = by_kind(render(entry_values()))["IngressRoute"]
    route["spec"]["routes"][0]["matcher"] = "Host(`x`)"
    with pytest.raises(AssertionError, match="matcher"):
        validate_all([route])


def test_labels_name_feature_and_service_on_everything(catalog: dict[str, Any]) -> None:
    for obj in render(catalog):
        labels = obj["metadata"]["labels"]
        assert labels["devstack.io/feature"] == FEATURE
        assert labels["devstack.io/service"] == "payments-api"
        assert "app.kubernetes.io/instance" not in labels  # Argo CD's label tracking owns it
    for obj in render(catalog, component="namespace"):
        labels = obj["metadata"]["labels"]
        assert labels["devstack.io/feature"] == FEATURE
        assert labels["devstack.io/component"] == "namespace"
    deployment = by_kind(render(catalog))["Deployment"]
    assert deployment["spec"]["selector"]["matchLabels"] == {
        "devstack.io/feature": FEATURE, "devstack.io/service": "payments-api",
    }
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()


# --- routing ------------------------------------------------------------------------------------


def test_preview_host_route_sets_the_feature_header() -> None:
    objects = by_kind(render(entry_values()))
    [route] = objects["IngressRoute"]["spec"]["routes"]
    assert route["match"] == "Host(`login-fix--payments-api.preview.example.com`)"
    assert "priority" not in route
    assert route["services"] == [
        {"kind": "Service", "name": "payments-api", "namespace": NAMESPACE, "port": 8080}
    ]
    middleware = objects["Middleware"]
    assert route["middlewares"] == [{"name": middleware["metadata"]["name"], "namespace": NAMESPACE}]
    assert middleware["spec"] == {"headers": {"customRequestHeaders": {"x-devstack-feature": "login-fix"}}}
    assert objects["IngressRoute"]["apiVersion"] == "traefik.io/v1alpha1"
    assert objects["IngressRoute"]["spec"]["tls"] == {}
    assert objects["IngressRoute"]["spec"]["entryPoints"] == ["websecure"]


def test_base_host_routes_match_header_and_baggage_above_the_base_route() -> None:
    preview, header, baggage = routes(entry_values(baseHost=BASE_HOST))
    assert preview["match"] == "Host(`login-fix--payments-api.preview.example.com`)"
    assert header["match"] == "Host(`payments-api.example.com`) && Header(`x-devstack-feature`, `login-fix`)"
    assert baggage["match"] == (
        "Host(`payments-api.example.com`) && HeaderRegexp(`baggage`, "
        r"`(?:^|,)\s*devstack-feature\s*=\s*login-fix\s*(?:;[^,]*)?(?:,|$)`)"
    )
    # Traefik's default priority is the rule length: an explicit priority far above any plain base route.
    assert header["priority"] == 10000 and baggage["priority"] == 9999
    assert header["priority"] > len(f"Host(`{BASE_HOST}`)") * 100
    assert header["services"] == baggage["services"] == preview["services"]
    assert header["middlewares"] == baggage["middlewares"] == preview["middlewares"]


def test_priority_and_header_are_configurable() -> None:
    routing = {"header": "x-preview", "priority": 50000, "baggageKey": "preview"}
    values = entry_values(baseHost=BASE_HOST, routing=routing)
    _, header, baggage = routes(values)
    assert header["match"] == "Host(`payments-api.example.com`) && Header(`x-preview`, `login-fix`)"
    assert r"`(?:^|,)\s*preview\s*=\s*login-fix\s*" in baggage["match"]
    assert (header["priority"], baggage["priority"]) == (50000, 49999)
    middleware = by_kind(render(values))["Middleware"]
    assert middleware["spec"]["headers"]["customRequestHeaders"] == {"x-preview": "login-fix"}


def _baggage_regexp(feature: str) -> re.Pattern[str]:
    values = entry_values(baseHost=BASE_HOST, feature=feature, namespace=f"preview-{feature}")
    match = routes(values)[2]["match"]
    found = re.fullmatch(r"Host\(`[^`]+`\) && HeaderRegexp\(`baggage`, `([^`]+)`\)", match)
    assert found, match
    return re.compile(found.group(1))  # the syntax used is the common subset of Go RE2 and Python re


@pytest.mark.parametrize(
    ("header", "matches"),
    [
        ("devstack-feature=login-fix", True),
        ("userId=alice,devstack-feature=login-fix", True),
        ("userId=alice, devstack-feature = login-fix ;ttl=3, isProduction=false", True),
        ("devstack-feature=login-fix;p=1", True),
        ("devstack-feature=login-fix2", False),
        ("devstack-feature=login-fix-2", False),
        ("devstack-feature=xlogin-fix", False),
        ("my-devstack-feature=login-fix", False),
        ("other=devstack-feature=login-fix", False),
        ("devstack-feature=other,x=login-fix", False),
        ("", False),
    ],
)
def test_baggage_member_is_anchored(header: str, matches: bool) -> None:
    assert bool(_baggage_regexp("login-fix").search(header)) is matches


def test_no_base_host_no_header_routes() -> None:
    assert [r["match"] for r in routes(entry_values())] == [f"Host(`{PREVIEW_HOST}`)"]


def test_traefik_v2_switch() -> None:
    objects = by_kind(render(entry_values(baseHost=BASE_HOST, traefik={"version": "v2"})))
    for kind in ("IngressRoute", "Middleware"):
        assert objects[kind]["apiVersion"] == "traefik.containo.us/v1alpha1"
    _, header, baggage = objects["IngressRoute"]["spec"]["routes"]
    assert header["match"] == "Host(`payments-api.example.com`) && Headers(`x-devstack-feature`, `login-fix`)"
    assert baggage["match"].startswith("Host(`payments-api.example.com`) && HeadersRegexp(`baggage`, `(?:^|,)")


def test_tls_and_entry_points() -> None:
    secret = by_kind(render(entry_values(**CATALOGS["tls-secret-no-guardrails"])))["IngressRoute"]
    assert secret["spec"]["tls"] == {"secretName": "preview-wildcard"}
    plain = by_kind(render(entry_values(**CATALOGS["http-probes-plain-http"])))["IngressRoute"]
    assert "tls" not in plain["spec"] and plain["spec"]["entryPoints"] == ["web"]


# --- the workload -------------------------------------------------------------------------------


def test_deployment_is_hardened_and_carries_image_port_env() -> None:
    values = entry_values(port=9000, env={"DATABASE_URL": "postgres://db/app", "ODD": 'a "b" <c> {{ .Values }}',
                                          "DEVSTACK_SERVICE": "overridden"})
    objects = by_kind(render(values))
    pod = objects["Deployment"]["spec"]["template"]["spec"]
    [container] = pod["containers"]
    assert container["image"] == f"ghcr.io/acme/payments-api:{SHA}"
    assert container["ports"] == [{"name": "http", "containerPort": 9000, "protocol": "TCP"}]
    assert objects["Service"]["spec"]["ports"] == [
        {"name": "http", "port": 9000, "targetPort": "http", "protocol": "TCP"}
    ]
    assert container["env"] == [
        {"name": "DATABASE_URL", "value": "postgres://db/app"},
        {"name": "DEVSTACK_FEATURE", "value": "login-fix"},
        {"name": "DEVSTACK_ROUTING_HEADER", "value": "x-devstack-feature"},
        {"name": "DEVSTACK_SERVICE", "value": "overridden"},
        {"name": "ODD", "value": 'a "b" <c> {{ .Values }}'},  # data, never evaluated as a template
    ]
    security = container["securityContext"]
    assert security["runAsNonRoot"] is True and security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False and security["capabilities"] == {"drop": ["ALL"]}
    assert security["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] == 10001
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["automountServiceAccountToken"] is False
    assert {"name": "tmp", "mountPath": "/tmp"} in container["volumeMounts"]
    assert {"name": "tmp", "emptyDir": {"sizeLimit": "64Mi"}} in pod["volumes"]
    assert container["resources"]["limits"] == {"cpu": "500m", "memory": "256Mi"}
    assert container["readinessProbe"]["tcpSocket"] == {"port": "http"}
    assert container["livenessProbe"]["failureThreshold"] == 6


def test_probe_types() -> None:
    http = by_kind(render(entry_values(probes={"type": "http", "path": "/ready"})))["Deployment"]
    [container] = http["spec"]["template"]["spec"]["containers"]
    assert container["readinessProbe"]["httpGet"] == {"path": "/ready", "port": "http"}
    assert "tcpSocket" not in container["readinessProbe"]
    none = by_kind(render(entry_values(probes={"type": "none"})))["Deployment"]
    [container] = none["spec"]["template"]["spec"]["containers"]
    assert "readinessProbe" not in container and "livenessProbe" not in container


# --- the namespace and its guardrails -----------------------------------------------------------


def test_namespace_component_renders_the_namespace_once_with_its_guardrails() -> None:
    objects = by_kind(render(entry_values(), component="namespace"))
    assert set(objects) == {"Namespace", "ResourceQuota", "LimitRange", "NetworkPolicy"}
    namespace = objects["Namespace"]
    assert namespace["metadata"]["name"] == NAMESPACE
    labels = namespace["metadata"]["labels"]
    assert labels["devstack.io/feature"] == FEATURE and labels["devstack.io/component"] == "namespace"
    assert labels["pod-security.kubernetes.io/enforce"] == "restricted"
    assert namespace["metadata"]["annotations"] == {"janitor/expires": EXPIRES, "devstack.io/expires-at": EXPIRES}
    assert objects["ResourceQuota"]["spec"]["hard"]["services.loadbalancers"] == "0"
    assert objects["LimitRange"]["spec"]["limits"][0]["defaultRequest"] == {"cpu": "50m", "memory": "64Mi"}
    # The service component never renders the namespace or anything namespace-wide.
    assert not {"Namespace", "ResourceQuota", "LimitRange", "NetworkPolicy", "RoleBinding"} & {
        o["kind"] for o in render(entry_values())
    }


def test_network_policy_admits_only_the_namespace_and_the_ingress_controller() -> None:
    policy = by_kind(render(entry_values(), component="namespace"))["NetworkPolicy"]
    assert policy["spec"]["podSelector"] == {} and policy["spec"]["policyTypes"] == ["Ingress"]
    assert policy["spec"]["ingress"] == [
        {"from": [{"podSelector": {}}]},
        {"from": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "traefik"}}}]},
    ]
    named = entry_values(networkPolicy={"ingressControllerNamespace": "ingress-nginx"})
    policy = by_kind(render(named, component="namespace"))["NetworkPolicy"]
    assert policy["spec"]["ingress"][1]["from"] == [
        {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "ingress-nginx"}}}
    ]
    labelled = entry_values(networkPolicy={"ingressControllerNamespaceLabels": {"app.kubernetes.io/name": "ingress"}})
    policy = by_kind(render(labelled, component="namespace"))["NetworkPolicy"]
    assert policy["spec"]["ingress"][1]["from"] == [
        {"namespaceSelector": {"matchLabels": {"app.kubernetes.io/name": "ingress"}}}
    ]


def test_janitor_annotation_follows_expiry() -> None:
    for component in ("service", "namespace"):
        for obj in render(entry_values(), component=component):
            assert obj["metadata"]["annotations"]["janitor/expires"] == EXPIRES, obj["kind"]
        for obj in render(entry_values(expiresAt="never"), component=component):
            assert obj["metadata"]["annotations"] == {"devstack.io/expires-at": "never"}, obj["kind"]
    for obj in render(entry_values(janitor={"enabled": False})):
        assert "janitor/expires" not in obj["metadata"]["annotations"]


def test_rolebinding_grants_edit_in_the_preview_namespace_only() -> None:
    assert "RoleBinding" not in by_kind(render(entry_values(), component="namespace"))
    objects = render(entry_values(rbac={"groups": ["acme:developers"], "users": ["octocat@example.com"]}),
                     component="namespace")
    binding = by_kind(objects)["RoleBinding"]
    assert binding["metadata"]["namespace"] == NAMESPACE
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "edit"}
    assert binding["subjects"] == [
        {"apiGroup": "rbac.authorization.k8s.io", "kind": "Group", "name": "acme:developers"},
        {"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": "octocat@example.com"},
    ]
    assert not [o for o in objects if o["kind"].startswith("Cluster")]


# --- values.schema.json and the chart's own checks ----------------------------------------------


def _bad_values() -> Iterator[tuple[str, dict[str, Any], str]]:
    yield "port zero", {"port": 0}, "/port"
    yield "port as text", {"port": "8080"}, "/port"
    yield "port too large", {"port": 70000}, "/port"
    yield "tag with a space", {"image": {"repository": "ghcr.io/acme/x", "tag": "bad tag"}}, "/image/tag"
    yield "unknown image key", {"image": {"repository": "ghcr.io/acme/x", "tag": "v1", "digest": "x"}}, "/image"
    yield "namespace outside previews", {"namespace": "kube-system"}, "/namespace"
    yield "host in upper case", {"host": "Login.example.com"}, "/host"
    yield "base host with a path", {"baseHost": "example.com/x"}, "/baseHost"
    yield "feature with --", {"feature": "a--b"}, "/feature"
    yield "unknown component", {"component": "everything"}, "/component"
    yield "env value not a string", {"env": {"PORT": 8080}}, "/env/PORT"
    yield "env name not a name", {"env": {"1BAD": "x"}}, "invalid propertyName '1BAD'"
    yield "expiry not a time", {"expiresAt": "tomorrow"}, "/expiresAt"
    yield "priority below 2", {"routing": {"header": "x-devstack-feature", "priority": 1}}, "/routing/priority"
    yield "header with a space", {"routing": {"header": "x devstack"}}, "/routing/header"
    yield "unknown traefik version", {"traefik": {"version": "v1"}}, "/traefik/version"
    yield "unknown traefik key", {"traefik": {"version": "v3", "tls_enabled": True}}, "/traefik"
    yield "hooks not an object", {"hooks": ["postgres"]}, "/hooks"
    yield "rbac user with whitespace", {"rbac": {"users": ["a b"]}}, "/rbac/users/0"


@pytest.mark.parametrize(("overrides", "where"), [(o, w) for _, o, w in _bad_values()],
                         ids=[name for name, _, _ in _bad_values()])
def test_values_schema_rejects_bad_values(overrides: dict[str, Any], where: str) -> None:
    values = {**entry_values(), **overrides}
    namespace = values["namespace"] if isinstance(values["namespace"], str) else NAMESPACE
    with pytest.raises(helm.HelmValuesError) as failure:
        render(values, component=values.get("component", "service"), namespace=namespace)
    expected = f"at '{where}" if where.startswith("/") else where
    assert expected in str(failure.value), str(failure.value)


def test_service_component_requires_the_service_values() -> None:
    for key in ("service", "image", "port", "host"):
        values = entry_values()
        del values[key]
        with pytest.raises(helm.HelmValuesError, match=key):
            render(values)
    # The namespace component does not need them.
    assert render({"feature": FEATURE, "namespace": NAMESPACE, "expiresAt": "never"}, component="namespace")


def test_release_namespace_must_be_the_values_namespace() -> None:
    with pytest.raises(helm.HelmRenderError, match="is not the release namespace"):
        render(entry_values(), namespace="preview-other")


def test_restart_rolls_the_deployment_through_a_pod_annotation() -> None:
    """devstack restart / redeploy set values.restartedAt: a changed pod template is a rollout."""
    plain = by_kind(render(entry_values()))["Deployment"]
    assert "devstack.io/restartedAt" not in (plain["spec"]["template"]["metadata"].get("annotations") or {})
    restarted = by_kind(render(entry_values(restartedAt="2026-11-20T13:00:00Z")))["Deployment"]
    annotations = restarted["spec"]["template"]["metadata"]["annotations"]
    assert annotations["devstack.io/restartedAt"] == "2026-11-20T13:00:00Z"
    validate_all(render(entry_values(restartedAt="2026-11-20T13:00:00Z")))

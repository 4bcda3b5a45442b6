"""A sleeping service rendered by the real Helm engine (issue 17): the element the planner puts to
sleep, through JSON as in the entry file, rendered like Argo CD and validated strictly (Kubernetes
schemas and the Traefik CRDs of ../shared/schemas)."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest

from devstack import sleep as sleeping
from tests.render_helpers import CHART_DIR, validate_all
from tests.test_chart import BASE_HOST, NAMESPACE, entry_values, render
from tests.test_chart_hooks import ALL, hooks_of

helm = pytest.importorskip("helm_python", reason="the render extra is not installed: pip install -e '.[render]'")

WAKE = {"service": "devstack", "namespace": "devstack", "port": 80}


def asleep(values: dict[str, Any], wake: dict[str, Any] = WAKE) -> dict[str, Any]:
    """``values`` as the planner leaves them when it puts the element to sleep, through JSON."""
    element = {"service": values["service"], "values": copy.deepcopy(values)}
    sleeping.put_to_sleep(element, since="2026-11-20T18:00:00Z", reason="idle", wake=wake)
    result: dict[str, Any] = json.loads(json.dumps(element["values"]))
    return result


def kinds(objects: list[dict[str, Any]]) -> dict[tuple[str, str], dict[str, Any]]:
    return {(o["kind"], o["metadata"]["name"]): o for o in objects}


@pytest.mark.parametrize("traefik", ["v3", "v2"])
def test_a_sleeping_service_scales_to_zero_keeps_its_database_and_routes_every_host_to_wake(traefik: str) -> None:
    awake = entry_values(baseHost=BASE_HOST, hooks=hooks_of(ALL), traefik={"version": traefik})
    before, after = kinds(render(awake)), kinds(render(asleep(awake)))
    validated = validate_all(list(after.values()))  # raises on any problem
    assert sum(v.endswith("/Middleware") for v in validated) == 2 and "Kubernetes" in validated[0]

    # zero replicas for the service and its Redis; everything else (the postgres Jobs, the Secrets
    # copy, the queues) is still rendered: Argo CD deletes nothing, so no database is dropped
    assert before[("Deployment", "payments-api")]["spec"]["replicas"] == 1
    assert after[("Deployment", "payments-api")]["spec"]["replicas"] == 0
    redis = [key for key in after if key[0] == "Deployment" and key[1] != "payments-api"]
    assert redis and all(after[key]["spec"]["replicas"] == 0 for key in redis)
    assert {k for k in before if k[0] != "Deployment"} <= set(after)
    assert any(kind == "Job" and "postgres" in name for kind, name in after)

    # the wake objects: an ExternalName Service to devstack's own and a Middleware rewriting the path
    wake_service = after[("Service", "payments-api--wake")]["spec"]
    assert wake_service["type"] == "ExternalName"
    assert wake_service["externalName"] == "devstack.devstack.svc"
    assert wake_service["ports"][0]["port"] == 80
    rewrite = after[("Middleware", "payments-api--wake")]["spec"]
    assert rewrite == {"replacePath": {"path": "/wake/login-fix/payments-api"}}
    assert not any(name.endswith("--wake") for _, name in before)

    # all three routes (preview host, header, baggage) go there, still setting the feature header first
    routes = after[("IngressRoute", "payments-api")]["spec"]["routes"]
    awake_routes = before[("IngressRoute", "payments-api")]["spec"]["routes"]
    assert [r["match"] for r in routes] == [r["match"] for r in awake_routes] and len(routes) == 3
    for route in routes:
        assert route["services"] == [{"kind": "Service", "name": "payments-api--wake", "namespace": NAMESPACE,
                                      "port": 80}]
        assert [m["name"] for m in route["middlewares"]] == ["payments-api-feature-header", "payments-api--wake"]


def test_the_wake_target_follows_the_settings_and_a_sleeping_service_without_it_is_refused() -> None:
    other = asleep(entry_values(), wake={"service": "previews", "namespace": "platform", "port": 9000})
    objects = kinds(render(other))
    assert objects[("Service", "payments-api--wake")]["spec"]["externalName"] == "previews.platform.svc"
    [route] = objects[("IngressRoute", "payments-api")]["spec"]["routes"]
    assert route["services"][0]["port"] == 9000
    assert len(validate_all(list(objects.values()))) == len(objects)
    broken = {k: v for k, v in asleep(entry_values()).items() if k != "wake"}
    with pytest.raises(helm.HelmValuesError, match="missing property 'wake'"):
        render(broken)
    hostile = asleep(entry_values(), wake={"service": "devstack.evil.com", "namespace": "devstack", "port": 8080})
    with pytest.raises(helm.HelmValuesError, match="/wake/service"):
        render(hostile)


def test_helm_lint_is_clean_while_asleep() -> None:
    report = helm.lint(
        CHART_DIR, {**asleep(entry_values(baseHost=BASE_HOST, hooks=hooks_of(ALL))), "component": "service"},
        strict=True, namespace=NAMESPACE,
    )
    serious = [m for m in report["messages"] if m["severity"] >= 2]
    assert report["total_charts_linted"] == 1
    assert not report["errors"] and not serious, report

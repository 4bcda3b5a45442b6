"""The provisioning hooks of templates/feature-release: devstack.hooks.values.hook_values (pure), the
chart rendered with the real Helm engine for every hook on and off, every object validated strictly,
and the contract between the chart and `devstack hook` proved by running the hooks with exactly the
environment the rendered Jobs carry (against the stand-in Kubernetes API enforcing the rendered Roles,
moto in server mode, and a real PostgreSQL when installed)."""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from devstack import entries, naming
from devstack.errors import ConfigError
from devstack.hooks import names, rbac, settings
from devstack.hooks.cli import EXIT_OK
from devstack.hooks.config import HooksSettings
from devstack.hooks.settings import AwsSettings, Env, HookContext, PostgresAdmin, SecretsSettings
from devstack.hooks.values import HOOK_KINDS, hook_values, object_name, redis_name, redis_url
from devstack.planner import build_element
from tests.hook_helpers import FakeKube, PostgresServer, run_cli, running_moto, running_postgres
from tests.render_helpers import ARGOCD_DIR, CHART_DIR, REPO_ROOT, pr_event, validate_all, validate_manifest
from tests.render_helpers import settings as catalog_settings
from tests.test_chart import FEATURE, NAMESPACE, entry_values, render

helm = pytest.importorskip("helm_python", reason="the render extra is not installed: pip install -e '.[render]'")

SERVICE = "payments-api"
BASE = "payments"
PLATFORM_NS = "devstack-hooks"
PLATFORM = HooksSettings(
    secrets_namespace=BASE,
    postgres={"host": "postgres.db.svc"},
    aws={"endpoint_url": "http://localstack.localstack:4566", "credentials_secret": "devstack-aws"},
)
ALL: dict[str, Any] = {
    "postgres": True, "redis": True, "sqs": ["orders", "order-events"], "sns": ["events"],
    "secrets": ["payments-db", "payments-tls"],
}
# What the admin Secrets of the platform namespace hold (resolving the Jobs' secretKeyRefs).
ADMIN_SECRETS = {
    ("devstack-postgres-admin", "username"): "devstack_admin",
    ("devstack-postgres-admin", "password"): "admin-password-never-logged",
    ("devstack-aws", "AWS_ACCESS_KEY_ID"): "testing",
    ("devstack-aws", "AWS_SECRET_ACCESS_KEY"): "aws-secret-never-logged",
}
# boto3 reads these itself (the standard AWS chain); every other variable is read by devstack.hooks.settings.
BOTO_VARIABLES = {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}


def hooks_of(declared: dict[str, Any], platform: HooksSettings = PLATFORM) -> dict[str, Any]:
    """values.hooks as it reaches the chart: built by hook_values, through JSON (the entry file)."""
    built = hook_values(service=SERVICE, declared=declared, platform=platform)
    through_json: dict[str, Any] = json.loads(json.dumps(built))
    return through_json


def rendered(declared: dict[str, Any], platform: HooksSettings = PLATFORM, **overrides: Any) -> list[dict[str, Any]]:
    return render(entry_values(hooks=hooks_of(declared, platform), **overrides))


def pick(objects: list[dict[str, Any]], kind: str, **where: str) -> list[dict[str, Any]]:
    found = [o for o in objects if o["kind"] == kind]
    for key, value in where.items():
        found = [o for o in found if o["metadata"].get(key) == value or o["metadata"]["labels"].get(key) == value]
    return found


def jobs(objects: list[dict[str, Any]]) -> dict[tuple[str, str], dict[str, Any]]:
    """{(hook, action): Job}"""
    return {
        (j["metadata"]["labels"]["devstack.io/hook"], j["metadata"]["labels"]["devstack.io/hook-action"]): j
        for j in pick(objects, "Job")
    }


def container(job: dict[str, Any]) -> dict[str, Any]:
    containers: list[dict[str, Any]] = job["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return containers[0]


def job_env(job: dict[str, Any], secrets: dict[tuple[str, str], str] | None = None) -> dict[str, str]:
    """The environment the Job's container gets: values, and secretKeyRefs resolved from ``secrets``."""
    env: dict[str, str] = {}
    for item in container(job)["env"]:
        if "value" in item:
            env[item["name"]] = item["value"]
        else:
            ref = item["valueFrom"]["secretKeyRef"]
            env[item["name"]] = (secrets if secrets is not None else ADMIN_SECRETS)[(ref["name"], ref["key"])]
    assert len(env) == len(container(job)["env"]), "a variable is set twice"
    return env


def argo_phase(obj: dict[str, Any]) -> str | None:
    """The Argo CD phase of an object, as Argo CD maps Helm hooks (gitops-engine hook/helm, and the
    controller's PostDelete check, which compares the annotation as a whole)."""
    annotations = obj["metadata"].get("annotations") or {}
    assert "argocd.argoproj.io/hook" not in annotations  # it would make Argo CD ignore every Helm hook
    hook = annotations.get("helm.sh/hook")
    if hook is None:
        return None
    if hook == "post-delete":
        return "PostDelete"
    phases = {"pre-install": "PreSync", "pre-upgrade": "PreSync",
              "post-install": "PostSync", "post-upgrade": "PostSync"}
    mapped = {phases[part.strip()] for part in hook.split(",") if part.strip() in phases}
    assert len(mapped) == 1, hook
    return mapped.pop()


def weight(obj: dict[str, Any]) -> int:
    return int(obj["metadata"]["annotations"].get("helm.sh/hook-weight", "0"))


def service_selector(objects: list[dict[str, Any]]) -> dict[str, str]:
    [service] = pick(objects, "Service", name=SERVICE)
    selector: dict[str, str] = service["spec"]["selector"]
    return selector


# --- hook_values: pure ---------------------------------------------------------------------------


def test_hook_values_joins_the_declaration_and_the_platform_settings() -> None:
    values = hook_values(service=SERVICE, declared=ALL, platform=PLATFORM)
    assert values == {
        "image": {"repository": "ghcr.io/devstack/devstack", "tag": "0.1.0", "pullPolicy": "IfNotPresent"},
        "platformNamespace": PLATFORM_NS,
        "serviceAccountAnnotations": {},
        "cleanupServiceAccount": "default",
        "job": {
            "backoffLimit": 3, "activeDeadlineSeconds": 600, "runAsUser": 10001,
            "resources": {"requests": {"cpu": "50m", "memory": "64Mi"}, "limits": {"cpu": "500m", "memory": "256Mi"}},
            "retry": {"attempts": 5, "backoffSeconds": 2.0, "maxBackoffSeconds": 30.0},
        },
        "secrets": {"sourceNamespace": BASE, "names": ["payments-db", "payments-tls"]},
        "postgres": {
            "host": "postgres.db.svc", "port": 5432, "database": "postgres", "sslmode": "prefer", "connectTimeout": 10,
            "adminSecret": {"name": "devstack-postgres-admin", "userKey": "username", "passwordKey": "password"},
        },
        "sqs": {"queues": ["orders", "order-events"]},
        "sns": {"topics": ["events"]},
        "aws": {
            "endpointUrl": "http://localstack.localstack:4566", "region": "us-east-1", "maxAttempts": 3,
            "credentialsSecret": {"name": "devstack-aws", "accessKeyIdKey": "AWS_ACCESS_KEY_ID",
                                  "secretAccessKeyKey": "AWS_SECRET_ACCESS_KEY"},
        },
        "redis": {
            "image": {"repository": "redis", "tag": "7.4-alpine", "pullPolicy": "IfNotPresent"},
            "runAsUser": 999, "maxmemory": "48mb",
            "resources": {"requests": {"cpu": "20m", "memory": "32Mi"}, "limits": {"cpu": "200m", "memory": "64Mi"}},
        },
    }
    # Nothing declared, or everything off: no hook at all (and no platform settings in the entry).
    assert hook_values(service=SERVICE, declared={}, platform=PLATFORM) == {}
    off = {"postgres": False, "redis": False, "sqs": [], "sns": None, "secrets": []}
    assert hook_values(service=SERVICE, declared=off, platform=HooksSettings()) == {}
    # Redis alone needs no Job, so no image or platform namespace either.
    assert set(hook_values(service=SERVICE, declared={"redis": True}, platform=HooksSettings())) == {"redis"}
    # No static AWS keys configured (IRSA, instance roles): no credentials Secret.
    own_identity = hook_values(service=SERVICE, declared={"sqs": ["a"]}, platform=HooksSettings())
    assert "credentialsSecret" not in own_identity["aws"]
    # The input is not modified, and the same input gives the same output.
    declared = copy.deepcopy(ALL)
    assert hook_values(service=SERVICE, declared=declared, platform=PLATFORM) == values and declared == ALL


def _refused() -> Iterator[tuple[str, Any, HooksSettings, str]]:
    yield "not a mapping", ["postgres"], PLATFORM, "hooks must be a mapping"
    yield "unknown hook", {"postgres": True, "mysql": True}, PLATFORM, "unknown hook 'mysql'"
    yield "flag not a boolean", {"postgres": "yes"}, PLATFORM, "hooks.postgres must be true or false, not 'yes'"
    yield "redis not a boolean", {"redis": ["cache"]}, PLATFORM, "hooks.redis must be true or false"
    yield "list given as text", {"sqs": "orders"}, PLATFORM, "hooks.sqs must be a list of queue names"
    yield "queue in upper case", {"sqs": ["Orders"]}, PLATFORM, "queue name 'Orders'"
    yield "fifo queue", {"sqs": ["orders.fifo"]}, PLATFORM, "queue name 'orders.fifo'"
    yield "queue too long", {"sqs": ["q" * 31]}, PLATFORM, "must be 1 to 30 characters"
    yield "topic with --", {"sns": ["a--b"]}, PLATFORM, "topic name 'a--b'"
    yield "name not text", {"sns": [7]}, PLATFORM, "hooks.sns: 7 is not a topic name"
    yield "queue twice", {"sqs": ["orders", "orders"]}, PLATFORM, "hooks.sqs lists 'orders' twice"
    yield "secret name", {"secrets": ["Payments_DB"]}, PLATFORM, "secret name 'Payments_DB'"
    yield "too many", {"secrets": [f"s{i}" for i in range(51)]}, PLATFORM, "more than 50 names"
    yield "secrets without a base namespace", {"secrets": ["payments-db"]}, HooksSettings(), "hooks.secrets_namespace"
    yield "postgres without a server", {"postgres": True}, HooksSettings(), "hooks.postgres.host"


@pytest.mark.parametrize(("declared", "platform", "message"), [(d, p, m) for _, d, p, m in _refused()],
                         ids=[name for name, *_ in _refused()])
def test_hook_values_refuses_what_the_hooks_cannot_run(declared: Any, platform: HooksSettings, message: str) -> None:
    with pytest.raises(ConfigError) as refused:
        hook_values(service=SERVICE, declared=declared, platform=platform)
    assert message in str(refused.value)
    assert f"service {SERVICE!r}" in str(refused.value)


def test_hook_settings_refuse_what_they_must_not_hold() -> None:
    from pydantic import ValidationError

    for bad in (
        {"platform_namespace": "preview-x"},  # preview namespaces are deleted with previews
        {"platform_namespace": "Devstack"},
        {"secrets_namespace": "preview-login-fix"},
        {"postgres": {"password": "hunter2"}},  # never a password: only the name of a Secret
        {"postgres": {"host": "db host"}},
        {"aws": {"endpoint_url": "ftp://localstack"}},
        {"aws": {"secret_access_key": "x"}},
        {"job": {"backoff_limit": 100}},
        {"job": {"resources": {"requests": {"cpu": "lots", "memory": "1Gi"}, "limits": {"cpu": "1", "memory": "1Gi"}}}},
        {"service_account_annotations": {"not a key": "x"}},
        {"cleanup_service_account": "Default"},
        {"unknown": True},
    ):
        with pytest.raises(ValidationError):
            HooksSettings.model_validate(bad)
    assert HooksSettings(postgres={"host": "10.0.0.5"}).postgres.host == "10.0.0.5"


def test_object_names_are_unique_and_bounded() -> None:
    assert object_name(feature="login-fix", service="payments-api", suffix="hooks") == (
        "devstack-login-fix--payments-api-hooks"
    )
    # "--" separates feature and service: a-b + c and a + b-c never share a name.
    assert object_name(feature="a-b", service="c", suffix="x") != object_name(feature="a", service="b-c", suffix="x")
    long = object_name(feature="f" * 30, service="s" * 30, suffix="postgres-cleanup")
    assert len(long) == 63 and naming.is_dns_label(long)
    assert long != object_name(feature="f" * 30, service="s" * 30, suffix="postgres-ensure")
    assert redis_url("ledger") == "redis://devstack-redis-ledger:6379/0"


# --- rendering: which objects, where -------------------------------------------------------------


COMBINATIONS: dict[str, dict[str, Any]] = {
    "none": {},
    "secrets": {"secrets": ["payments-db"]},
    "postgres": {"postgres": True},
    "redis": {"redis": True},
    "sqs": {"sqs": ["orders"]},
    "sns": {"sns": ["events"]},
    "queues-and-topics": {"sqs": ["orders"], "sns": ["events", "audit"]},
    "postgres-and-redis": {"postgres": True, "redis": True},
    "all": ALL,
}


def expected_objects(declared: dict[str, Any]) -> set[tuple[str, str, str]]:
    """(kind, namespace, name) of everything a service with these hooks renders."""
    def name(suffix: str) -> str:
        return object_name(feature=FEATURE, service=SERVICE, suffix=suffix)

    objects = {("Deployment", NAMESPACE, SERVICE), ("Service", NAMESPACE, SERVICE),
               ("Middleware", NAMESPACE, f"{SERVICE}-feature-header"), ("IngressRoute", NAMESPACE, SERVICE)}
    if declared.get("secrets"):
        objects |= {("ServiceAccount", NAMESPACE, name("secrets")), ("Role", BASE, name("secrets")),
                    ("RoleBinding", BASE, name("secrets")), ("Role", NAMESPACE, name("secrets")),
                    ("RoleBinding", NAMESPACE, name("secrets")), ("Job", NAMESPACE, name("secrets-ensure"))}
    platform_jobs = [kind for kind in ("postgres", "sqs", "sns") if declared.get(kind)]
    if platform_jobs:
        objects |= {("ServiceAccount", PLATFORM_NS, name("hooks")), ("Role", NAMESPACE, name("hooks")),
                    ("RoleBinding", NAMESPACE, name("hooks"))}
    for kind in platform_jobs:
        objects |= {("Job", PLATFORM_NS, name(f"{kind}-ensure")), ("Job", PLATFORM_NS, name(f"{kind}-cleanup"))}
    if declared.get("redis"):
        objects |= {("Deployment", NAMESPACE, redis_name(SERVICE)), ("Service", NAMESPACE, redis_name(SERVICE))}
    return objects


@pytest.mark.parametrize("combination", sorted(COMBINATIONS))
def test_each_hook_renders_only_its_objects_and_all_validate(combination: str) -> None:
    declared = COMBINATIONS[combination]
    objects = rendered(declared)
    found = {(o["kind"], o["metadata"]["namespace"], o["metadata"]["name"]) for o in objects}
    assert found == expected_objects(declared)
    assert len(objects) == len(expected_objects(declared))  # nothing twice
    assert len(validate_all(objects)) == len(objects)
    for obj in objects:
        labels = obj["metadata"]["labels"]
        assert labels["devstack.io/feature"] == FEATURE and labels["devstack.io/service"] == SERVICE
        assert "app.kubernetes.io/instance" not in labels  # Argo CD's tracking owns it


def test_helm_lint_is_clean_with_every_hook_and_the_namespace_component_renders_none() -> None:
    values = entry_values(hooks=hooks_of(ALL))
    for component in ("service", "namespace"):
        report = helm.lint(CHART_DIR, {**values, "component": component}, strict=True, namespace=NAMESPACE)
        assert not report["errors"] and not [m for m in report["messages"] if m["severity"] >= 2], report
    # The namespace Application carries the owner element's values: hooks belong to service Applications.
    kinds = {o["kind"] for o in render(values, component="namespace")}
    assert kinds <= {"Namespace", "ResourceQuota", "LimitRange", "NetworkPolicy", "RoleBinding"}


def test_names_stay_dns_labels_for_the_longest_feature_and_service() -> None:
    feature, service = "f" * 30, "s" * 30
    values = entry_values(
        feature=feature, service=service, namespace=f"preview-{feature}", host=f"{feature}--{service}.example.com",
        hooks=json.loads(json.dumps(hook_values(service=service, declared=ALL, platform=PLATFORM))),
    )
    objects = render(values)
    validate_all(objects)
    hook_objects = [o for o in objects if "devstack.io/hook" in o["metadata"]["labels"] and o["kind"] != "Deployment"
                    and o["kind"] != "Service"]
    assert len(hook_objects) == 15
    for obj in hook_objects:
        name = obj["metadata"]["name"]
        assert naming.is_dns_label(name), name
        suffix = "-".join(filter(None, [obj["metadata"]["labels"]["devstack.io/hook"],
                                        obj["metadata"]["labels"].get("devstack.io/hook-action")]))
        suffix = {"platform": "hooks"}.get(suffix, suffix)
        assert name == object_name(feature=feature, service=service, suffix=suffix)  # the Python twin agrees


# --- phases, weights, delete policies ------------------------------------------------------------


def test_phases_weights_and_delete_policies() -> None:
    objects = rendered(ALL)
    by_job = jobs(objects)
    assert set(by_job) == {("secrets", "ensure"), ("postgres", "ensure"), ("postgres", "cleanup"),
                           ("sqs", "ensure"), ("sqs", "cleanup"), ("sns", "ensure"), ("sns", "cleanup")}
    for (hook, action), job in by_job.items():
        annotations = job["metadata"]["annotations"]
        if action == "ensure":
            assert argo_phase(job) == "PreSync", hook  # runs before every sync: ensure is idempotent
            assert annotations["helm.sh/hook"] == "pre-install,pre-upgrade"
            assert annotations["helm.sh/hook-delete-policy"] == "before-hook-creation"  # logs kept until the next sync
        else:
            assert argo_phase(job) == "PostDelete", hook
            assert annotations["helm.sh/hook"] == "post-delete"  # Argo CD compares it as a whole
            # A failed cleanup Job stays with its logs; a successful one leaves nothing behind.
            assert annotations["helm.sh/hook-delete-policy"] == "before-hook-creation,hook-succeeded"
            assert "janitor/expires" not in annotations  # kube-janitor must not kill it at the expiry time
    # Waves of the PreSync phase: RBAC first, then the secrets copy, then postgres/sqs/sns; none below
    # 0, where Argo CD creates a missing destination namespace (kind Namespace first in its wave).
    presync = [o for o in objects if argo_phase(o) == "PreSync"]
    assert all(weight(o) >= 0 for o in presync)
    rbac_objects = [o for o in presync if o["kind"] in {"ServiceAccount", "Role", "RoleBinding"}]
    assert len(rbac_objects) == 8 and {weight(o) for o in rbac_objects} == {0}
    assert weight(by_job["secrets", "ensure"]) == 1
    assert {weight(by_job[k, "ensure"]) for k in ("postgres", "sqs", "sns")} == {2}
    assert max(map(weight, rbac_objects)) < weight(by_job["secrets", "ensure"]) < weight(by_job["postgres", "ensure"])
    # The service's own objects are no hooks: they sync after every PreSync hook succeeded.
    for obj in objects:
        if "devstack.io/hook" not in obj["metadata"]["labels"]:
            assert argo_phase(obj) is None, obj["kind"]
    # Redis: a normal resource, one wave before the service's Deployment.
    redis = pick(objects, "Deployment", name=redis_name(SERVICE))[0]
    assert argo_phase(redis) is None and redis["metadata"]["annotations"]["argocd.argoproj.io/sync-wave"] == "-1"


# --- RBAC ----------------------------------------------------------------------------------------


def strip(obj: dict[str, Any]) -> dict[str, Any]:
    """An object without its annotations (hook and expiry annotations are the chart's own)."""
    stripped = copy.deepcopy(obj)
    stripped["metadata"].pop("annotations", None)
    return stripped


def test_secrets_rbac_is_exactly_secret_copy_rbac() -> None:
    objects = rendered({"secrets": ["payments-tls", "payments-db"]})
    name = object_name(feature=FEATURE, service=SERVICE, suffix="secrets")
    chart_rbac = [strip(o) for o in objects if o["kind"] in {"Role", "RoleBinding"}]
    labels = chart_rbac[0]["metadata"]["labels"]
    expected = rbac.secret_copy_rbac(
        name=name, base_namespace=BASE, namespace=NAMESPACE, service_account=name,
        secrets=["payments-tls", "payments-db"], labels=labels,
    )
    key = lambda o: (o["kind"], o["metadata"]["namespace"])  # noqa: E731
    assert sorted(chart_rbac, key=key) == sorted(expected, key=key)
    # The Job runs as that ServiceAccount, in the preview namespace where the binding's subject is.
    [job] = pick(objects, "Job")
    pod = job["spec"]["template"]["spec"]
    assert (job["metadata"]["namespace"], pod["serviceAccountName"]) == (NAMESPACE, name)
    assert pod["automountServiceAccountToken"] is True
    [account] = pick(objects, "ServiceAccount")
    assert (account["metadata"]["namespace"], account["metadata"]["name"]) == (NAMESPACE, name)


PLATFORM_JOBS = [{"postgres": True}, {"sqs": ["a"]}, {"postgres": True, "sns": ["b"], "sqs": ["a"]}]


@pytest.mark.parametrize("declared", PLATFORM_JOBS, ids=["postgres", "sqs", "postgres-sqs-sns"])
def test_platform_jobs_may_only_write_their_outputs(declared: dict[str, Any]) -> None:
    objects = rendered(declared)
    name = object_name(feature=FEATURE, service=SERVICE, suffix="hooks")
    [role] = pick(objects, "Role")
    [binding] = pick(objects, "RoleBinding")
    [account] = pick(objects, "ServiceAccount")
    assert role["metadata"]["namespace"] == binding["metadata"]["namespace"] == NAMESPACE
    assert role["rules"] == rbac.preview_rules(
        secrets=[names.output_name("postgres", SERVICE)] if declared.get("postgres") else [],
        config_maps=[names.output_name(k, SERVICE) for k in ("sqs", "sns") if declared.get(k)],
    )
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name}
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": name, "namespace": PLATFORM_NS}]
    assert (account["metadata"]["namespace"], account["metadata"]["name"]) == (PLATFORM_NS, name)
    for (hook, action), job in jobs(objects).items():
        pod = job["spec"]["template"]["spec"]
        assert job["metadata"]["namespace"] == PLATFORM_NS, hook
        if action == "ensure":
            assert (pod["serviceAccountName"], pod["automountServiceAccountToken"]) == (name, True)
        else:  # cleanup needs no Kubernetes access, and must not depend on hook objects deleted before it
            assert (pod["serviceAccountName"], pod["automountServiceAccountToken"]) == ("default", False)


def test_no_cluster_wide_rights_and_secret_reads_only_by_name() -> None:
    objects = rendered(ALL)
    assert not [o for o in objects if o["kind"] in {"ClusterRole", "ClusterRoleBinding"}]
    for role in pick(objects, "Role"):
        for rule in role["rules"]:
            assert "*" not in rule["verbs"] and "*" not in rule["resources"] and rule["apiGroups"] == [""]
            assert set(rule["resources"]) <= {"secrets", "configmaps"}
            if rule["verbs"] != ["create"]:
                assert rule["resourceNames"], rule  # an empty list would mean every object
            if role["metadata"]["namespace"] != NAMESPACE:
                # Outside the preview: get on exactly the copied Secrets, nothing else.
                assert rule == {"apiGroups": [""], "resources": ["secrets"],
                                "resourceNames": ["payments-db", "payments-tls"], "verbs": ["get"]}
    for binding in pick(objects, "RoleBinding"):
        assert binding["roleRef"]["kind"] == "Role"


# --- the Jobs themselves -------------------------------------------------------------------------


def test_jobs_are_bounded_hardened_and_never_join_the_service() -> None:
    irsa = {"eks.amazonaws.com/role-arn": "arn:aws:iam::1:role/x"}
    objects = rendered(ALL, platform=PLATFORM.model_copy(update={"service_account_annotations": irsa}))
    selector = service_selector(objects)
    for (hook, action), job in jobs(objects).items():
        spec = job["spec"]
        pod = spec["template"]["spec"]
        main = container(job)
        assert spec["backoffLimit"] == 3 and spec["activeDeadlineSeconds"] == 600
        assert pod["restartPolicy"] == "Never" and pod["enableServiceLinks"] is False
        assert main["command"] == ["devstack", "hook", hook, action]
        assert main["image"] == "ghcr.io/devstack/devstack:0.1.0"
        assert main["resources"] == {"requests": {"cpu": "50m", "memory": "64Mi"},
                                     "limits": {"cpu": "500m", "memory": "256Mi"}}
        assert pod["securityContext"] == {"runAsNonRoot": True, "runAsUser": 10001, "runAsGroup": 10001,
                                          "seccompProfile": {"type": "RuntimeDefault"}}
        assert main["securityContext"] == {
            "allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True, "runAsNonRoot": True,
            "privileged": False, "capabilities": {"drop": ["ALL"]}, "seccompProfile": {"type": "RuntimeDefault"},
        }
        assert {"name": "tmp", "mountPath": "/tmp"} in main["volumeMounts"]
        pod_labels = spec["template"]["metadata"]["labels"]
        assert not selector.items() <= pod_labels.items(), (hook, action)  # the Service never selects it
        assert pod_labels["devstack.io/hook"] == hook and pod_labels["devstack.io/hook-action"] == action
        # No secret value in the manifest: the admin credentials are secretKeyRefs.
        for item in main["env"]:
            if re.search(r"PASSWORD|SECRET_ACCESS_KEY|ACCESS_KEY_ID|PG_USER", item["name"]):
                assert set(item) == {"name", "valueFrom"}, item["name"]
    [account] = pick(objects, "ServiceAccount", namespace=PLATFORM_NS)
    assert account["metadata"]["annotations"]["eks.amazonaws.com/role-arn"] == "arn:aws:iam::1:role/x"


def _settings_variables() -> set[str]:
    return {value for key, value in vars(settings).items()
            if key.isupper() and isinstance(value, str) and value.startswith(("DEVSTACK_HOOK_", "AWS_"))}


def test_every_job_env_is_what_the_hooks_read() -> None:
    objects = rendered(ALL)
    known = _settings_variables() | BOTO_VARIABLES
    for (hook, action), job in jobs(objects).items():
        env = job_env(job)
        assert set(env) <= known, (hook, action, set(env) - known)  # no variable the hooks would ignore
        context = HookContext.from_env(Env(env))
        assert (context.feature, context.service, context.namespace) == (FEATURE, SERVICE, NAMESPACE)
        assert (context.retry.attempts, context.retry.delay, context.retry.max_delay) == (5, 2.0, 30.0)
        if action == "ensure" and hook != "secrets":
            # The object the hook writes is the one the Deployment's envFrom reads.
            assert context.output_name(Env(env), hook) == names.output_name(hook, SERVICE)
        if hook == "secrets":
            assert SecretsSettings.from_env(Env(env)) == SecretsSettings(BASE, ("payments-db", "payments-tls"))
        elif hook == "postgres":
            admin = PostgresAdmin.from_env(Env(env))
            assert (admin.host, admin.port, admin.user, admin.dbname, admin.sslmode, admin.connect_timeout) == (
                "postgres.db.svc", 5432, "devstack_admin", "postgres", "prefer", 10)
            assert admin.password == "admin-password-never-logged"
        else:
            aws = AwsSettings.from_env(Env(env))
            assert aws == AwsSettings(
                region="us-east-1", endpoint_url="http://localstack.localstack:4566", max_attempts=3
            )
            key = settings.SQS_QUEUES if hook == "sqs" else settings.SNS_TOPICS
            listed = ("orders", "order-events") if hook == "sqs" else ("events",)
            assert Env(env).names(key) == listed
            assert (env["AWS_ACCESS_KEY_ID"], env["AWS_SECRET_ACCESS_KEY"]) == ("testing", "aws-secret-never-logged")


def test_job_env_follows_the_platform_settings() -> None:
    platform = HooksSettings(
        image={"repository": "registry.example.com/devstack", "tag": "1.2.3", "pull_policy": "Always"},
        platform_namespace="platform", cleanup_service_account="hook-cleaner",
        postgres={"host": "10.1.2.3", "port": 6543, "database": "admin", "sslmode": "verify-full",
                  "connect_timeout": 3, "admin_secret": "pg", "user_key": "u", "password_key": "p"},
        aws={"region": "eu-west-1"},
        job={"backoff_limit": 1, "active_deadline_seconds": 120, "attempts": 2, "backoff_seconds": 0.5,
             "max_backoff_seconds": 4, "run_as_user": 4242},
    )
    objects = rendered({"postgres": True, "sqs": ["orders"]}, platform=platform)
    by_job = jobs(objects)
    secrets = {("pg", "u"): "admin", ("pg", "p"): "pw"}
    env = job_env(by_job["postgres", "ensure"], secrets)
    admin = PostgresAdmin.from_env(Env(env))
    assert (admin.host, admin.port, admin.dbname, admin.sslmode, admin.connect_timeout) == (
        "10.1.2.3", 6543, "admin", "verify-full", 3)
    retry = HookContext.from_env(Env(env)).retry
    assert (retry.attempts, retry.delay, retry.max_delay) == (2, 0.5, 4.0)
    sqs_env = job_env(by_job["sqs", "ensure"], secrets)
    assert "AWS_ENDPOINT_URL" not in sqs_env and "AWS_ACCESS_KEY_ID" not in sqs_env  # AWS itself, own identity
    assert AwsSettings.from_env(Env(sqs_env)).region == "eu-west-1"
    for (_, action), job in by_job.items():
        pod = job["spec"]["template"]["spec"]
        assert job["metadata"]["namespace"] == "platform"
        assert (job["spec"]["backoffLimit"], job["spec"]["activeDeadlineSeconds"]) == (1, 120)
        assert container(job)["image"] == "registry.example.com/devstack:1.2.3"
        assert container(job)["imagePullPolicy"] == "Always"
        assert pod["securityContext"]["runAsUser"] == 4242
        if action == "cleanup":
            assert pod["serviceAccountName"] == "hook-cleaner"
    [binding] = pick(objects, "RoleBinding")
    assert binding["subjects"][0]["namespace"] == "platform"


# --- what the service gets -----------------------------------------------------------------------


def test_the_service_gets_the_outputs_by_env_from_and_rolls_when_they_change() -> None:
    objects = rendered(ALL)
    [deployment] = pick(objects, "Deployment", name=SERVICE)
    main = deployment["spec"]["template"]["spec"]["containers"][0]
    assert main["envFrom"] == [
        {"secretRef": {"name": "payments-db"}},
        {"secretRef": {"name": "payments-tls"}},
        {"secretRef": {"name": names.output_name("postgres", SERVICE)}},
        {"configMapRef": {"name": names.output_name("sqs", SERVICE)}},
        {"configMapRef": {"name": names.output_name("sns", SERVICE)}},
    ]
    # Exactly the objects the ensure Jobs write.
    written = {job_env(j)[settings.OUTPUT_NAME] for (h, a), j in jobs(objects).items()
               if a == "ensure" and h != "secrets"}
    read = {ref["name"] for item in main["envFrom"] for ref in item.values()}
    assert written == read - {"payments-db", "payments-tls"}
    assert {"name": "REDIS_URL", "value": redis_url(SERVICE)} in main["env"]
    checksum = deployment["spec"]["template"]["metadata"]["annotations"]["devstack.io/hooks-checksum"]
    assert re.fullmatch(r"[0-9a-f]{64}", checksum)
    more = pick(rendered({**ALL, "sqs": ["orders", "order-events", "refunds"]}), "Deployment", name=SERVICE)[0]
    assert more["spec"]["template"]["metadata"]["annotations"]["devstack.io/hooks-checksum"] != checksum
    # A catalog env wins over a hook's (Kubernetes' rule for env over envFrom, and for REDIS_URL here).
    mine = render(entry_values(hooks=hooks_of({"redis": True}), env={"REDIS_URL": "redis://elsewhere:6379/1"}))
    main = pick(mine, "Deployment", name=SERVICE)[0]["spec"]["template"]["spec"]["containers"][0]
    assert {"name": "REDIS_URL", "value": "redis://elsewhere:6379/1"} in main["env"]
    # No hooks: nothing of the above.
    plain = pick(rendered({}), "Deployment", name=SERVICE)[0]["spec"]["template"]
    assert "envFrom" not in plain["spec"]["containers"][0] and "annotations" not in plain["metadata"]
    assert "REDIS_URL" not in {e["name"] for e in plain["spec"]["containers"][0]["env"]}


def test_redis_lives_in_the_namespace_hardened_and_reachable_by_its_url() -> None:
    objects = rendered({"redis": True})
    name = redis_name(SERVICE)
    [deployment] = pick(objects, "Deployment", name=name)
    [service] = pick(objects, "Service", name=name)
    assert deployment["metadata"]["namespace"] == service["metadata"]["namespace"] == NAMESPACE
    pod = deployment["spec"]["template"]
    selector = deployment["spec"]["selector"]["matchLabels"]
    assert selector.items() <= pod["metadata"]["labels"].items()
    assert service["spec"]["selector"] == selector
    assert not service_selector(objects).items() <= pod["metadata"]["labels"].items()  # not the app's Pods
    # REDIS_URL names this Service and its port.
    url = re.fullmatch(r"redis://([a-z0-9-]+):(\d+)/0", redis_url(SERVICE))
    assert url and url.group(1) == name and int(url.group(2)) == service["spec"]["ports"][0]["port"] == 6379
    [main] = pod["spec"]["containers"]
    assert main["image"] == "redis:7.4-alpine" and main["command"] == ["redis-server"]
    assert main["args"] == ["--save", "", "--appendonly", "no", "--protected-mode", "no",
                            "--maxmemory", "48mb", "--maxmemory-policy", "allkeys-lru"]
    assert main["resources"]["limits"] == {"cpu": "200m", "memory": "64Mi"}
    assert main["resources"]["requests"] == {"cpu": "20m", "memory": "32Mi"}
    assert pod["spec"]["securityContext"]["runAsNonRoot"] is True and pod["spec"]["securityContext"]["runAsUser"] == 999
    assert main["securityContext"]["readOnlyRootFilesystem"] is True
    assert main["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    assert main["readinessProbe"]["tcpSocket"] == {"port": "redis"}
    assert pod["spec"]["automountServiceAccountToken"] is False


# --- values.schema.json --------------------------------------------------------------------------


def _bad_hooks() -> Iterator[tuple[str, Any, str]]:
    good = hooks_of(ALL)

    def changed(path: str, value: Any) -> dict[str, Any]:
        result = copy.deepcopy(good)
        *parents, last = path.split(".")
        node = result
        for part in parents:
            node = node[part]
        if value is None:
            del node[last]
        else:
            node[last] = value
        return result

    yield "the catalog declaration itself", {"postgres": True}, "/hooks/postgres"
    yield "unknown hook", {**good, "mysql": {}}, "/hooks"
    yield "fifo queue", changed("sqs.queues", ["orders.fifo"]), "/hooks/sqs/queues/0"
    yield "queue twice", changed("sqs.queues", ["orders", "orders"]), "/hooks/sqs/queues"
    yield "no secret names", changed("secrets.names", []), "/hooks/secrets/names"
    yield "copy from a preview", changed("secrets.sourceNamespace", "preview-other"), "/hooks/secrets/sourceNamespace"
    yield "platform is a preview", changed("platformNamespace", "preview-other"), "/hooks/platformNamespace"
    yield "postgres without admin secret", changed("postgres.adminSecret", None), "/hooks/postgres"
    yield "a password in values", changed("postgres.password", "hunter2"), "/hooks/postgres"
    yield "queues without endpoint", changed("aws", None), "/hooks"
    yield "postgres without a job", changed("job", None), "/hooks"
    yield "unbounded retries", changed("job.backoffLimit", 100), "/hooks/job/backoffLimit"
    yield "no limits", changed("job.resources.limits", None), "/hooks/job/resources"
    yield "root redis", changed("redis.runAsUser", 0), "/hooks/redis/runAsUser"
    yield "redis flag", {"redis": True}, "/hooks/redis"


@pytest.mark.parametrize(("hooks", "where"), [(h, w) for _, h, w in _bad_hooks()], ids=[n for n, *_ in _bad_hooks()])
def test_values_schema_rejects_bad_hooks(hooks: dict[str, Any], where: str) -> None:
    with pytest.raises(helm.HelmValuesError) as failure:
        render(entry_values(hooks=hooks))
    assert f"at '{where}" in str(failure.value), str(failure.value)


# --- the AppProject and a planner-built entry ----------------------------------------------------


def test_appproject_allows_every_kind_the_hooks_render_and_their_platform_namespace() -> None:
    project = yaml.safe_load((ARGOCD_DIR / "appproject.yaml").read_text())
    allowed = {(i["group"], i["kind"]) for i in project["spec"]["namespaceResourceWhitelist"]}
    destinations = {d["namespace"] for d in project["spec"]["destinations"]}
    objects = rendered(ALL)
    for obj in objects:
        assert (obj["apiVersion"].rpartition("/")[0], obj["kind"]) in allowed, obj["kind"]
    used = {o["metadata"]["namespace"] for o in objects}
    assert used == {NAMESPACE, PLATFORM_NS, BASE}
    assert PLATFORM_NS in destinations and HooksSettings().platform_namespace == PLATFORM_NS
    # The secrets hook's base namespace is per installation: the file says how to allow it.
    assert "hooks.secrets_namespace" in (ARGOCD_DIR / "appproject.yaml").read_text()
    assert not [d for d in destinations if d != PLATFORM_NS and not d.startswith("preview-")]


def test_planner_element_with_hooks_expands_and_renders_valid_manifests() -> None:
    from devstack import render as devstack_render

    catalog = catalog_settings()
    event = pr_event()
    feature = naming.feature_name(event.head_branch)
    element = build_element(
        event=event, catalog=catalog, feature=feature, service=SERVICE, expires="2026-11-23T10:00:00Z"
    )
    element["values"]["hooks"] = hook_values(service=SERVICE, declared=ALL, platform=PLATFORM)
    element["values"]["namespaceOwner"] = "true"
    entries.validate(feature, [element])
    apps = devstack_render.render_elements(feature, [element], repo_root=REPO_ROOT)
    [service_app] = [a for a in apps if a.applicationset == "devstack-previews"]
    [namespace_app] = [a for a in apps if a.applicationset == "devstack-preview-namespaces"]
    assert validate_manifest(service_app.application) == "CRD argoproj.io/Application"
    assert service_app.application["spec"]["source"]["helm"]["valuesObject"]["hooks"] == element["values"]["hooks"]
    validate_all(service_app.manifests)
    validate_all(namespace_app.manifests)
    kinds = [m["kind"] for m in service_app.manifests]
    assert kinds.count("Job") == 7 and "ClusterRole" not in kinds
    got = {(m["kind"], m["metadata"]["namespace"], m["metadata"]["name"]) for m in service_app.manifests}
    assert got == expected_objects(ALL)
    assert "Job" not in {m["kind"] for m in namespace_app.manifests}


# --- the rendered Jobs run the real hooks --------------------------------------------------------


def _run_job(monkeypatch: pytest.MonkeyPatch, job: dict[str, Any], env: dict[str, str], kubeconfig: Path) -> int:
    command = container(job)["command"]
    assert command[:2] == ["devstack", "hook"]
    return run_cli(monkeypatch, command[2], command[3], {**env, "KUBECONFIG": str(kubeconfig)})


def _role_rules(objects: list[dict[str, Any]], suffix: str) -> dict[str, list[dict[str, Any]]]:
    name = object_name(feature=FEATURE, service=SERVICE, suffix=suffix)
    return {r["metadata"]["namespace"]: r["rules"] for r in pick(objects, "Role", name=name)}


def test_rendered_secrets_job_copies_with_nothing_but_its_rendered_roles(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from tests.test_hooks_secrets import source_secrets

    objects = rendered({"secrets": ["payments-db", "payments-tls"]})
    [job] = pick(objects, "Job")
    kube = FakeKube()
    source_secrets(kube)
    kube.rules = _role_rules(objects, "secrets")
    assert set(kube.rules) == {BASE, NAMESPACE}
    with kube.running():
        kubeconfig = kube.write_kubeconfig(tmp_path / "kubeconfig")
        assert _run_job(monkeypatch, job, job_env(job), kubeconfig) == EXIT_OK
        writes = len(kube.writes())
        assert _run_job(monkeypatch, job, job_env(job), kubeconfig) == EXIT_OK  # PreSync runs on every sync
        assert len(kube.writes()) == writes
    for name in ("payments-db", "payments-tls"):
        copied = kube.get("secrets", NAMESPACE, name)
        assert copied is not None and copied["data"] == kube.get("secrets", BASE, name)["data"]  # type: ignore[index]
    assert kube.get("secrets", NAMESPACE, "not-listed") is None
    assert not [r for r in kube.requests if r[1] == BASE and r[0] != "GET"]


@pytest.fixture
def isolated_aws(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for key in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))


@pytest.mark.usefixtures("isolated_aws")
def test_rendered_queue_jobs_ensure_twice_then_clean_up_against_moto(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import boto3

    with running_moto() as moto_url:
        platform = HooksSettings(aws={"endpoint_url": moto_url, "credentials_secret": "devstack-aws"})
        objects = rendered({"sqs": ["orders", "order-events"], "sns": ["events"]}, platform=platform)
        by_job = jobs(objects)
        kube = FakeKube(rules=_role_rules(objects, "hooks"))
        client = {kind: boto3.client(kind, region_name="us-east-1", endpoint_url=moto_url,
                                     aws_access_key_id="testing", aws_secret_access_key="x") for kind in ("sqs", "sns")}

        def leftovers() -> list[str]:
            queues = [u.rsplit("/", 1)[-1] for u in client["sqs"].list_queues().get("QueueUrls", [])]
            topics = [t["TopicArn"].rsplit(":", 1)[-1] for t in client["sns"].list_topics()["Topics"]]
            return sorted(n for n in queues + topics if n.startswith(f"{FEATURE}-"))

        with kube.running():
            kubeconfig = kube.write_kubeconfig(tmp_path / "kubeconfig")
            for _ in range(2):  # PreSync runs on every sync
                for kind in ("sqs", "sns"):
                    job = by_job[kind, "ensure"]
                    assert _run_job(monkeypatch, job, job_env(job), kubeconfig) == EXIT_OK
            assert leftovers() == ["login-fix-events", "login-fix-order-events", "login-fix-orders"]
            [deployment] = pick(objects, "Deployment", name=SERVICE)
            for item in deployment["spec"]["template"]["spec"]["containers"][0]["envFrom"]:
                config_map = kube.get("configmaps", NAMESPACE, item["configMapRef"]["name"])
                assert config_map is not None  # what the service's envFrom reads exists
            sqs_map = kube.get("configmaps", NAMESPACE, names.output_name("sqs", SERVICE))
            assert sqs_map is not None and sqs_map["data"]["SQS_ORDERS_URL"].endswith("/login-fix-orders")
            before = len(kube.requests)
            for kind in ("sqs", "sns"):
                job = by_job[kind, "cleanup"]
                assert _run_job(monkeypatch, job, job_env(job), kubeconfig) == EXIT_OK
            assert leftovers() == []
            assert len(kube.requests) == before  # the cleanup Jobs never call Kubernetes (they have no token)


@pytest.fixture(scope="module")
def pg(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PostgresServer]:
    with running_postgres(tmp_path_factory.mktemp("pg")) as server:
        yield server


def test_rendered_postgres_jobs_ensure_twice_then_clean_up(
    pg: PostgresServer, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    platform = HooksSettings(postgres={"host": pg.host, "port": pg.port, "sslmode": "disable"})
    objects = rendered({"postgres": True}, platform=platform)
    by_job = jobs(objects)
    admin = {("devstack-postgres-admin", "username"): pg.admin_user,
             ("devstack-postgres-admin", "password"): pg.admin_password}
    database = names.pg_identifier(FEATURE, SERVICE)

    def databases() -> set[str]:
        with pg.superconnect() as conn:
            return {row[0] for row in conn.execute("SELECT datname FROM pg_database")}

    kube = FakeKube(rules=_role_rules(objects, "hooks"))
    with kube.running():
        kubeconfig = kube.write_kubeconfig(tmp_path / "kubeconfig")
        ensure = by_job["postgres", "ensure"]
        assert _run_job(monkeypatch, ensure, job_env(ensure, admin), kubeconfig) == EXIT_OK
        first = kube.get("secrets", NAMESPACE, names.output_name("postgres", SERVICE))
        assert _run_job(monkeypatch, ensure, job_env(ensure, admin), kubeconfig) == EXIT_OK
        second = kube.get("secrets", NAMESPACE, names.output_name("postgres", SERVICE))
        assert first is not None and second is not None and first["data"] == second["data"]  # the password is kept
        assert database in databases()
        cleanup = by_job["postgres", "cleanup"]
        before = len(kube.requests)
        assert _run_job(monkeypatch, cleanup, job_env(cleanup, admin), kubeconfig) == EXIT_OK
        assert len(kube.requests) == before  # no Kubernetes access needed
    assert database not in databases()


def test_every_hook_kind_is_covered() -> None:
    """A new hook kind must get its template and its place in these tests."""
    assert set(HOOK_KINDS) == set(ALL)
    assert {p.name for p in (CHART_DIR / "templates").glob("*.yaml") if p.name.startswith(("hooks-", "redis"))} == {
        "hooks-secrets.yaml", "hooks-platform-rbac.yaml", "hooks-postgres.yaml", "hooks-queues.yaml", "redis.yaml",
    }

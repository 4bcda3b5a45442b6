"""The RBAC the chart renders for the hook ServiceAccount: pure functions, no cluster access.

No ClusterRole, no cluster-wide secret rights. In the base namespace the ServiceAccount may only
``get`` the Secrets it copies, by name; in the preview namespace it may create Secrets/ConfigMaps and
read and update the ones the hooks write, by name. (``create`` cannot be limited by name: Kubernetes
authorizes it before the object has one, so it is granted in the preview namespace only.)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from devstack.hooks import names

Manifest = dict[str, Any]

RBAC_API = "rbac.authorization.k8s.io/v1"
READ_VERBS = ("get",)
WRITE_VERBS = ("get", "update", "patch", "delete")


def _sorted_unique(items: Sequence[str]) -> list[str]:
    return sorted(set(items))


def preview_rules(*, secrets: Sequence[str] = (), config_maps: Sequence[str] = ()) -> list[dict[str, Any]]:
    """Role rules in the preview namespace for hooks writing these Secrets and ConfigMaps."""
    rules: list[dict[str, Any]] = []
    for resource, object_names in (("secrets", secrets), ("configmaps", config_maps)):
        if not object_names:
            continue
        for name in object_names:
            names.checked_secret_name(name)
        rules.append({"apiGroups": [""], "resources": [resource], "verbs": ["create"]})
        rules.append({
            "apiGroups": [""],
            "resources": [resource],
            "resourceNames": _sorted_unique(object_names),
            "verbs": list(WRITE_VERBS),
        })
    return rules


def base_rules(*, secrets: Sequence[str]) -> list[dict[str, Any]]:
    """Role rules in the base namespace: ``get`` on exactly these Secrets."""
    if not secrets:
        # An empty resourceNames would grant every Secret of the namespace.
        raise ValueError("at least one secret name is required")
    for name in secrets:
        names.checked_secret_name(name)
    return [{
        "apiGroups": [""],
        "resources": ["secrets"],
        "resourceNames": _sorted_unique(secrets),
        "verbs": list(READ_VERBS),
    }]


def role(*, name: str, namespace: str, rules: list[dict[str, Any]], labels: dict[str, str]) -> Manifest:
    return {
        "apiVersion": RBAC_API,
        "kind": "Role",
        "metadata": {"name": name, "namespace": namespace, "labels": dict(labels)},
        "rules": rules,
    }


def role_binding(
    *, name: str, namespace: str, service_account: str, service_account_namespace: str, labels: dict[str, str]
) -> Manifest:
    return {
        "apiVersion": RBAC_API,
        "kind": "RoleBinding",
        "metadata": {"name": name, "namespace": namespace, "labels": dict(labels)},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
        "subjects": [
            {"kind": "ServiceAccount", "name": service_account, "namespace": service_account_namespace}
        ],
    }


def secret_copy_rbac(
    *,
    name: str,
    base_namespace: str,
    namespace: str,
    service_account: str,
    secrets: Sequence[str],
    labels: dict[str, str] | None = None,
) -> list[Manifest]:
    """Role + RoleBinding in the base namespace and in the preview namespace for the secrets hook.

    ``name`` names all four objects; it must be unique per (feature, service) in the base
    namespace, e.g. ``devstack-secrets-<app name>``.
    """
    names.checked_secret_name(name)
    names.checked_namespace(base_namespace)
    names.checked_namespace(namespace)
    names.checked_secret_name(service_account)
    labels = dict(labels or {})
    return [
        role(name=name, namespace=base_namespace, rules=base_rules(secrets=secrets), labels=labels),
        role_binding(
            name=name, namespace=base_namespace, service_account=service_account,
            service_account_namespace=namespace, labels=labels,
        ),
        role(name=name, namespace=namespace, rules=preview_rules(secrets=secrets), labels=labels),
        role_binding(
            name=name, namespace=namespace, service_account=service_account,
            service_account_namespace=namespace, labels=labels,
        ),
    ]

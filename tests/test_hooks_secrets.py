"""The secrets hook against a stand-in Kubernetes API (tests/hook_helpers.FakeKube) on loopback.

The stand-in enforces the Role rules of :func:`devstack.hooks.rbac.secret_copy_rbac`, so these tests
also prove that the rules the chart renders are enough for the hook, and that it uses nothing more.
"""

from __future__ import annotations

import base64
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from devstack.errors import PermanentError, TemporaryError
from devstack.hooks import rbac, secret_copy
from devstack.hooks.cli import EXIT_OK, EXIT_PERMANENT, EXIT_TEMPORARY
from devstack.hooks.kube import KubeStore
from tests.hook_helpers import FakeKube, run_cli

BASE = "payments"
PREVIEW = "preview-login-fix"
NAMES = ["payments-db", "payments-tls"]


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def source_secrets(kube: FakeKube) -> None:
    kube.put("secrets", BASE, {
        "metadata": {
            "name": "payments-db",
            "labels": {"team": "payments", "app.kubernetes.io/instance": "payments-base",
                       "argocd.argoproj.io/instance": "payments-base"},
            "annotations": {"kubectl.kubernetes.io/last-applied-configuration": "{}",
                            "argocd.argoproj.io/tracking-id": "payments-base:/Secret:payments/payments-db"},
            "ownerReferences": [{"apiVersion": "v1", "kind": "ConfigMap", "name": "owner", "uid": "u-1"}],
            "finalizers": ["example.com/keep"],
        },
        "type": "Opaque",
        "data": {"username": b64("payments"), "password": b64("hunter2-source-password")},
    })
    kube.put("secrets", BASE, {
        "metadata": {"name": "payments-tls"},
        "type": "kubernetes.io/tls",
        "data": {"tls.crt": b64("CERT"), "tls.key": b64("KEY")},
    })
    kube.put("secrets", BASE, {"metadata": {"name": "not-listed"}, "type": "Opaque", "data": {"x": b64("y")}})


def rules_for(names: list[str]) -> dict[str, list[dict[str, Any]]]:
    manifests = rbac.secret_copy_rbac(
        name="devstack-secrets-login-fix-payments", base_namespace=BASE, namespace=PREVIEW,
        service_account="devstack-hooks", secrets=names,
    )
    return {m["metadata"]["namespace"]: m["rules"] for m in manifests if m["kind"] == "Role"}


@pytest.fixture
def kube() -> Iterator[FakeKube]:
    fake = FakeKube()
    source_secrets(fake)
    fake.rules = rules_for(NAMES)
    with fake.running():
        yield fake


@pytest.fixture
def core(kube: FakeKube) -> Any:
    from kubernetes import client

    return client.CoreV1Api(kube.api_client())


def copy(core: Any, names: list[str] | None = None) -> list[secret_copy.CopyResult]:
    return secret_copy.copy_secrets(
        core, feature="login-fix", source_namespace=BASE, namespace=PREVIEW, secrets=names or NAMES
    )


def test_copies_carry_data_type_and_labels_only(kube: FakeKube, core: Any) -> None:
    results = copy(core)

    assert [(r.name, r.outcome) for r in results] == [("payments-db", "created"), ("payments-tls", "created")]
    source = kube.get("secrets", BASE, "payments-db")
    copied = kube.get("secrets", PREVIEW, "payments-db")
    assert source is not None
    assert copied is not None
    assert copied["data"] == source["data"]
    assert copied["type"] == "Opaque"
    assert copied["metadata"]["labels"] == {
        "team": "payments", "app.kubernetes.io/managed-by": "devstack", "devstack/feature": "login-fix",
    }  # Argo CD tracking labels left out: the base Application must not claim the copy
    assert copied["metadata"]["annotations"] == {"devstack/copied-from": "payments/payments-db"}
    assert copied["metadata"]["uid"] != source["metadata"]["uid"]
    for key in ("ownerReferences", "finalizers"):
        assert key not in copied["metadata"]
    tls = kube.get("secrets", PREVIEW, "payments-tls")
    assert tls is not None
    assert tls["type"] == "kubernetes.io/tls"
    assert tls["data"] == {"tls.crt": b64("CERT"), "tls.key": b64("KEY")}
    assert kube.get("secrets", PREVIEW, "not-listed") is None
    # In the base namespace the hook only ever read the listed secrets.
    assert {r for r in kube.requests if r[1] == BASE} == {
        ("GET", BASE, "secrets", "payments-db"), ("GET", BASE, "secrets", "payments-tls"),
    }
    # What was sent on create carried no resourceVersion/uid of the source.
    assert copied["metadata"]["resourceVersion"] != source["metadata"]["resourceVersion"]


def test_second_run_writes_only_what_changed(kube: FakeKube, core: Any) -> None:
    copy(core)
    writes = len(kube.writes())
    assert [r.outcome for r in copy(core)] == ["unchanged", "unchanged"]
    assert len(kube.writes()) == writes  # nothing written

    changed = kube.get("secrets", BASE, "payments-db")
    assert changed is not None
    changed["data"]["password"] = b64("rotated-password")
    changed["metadata"]["labels"]["tier"] = "gold"
    kube.put("secrets", BASE, changed)
    uid = kube.get("secrets", PREVIEW, "payments-db")["metadata"]["uid"]  # type: ignore[index]

    assert [r.outcome for r in copy(core)] == ["replaced", "unchanged"]
    assert kube.writes()[writes:] == [("PUT", PREVIEW, "secrets", "payments-db")]
    copied = kube.get("secrets", PREVIEW, "payments-db")
    assert copied is not None
    assert copied["data"]["password"] == b64("rotated-password")
    assert copied["metadata"]["labels"]["tier"] == "gold"
    assert copied["metadata"]["uid"] == uid  # replaced in place


def test_a_changed_type_is_recreated(kube: FakeKube, core: Any) -> None:
    copy(core)
    tls = kube.get("secrets", BASE, "payments-tls")
    assert tls is not None
    tls["type"] = "Opaque"
    kube.put("secrets", BASE, tls)
    before = len(kube.writes())
    assert [r.outcome for r in copy(core)] == ["unchanged", "replaced"]
    assert kube.writes()[before:] == [
        ("DELETE", PREVIEW, "secrets", "payments-tls"), ("POST", PREVIEW, "secrets", None),
    ]
    assert kube.get("secrets", PREVIEW, "payments-tls")["type"] == "Opaque"  # type: ignore[index]


def test_a_missing_source_secret_is_a_clear_permanent_error(kube: FakeKube, core: Any) -> None:
    kube.rules = rules_for(["payments-gone"])
    with pytest.raises(PermanentError, match="secret 'payments-gone' does not exist in namespace 'payments'"):
        copy(core, ["payments-gone"])
    assert kube.writes() == []


def test_a_secret_outside_the_role_is_forbidden(kube: FakeKube, core: Any) -> None:
    # The Role names only NAMES: reading another secret of the base namespace is refused (403).
    with pytest.raises(PermanentError, match="403") as info:
        copy(core, ["not-listed"])
    assert "forbidden" in str(info.value)
    assert kube.get("secrets", PREVIEW, "not-listed") is None


def test_rbac_has_no_cluster_wide_or_unnamed_secret_rights() -> None:
    manifests = rbac.secret_copy_rbac(
        name="devstack-secrets-login-fix-payments", base_namespace=BASE, namespace=PREVIEW,
        service_account="devstack-hooks", secrets=["payments-db", "payments-db", "b"],
    )
    assert [(m["kind"], m["metadata"]["namespace"]) for m in manifests] == [
        ("Role", BASE), ("RoleBinding", BASE), ("Role", PREVIEW), ("RoleBinding", PREVIEW),
    ]
    base_role, base_binding, preview_role, _ = manifests
    assert base_role["rules"] == [
        {"apiGroups": [""], "resources": ["secrets"], "resourceNames": ["b", "payments-db"], "verbs": ["get"]}
    ]
    assert base_binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "devstack-hooks", "namespace": PREVIEW}
    ]
    assert base_binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io", "kind": "Role",
        "name": "devstack-secrets-login-fix-payments",
    }
    for rule in preview_role["rules"]:
        assert rule["resources"] == ["secrets"]
        assert rule.get("resourceNames") or rule["verbs"] == ["create"]
    with pytest.raises(ValueError, match="at least one"):
        rbac.base_rules(secrets=[])  # empty resourceNames would mean every secret
    assert rbac.preview_rules(config_maps=["devstack-sqs"]) == [
        {"apiGroups": [""], "resources": ["configmaps"], "verbs": ["create"]},
        {"apiGroups": [""], "resources": ["configmaps"], "resourceNames": ["devstack-sqs"],
         "verbs": ["get", "update", "patch", "delete"]},
    ]


def test_kube_store_writes_through_the_same_api(kube: FakeKube) -> None:
    kube.rules = {PREVIEW: rbac.preview_rules(secrets=["devstack-postgres"], config_maps=["devstack-sqs"])}
    store = KubeStore(kube.api_client())
    assert store.read_secret(namespace=PREVIEW, name="devstack-postgres") is None
    labels = {"devstack/feature": "login-fix"}
    secret = {"namespace": PREVIEW, "name": "devstack-postgres", "labels": labels}
    assert store.apply_secret(**secret, data={"PGPASSWORD": "p"})
    assert not store.apply_secret(**secret, data={"PGPASSWORD": "p"})
    assert store.apply_secret(**secret, data={"PGPASSWORD": "q"})
    assert store.read_secret(namespace=PREVIEW, name="devstack-postgres") == {"PGPASSWORD": "q"}
    assert store.apply_config_map(namespace=PREVIEW, name="devstack-sqs", data={"A": "1"}, labels=labels)
    assert not store.apply_config_map(namespace=PREVIEW, name="devstack-sqs", data={"A": "1"}, labels=labels)
    assert kube.writes() == [
        ("POST", PREVIEW, "secrets", None), ("PUT", PREVIEW, "secrets", "devstack-postgres"),
        ("POST", PREVIEW, "configmaps", None),
    ]


# ----------------------------------------------------------------------------------------- CLI


def test_cli_ensure_twice_and_cleanup_is_a_no_op(
    kube: FakeKube, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    env = {
        "KUBECONFIG": str(kube.write_kubeconfig(tmp_path / "kubeconfig")),
        "DEVSTACK_HOOK_FEATURE": "login-fix",
        "DEVSTACK_HOOK_SECRETS_SOURCE_NAMESPACE": BASE,
        "DEVSTACK_HOOK_SECRETS": "payments-db,payments-tls",
        "DEVSTACK_HOOK_ATTEMPTS": "2",
        "DEVSTACK_HOOK_BACKOFF_SECONDS": "0.01",
    }
    assert run_cli(monkeypatch, "secrets", "ensure", env) == EXIT_OK
    assert run_cli(monkeypatch, "secrets", "ensure", env) == EXIT_OK
    assert kube.writes() == [("POST", PREVIEW, "secrets", None)] * 2
    assert kube.get("secrets", PREVIEW, "payments-db") is not None
    before = len(kube.requests)
    assert run_cli(monkeypatch, "secrets", "cleanup", env) == EXIT_OK
    assert len(kube.requests) == before  # nothing to do: the namespace takes the copies with it

    kube.rules = rules_for(["payments-gone"])  # the chart's Role names what the hook is told to copy
    gone = {**env, "DEVSTACK_HOOK_SECRETS": "payments-gone"}
    assert run_cli(monkeypatch, "secrets", "ensure", gone) == EXIT_PERMANENT
    assert "does not exist in namespace 'payments'" in caplog.text
    assert "hunter2-source-password" not in caplog.text
    assert b64("hunter2-source-password") not in caplog.text


def test_cli_retries_a_failing_api_a_bounded_number_of_times(
    kube: FakeKube, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    env = {
        "KUBECONFIG": str(kube.write_kubeconfig(tmp_path / "kubeconfig")),
        "DEVSTACK_HOOK_FEATURE": "login-fix",
        "DEVSTACK_HOOK_SECRETS_SOURCE_NAMESPACE": BASE,
        "DEVSTACK_HOOK_SECRETS": "payments-db",
        "DEVSTACK_HOOK_ATTEMPTS": "3",
        "DEVSTACK_HOOK_BACKOFF_SECONDS": "0.01",
    }
    kube.fail_next = [503, 503]
    assert run_cli(monkeypatch, "secrets", "ensure", env) == EXIT_OK
    assert "attempt 2 of 3" in caplog.text
    assert kube.get("secrets", PREVIEW, "payments-db") is not None

    kube.fail_next = [503] * 3
    assert run_cli(monkeypatch, "secrets", "ensure", env) == EXIT_TEMPORARY
    assert "giving up after 3 attempt(s)" in caplog.text


def test_a_preview_namespace_not_there_yet_is_worth_a_retry(kube: FakeKube, core: Any) -> None:
    kube.missing_namespaces = {PREVIEW}
    with pytest.raises(TemporaryError, match="not found"):
        copy(core)
    kube.missing_namespaces = set()
    assert [r.outcome for r in copy(core)] == ["created", "created"]

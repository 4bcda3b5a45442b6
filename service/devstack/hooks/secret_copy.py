"""The ``secrets`` hook: copy named Secrets from a base namespace into the preview namespace.

A copy carries the source's ``data``, ``type`` and labels, and nothing that belongs to the source
object (uid, resourceVersion, ownerReferences, annotations, managedFields). Labels that Argo CD uses
to track resources (``app.kubernetes.io/instance``, ``argocd.argoproj.io/*``) are left out too:
otherwise the base Application would claim, and could prune, the copy.

``ensure`` creates a missing copy, replaces a copy that differs (delete + create when the type
changed, since a Secret's type is immutable) and leaves an equal one alone. ``cleanup`` has nothing
to do: the copies live in the preview namespace and go with it. The hook needs ``get`` on exactly
the named Secrets in the base namespace and write rights in the preview namespace only (see
:func:`devstack.hooks.rbac.secret_copy_rbac`).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from devstack.errors import PermanentError
from devstack.hooks import names
from devstack.hooks.kube import api_call, hook_labels, read_or_none

logger = logging.getLogger(__name__)

COPIED_FROM = "devstack/copied-from"
# Labels by which Argo CD tracks what belongs to an Application.
_TRACKING_LABELS = frozenset({"app.kubernetes.io/instance"})
_TRACKING_PREFIXES = ("argocd.argoproj.io/",)
_NOT_COPYABLE_TYPES = frozenset({"kubernetes.io/service-account-token"})

Outcome = Literal["created", "replaced", "unchanged"]


@dataclass(frozen=True)
class CopyResult:
    name: str
    outcome: Outcome


def copy_labels(source: Mapping[str, str] | None, *, feature: str) -> dict[str, str]:
    """The labels of a copy: the source's, minus Argo CD tracking labels, plus devstack's."""
    labels = {
        key: value
        for key, value in (source or {}).items()
        if key not in _TRACKING_LABELS and not key.startswith(_TRACKING_PREFIXES)
    }
    labels.update(hook_labels(feature))
    return labels


def copy_secrets(
    core: Any,
    *,
    feature: str,
    source_namespace: str,
    namespace: str,
    secrets: Sequence[str],
) -> list[CopyResult]:
    """Copy each named Secret from ``source_namespace`` into ``namespace``; idempotent.

    ``core`` is a ``kubernetes.client.CoreV1Api``. A missing source Secret is a
    :class:`PermanentError` (nothing is copied after it); API failures that may pass are
    :class:`~devstack.errors.TemporaryError`.
    """
    names.checked_feature(feature)
    names.checked_namespace(source_namespace)
    names.checked_namespace(namespace)
    if source_namespace == namespace:
        raise PermanentError(f"the source and the preview namespace are the same ({namespace!r})")
    results = []
    for name in secrets:
        names.checked_secret_name(name)
        outcome = _copy_one(
            core, feature=feature, source_namespace=source_namespace, namespace=namespace, name=name
        )
        logger.info("secret %s: %s from namespace %s into %s", name, outcome, source_namespace, namespace)
        results.append(CopyResult(name=name, outcome=outcome))
    return results


def _copy_one(core: Any, *, feature: str, source_namespace: str, namespace: str, name: str) -> Outcome:
    source = read_or_none(
        f"read secret {source_namespace}/{name}",
        lambda: core.read_namespaced_secret(name=name, namespace=source_namespace),
    )
    if source is None:
        raise PermanentError(
            f"secret {name!r} does not exist in namespace {source_namespace!r}: create it there, "
            "or remove it from the service's hooks.secrets in the catalog"
        )
    secret_type = source.type or "Opaque"
    if secret_type in _NOT_COPYABLE_TYPES:
        raise PermanentError(
            f"secret {source_namespace}/{name} is of type {secret_type}, which cannot be copied"
        )
    data = dict(source.data or {})  # base64 strings, copied as they are
    labels = copy_labels(source.metadata.labels if source.metadata else None, feature=feature)
    body: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": labels,
            "annotations": {COPIED_FROM: f"{source_namespace}/{name}"},
        },
        "type": secret_type,
        "data": data,
    }
    what = f"secret {namespace}/{name}"
    current = read_or_none(
        f"read {what}", lambda: core.read_namespaced_secret(name=name, namespace=namespace)
    )

    def create() -> None:
        api_call(
            f"create {what}", lambda: core.create_namespaced_secret(namespace=namespace, body=body), creates=True
        )

    if current is None:
        create()
        return "created"
    current_annotations = (current.metadata.annotations if current.metadata else None) or {}
    if (
        (current.data or {}) == data
        and (current.type or "Opaque") == secret_type
        and ((current.metadata.labels if current.metadata else None) or {}) == labels
        and current_annotations.get(COPIED_FROM) == f"{source_namespace}/{name}"
    ):
        return "unchanged"
    if (current.type or "Opaque") != secret_type:
        # The type of a Secret cannot be changed in place.
        api_call(f"delete {what}", lambda: core.delete_namespaced_secret(name=name, namespace=namespace))
        create()
        return "replaced"
    body["metadata"]["resourceVersion"] = current.metadata.resource_version
    api_call(
        f"replace {what}",
        lambda: core.replace_namespaced_secret(name=name, namespace=namespace, body=body),
    )
    return "replaced"

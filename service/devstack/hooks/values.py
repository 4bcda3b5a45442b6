"""``values.hooks`` of the feature-release chart, built from one service's catalog declaration.

The catalog says *what* a service needs::

    hooks: {postgres: true, redis: true, sqs: [orders], sns: [events], secrets: [payments-db]}

and the platform settings (:class:`~devstack.hooks.config.HooksSettings`) say *where* and *how*.
:func:`hook_values` joins the two into the object the chart renders its hooks from (documented in
``docs/hooks.md`` and checked by the chart's ``values.schema.json``). It is pure: no I/O, the same
input always gives the same output, and every name is checked with the rules of
:mod:`devstack.hooks.names` first. A declaration the hooks cannot run is a
:class:`~devstack.errors.ConfigError` naming the service and the value, so a bad catalog is refused
when the configuration is loaded, not when Argo CD syncs.

The chart derives the names of what it renders from the feature (which this function does not
know); :func:`object_name` and :func:`redis_name` are their Python twins, for tests and tools.
"""

from __future__ import annotations

import difflib
import hashlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from devstack.errors import ConfigError
from devstack.hooks import names
from devstack.hooks.config import HooksSettings, ImageSettings, Resources

HOOK_KINDS = ("secrets", "postgres", "redis", "sqs", "sns")
MAX_NAMES = 50
REDIS_PORT = 6379
_NAME_MAX = 63
_HASH_LEN = 6


def did_you_mean(wrong: Sequence[str], known: Iterable[str]) -> str:
    """`` (did you mean 'postgres'?)`` for the closest known name of the first wrong one, else ``''``."""
    close = difflib.get_close_matches(wrong[0], list(known), n=1, cutoff=0.6) if wrong else []
    return f" (did you mean {close[0]!r}?)" if close else ""


def hook_values(*, service: str, declared: Mapping[str, Any], platform: HooksSettings) -> dict[str, Any]:
    """The chart's ``values.hooks`` for ``service``, whose catalog entry declares ``declared``.

    ``{}`` when the service declares no hook (or only hooks turned off: ``postgres: false``,
    ``sqs: []``). Raises :class:`ConfigError` for an unknown hook, a value of the wrong type, a bad
    or repeated name, or a hook the platform settings cannot serve (``postgres`` without
    ``hooks.postgres.host``, ``secrets`` without ``hooks.secrets_namespace``).
    """
    if not isinstance(declared, Mapping):
        raise ConfigError(f"service {service!r}: hooks must be a mapping like {{postgres: true, sqs: [orders]}}")
    unknown = sorted(str(kind) for kind in declared if kind not in HOOK_KINDS)
    if unknown:
        raise ConfigError(
            f"service {service!r}: unknown hook {', '.join(repr(k) for k in unknown)}"
            f"{did_you_mean(unknown, HOOK_KINDS)} (known: {', '.join(HOOK_KINDS)})"
        )
    postgres = _flag(service, declared, "postgres")
    redis = _flag(service, declared, "redis")
    secrets = _names(service, declared, "secrets", what="secret", problem=names.secret_name_problem)
    queues = _names(service, declared, "sqs", what="queue", problem=names.resource_short_name_problem)
    topics = _names(service, declared, "sns", what="topic", problem=names.resource_short_name_problem)

    values: dict[str, Any] = {}
    if secrets or postgres or queues or topics:
        values.update(_jobs(platform))
    if secrets:
        if not platform.secrets_namespace:
            raise ConfigError(
                f"service {service!r} declares hooks.secrets, but hooks.secrets_namespace (the base "
                "namespace to copy them from) is not set"
            )
        values["secrets"] = {"sourceNamespace": platform.secrets_namespace, "names": secrets}
    if postgres:
        pg = platform.postgres
        if not pg.host:
            raise ConfigError(
                f"service {service!r} declares hooks.postgres, but hooks.postgres.host (the shared "
                "server) is not set"
            )
        values["postgres"] = {
            "host": pg.host,
            "port": pg.port,
            "database": pg.database,
            "sslmode": pg.sslmode,
            "connectTimeout": pg.connect_timeout,
            "adminSecret": {"name": pg.admin_secret, "userKey": pg.user_key, "passwordKey": pg.password_key},
        }
    if queues:
        values["sqs"] = {"queues": queues}
    if topics:
        values["sns"] = {"topics": topics}
    if queues or topics:
        aws = platform.aws
        aws_values: dict[str, Any] = {
            "endpointUrl": aws.endpoint_url, "region": aws.region, "maxAttempts": aws.max_attempts,
        }
        if aws.credentials_secret:
            aws_values["credentialsSecret"] = {
                "name": aws.credentials_secret,
                "accessKeyIdKey": aws.access_key_id_key,
                "secretAccessKeyKey": aws.secret_access_key_key,
            }
        values["aws"] = aws_values
    if redis:
        settings = platform.redis
        values["redis"] = {
            "image": _image(settings.image),
            "runAsUser": settings.run_as_user,
            "maxmemory": settings.maxmemory,
            "resources": _resources(settings.resources),
        }
    return values


def object_name(*, feature: str, service: str, suffix: str) -> str:
    """The name the chart gives a hook object: ``devstack-<feature>--<service>-<suffix>``.

    Unique per (feature, service) in every namespace (feature and service never contain ``--``),
    at most 63 characters: past that, shortened and given a 6-character hash of the full name. The
    chart's ``fr.hookName`` computes the same.
    """
    name = f"devstack-{names.checked_feature(feature)}--{names.checked_service(service)}-{suffix}"
    if len(name) > _NAME_MAX:
        digest = hashlib.sha256(name.encode("utf-8")).hexdigest()[:_HASH_LEN]
        name = f"{name[: _NAME_MAX - _HASH_LEN - 1].rstrip('-')}-{digest}"
    return name


def redis_name(service: str) -> str:
    """Name of the Redis Deployment and Service of ``service`` in its preview namespace."""
    return f"devstack-redis-{names.checked_service(service)}"


def redis_url(service: str) -> str:
    """``REDIS_URL`` as the chart gives it to ``service``."""
    return f"redis://{redis_name(service)}:{REDIS_PORT}/0"


def _jobs(platform: HooksSettings) -> dict[str, Any]:
    job = platform.job
    return {
        "image": _image(platform.image),
        "platformNamespace": platform.platform_namespace,
        "serviceAccountAnnotations": dict(platform.service_account_annotations),
        "cleanupServiceAccount": platform.cleanup_service_account,
        "job": {
            "backoffLimit": job.backoff_limit,
            "activeDeadlineSeconds": job.active_deadline_seconds,
            "runAsUser": job.run_as_user,
            "resources": _resources(job.resources),
            "retry": {
                "attempts": job.attempts,
                "backoffSeconds": job.backoff_seconds,
                "maxBackoffSeconds": job.max_backoff_seconds,
            },
        },
    }


def _image(image: ImageSettings) -> dict[str, str]:
    return {"repository": image.repository, "tag": image.tag, "pullPolicy": image.pull_policy}


def _resources(resources: Resources) -> dict[str, dict[str, str]]:
    return {
        "requests": {"cpu": resources.requests.cpu, "memory": resources.requests.memory},
        "limits": {"cpu": resources.limits.cpu, "memory": resources.limits.memory},
    }


def _flag(service: str, declared: Mapping[str, Any], kind: str) -> bool:
    value = declared.get(kind, False)
    if not isinstance(value, bool):
        raise ConfigError(f"service {service!r}: hooks.{kind} must be true or false, not {value!r}")
    return value


def _names(
    service: str,
    declared: Mapping[str, Any],
    kind: str,
    *,
    what: str,
    problem: Callable[[str], str | None],
) -> list[str]:
    value = declared.get(kind, [])
    if value is None:
        return []
    if isinstance(value, str) or not isinstance(value, list | tuple):
        raise ConfigError(f"service {service!r}: hooks.{kind} must be a list of {what} names, like [{kind}-name]")
    if len(value) > MAX_NAMES:
        raise ConfigError(f"service {service!r}: hooks.{kind} lists more than {MAX_NAMES} names")
    seen: list[str] = []
    for item in value:
        if not isinstance(item, str):
            raise ConfigError(f"service {service!r}: hooks.{kind}: {item!r} is not a {what} name")
        reason = problem(item)
        if reason:
            raise ConfigError(f"service {service!r}: hooks.{kind}: {what} name {item!r} {reason}")
        if item in seen:
            raise ConfigError(f"service {service!r}: hooks.{kind} lists {item!r} twice")
        seen.append(item)
    return seen

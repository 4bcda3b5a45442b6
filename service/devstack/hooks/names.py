"""Names the hooks derive from a feature: pure, validated, built on :mod:`devstack.naming`.

* Postgres: database and role ``preview_<feature>`` (``-`` becomes ``_``), or
  ``preview_<feature>__<service>`` when the hook runs for one service. Feature and service names
  never contain ``--``, so ``__`` separates them without ambiguity. Past 63 characters the name is
  shortened and given a hash of the full name. Every result matches ``^[a-z_][a-z0-9_]{0,62}$``.
* Queues and topics: ``<feature>-<name>``, where ``<name>`` (from the catalog) follows the rule of
  service names: lowercase letters, digits and single ``-``, starting with a letter, at most 30.
* Output objects (the Secret / ConfigMap a hook writes): ``devstack-<hook>[-<service>]``.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable

from devstack import naming
from devstack.naming import InvalidName

PG_PREFIX = "preview_"
PG_MAX = 63
_PG_IDENTIFIER = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")
_HASH_LEN = 6
# DNS-1123 subdomain: what Kubernetes accepts as a Secret name.
_SUBDOMAIN = re.compile(r"^[a-z0-9]([a-z0-9-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)*$")
_ENV_KEY = re.compile(r"^[A-Z][A-Z0-9_]*$")


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:_HASH_LEN]


def checked_feature(feature: str) -> str:
    """``feature`` if it is a feature name (as :func:`devstack.naming.feature_name` makes them)."""
    if not isinstance(feature, str) or not naming.is_feature_name(feature):
        raise InvalidName(f"{feature!r} is not a feature name (lowercase letters, digits, single '-')")
    return feature


def checked_service(service: str) -> str:
    problem = naming.service_name_problem(service) if isinstance(service, str) else "must be a string"
    if problem:
        raise InvalidName(f"service {service!r}: {problem}")
    return service


def is_pg_identifier(name: str) -> bool:
    return bool(_PG_IDENTIFIER.match(name))


def pg_identifier(feature: str, service: str | None = None) -> str:
    """The database and role name of a preview (of one service, when given)."""
    name = PG_PREFIX + checked_feature(feature).replace("-", "_")
    if service is not None:
        name += "__" + checked_service(service).replace("-", "_")
    if len(name) > PG_MAX:
        name = f"{name[: PG_MAX - _HASH_LEN - 1].rstrip('_')}_{_digest(name)}"
    if not is_pg_identifier(name):  # cannot happen for checked input; the last line of defence
        raise InvalidName(f"{name!r} is not a safe PostgreSQL identifier")
    return name


def resource_short_name_problem(name: str) -> str | None:
    """Why ``name`` cannot be a queue/topic name in the catalog, or None."""
    return naming.service_name_problem(name) if isinstance(name, str) else "must be a string"


def resource_name(feature: str, name: str) -> str:
    """The queue or topic name ``<feature>-<name>`` (at most 61 characters, a DNS-1123 label)."""
    problem = resource_short_name_problem(name)
    if problem:
        raise InvalidName(f"queue/topic name {name!r}: {problem}")
    full = f"{checked_feature(feature)}-{name}"
    if not naming.is_dns_label(full):
        raise InvalidName(f"{full!r} is not a valid queue/topic name")
    return full


def resource_names(feature: str, names: Iterable[str]) -> dict[str, str]:
    """``{catalog name: full name}`` for every name, in order; duplicates are an error."""
    result: dict[str, str] = {}
    for name in names:
        if name in result:
            raise InvalidName(f"queue/topic name {name!r} is listed twice")
        result[name] = resource_name(feature, name)
    return result


def env_key(prefix: str, name: str, suffix: str) -> str:
    """An environment variable name for an output: ``env_key("SQS", "order-events", "URL")``."""
    key = f"{prefix}_{name.replace('-', '_').upper()}_{suffix}"
    if not _ENV_KEY.match(key):
        raise InvalidName(f"{key!r} is not an environment variable name")
    return key


def secret_name_problem(name: str) -> str | None:
    """Why ``name`` cannot be the name of a Secret (DNS-1123 subdomain), or None."""
    if not isinstance(name, str) or not (1 <= len(name) <= 253):
        return "must be 1 to 253 characters"
    if not _SUBDOMAIN.match(name):
        return "must be lowercase letters, digits, '-' and '.' (a DNS-1123 subdomain)"
    return None


def checked_secret_name(name: str) -> str:
    problem = secret_name_problem(name)
    if problem:
        raise InvalidName(f"secret name {name!r}: {problem}")
    return name


def checked_namespace(namespace: str) -> str:
    if not isinstance(namespace, str) or not naming.is_dns_label(namespace):
        raise InvalidName(f"namespace {namespace!r} is not a DNS-1123 label")
    return namespace


def output_name(hook: str, service: str | None = None) -> str:
    """The Secret/ConfigMap a hook writes its results to: ``devstack-<hook>[-<service>]``."""
    name = f"devstack-{hook}" + (f"-{checked_service(service)}" if service is not None else "")
    if not naming.is_dns_label(name):
        raise InvalidName(f"{name!r} is not a DNS-1123 label")
    return name

"""The environment-variable contract of the hooks (documented in ``docs/hooks.md``).

The chart sets these variables on each hook Job; nothing else configures a hook. Values are read
once, checked, and turned into frozen dataclasses. A missing or invalid variable is a
:class:`~devstack.errors.ConfigError` naming the variable, never showing a secret value.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from devstack import naming
from devstack.errors import ConfigError
from devstack.hooks import names
from devstack.hooks.retry import RetryPolicy
from devstack.naming import InvalidName

PREFIX = "DEVSTACK_HOOK_"
FEATURE = PREFIX + "FEATURE"
SERVICE = PREFIX + "SERVICE"
NAMESPACE = PREFIX + "NAMESPACE"
OUTPUT_NAME = PREFIX + "OUTPUT_NAME"
ATTEMPTS = PREFIX + "ATTEMPTS"
BACKOFF = PREFIX + "BACKOFF_SECONDS"
MAX_BACKOFF = PREFIX + "MAX_BACKOFF_SECONDS"

SECRETS = PREFIX + "SECRETS"
SECRETS_SOURCE_NAMESPACE = PREFIX + "SECRETS_SOURCE_NAMESPACE"

PG_HOST = PREFIX + "PG_HOST"
PG_PORT = PREFIX + "PG_PORT"
PG_USER = PREFIX + "PG_USER"
PG_PASSWORD = PREFIX + "PG_PASSWORD"
PG_DATABASE = PREFIX + "PG_DATABASE"
PG_SSLMODE = PREFIX + "PG_SSLMODE"
PG_CONNECT_TIMEOUT = PREFIX + "PG_CONNECT_TIMEOUT"

SQS_QUEUES = PREFIX + "SQS_QUEUES"
SNS_TOPICS = PREFIX + "SNS_TOPICS"
AWS_ENDPOINT_URL = "AWS_ENDPOINT_URL"
AWS_REGION = "AWS_REGION"
AWS_DEFAULT_REGION = "AWS_DEFAULT_REGION"
AWS_MAX_ATTEMPTS = PREFIX + "AWS_MAX_ATTEMPTS"

SSLMODES = ("disable", "allow", "prefer", "require", "verify-ca", "verify-full")
_LIST_SEPARATOR = re.compile(r"[\s,]+")


@dataclass(frozen=True)
class Env:
    """Typed, checked access to environment variables."""

    values: Mapping[str, str]

    def get(self, key: str, default: str | None = None) -> str | None:
        value = self.values.get(key, "").strip()
        return value if value else default

    def require(self, key: str) -> str:
        value = self.get(key)
        if value is None:
            raise ConfigError(f"{key} is required")
        return value

    def integer(self, key: str, *, default: int, minimum: int, maximum: int) -> int:
        raw = self.get(key)
        if raw is None:
            return default
        try:
            value = int(raw)
        except ValueError:
            raise ConfigError(f"{key} must be an integer") from None
        if not minimum <= value <= maximum:
            raise ConfigError(f"{key} must be between {minimum} and {maximum}")
        return value

    def number(self, key: str, *, default: float, minimum: float, maximum: float) -> float:
        raw = self.get(key)
        if raw is None:
            return default
        try:
            value = float(raw)
        except ValueError:
            raise ConfigError(f"{key} must be a number") from None
        if not math.isfinite(value) or not minimum <= value <= maximum:
            raise ConfigError(f"{key} must be between {minimum} and {maximum}")
        return value

    def names(self, key: str, *, required: bool = True) -> tuple[str, ...]:
        """A list given as names separated by commas and/or white space; order kept, no duplicates."""
        raw = self.get(key)
        if raw is None:
            if required:
                raise ConfigError(f"{key} is required (names separated by commas)")
            return ()
        items = [item for item in _LIST_SEPARATOR.split(raw) if item]
        if len(set(items)) != len(items):
            raise ConfigError(f"{key} lists a name twice")
        return tuple(items)


@dataclass(frozen=True)
class HookContext:
    """What every hook is told: which preview, where, and how hard to retry."""

    feature: str
    service: str | None
    namespace: str
    retry: RetryPolicy = field(default_factory=RetryPolicy)

    @classmethod
    def from_env(cls, env: Env) -> HookContext:
        feature = _checked(FEATURE, names.checked_feature, env.require(FEATURE))
        service_raw = env.get(SERVICE)
        service = _checked(SERVICE, names.checked_service, service_raw) if service_raw else None
        namespace_raw = env.get(NAMESPACE)
        if namespace_raw is None:
            namespace = naming.namespace(feature)
        else:
            namespace = _checked(NAMESPACE, names.checked_namespace, namespace_raw)
        retry = RetryPolicy(
            attempts=env.integer(ATTEMPTS, default=5, minimum=1, maximum=100),
            delay=env.number(BACKOFF, default=2.0, minimum=0.0, maximum=600.0),
            max_delay=env.number(MAX_BACKOFF, default=30.0, minimum=0.0, maximum=3600.0),
        )
        return cls(feature=feature, service=service, namespace=namespace, retry=retry)

    def output_name(self, env: Env, hook: str) -> str:
        raw = env.get(OUTPUT_NAME)
        if raw is None:
            return names.output_name(hook, self.service)
        return _checked(OUTPUT_NAME, names.checked_namespace, raw)  # a DNS-1123 label, like a namespace


@dataclass(frozen=True)
class SecretsSettings:
    source_namespace: str
    secrets: tuple[str, ...]

    @classmethod
    def from_env(cls, env: Env) -> SecretsSettings:
        source = _checked(
            SECRETS_SOURCE_NAMESPACE, names.checked_namespace, env.require(SECRETS_SOURCE_NAMESPACE)
        )
        secrets = tuple(_checked(SECRETS, names.checked_secret_name, s) for s in env.names(SECRETS))
        return cls(source_namespace=source, secrets=secrets)


@dataclass(frozen=True)
class PostgresAdmin:
    """The admin connection to the shared server (a role with CREATEDB and CREATEROLE suffices)."""

    host: str
    user: str
    password: str = field(repr=False)
    port: int = 5432
    dbname: str = "postgres"
    sslmode: str = "prefer"
    connect_timeout: int = 10

    @classmethod
    def from_env(cls, env: Env) -> PostgresAdmin:
        sslmode = env.get(PG_SSLMODE, "prefer") or "prefer"
        if sslmode not in SSLMODES:
            raise ConfigError(f"{PG_SSLMODE} must be one of {', '.join(SSLMODES)}")
        return cls(
            host=env.require(PG_HOST),
            port=env.integer(PG_PORT, default=5432, minimum=1, maximum=65535),
            user=env.require(PG_USER),
            password=env.require(PG_PASSWORD),
            dbname=env.get(PG_DATABASE, "postgres") or "postgres",
            sslmode=sslmode,
            connect_timeout=env.integer(PG_CONNECT_TIMEOUT, default=10, minimum=1, maximum=300),
        )


@dataclass(frozen=True)
class AwsSettings:
    """Where the SQS/SNS-compatible endpoint is; credentials come from the standard AWS variables."""

    region: str
    endpoint_url: str | None = None
    max_attempts: int = 3

    @classmethod
    def from_env(cls, env: Env) -> AwsSettings:
        region = env.get(AWS_REGION) or env.get(AWS_DEFAULT_REGION)
        if region is None:
            raise ConfigError(f"{AWS_REGION} (or {AWS_DEFAULT_REGION}) is required")
        endpoint = env.get(AWS_ENDPOINT_URL)
        if endpoint is not None and not endpoint.startswith(("http://", "https://")):
            raise ConfigError(f"{AWS_ENDPOINT_URL} must be an http:// or https:// URL")
        return cls(
            region=region,
            endpoint_url=endpoint,
            max_attempts=env.integer(AWS_MAX_ATTEMPTS, default=3, minimum=1, maximum=10),
        )


def _checked(key: str, check: Callable[[str], str], value: str) -> str:
    try:
        return check(value)
    except InvalidName as exc:
        raise ConfigError(f"{key}: {exc}") from None

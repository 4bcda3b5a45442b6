"""Platform settings of the provisioning hooks: the ``hooks:`` section of ``devstack.yaml``.

These are the cluster-wide facts the chart needs to run a service's hooks (see ``docs/hooks.md``):
which image runs ``devstack hook``, the platform namespace where the Jobs that hold admin
credentials run, where the shared PostgreSQL server and the SQS/SNS endpoint are, and the *names*
of the Secrets (in the platform namespace) that hold their credentials. No password or key is ever
part of these settings: the chart refers to the Secrets with ``secretKeyRef``.

:func:`devstack.hooks.values.hook_values` turns them, together with one service's catalog
declaration, into the chart's ``values.hooks``. Like every key of the configuration, each one can
be overridden by the environment: ``DEVSTACK_HOOKS__POSTGRES__HOST=db.internal``.
"""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator

from devstack import __version__, naming

_QUANTITY = r"^[+]?[0-9]+(\.[0-9]+)?([munkMGTPE]|[KMGTPE]i)?$"
_ANNOTATION_KEY = re.compile(
    r"^([a-z0-9]([-a-z0-9.]*[a-z0-9])?/)?[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$"
)
_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_SECRET_KEY = re.compile(r"^[-._a-zA-Z0-9]{1,253}$")
_IP_ADDRESS = re.compile(r"[0-9a-fA-F.:]{2,45}")

Quantity = Annotated[str, StringConstraints(pattern=_QUANTITY, max_length=32)]
ImageRepository = Annotated[str, StringConstraints(pattern=r"^[a-z0-9][a-z0-9._/:-]{0,254}$")]
ImageTag = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")]
PullPolicy = Literal["Always", "IfNotPresent", "Never"]
SslMode = Literal["disable", "allow", "prefer", "require", "verify-ca", "verify-full"]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _namespace(value: str, *, what: str) -> str:
    if not naming.is_dns_label(value):
        raise ValueError(f"{what} must be a namespace name (a DNS-1123 label)")
    if value.startswith(naming.NAMESPACE_PREFIX):
        # preview-* namespaces belong to previews (and are deleted with them).
        raise ValueError(f"{what} must not be a preview namespace ({naming.NAMESPACE_PREFIX}*)")
    return value


def _object_name(value: str, *, what: str) -> str:
    if not (1 <= len(value) <= 253 and _SUBDOMAIN.match(value)):
        raise ValueError(f"{what} must be a Kubernetes object name (a DNS-1123 subdomain)")
    return value


def _secret_key(value: str) -> str:
    if not _SECRET_KEY.match(value):
        raise ValueError("must be a Secret key: letters, digits, '-', '_' and '.'")
    return value


class ImageSettings(_Model):
    repository: ImageRepository = Field(
        "ghcr.io/devstack/devstack", description="the devstack image the hook Jobs run (`devstack hook ...`)"
    )
    tag: ImageTag = Field(__version__, description="its tag; default: this devstack's version")
    pull_policy: PullPolicy = "IfNotPresent"


class ResourceList(_Model):
    cpu: Quantity
    memory: Quantity


class Resources(_Model):
    requests: ResourceList
    limits: ResourceList


class JobSettings(_Model):
    """How every hook Job runs: bounded retries and time, resources, the non-root user."""

    backoff_limit: int = Field(3, ge=0, le=10, description="Job retries after a failed Pod")
    active_deadline_seconds: int = Field(600, ge=60, le=86400, description="a Job's time limit, retries included")
    resources: Resources = Resources(
        requests=ResourceList(cpu="50m", memory="64Mi"), limits=ResourceList(cpu="500m", memory="256Mi")
    )
    run_as_user: int = Field(10001, ge=1, le=2147483647, description="non-root user (and group) of hook Pods")
    attempts: int = Field(5, ge=1, le=100, description="the hook's own attempts at transient failures")
    backoff_seconds: float = Field(2.0, ge=0, le=600, description="first wait between attempts, then doubled")
    max_backoff_seconds: float = Field(30.0, ge=0, le=3600, description="cap of one wait")


class PostgresSettings(_Model):
    """The shared server the ``postgres`` hook creates a database and a role per preview on."""

    host: str = Field(
        "", max_length=253, description="the server; empty: services may not declare hooks.postgres"
    )
    port: int = Field(5432, ge=1, le=65535)
    database: str = Field("postgres", min_length=1, max_length=63, description="database the admin connects to")
    sslmode: SslMode = "prefer"
    connect_timeout: int = Field(10, ge=1, le=300, description="seconds per connection attempt")
    admin_secret: str = Field(
        "devstack-postgres-admin",
        description="Secret in the platform namespace holding the admin role's user and password",
    )
    user_key: str = Field("username", description="its key holding the user")
    password_key: str = Field("password", description="its key holding the password")

    @field_validator("host")
    @classmethod
    def _host(cls, value: str) -> str:
        if value and naming.hostname_problem(value) is not None and not _IP_ADDRESS.fullmatch(value):
            raise ValueError("must be a host name or an IP address")
        return value

    @field_validator("admin_secret")
    @classmethod
    def _admin_secret(cls, value: str) -> str:
        return _object_name(value, what="admin_secret")

    @field_validator("user_key", "password_key")
    @classmethod
    def _keys(cls, value: str) -> str:
        return _secret_key(value)


class AwsSettings(_Model):
    """The SQS/SNS-compatible endpoint of the ``sqs`` and ``sns`` hooks (LocalStack in dev clusters)."""

    endpoint_url: str = Field(
        "", max_length=500, description="e.g. http://localstack.localstack:4566; empty: AWS itself"
    )
    region: str = Field("us-east-1", min_length=1, max_length=50)
    credentials_secret: str = Field(
        "",
        description="Secret in the platform namespace with the access key; empty: no static keys "
        "(the Pod's own identity, e.g. IRSA through service_account_annotations)",
    )
    access_key_id_key: str = Field("AWS_ACCESS_KEY_ID", description="its key holding the access key id")
    secret_access_key_key: str = Field("AWS_SECRET_ACCESS_KEY", description="its key holding the secret key")
    max_attempts: int = Field(3, ge=1, le=10, description="botocore's own retries per call")

    @field_validator("endpoint_url")
    @classmethod
    def _endpoint(cls, value: str) -> str:
        if value and not re.fullmatch(r"https?://[^\s\"'<>]+", value):
            raise ValueError("must be an http:// or https:// URL (or empty for AWS itself)")
        return value

    @field_validator("region")
    @classmethod
    def _region(cls, value: str) -> str:
        if not re.fullmatch(r"[a-z0-9-]+", value):
            raise ValueError("must be a region name like us-east-1")
        return value

    @field_validator("credentials_secret")
    @classmethod
    def _credentials_secret(cls, value: str) -> str:
        return _object_name(value, what="credentials_secret") if value else value

    @field_validator("access_key_id_key", "secret_access_key_key")
    @classmethod
    def _keys(cls, value: str) -> str:
        return _secret_key(value)


class RedisSettings(_Model):
    """The per-service Redis the ``redis`` hook renders inside the preview namespace (no persistence)."""

    image: ImageSettings = ImageSettings(repository="redis", tag="7.4-alpine")
    run_as_user: int = Field(999, ge=1, le=2147483647, description="the image's non-root user (redis: 999)")
    maxmemory: str = Field(
        "48mb", pattern=r"^[0-9]+(b|kb|mb|gb)?$", description="Redis maxmemory; keep it below the memory limit"
    )
    resources: Resources = Resources(
        requests=ResourceList(cpu="20m", memory="32Mi"), limits=ResourceList(cpu="200m", memory="64Mi")
    )


class HooksSettings(_Model):
    """Platform settings of the provisioning hooks (``hooks:`` in devstack.yaml; docs/hooks.md)."""

    image: ImageSettings = ImageSettings()
    platform_namespace: str = Field(
        "devstack-hooks",
        description="where the Jobs that hold admin credentials (postgres, sqs, sns) run, and where "
        "the Secrets named below live; never a preview namespace",
    )
    secrets_namespace: str = Field(
        "", description="the base namespace the secrets hook copies from; empty: no service may declare hooks.secrets"
    )
    service_account_annotations: dict[str, str] = Field(
        default_factory=dict,
        description="annotations of the ServiceAccount the ensure Jobs run as (e.g. eks.amazonaws.com/role-arn)",
    )
    cleanup_service_account: str = Field(
        "default",
        description="existing ServiceAccount of the platform namespace the cleanup (PostDelete) Jobs run as; "
        "they need no Kubernetes rights and mount no token",
    )
    job: JobSettings = JobSettings()
    postgres: PostgresSettings = PostgresSettings()
    aws: AwsSettings = AwsSettings()
    redis: RedisSettings = RedisSettings()

    @field_validator("platform_namespace")
    @classmethod
    def _platform_namespace(cls, value: str) -> str:
        return _namespace(value, what="platform_namespace")

    @field_validator("secrets_namespace")
    @classmethod
    def _secrets_namespace(cls, value: str) -> str:
        return _namespace(value, what="secrets_namespace") if value else value

    @field_validator("cleanup_service_account")
    @classmethod
    def _cleanup_service_account(cls, value: str) -> str:
        return _object_name(value, what="cleanup_service_account")

    @field_validator("service_account_annotations")
    @classmethod
    def _annotations(cls, value: dict[str, str]) -> dict[str, str]:
        for key in value:
            if len(key) > 316 or not _ANNOTATION_KEY.match(key):
                raise ValueError(f"{key!r} is not an annotation key")
        return value

"""The ``sqs`` and ``sns`` hooks: queues and topics named ``<feature>-<name>`` per preview.

``ensure`` creates each queue/topic (both APIs are idempotent for an existing name), tags it with
``devstack:feature=<feature>`` (and ``devstack:user:<service>=1`` when run for a service), and writes
``SQS_<NAME>_URL``/``SQS_<NAME>_ARN``/``SQS_<NAME>_NAME`` (``SNS_<NAME>_ARN``/``SNS_<NAME>_NAME``) to
the ConfigMap ``devstack-sqs[-<service>]`` (``devstack-sns[-<service>]``) in the preview namespace.

``cleanup`` deletes what belongs to the feature, found by listing names starting with
``<feature>-`` and then keeping only those tagged with exactly this feature (or untagged and named
exactly like a listed queue/topic of this run): ``login-fix`` never deletes ``login-fix-v2-orders``
or ``login-fix2-orders``. When run for a service, a queue/topic another service of the same
feature still uses (its ``devstack:user:*`` tag) only loses this service's tag and stays.

A name that already belongs to another feature (``login`` + ``fix-orders`` vs ``login-fix`` +
``orders``) is refused by ``ensure``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

from devstack.errors import ConfigError, PermanentError, TemporaryError
from devstack.hooks import names
from devstack.hooks.kube import ObjectStore, hook_labels
from devstack.hooks.retry import RetryPolicy
from devstack.hooks.settings import AwsSettings

logger = logging.getLogger(__name__)

T = TypeVar("T")

FEATURE_TAG = "devstack:feature"
USER_TAG_PREFIX = "devstack:user:"
Kind = Literal["sqs", "sns"]

_TEMPORARY_CODES = frozenset({
    "Throttling", "ThrottlingException", "ThrottledException", "RequestThrottled",
    "RequestThrottledException",
    "TooManyRequestsException", "ServiceUnavailable", "InternalError", "InternalFailure",
    "InternalErrorException", "RequestTimeout", "RequestTimeoutException",
    "AWS.SimpleQueueService.QueueDeletedRecently", "QueueDeletedRecently",
})
_GONE_CODES = frozenset({
    "AWS.SimpleQueueService.NonExistentQueue", "QueueDoesNotExist", "NotFound", "NotFoundException",
    "ResourceNotFoundException",
})


def make_client(kind: Kind, settings: AwsSettings) -> Any:
    """A boto3 client for ``sqs`` or ``sns``; credentials from the standard AWS chain."""
    import boto3
    from botocore.config import Config

    config = Config(
        retries={"mode": "standard", "max_attempts": settings.max_attempts},
        connect_timeout=5,
        read_timeout=30,
    )
    return boto3.session.Session().client(
        kind, region_name=settings.region, endpoint_url=settings.endpoint_url, config=config
    )


def aws_call(what: str, call: Callable[[], T]) -> T:
    """Run one AWS API call, turning its failures into Temporary/Permanent errors."""
    from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError, NoRegionError

    try:
        return call()
    except ClientError as exc:
        error = exc.response.get("Error", {})
        code = str(error.get("Code", "?"))
        status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
        message = f"{what}: {code}: {error.get('Message', '')}".rstrip(": ")
        if code in _TEMPORARY_CODES or status >= 500 or status == 429:
            raise TemporaryError(message) from None
        raise PermanentError(message) from None
    except (NoCredentialsError, NoRegionError) as exc:
        raise ConfigError(f"{what}: {exc}") from None
    except BotoCoreError as exc:  # connection refused, timeouts, endpoint unreachable
        raise TemporaryError(f"{what}: {type(exc).__name__}: {exc}") from None


def _is_gone(exc: BaseException) -> bool:
    from botocore.exceptions import ClientError

    return isinstance(exc, ClientError) and str(exc.response.get("Error", {}).get("Code")) in _GONE_CODES


def _wanted_tags(feature: str, service: str | None) -> dict[str, str]:
    tags = {FEATURE_TAG: feature}
    if service is not None:
        tags[USER_TAG_PREFIX + service] = "1"
    return tags


def _check_owner(kind: Kind, full_name: str, tags: dict[str, str], feature: str) -> None:
    owner = tags.get(FEATURE_TAG)
    if owner is not None and owner != feature:
        thing = "queue" if kind == "sqs" else "topic"
        raise PermanentError(
            f"{thing} {full_name!r} belongs to feature {owner!r}; rename the {thing} in the catalog "
            f"or the feature (names are <feature>-<name>)"
        )


@dataclass(frozen=True)
class _Resource:
    """One queue (id = URL) or topic (id = ARN) as found by listing."""

    name: str
    id: str


class _Api:
    """What differs between SQS and SNS, behind one small interface."""

    def __init__(self, kind: Kind, client: Any) -> None:
        self.kind = kind
        self.client = client

    def create(self, full_name: str) -> str:
        if self.kind == "sqs":
            return str(aws_call(f"create queue {full_name}",
                                lambda: self.client.create_queue(QueueName=full_name))["QueueUrl"])
        return str(aws_call(f"create topic {full_name}",
                            lambda: self.client.create_topic(Name=full_name))["TopicArn"])

    def tags(self, resource: _Resource) -> dict[str, str]:
        if self.kind == "sqs":
            answer = aws_call(f"read tags of queue {resource.name}",
                              lambda: self.client.list_queue_tags(QueueUrl=resource.id))
            return dict(answer.get("Tags") or {})
        answer = aws_call(f"read tags of topic {resource.name}",
                          lambda: self.client.list_tags_for_resource(ResourceArn=resource.id))
        return {tag["Key"]: tag["Value"] for tag in answer.get("Tags") or []}

    def tag(self, resource: _Resource, tags: dict[str, str]) -> None:
        if self.kind == "sqs":
            aws_call(f"tag queue {resource.name}",
                     lambda: self.client.tag_queue(QueueUrl=resource.id, Tags=tags))
        else:
            aws_call(f"tag topic {resource.name}", lambda: self.client.tag_resource(
                ResourceArn=resource.id, Tags=[{"Key": k, "Value": v} for k, v in tags.items()]))

    def untag(self, resource: _Resource, keys: list[str]) -> None:
        if self.kind == "sqs":
            aws_call(f"untag queue {resource.name}",
                     lambda: self.client.untag_queue(QueueUrl=resource.id, TagKeys=keys))
        else:
            aws_call(f"untag topic {resource.name}",
                     lambda: self.client.untag_resource(ResourceArn=resource.id, TagKeys=keys))

    def outputs(self, short: str, resource: _Resource) -> dict[str, str]:
        if self.kind == "sqs":
            answer = aws_call(
                f"read attributes of queue {resource.name}",
                lambda: self.client.get_queue_attributes(QueueUrl=resource.id, AttributeNames=["QueueArn"]),
            )
            return {
                names.env_key("SQS", short, "URL"): resource.id,
                names.env_key("SQS", short, "ARN"): str(answer["Attributes"]["QueueArn"]),
                names.env_key("SQS", short, "NAME"): resource.name,
            }
        return {
            names.env_key("SNS", short, "ARN"): resource.id,
            names.env_key("SNS", short, "NAME"): resource.name,
        }

    def list_feature(self, feature: str) -> list[_Resource]:
        """Every queue/topic whose name starts with ``<feature>-`` (a superset of the feature's)."""
        prefix = f"{feature}-"
        found: list[_Resource] = []
        if self.kind == "sqs":
            paginator = self.client.get_paginator("list_queues")
            pages = aws_call("list queues", lambda: list(paginator.paginate(
                QueueNamePrefix=prefix, PaginationConfig={"PageSize": 1000})))
            for page in pages:
                for url in page.get("QueueUrls") or []:
                    name = str(url).rstrip("/").rsplit("/", 1)[-1]
                    if name.startswith(prefix):
                        found.append(_Resource(name=name, id=str(url)))
        else:
            paginator = self.client.get_paginator("list_topics")
            pages = aws_call("list topics", lambda: list(paginator.paginate()))
            for page in pages:
                for topic in page.get("Topics") or []:
                    arn = str(topic["TopicArn"])
                    name = arn.rsplit(":", 1)[-1]
                    if name.startswith(prefix):
                        found.append(_Resource(name=name, id=arn))
        return found

    def delete(self, resource: _Resource) -> None:
        from botocore.exceptions import ClientError

        def call() -> None:
            try:
                if self.kind == "sqs":
                    self.client.delete_queue(QueueUrl=resource.id)
                else:
                    self.client.delete_topic(TopicArn=resource.id)
            except ClientError as exc:
                if not _is_gone(exc):
                    raise

        aws_call(f"delete {'queue' if self.kind == 'sqs' else 'topic'} {resource.name}", call)


def ensure(
    kind: Kind,
    client: Any,
    *,
    store: ObjectStore,
    feature: str,
    namespace: str,
    resources: Sequence[str],
    service: str | None = None,
    output_name: str | None = None,
    retry: RetryPolicy | None = None,
) -> dict[str, str]:
    """Create/tag the feature's queues (``kind="sqs"``) or topics (``"sns"``); write their addresses.

    Returns the data written to the ConfigMap.
    """
    full_names = names.resource_names(feature, resources)
    names.checked_namespace(namespace)
    config_map = names.checked_secret_name(output_name or names.output_name(kind, service))
    api = _Api(kind, client)
    wanted = _wanted_tags(feature, service)
    policy = retry or RetryPolicy()

    def attempt() -> dict[str, str]:
        data: dict[str, str] = {}
        for short, full in full_names.items():
            resource = _Resource(name=full, id=api.create(full))
            tags = api.tags(resource)
            _check_owner(kind, full, tags, feature)
            missing = {key: value for key, value in wanted.items() if tags.get(key) != value}
            if missing:
                api.tag(resource, missing)
            data.update(api.outputs(short, resource))
            logger.info("%s: %s is ready", kind, full)
        store.apply_config_map(namespace=namespace, name=config_map, data=data, labels=hook_labels(feature))
        return data

    return policy.run(attempt, what=f"{kind} ensure for feature {feature}")


def cleanup(
    kind: Kind,
    client: Any,
    *,
    feature: str,
    resources: Iterable[str] = (),
    service: str | None = None,
    retry: RetryPolicy | None = None,
) -> list[str]:
    """Delete the feature's queues/topics (see the module doc); returns the names deleted."""
    declared = set(names.resource_names(feature, resources).values())
    names.checked_feature(feature)
    if service is not None:
        names.checked_service(service)
    api = _Api(kind, client)
    own_user_tag = USER_TAG_PREFIX + service if service is not None else None
    policy = retry or RetryPolicy()

    def attempt() -> list[str]:
        deleted: list[str] = []
        for resource in api.list_feature(feature):
            tags = api.tags(resource)
            owner = tags.get(FEATURE_TAG)
            if owner != feature and not (owner is None and resource.name in declared):
                continue  # another feature's, whose name shares the prefix
            if own_user_tag is not None:
                others = [key for key in tags if key.startswith(USER_TAG_PREFIX) and key != own_user_tag]
                if others:
                    if own_user_tag in tags:
                        api.untag(resource, [own_user_tag])
                    logger.info("%s: %s is still used by %s; kept", kind, resource.name,
                                ", ".join(sorted(key[len(USER_TAG_PREFIX):] for key in others)))
                    continue
            api.delete(resource)
            logger.info("%s: deleted %s", kind, resource.name)
            deleted.append(resource.name)
        return deleted

    deleted = policy.run(attempt, what=f"{kind} cleanup for feature {feature}")
    if not deleted:
        logger.info("%s: nothing to delete for feature %s", kind, feature)
    return deleted

"""The sqs and sns hooks against moto in server mode (a real HTTP endpoint on loopback)."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from devstack.errors import ConfigError, PermanentError, TemporaryError
from devstack.hooks import names, queues
from devstack.hooks.cli import EXIT_OK, EXIT_PERMANENT
from devstack.hooks.retry import RetryPolicy
from devstack.hooks.settings import AwsSettings, Env
from devstack.naming import InvalidName
from tests.hook_helpers import FakeKube, MemoryStore, free_port, run_cli, running_moto

REGION = "eu-west-1"
SECRET_KEY = "moto-secret-key-never-logged"


@pytest.fixture(scope="module")
def moto_url() -> Iterator[str]:
    with running_moto() as url:
        yield url


@pytest.fixture(autouse=True)
def _aws_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Fake credentials, and no ~/.aws files of the machine."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
    monkeypatch.delenv("AWS_SESSION_TOKEN", raising=False)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")


@pytest.fixture
def sqs(moto_url: str) -> Any:
    return queues.make_client("sqs", AwsSettings(region=REGION, endpoint_url=moto_url))


@pytest.fixture
def sns(moto_url: str) -> Any:
    return queues.make_client("sns", AwsSettings(region=REGION, endpoint_url=moto_url))


def queue_names(sqs: Any, prefix: str) -> list[str]:
    urls = sqs.list_queues(QueueNamePrefix=prefix).get("QueueUrls", [])
    return sorted(url.rsplit("/", 1)[-1] for url in urls)


def topic_names(sns: Any) -> list[str]:
    return sorted(t["TopicArn"].rsplit(":", 1)[-1] for t in sns.list_topics().get("Topics", []))


# ----------------------------------------------------------------------------------------- names


def test_names_are_feature_dash_name_and_validated() -> None:
    assert names.resource_name("login-fix", "orders") == "login-fix-orders"
    assert names.env_key("SQS", "order-events", "URL") == "SQS_ORDER_EVENTS_URL"
    for bad in ["Orders", "a_b", "orders.fifo", "x;y", "-x", "x-", "a--b", "1abc", "", "o" * 31, "é"]:
        with pytest.raises(InvalidName):
            names.resource_name("login-fix", bad)
    with pytest.raises(InvalidName):
        names.resource_name("Login/Fix", "orders")
    with pytest.raises(InvalidName, match="twice"):
        names.resource_names("login-fix", ["orders", "orders"])


# ------------------------------------------------------------------------------------------- SQS


def test_sqs_ensure_twice_then_cleanup_only_this_feature(sqs: Any) -> None:
    store = MemoryStore()
    first = queues.ensure("sqs", sqs, store=store, feature="login-fix", namespace="preview-login-fix",
                          resources=["orders", "order-events"])
    second = queues.ensure("sqs", sqs, store=store, feature="login-fix", namespace="preview-login-fix",
                           resources=["orders", "order-events"])
    # Features whose queue names share the prefix "login-fix".
    queues.ensure("sqs", sqs, store=store, feature="login-fix2", namespace="preview-login-fix2",
                  resources=["orders"])
    queues.ensure("sqs", sqs, store=store, feature="login-fix-v2", namespace="preview-login-fix-v2",
                  resources=["orders"])

    assert first == second
    assert store.config_maps[("preview-login-fix", "devstack-sqs")] == first
    assert store.writes == 3  # the second run of login-fix wrote nothing
    assert set(first) == {
        "SQS_ORDERS_URL", "SQS_ORDERS_ARN", "SQS_ORDERS_NAME",
        "SQS_ORDER_EVENTS_URL", "SQS_ORDER_EVENTS_ARN", "SQS_ORDER_EVENTS_NAME",
    }
    assert first["SQS_ORDERS_URL"] == sqs.get_queue_url(QueueName="login-fix-orders")["QueueUrl"]
    assert first["SQS_ORDERS_ARN"].endswith(":login-fix-orders")
    assert queue_names(sqs, "login-fix") == [
        "login-fix-order-events", "login-fix-orders", "login-fix-v2-orders", "login-fix2-orders",
    ]  # no duplicates
    tags = sqs.list_queue_tags(QueueUrl=first["SQS_ORDERS_URL"])["Tags"]
    assert tags == {"devstack:feature": "login-fix"}

    deleted = queues.cleanup("sqs", sqs, feature="login-fix", resources=["orders", "order-events"])
    assert sorted(deleted) == ["login-fix-order-events", "login-fix-orders"]
    assert queue_names(sqs, "login-fix") == ["login-fix-v2-orders", "login-fix2-orders"]
    assert queues.cleanup("sqs", sqs, feature="login-fix", resources=["orders", "order-events"]) == []
    # Cleanup finds the feature's queues by tag even when the list no longer names them.
    assert queues.cleanup("sqs", sqs, feature="login-fix-v2") == ["login-fix-v2-orders"]
    assert queue_names(sqs, "login-fix") == ["login-fix2-orders"]
    queues.cleanup("sqs", sqs, feature="login-fix2")
    assert queue_names(sqs, "login-fix") == []


def test_sqs_queue_shared_by_two_services_stays_until_the_last_one_goes(sqs: Any) -> None:
    store = MemoryStore()
    for service in ("producer", "consumer"):
        queues.ensure("sqs", sqs, store=store, feature="shared-q", namespace="preview-shared-q",
                      resources=["jobs"], service=service)
    producer = store.config_maps[("preview-shared-q", "devstack-sqs-producer")]
    assert producer == store.config_maps[("preview-shared-q", "devstack-sqs-consumer")]
    assert queues.cleanup("sqs", sqs, feature="shared-q", service="producer", resources=["jobs"]) == []
    assert queue_names(sqs, "shared-q") == ["shared-q-jobs"]
    tags = sqs.list_queue_tags(QueueUrl=producer["SQS_JOBS_URL"])["Tags"]
    assert tags == {"devstack:feature": "shared-q", "devstack:user:consumer": "1"}
    assert queues.cleanup("sqs", sqs, feature="shared-q", service="consumer", resources=["jobs"]) == [
        "shared-q-jobs"
    ]
    assert queue_names(sqs, "shared-q") == []


def test_a_name_of_another_feature_is_refused_and_kept(sqs: Any) -> None:
    store = MemoryStore()
    queues.ensure("sqs", sqs, store=store, feature="login-fix", namespace="preview-login-fix",
                  resources=["orders"])
    # Feature "login" with a queue "fix-orders" would be "login-fix-orders" too.
    with pytest.raises(PermanentError, match="belongs to feature 'login-fix'"):
        queues.ensure("sqs", sqs, store=store, feature="login", namespace="preview-login",
                      resources=["fix-orders"])
    assert ("preview-login", "devstack-sqs") not in store.config_maps
    assert queues.cleanup("sqs", sqs, feature="login", resources=["fix-orders"]) == []
    assert queue_names(sqs, "login-fix-orders") == ["login-fix-orders"]
    queues.cleanup("sqs", sqs, feature="login-fix")


def test_unreachable_endpoint_is_retried_then_temporary() -> None:
    waits: list[float] = []
    client = queues.make_client(
        "sqs", AwsSettings(region=REGION, endpoint_url=f"http://127.0.0.1:{free_port()}", max_attempts=1)
    )
    with pytest.raises(TemporaryError, match="giving up after 3 attempt"):
        queues.ensure("sqs", client, store=MemoryStore(), feature="login-fix", namespace="preview-login-fix",
                      resources=["orders"], retry=RetryPolicy(attempts=3, delay=0.01, sleep=waits.append))
    assert waits == [0.01, 0.02]


# ------------------------------------------------------------------------------------------- SNS


def test_sns_ensure_twice_then_cleanup_only_this_feature(sns: Any) -> None:
    store = MemoryStore()
    first = queues.ensure("sns", sns, store=store, feature="login-fix", namespace="preview-login-fix",
                          resources=["events"])
    second = queues.ensure("sns", sns, store=store, feature="login-fix", namespace="preview-login-fix",
                           resources=["events"])
    queues.ensure("sns", sns, store=store, feature="login-fix2", namespace="preview-login-fix2",
                  resources=["events"])
    queues.ensure("sns", sns, store=store, feature="login-fix-v2", namespace="preview-login-fix-v2",
                  resources=["events"])

    assert first == second
    assert store.config_maps[("preview-login-fix", "devstack-sns")] == first
    assert first["SNS_EVENTS_NAME"] == "login-fix-events"
    assert first["SNS_EVENTS_ARN"].endswith(":login-fix-events")
    assert topic_names(sns) == ["login-fix-events", "login-fix-v2-events", "login-fix2-events"]
    tags = sns.list_tags_for_resource(ResourceArn=first["SNS_EVENTS_ARN"])["Tags"]
    assert tags == [{"Key": "devstack:feature", "Value": "login-fix"}]

    assert queues.cleanup("sns", sns, feature="login-fix", resources=["events"]) == ["login-fix-events"]
    assert topic_names(sns) == ["login-fix-v2-events", "login-fix2-events"]
    assert queues.cleanup("sns", sns, feature="login-fix", resources=["events"]) == []
    for feature in ("login-fix2", "login-fix-v2"):
        queues.cleanup("sns", sns, feature=feature, resources=["events"])
    assert topic_names(sns) == []


# ----------------------------------------------------------------------------------------- CLI


def test_aws_settings_come_from_the_standard_variables() -> None:
    settings = AwsSettings.from_env(Env({"AWS_DEFAULT_REGION": "eu-central-1",
                                         "AWS_ENDPOINT_URL": "http://localstack:4566"}))
    assert settings == AwsSettings(region="eu-central-1", endpoint_url="http://localstack:4566")
    with pytest.raises(ConfigError, match="AWS_REGION"):
        AwsSettings.from_env(Env({}))
    with pytest.raises(ConfigError, match="AWS_ENDPOINT_URL"):
        AwsSettings.from_env(Env({"AWS_REGION": "x", "AWS_ENDPOINT_URL": "localstack:4566"}))


@pytest.mark.parametrize(("hook", "variable", "key"), [
    ("sqs", "DEVSTACK_HOOK_SQS_QUEUES", "SQS_ORDERS_URL"),
    ("sns", "DEVSTACK_HOOK_SNS_TOPICS", "SNS_ORDERS_ARN"),
])
def test_cli_ensure_twice_then_cleanup(
    hook: str, variable: str, key: str, moto_url: str, sqs: Any, sns: Any, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    listed = (lambda: queue_names(sqs, "cli-q")) if hook == "sqs" else (
        lambda: [n for n in topic_names(sns) if n.startswith("cli-q")])
    with FakeKube().running() as kube:
        env = {
            "KUBECONFIG": str(kube.write_kubeconfig(tmp_path / "kubeconfig")),
            "AWS_ENDPOINT_URL": moto_url,
            "AWS_REGION": REGION,
            "DEVSTACK_HOOK_FEATURE": "cli-q",
            "DEVSTACK_HOOK_SERVICE": "payments",
            variable: "orders, order-events",
            "DEVSTACK_HOOK_ATTEMPTS": "2",
            "DEVSTACK_HOOK_BACKOFF_SECONDS": "0.01",
        }
        assert run_cli(monkeypatch, hook, "ensure", env) == EXIT_OK
        assert run_cli(monkeypatch, hook, "ensure", env) == EXIT_OK
        config_map = kube.get("configmaps", "preview-cli-q", f"devstack-{hook}-payments")
        assert config_map is not None
        assert config_map["data"][key].endswith("cli-q-orders")
        assert kube.writes() == [("POST", "preview-cli-q", "configmaps", None)]
        assert listed() == ["cli-q-order-events", "cli-q-orders"]

        assert run_cli(monkeypatch, hook, "cleanup", env) == EXIT_OK
        assert listed() == []
        assert run_cli(monkeypatch, hook, "cleanup", env) == EXIT_OK

        bad = {**env, variable: "orders, Bad_Name"}
        assert run_cli(monkeypatch, hook, "ensure", bad) == EXIT_PERMANENT
        assert "Bad_Name" in caplog.text
        assert listed() == []
    assert SECRET_KEY not in caplog.text

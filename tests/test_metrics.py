"""GET /metrics: what an operator graphs and alerts on, checked after real traffic."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from devstack.catalog import Settings
from tests.conftest import API_URL, RunningServer, pr_payload
from tests.fake_github import FakeGitHub, fake_github


@pytest.fixture
def github() -> Any:
    with fake_github(API_URL) as fake:
        fake.rate_limit_remaining = 4321
        yield fake


def samples(server: RunningServer) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    response = server.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    result = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            result[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return result


def test_metrics_after_traffic(
    make_settings: Callable[..., Settings], serve: Callable[..., RunningServer], github: FakeGitHub
) -> None:
    server = serve(make_settings())
    server.send_github(pr_payload(), delivery="a")
    server.send_github(pr_payload(), delivery="a")  # duplicate
    server.send_github(pr_payload(), delivery="b", secret="wrong")  # 401
    server.send_github({"ref": "x"}, event="push", delivery="c")  # ignored
    server.send_github(pr_payload(repo="evil/repo"), delivery="d")  # not allowed
    server.wait_idle()
    m = samples(server)
    assert m[("devstack_webhook_deliveries_total", (("outcome", "queued"), ("provider", "github")))] == 1
    assert m[("devstack_webhook_deliveries_total", (("outcome", "duplicate"), ("provider", "github")))] == 1
    assert m[("devstack_webhook_deliveries_total", (("outcome", "ignored"), ("provider", "github")))] == 1
    assert m[("devstack_webhook_deliveries_total", (("outcome", "not_allowed"), ("provider", "github")))] == 1
    assert m[("devstack_webhook_rejected_total", (("provider", "github"), ("reason", "Unauthorized")))] == 1
    assert m[("devstack_commits_total", ())] == 1
    assert m[("devstack_batch_deliveries_count", ())] == 1
    assert m[("devstack_event_to_push_seconds_count", ())] == 1
    assert 0 < m[("devstack_event_to_push_seconds_sum", ())] < 30
    assert m[("devstack_active_previews", ())] == 1
    assert m[("devstack_active_services", ())] == 1
    assert m[("devstack_journal_pending", (("queue", "git"),))] == 0
    assert m[("devstack_dead_letters", (("kind", "delivery"),))] == 0
    assert m[("devstack_feedback_sent_total", (("provider", "github"),))] >= 1
    assert m[("devstack_provider_rate_limit_remaining", (("provider", "github"),))] == 4321


def test_feedback_failures_and_dead_letters_are_counted(
    make_settings: Callable[..., Settings], serve: Callable[..., RunningServer], github: FakeGitHub
) -> None:
    github.fail_next = [(404, {})]  # the repo is gone for the token: permanent
    server = serve(make_settings())
    server.send_github(pr_payload(), delivery="a")
    server.wait_idle()
    m = samples(server)
    assert m[("devstack_feedback_failures_total", (("kind", "permanent"), ("provider", "github")))] == 1
    assert m[("devstack_dead_letters", (("kind", "feedback"),))] == 1

"""devstack serve in a cluster: the Lease gates the work, pushes refresh the ApplicationSets, and Argo CD's
live status reaches the PR comment. Against the stand-in Kubernetes API and the real server."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from devstack.catalog import Settings
from devstack.runtime import Runtime
from tests.conftest import API_URL, RunningServer, pr_payload, remote_files
from tests.fake_github import FakeGitHub, fake_github
from tests.kube_stand_in import KubeStandIn
from tests.test_cluster import ARGOCD, application, appset, wait_until

pytestmark = pytest.mark.e2e


@pytest.fixture
def kube() -> Iterator[KubeStandIn]:
    with KubeStandIn().running() as stand_in:
        yield stand_in


@pytest.fixture
def github() -> Any:
    with fake_github(API_URL) as fake:
        yield fake


def in_cluster(make_settings: Callable[..., Settings], name: str, *, election: bool = False,
               argocd: bool = False) -> Settings:
    return make_settings(name, cluster={
        "leader_election": {"enabled": election, "namespace": "devstack", "lease_duration": 2,
                            "renew_deadline": 1.5, "retry_period": 0.2},
        "argocd": {"enabled": argocd, "namespace": ARGOCD},
    })


def serve_with(
    serve: Callable[..., RunningServer], settings: Settings, kube: KubeStandIn, client: str
) -> RunningServer:
    return serve(settings, runtime_factory=lambda s: Runtime.build(s, kube_api=kube.api_client(client=client)))


def test_only_the_lease_holder_works_and_another_takes_over(
    make_settings: Callable[..., Settings], serve: Callable[..., RunningServer], kube: KubeStandIn,
    github: FakeGitHub, bare_remote: str,
) -> None:
    a = serve_with(serve, in_cluster(make_settings, "a", election=True), kube, "a")
    b = serve_with(serve, in_cluster(make_settings, "b", election=True), kube, "b")
    wait_until(lambda: a.runtime.elector.is_leader or b.runtime.elector.is_leader, timeout=10)
    leader, standby = (a, b) if a.runtime.elector.is_leader else (b, a)
    assert leader.get("/readyz").status_code == 200
    standby_ready = standby.get("/readyz")
    assert standby_ready.status_code == 503 and standby_ready.json()["status"] == "standby"
    # the standby still journals what it receives, but only the leader's worker runs
    standby.send_github(pr_payload(number=1, branch="on-standby"), delivery="s1")
    leader.send_github(pr_payload(number=2, branch="on-leader"), delivery="l1")
    leader.wait_idle()
    assert list(remote_files(bare_remote)) == ["on-leader"]
    assert standby.runtime.journal.counts()["pending"] == 1
    # the leader goes away (its Lease released): the standby takes over and applies what it holds
    leader.stop()
    wait_until(lambda: standby.runtime.elector.is_leader, timeout=10)
    standby.wait_idle()
    assert sorted(remote_files(bare_remote)) == ["on-leader", "on-standby"]
    assert standby.get("/readyz").status_code == 200


def test_a_push_refreshes_the_applicationsets_and_live_status_reaches_the_comment(
    make_settings: Callable[..., Settings], serve: Callable[..., RunningServer], kube: KubeStandIn,
    github: FakeGitHub,
) -> None:
    for name in ("devstack-previews", "devstack-preview-namespaces"):
        kube.put("applicationsets", ARGOCD, appset(name))
    server = serve_with(serve, in_cluster(make_settings, "s", argocd=True), kube, "devstack")
    server.send_github(pr_payload(sha="3f786850e387550fdab836ed7e6dc881de23001b"), delivery="open")
    server.wait_idle()
    wait_until(lambda: len(kube.calls(plural="applicationsets", verb="patch")) >= 2, timeout=10)
    stored = kube.get("applicationsets", ARGOCD, "devstack-previews")
    assert stored["metadata"]["annotations"]["argocd.argoproj.io/application-set-refresh"] == "true"

    def comment() -> str:
        server.wait_idle()
        [only] = github.comments_on("acme/payments", 42)
        return str(only["body"])

    wait_until(lambda: "**Status:** :hourglass: pending" in comment(), timeout=10)  # no Application yet
    kube.put("applications", ARGOCD, application("payments-api", health="Degraded"))
    kube.put("applications", ARGOCD, application("namespace"))
    wait_until(lambda: ":x: degraded" in comment(), timeout=10)
    kube.put("applications", ARGOCD, application("payments-api", health="Healthy"))
    wait_until(lambda: "**Status:** :white_check_mark: healthy" in comment(), timeout=10)
    assert len(github.comments_on("acme/payments", 42)) == 1  # edited in place throughout

"""devstack.cluster against a stand-in Kubernetes API on loopback (tests/kube_stand_in.py), through the
real ``kubernetes`` client: Lease leader election, ApplicationSet refresh, live Application status."""

from __future__ import annotations

import copy
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any

import pytest

from devstack.cluster import (
    APPLICATION_SELECTOR,
    REFRESH_ANNOTATION,
    ApplicationSetRefresher,
    FeatureStatus,
    LeaderElector,
    Phase,
    StatusWatcher,
    check_applicationsets,
    expected_from_entries,
    format_microtime,
    parse_microtime,
    refresh_applicationsets,
    summarize,
)
from devstack.errors import PermanentError, TemporaryError
from tests.kube_stand_in import KubeStandIn, selector_matches

NS = "devstack"
ARGOCD = "argocd"
SHA = "3f786850e387550fdab836ed7e6dc881de23001b"
NEW_SHA = "9c1185a5c5e9fc54612808977ee8f548b2258d31"
FAST = {"lease_duration": 1, "renew_deadline": 0.6, "retry_period": 0.1}


def wait_until(predicate: Callable[[], bool], *, timeout: float = 5.0, interval: float = 0.01) -> float:
    """Wait for ``predicate``; return the seconds it took (fail after ``timeout``)."""
    start = time.monotonic()
    while not predicate():
        if time.monotonic() - start > timeout:
            raise AssertionError(f"condition not met within {timeout}s")
        time.sleep(interval)
    return time.monotonic() - start


@pytest.fixture
def kube() -> Iterator[KubeStandIn]:
    with KubeStandIn().running() as stand_in:
        yield stand_in


class Recorder:
    """The callbacks of one elector, with the time each was called."""

    def __init__(self) -> None:
        self.events: list[tuple[str, float]] = []

    def started(self) -> None:
        self.events.append(("started", time.monotonic()))

    def stopped(self) -> None:
        self.events.append(("stopped", time.monotonic()))

    def times(self, kind: str) -> list[float]:
        return [t for k, t in self.events if k == kind]


@pytest.fixture
def electors(kube: KubeStandIn) -> Iterator[Callable[..., tuple[LeaderElector, Recorder]]]:
    made: list[LeaderElector] = []

    def make(identity: str, **kwargs: Any) -> tuple[LeaderElector, Recorder]:
        recorder = Recorder()
        elector = LeaderElector(
            api=kube.api_client(client=identity), namespace=NS, name="devstack", identity=identity,
            on_started_leading=recorder.started, on_stopped_leading=recorder.stopped, **{**FAST, **kwargs},
        )
        made.append(elector)
        return elector, recorder

    yield make
    for elector in made:
        elector.stop(release=False, timeout=5)


def lease(kube: KubeStandIn) -> dict[str, Any]:
    found = kube.get("leases", NS, "devstack")
    assert found is not None
    spec: dict[str, Any] = found["spec"]
    return spec


# --- MicroTime ---------------------------------------------------------------------------------------


def test_microtime_has_exactly_six_fraction_digits_in_utc() -> None:
    assert format_microtime(datetime(2026, 11, 20, 10, 0, tzinfo=UTC)) == "2026-11-20T10:00:00.000000Z"
    moment = datetime(2026, 11, 20, 10, 0, 1, 123456, tzinfo=UTC)
    assert format_microtime(moment) == "2026-11-20T10:00:01.123456Z"
    assert parse_microtime(format_microtime(moment)) == moment
    assert parse_microtime("") is None and parse_microtime("yesterday") is None
    with pytest.raises(ValueError, match="aware"):
        format_microtime(datetime(2026, 11, 20))


def test_timings_must_let_the_leader_stop_before_anyone_takes_over(kube: KubeStandIn) -> None:
    api = kube.api_client()
    with pytest.raises(ValueError, match="renew_deadline"):
        LeaderElector(api=api, namespace=NS, lease_duration=10, renew_deadline=10, retry_period=2)
    with pytest.raises(ValueError, match="retry_period"):
        LeaderElector(api=api, namespace=NS, lease_duration=15, renew_deadline=2, retry_period=2)
    with pytest.raises(ValueError, match="whole number"):
        LeaderElector(api=api, namespace=NS, lease_duration=1.5, renew_deadline=1, retry_period=0.1)  # type: ignore[arg-type]


# --- leader election ---------------------------------------------------------------------------------


def test_two_electors_only_one_leads(
    kube: KubeStandIn, electors: Callable[..., tuple[LeaderElector, Recorder]]
) -> None:
    a, a_calls = electors("replica-a")
    b, b_calls = electors("replica-b")
    a.start()
    b.start()
    wait_until(lambda: a.is_leader or b.is_leader)
    leader, follower = (a, b) if a.is_leader else (b, a)
    first = lease(kube)
    samples = 0
    deadline = time.monotonic() + 1.5  # longer than the lease: the leader must be renewing
    while time.monotonic() < deadline:
        assert leader.is_leader and not follower.is_leader
        samples += 1
        time.sleep(0.01)
    assert samples > 50
    spec = lease(kube)
    assert spec["holderIdentity"] == leader.identity == follower.leader
    assert spec["leaseDurationSeconds"] == 1
    assert spec["leaseTransitions"] == 0
    assert spec["acquireTime"] == first["acquireTime"]  # renewing keeps the acquire time
    assert parse_microtime(spec["renewTime"]) > parse_microtime(first["renewTime"])  # type: ignore[operator]
    assert len(kube.calls(plural="leases", verb="update")) >= 5
    follower_writes = [r for r in kube.calls(plural="leases") if r.client == follower.identity and r.verb != "get"]
    assert all(r.status == 409 for r in follower_writes), follower_writes  # at most a lost create race
    started = a_calls.times("started") + b_calls.times("started")
    assert len(started) == 1
    assert not a_calls.times("stopped") and not b_calls.times("stopped")


def test_the_other_takes_over_when_the_leader_stops_renewing(
    kube: KubeStandIn, electors: Callable[..., tuple[LeaderElector, Recorder]]
) -> None:
    a, a_calls = electors("replica-a")
    b, b_calls = electors("replica-b")
    a.start()
    wait_until(lambda: a.is_leader)
    b.start()
    time.sleep(0.3)
    assert not b.is_leader
    last_renew = lease(kube)["renewTime"]
    a.stop(release=False)  # what a crash looks like: no release
    stopped_at = time.monotonic()
    assert lease(kube)["holderIdentity"] == "replica-a"
    assert a_calls.times("stopped") and not a.is_leader
    took = wait_until(lambda: b.is_leader, timeout=4)
    # b waited for the lease to expire: one lease duration after it last saw a renewal
    assert took >= 1.0 - FAST["retry_period"] * 1.2 - 0.15, took
    spec = lease(kube)
    assert spec["holderIdentity"] == "replica-b"
    assert spec["leaseTransitions"] == 1
    assert spec["acquireTime"] > last_renew
    assert b_calls.times("started")[0] - stopped_at >= 0.7


def test_a_cut_off_leader_steps_down_before_the_other_takes_over(
    kube: KubeStandIn, electors: Callable[..., tuple[LeaderElector, Recorder]]
) -> None:
    a, a_calls = electors("replica-a")
    b, b_calls = electors("replica-b")
    a.start()
    wait_until(lambda: a.is_leader)
    b.start()
    kube.partitioned.add("replica-a")  # a can no longer reach the API server, b can
    wait_until(lambda: bool(a_calls.times("stopped")), timeout=3)
    assert not a.is_leader
    assert "503" in a.last_error
    wait_until(lambda: b.is_leader, timeout=4)
    # never two leaders: a stopped its work before b started
    assert a_calls.times("stopped")[0] < b_calls.times("started")[0]
    kube.partitioned.clear()  # a comes back and finds b's lease: it stays a follower
    time.sleep(0.5)
    assert b.is_leader and not a.is_leader
    assert a.leader == "replica-b"
    assert len(a_calls.times("started")) == 1


def test_a_leader_whose_requests_hang_steps_down_within_the_renew_deadline(
    kube: KubeStandIn, electors: Callable[..., tuple[LeaderElector, Recorder]]
) -> None:
    """Requests that never answer must not keep a leader working past its deadline (the others take
    over one lease duration after its last renewal)."""
    a, a_calls = electors("replica-a")
    b, b_calls = electors("replica-b")
    a.start()
    wait_until(lambda: a.is_leader)
    b.start()
    kube.stalled.add("replica-a")
    cut_off = time.monotonic()
    wait_until(lambda: bool(a_calls.times("stopped")), timeout=3)
    assert a_calls.times("stopped")[0] - cut_off < FAST["renew_deadline"] + 0.3
    assert not a.is_leader
    wait_until(lambda: b.is_leader, timeout=4)
    assert a_calls.times("stopped")[0] < b_calls.times("started")[0]


def test_a_conflicting_update_means_someone_else_won(
    kube: KubeStandIn, electors: Callable[..., tuple[LeaderElector, Recorder]]
) -> None:
    now = format_microtime(datetime.now(UTC))
    kube.put("leases", NS, {"metadata": {"name": "devstack"}, "spec": {
        "holderIdentity": "", "leaseDurationSeconds": 1, "acquireTime": now, "renewTime": now,
        "leaseTransitions": 4}})
    intruded = threading.Event()

    def intruder(stand_in: KubeStandIn, verb: str, plural: str, name: str | None) -> None:
        """Another replica updates the released lease between our read and our write."""
        if plural == "leases" and verb == "update" and not intruded.is_set():
            intruded.set()
            current = stand_in.get("leases", NS, "devstack")
            assert current is not None
            stamp = format_microtime(datetime.now(UTC))
            current["spec"].update(holderIdentity="intruder", renewTime=stamp, acquireTime=stamp, leaseTransitions=5)
            stand_in.put("leases", NS, current)

    kube.before_write = intruder
    elector, calls = electors("replica-a")
    elector.start()
    wait_until(intruded.is_set)
    wait_until(lambda: "conflict" in elector.last_error, timeout=1)
    assert [r.status for r in kube.calls(plural="leases", verb="update")] == [409]
    assert not elector.is_leader and not calls.times("started")
    time.sleep(0.5)
    assert not elector.is_leader and elector.leader == "intruder"  # the intruder's lease has not expired
    wait_until(lambda: elector.is_leader, timeout=3)  # the intruder never renews: it expires
    spec = lease(kube)
    assert spec["holderIdentity"] == "replica-a"
    assert spec["leaseTransitions"] == 6


def test_a_lost_create_race_is_a_conflict_too(
    kube: KubeStandIn, electors: Callable[..., tuple[LeaderElector, Recorder]]
) -> None:
    def racer(stand_in: KubeStandIn, verb: str, plural: str, name: str | None) -> None:
        if plural == "leases" and verb == "create" and stand_in.get("leases", NS, "devstack") is None:
            stamp = format_microtime(datetime.now(UTC))
            stand_in.put("leases", NS, {"metadata": {"name": "devstack"}, "spec": {
                "holderIdentity": "racer", "leaseDurationSeconds": 30, "acquireTime": stamp, "renewTime": stamp,
                "leaseTransitions": 0}})

    kube.before_write = racer
    elector, calls = electors("replica-a")
    elector.start()
    wait_until(lambda: any(r.verb == "create" for r in kube.calls(plural="leases")))
    time.sleep(0.4)
    creates = kube.calls(plural="leases", verb="create")
    assert [r.status for r in creates] == [409]
    assert not elector.is_leader and elector.leader == "racer"
    assert lease(kube)["holderIdentity"] == "racer"
    assert not calls.times("started")


def test_a_clean_stop_hands_the_lease_over_at_once(
    kube: KubeStandIn, electors: Callable[..., tuple[LeaderElector, Recorder]]
) -> None:
    slow = {"lease_duration": 5, "renew_deadline": 3, "retry_period": 0.1}
    holder_when_stopped: list[str] = []
    a, _ = electors("replica-a", **slow)
    a._on_stopped = lambda: holder_when_stopped.append(lease(kube)["holderIdentity"])
    b, _ = electors("replica-b", **slow)
    a.start()
    wait_until(lambda: a.is_leader)
    b.start()
    time.sleep(0.3)
    a.stop()  # release
    assert holder_when_stopped == ["replica-a"]  # the work stopped before the lease was given up
    took = wait_until(lambda: b.is_leader, timeout=2)
    assert took < 1.0  # far less than the 5 s lease
    spec = lease(kube)
    assert spec["holderIdentity"] == "replica-b"
    assert spec["leaseDurationSeconds"] == 5
    assert spec["leaseTransitions"] == 1
    released = [r for r in kube.calls(plural="leases", verb="update") if r.client == "replica-a"][-1]
    assert released.body["spec"]["holderIdentity"] == ""
    assert released.body["spec"]["leaseDurationSeconds"] == 1


def test_a_leader_that_cannot_reach_the_api_at_start_keeps_trying(
    kube: KubeStandIn, electors: Callable[..., tuple[LeaderElector, Recorder]]
) -> None:
    kube.fail_next["leases"] = [503, 500, 429]
    elector, _ = electors("replica-a")
    elector.start()
    wait_until(lambda: elector.is_leader, timeout=3)
    assert [r.status for r in kube.calls(plural="leases")][:3] == [503, 500, 429]


def test_the_elector_obeys_rbac(kube: KubeStandIn, electors: Callable[..., tuple[LeaderElector, Recorder]]) -> None:
    """Without the Role, nothing leads and the reason names the missing permission."""
    kube.rules = {NS: []}
    elector, _ = electors("replica-a")
    elector.start()
    wait_until(lambda: "403" in elector.last_error)
    assert not elector.is_leader
    assert "cannot get resource \"leases\"" in elector.last_error


# --- ApplicationSet refresh --------------------------------------------------------------------------


def appset(name: str) -> dict[str, Any]:
    return {"metadata": {"name": name, "labels": {"app.kubernetes.io/part-of": "devstack"},
                         "annotations": {"kept": "yes"}},
            "spec": {"goTemplate": True, "generators": [{"git": {"repoURL": "https://git.example.com/acme/gitops.git",
                                                                  "revision": "main"}}]}}


def test_refresh_merge_patches_the_annotation(kube: KubeStandIn) -> None:
    for name in ("devstack-previews", "devstack-preview-namespaces"):
        kube.put("applicationsets", ARGOCD, appset(name))
    done = refresh_applicationsets(kube.api_client(), namespace=ARGOCD,
                                   names=["devstack-previews", "devstack-preview-namespaces"])
    assert done == ["devstack-previews", "devstack-preview-namespaces"]
    patches = kube.calls(plural="applicationsets", verb="patch")
    assert [(r.namespace, r.name, r.status) for r in patches] == [
        (ARGOCD, "devstack-previews", 200), (ARGOCD, "devstack-preview-namespaces", 200)]
    for request in patches:
        assert request.content_type == "application/merge-patch+json"
        assert request.body == {"metadata": {"annotations": {REFRESH_ANNOTATION: "true"}}}
    stored = kube.get("applicationsets", ARGOCD, "devstack-previews")
    assert stored is not None
    assert stored["metadata"]["annotations"] == {"kept": "yes", REFRESH_ANNOTATION: "true"}
    assert stored["spec"] == appset("devstack-previews")["spec"]


def test_refresh_failures_are_typed_and_every_name_is_tried(kube: KubeStandIn) -> None:
    kube.put("applicationsets", ARGOCD, appset("devstack-previews"))
    api = kube.api_client()
    with pytest.raises(PermanentError, match=r"devstack-preview-namespaces.*404") as missing:
        refresh_applicationsets(api, namespace=ARGOCD, names=["devstack-preview-namespaces", "devstack-previews"])
    assert "devstack-previews" not in str(missing.value).replace("devstack-previews-", "")
    assert kube.calls(verb="patch")[-1].status == 200  # the other one was still refreshed
    kube.fail_next["applicationsets"] = [503]
    with pytest.raises(TemporaryError, match="503"):
        refresh_applicationsets(api, namespace=ARGOCD, names=["devstack-previews"])
    kube.rules = {ARGOCD: []}
    with pytest.raises(PermanentError, match=r"403.*cannot patch"):
        refresh_applicationsets(api, namespace=ARGOCD, names=["devstack-previews"])


def test_refresh_of_an_unreachable_api_is_temporary() -> None:
    with KubeStandIn().running() as gone:
        api = gone.api_client()
    with pytest.raises(TemporaryError, match="cannot reach the Kubernetes API"):
        refresh_applicationsets(api, namespace=ARGOCD, names=["devstack-previews"])


def test_check_applicationsets_names_what_is_missing(kube: KubeStandIn) -> None:
    kube.put("applicationsets", ARGOCD, appset("devstack-previews"))
    check_applicationsets(kube.api_client(), namespace=ARGOCD, names=["devstack-previews"])
    with pytest.raises(PermanentError, match=r"devstack-preview-namespaces.*apply argocd/"):
        check_applicationsets(kube.api_client(), namespace=ARGOCD,
                              names=["devstack-previews", "devstack-preview-namespaces"])


def test_the_refresher_coalesces_requests_and_retries(kube: KubeStandIn) -> None:
    kube.put("applicationsets", ARGOCD, appset("devstack-previews"))
    refresher = ApplicationSetRefresher(api=kube.api_client(), namespace=ARGOCD, names=["devstack-previews"],
                                        backoff_max=0.2)
    kube.fail_next["applicationsets"] = [503, 502]
    refresher.start()
    try:
        for _ in range(50):
            refresher.request()
        wait_until(lambda: refresher.refreshes >= 1)
        time.sleep(0.5)
        statuses = [r.status for r in kube.calls(plural="applicationsets")]
        assert statuses[:2] == [503, 502] and statuses[2:] == [200] * (len(statuses) - 2)
        assert 1 <= refresher.refreshes <= 2  # 50 requests, a couple of refreshes
        assert refresher.last_error == ""
        before = refresher.refreshes
        refresher.request()
        wait_until(lambda: refresher.refreshes == before + 1)
    finally:
        refresher.stop()


# --- live status: summarize --------------------------------------------------------------------------


def application(
    service: str,
    *,
    feature: str = "login-fix",
    sync: str | None = "Synced",
    health: str | None = "Healthy",
    sha: str = SHA,
    operation: dict[str, Any] | None = None,
    resources: list[dict[str, Any]] | None = None,
    conditions: list[dict[str, Any]] | None = None,
    compared_source: dict[str, Any] | None = None,
    deleting: bool = False,
) -> dict[str, Any]:
    """An Application as argocd/applicationset*.yaml generate it and Argo CD's controller updates it."""
    namespace_app = service == "namespace"
    name = f"{feature}--namespace" if namespace_app else f"{feature}-{service}"
    labels = {"app.kubernetes.io/part-of": "devstack", "app.kubernetes.io/managed-by": "devstack",
              "devstack.io/component": "namespace" if namespace_app else "service", "devstack.io/feature": feature}
    if not namespace_app:
        labels.update({"devstack.io/service": service, "devstack.io/provider": "github", "devstack.io/pr": "42",
                       "devstack.io/sha": sha})
    source = {"repoURL": "https://git.example.com/acme/gitops.git", "path": "templates/feature-release",
              "targetRevision": "main",
              "helm": {"releaseName": "namespace" if namespace_app else service,
                       "parameters": [{"name": "component", "value": "namespace" if namespace_app else "service"}],
                       "valuesObject": {"feature": feature, "service": service, "image": {"tag": sha}}}}
    app: dict[str, Any] = {
        "apiVersion": "argoproj.io/v1alpha1",
        "kind": "Application",
        "metadata": {"name": name, "namespace": ARGOCD, "labels": labels,
                     "annotations": {"devstack.io/sha": sha, "devstack.io/entry": f"previews/{feature}.json"},
                     "finalizers": ["resources-finalizer.argocd.argoproj.io"]},
        "spec": {"project": "devstack-previews", "source": source,
                 "destination": {"server": "https://kubernetes.default.svc", "namespace": f"preview-{feature}"},
                 "syncPolicy": {"automated": {"prune": True, "selfHeal": True}}},
        "status": {"reconciledAt": "2026-11-20T10:00:05Z", "sourceType": "Helm", "resourceHealthSource": "appTree"},
    }
    if deleting:
        app["metadata"]["deletionTimestamp"] = "2026-11-20T10:05:00Z"
    status = app["status"]
    if sync is not None:
        status["sync"] = {"status": sync, "revision": "0123456789abcdef0123456789abcdef01234567",
                          "comparedTo": {"source": compared_source or copy.deepcopy(source),
                                         "destination": app["spec"]["destination"]}}
    if health is not None:
        status["health"] = {"status": health, "lastTransitionTime": "2026-11-20T10:00:04Z"}
    status["resources"] = resources if resources is not None else [
        {"version": "v1", "kind": "Service", "namespace": f"preview-{feature}", "name": service, "status": "Synced",
         "health": {"status": "Healthy"}},
        {"group": "apps", "version": "v1", "kind": "Deployment", "namespace": f"preview-{feature}", "name": service,
         "status": "Synced", "health": {"status": health or "Missing"}},
    ]
    if operation is not None:
        status["operationState"] = {"operation": {"sync": {"revision": "0123456789abcdef0123456789abcdef01234567"},
                                                  "initiatedBy": {"automated": True}},
                                    "startedAt": "2026-11-20T10:00:01Z", **operation}
    if conditions is not None:
        status["conditions"] = conditions
    return app


def realistic(app: dict[str, Any]) -> dict[str, Any]:
    """Check the test's Application against Argo CD's CRD schema (strictly) where ../shared is present."""
    try:
        from tests.render_helpers import SHARED, crd_validator
    except pytest.skip.Exception:  # the render extra is absent: no schema check, the test still runs
        return app
    if (SHARED / "schemas").is_dir():
        validator = crd_validator("argoproj.io", "Application")
        assert validator is not None
        errors = [f"{'/'.join(map(str, e.absolute_path))}: {e.message[:120]}" for e in validator.iter_errors(app)]
        assert not errors, errors
    return app


DEPLOYMENT_STUCK = 'Deployment "payments-api" exceeded its progress deadline'
FAILED_SYNC = {
    "phase": "Failed",
    "message": "one or more synchronization tasks completed unsuccessfully",
    "finishedAt": "2026-11-20T10:01:00Z",
    "syncResult": {"revision": "0123456789abcdef0123456789abcdef01234567", "resources": [
        {"group": "", "version": "v1", "kind": "Service", "namespace": "preview-login-fix", "name": "payments-api",
         "status": "Synced", "message": "service/payments-api created", "syncPhase": "Sync"},
        {"group": "batch", "version": "v1", "kind": "Job", "namespace": "preview-login-fix",
         "name": "payments-api-postgres", "status": "Synced", "hookType": "PreSync", "hookPhase": "Failed",
         "message": "Job has reached the specified backoff limit", "syncPhase": "PreSync"},
    ]},
}
DEGRADED_RESOURCES: list[dict[str, Any]] = [
    {"version": "v1", "kind": "Service", "namespace": "preview-login-fix", "name": "payments-api",
     "status": "Synced", "health": {"status": "Healthy"}},
    {"group": "apps", "version": "v1", "kind": "Deployment", "namespace": "preview-login-fix", "name": "payments-api",
     "status": "Synced", "health": {"status": "Degraded", "message": DEPLOYMENT_STUCK}},
]

CASES: dict[str, tuple[list[dict[str, Any]], dict[str, str | None] | None, Phase, str]] = {
    "nothing yet": ([], None, Phase.PENDING, "no Application yet"),
    "created, not reconciled": ([application("payments-api", sync=None, health=None, resources=[])], None,
                                Phase.PENDING, "payments-api: not reconciled yet"),
    "out of sync, missing": ([application("payments-api", sync="OutOfSync", health="Missing")], None,
                             Phase.PENDING, "payments-api: OutOfSync"),
    "syncing": ([application("payments-api", sync="OutOfSync", health="Missing",
                             operation={"phase": "Running", "message": "waiting for completion of hook batch/Job"})],
                None, Phase.PENDING, "payments-api: syncing"),
    "synced, progressing": ([application("payments-api", health="Progressing"), application("namespace")], None,
                            Phase.SYNCED, "payments-api: Progressing"),
    "synced, suspended": ([application("payments-api", health="Suspended")], None, Phase.SYNCED,
                          "payments-api: Suspended"),
    "all healthy": ([application("payments-api"), application("ledger"), application("namespace")],
                    {"payments-api": SHA, "ledger": SHA, "namespace": None}, Phase.HEALTHY, ""),
    "degraded resource": ([application("payments-api", health="Degraded", resources=DEGRADED_RESOURCES),
                           application("ledger")], None, Phase.DEGRADED,
                          f"payments-api: Deployment/payments-api: {DEPLOYMENT_STUCK}"),
    "degraded without a message": ([application("ledger", health="Degraded")], None, Phase.DEGRADED,
                                   "ledger: Deployment/ledger is degraded"),
    "sync failed": ([application("payments-api", sync="OutOfSync", health="Missing", operation=FAILED_SYNC),
                     application("ledger", health="Progressing")], None, Phase.DEGRADED,
                    "payments-api: one or more synchronization tasks completed unsuccessfully "
                    "(Job/payments-api-postgres: Job has reached the specified backoff limit)"),
    "sync error": ([application("payments-api", sync="OutOfSync", health="Missing", operation={
        "phase": "Error", "message": "ComparisonError: failed to render the chart"})], None, Phase.DEGRADED,
        "payments-api: ComparisonError: failed to render the chart"),
    "comparison error": ([application("payments-api", sync="Unknown", health="Healthy", conditions=[
        {"type": "ComparisonError", "message": "values.schema.json: port must be <= 65535",
         "lastTransitionTime": "2026-11-20T10:00:03Z"}])], None, Phase.DEGRADED,
        "payments-api: ComparisonError: values.schema.json: port must be <= 65535"),
    "a warning is not an error": ([application("payments-api", conditions=[
        {"type": "SharedResourceWarning", "message": "Service/x is part of applications a and b"}])], None,
        Phase.HEALTHY, ""),
    "retrying after a failure": ([application("payments-api", sync="OutOfSync", health="Missing", operation={
        "phase": "Running", "retryCount": 2, "message": "Retrying attempt #2 at 10:01AM: namespace not found"})],
        None, Phase.PENDING, "payments-api: sync retrying: Retrying attempt #2 at 10:01AM: namespace not found"),
    "old sha still deployed": ([application("payments-api"), application("namespace")],
                               {"payments-api": NEW_SHA, "namespace": None}, Phase.PENDING,
                               "payments-api: Argo CD has not generated the Application for 9c1185a yet"),
    "not compared since the change": ([application("payments-api", compared_source={
        "repoURL": "https://git.example.com/acme/gitops.git", "path": "templates/feature-release",
        "targetRevision": "main", "helm": {"valuesObject": {"image": {"tag": "old"}}}})], None, Phase.PENDING,
        "payments-api: Argo CD has not compared the new version yet"),
    "a service not generated yet": ([application("payments-api"), application("namespace")],
                                    {"payments-api": SHA, "ledger": SHA, "namespace": None}, Phase.PENDING,
                                    "ledger: no Application yet"),
    "being deleted": ([application("payments-api", deleting=True)], None, Phase.PENDING,
                      "payments-api: being deleted"),
    "namespace degraded": ([application("payments-api"), application("namespace", health="Degraded", resources=[
        {"version": "v1", "kind": "ResourceQuota", "namespace": "preview-login-fix", "name": "preview",
         "status": "Synced", "health": {"status": "Degraded", "message": "exceeded quota: pods"}}])], None,
        Phase.DEGRADED, "namespace: ResourceQuota/preview: exceeded quota: pods"),
}


@pytest.mark.parametrize("case", sorted(CASES), ids=str)
def test_summarize(case: str) -> None:
    apps, expected, phase, reason = CASES[case]
    status = summarize([realistic(a) for a in apps], feature="login-fix", expected=expected)
    assert (status.phase, status.reason) == (phase, reason)
    assert status.feature == "login-fix"
    services = sorted({_service(a) for a in apps} | set(expected or {}))
    assert sorted(a.service for a in status.apps) == services
    if apps:
        assert status.apps[-1].service == "namespace" or "namespace" not in services  # namespace shown last


def _service(app: dict[str, Any]) -> str:
    labels = app["metadata"]["labels"]
    return "namespace" if labels["devstack.io/component"] == "namespace" else str(labels["devstack.io/service"])


def test_summarize_reports_each_application() -> None:
    status = summarize([application("payments-api", health="Degraded", resources=DEGRADED_RESOURCES),
                        application("ledger", health="Progressing"), application("namespace")])
    assert status.feature == "login-fix"  # from the label
    assert {a.service: (a.application, a.phase, a.sync, a.health) for a in status.apps} == {
        "ledger": ("login-fix-ledger", Phase.SYNCED, "Synced", "Progressing"),
        "namespace": ("login-fix--namespace", Phase.HEALTHY, "Synced", "Healthy"),
        "payments-api": ("login-fix-payments-api", Phase.DEGRADED, "Synced", "Degraded"),
    }
    as_dict = status.to_dict()
    assert as_dict["phase"] == "degraded" and as_dict["apps"][0]["service"] == "ledger"


def test_a_long_reason_is_shortened() -> None:
    resources = copy.deepcopy(DEGRADED_RESOURCES)
    resources[1]["health"]["message"] = "x" * 5000
    status = summarize([application("payments-api", health="Degraded", resources=resources)])
    assert len(status.apps[0].reason) == 300 and status.apps[0].reason.endswith("…")


def test_expected_from_entries() -> None:
    state = {
        "login-fix": [{"service": "payments-api", "source": {"sha": SHA}},
                      {"service": "ledger", "source": {"sha": SHA}}],
        "empty": [],
    }
    assert expected_from_entries(state) == {"login-fix": {"payments-api": SHA, "ledger": SHA, "namespace": None}}


def test_the_selector_matches_what_the_applicationsets_label() -> None:
    labels = application("payments-api")["metadata"]["labels"]
    assert selector_matches(APPLICATION_SELECTOR, labels)
    assert selector_matches(APPLICATION_SELECTOR, application("namespace")["metadata"]["labels"])
    assert not selector_matches(APPLICATION_SELECTOR, {"devstack.io/feature": "x"})


# --- live status: the watcher ------------------------------------------------------------------------


class Changes:
    def __init__(self) -> None:
        self.seen: list[tuple[str, FeatureStatus]] = []
        self._lock = threading.Lock()

    def __call__(self, feature: str, status: FeatureStatus) -> None:
        with self._lock:
            self.seen.append((feature, status))

    def phases(self, feature: str) -> list[Phase]:
        with self._lock:
            return [s.phase for f, s in self.seen if f == feature]

    def last(self, feature: str) -> FeatureStatus:
        with self._lock:
            return [s for f, s in self.seen if f == feature][-1]


@pytest.fixture
def watcher(kube: KubeStandIn) -> Iterator[Callable[..., tuple[StatusWatcher, Changes]]]:
    made: list[StatusWatcher] = []

    def make(**kwargs: Any) -> tuple[StatusWatcher, Changes]:
        changes = Changes()
        made.append(StatusWatcher(api=kube.api_client(), namespace=ARGOCD, on_change=changes, **kwargs))
        return made[-1], changes

    yield make
    for w in made:
        w.stop()


def test_the_watcher_reports_transitions_as_they_happen(
    kube: KubeStandIn, watcher: Callable[..., tuple[StatusWatcher, Changes]]
) -> None:
    kube.put("applications", ARGOCD, application("payments-api", sync="OutOfSync", health="Missing"))
    kube.put("applications", ARGOCD, application("payments-api", feature="other", health="Healthy"))
    unrelated = application("payments-api", feature="unrelated")
    unrelated["metadata"]["labels"]["app.kubernetes.io/managed-by"] = "someone-else"
    kube.put("applications", ARGOCD, unrelated)
    expected = {"login-fix": {"payments-api": SHA, "namespace": None}}
    w, changes = watcher(expected=lambda: expected, watch_timeout=30)
    w.start()
    wait_until(lambda: bool(changes.phases("login-fix")) and bool(changes.phases("other")))
    assert changes.last("login-fix").reason == "payments-api: OutOfSync; namespace: no Application yet"
    assert changes.phases("other") == [Phase.HEALTHY]
    assert "unrelated" not in w.statuses()

    kube.put("applications", ARGOCD, application("namespace"))
    kube.put("applications", ARGOCD, application("payments-api", health="Progressing"))
    took = wait_until(lambda: changes.phases("login-fix")[-1] is Phase.SYNCED, timeout=2)
    assert took < 1.0  # pushed by the watch, not found by a poll
    kube.put("applications", ARGOCD, application("payments-api", health="Degraded", resources=DEGRADED_RESOURCES))
    wait_until(lambda: changes.phases("login-fix")[-1] is Phase.DEGRADED, timeout=2)
    assert changes.last("login-fix").reason == f"payments-api: Deployment/payments-api: {DEPLOYMENT_STUCK}"
    kube.put("applications", ARGOCD, application("payments-api"))
    wait_until(lambda: changes.phases("login-fix")[-1] is Phase.HEALTHY, timeout=2)
    assert changes.phases("login-fix") == [Phase.PENDING, Phase.PENDING, Phase.SYNCED, Phase.DEGRADED,
                                           Phase.HEALTHY]
    assert w.listings == 1
    assert w.status("login-fix") == changes.last("login-fix")

    # the same status again (Argo CD rewrites reconciledAt): no callback
    count = len(changes.seen)
    again = application("payments-api")
    again["status"]["reconciledAt"] = "2026-11-20T10:09:00Z"
    kube.put("applications", ARGOCD, again)
    time.sleep(0.3)
    assert len(changes.seen) == count

    # a push: devstack expects a new sha, and refresh() reports it at once
    expected["login-fix"]["payments-api"] = NEW_SHA
    w.refresh()
    assert changes.last("login-fix").phase is Phase.PENDING
    kube.put("applications", ARGOCD, application("payments-api", sha=NEW_SHA))
    wait_until(lambda: changes.phases("login-fix")[-1] is Phase.HEALTHY, timeout=2)

    # the preview goes away: once nobody expects it and its Applications are gone, it is forgotten
    kube.delete("applications", ARGOCD, "other-payments-api")
    wait_until(lambda: w.status("other") is None, timeout=2)
    assert changes.phases("other") == [Phase.HEALTHY]

    stopping = time.monotonic()
    w.stop()
    assert time.monotonic() - stopping < 2  # an open 30 s watch does not hold the stop up


def test_the_watcher_lists_again_after_410_gone_and_errors(
    kube: KubeStandIn, watcher: Callable[..., tuple[StatusWatcher, Changes]]
) -> None:
    kube.put("applications", ARGOCD, application("payments-api", health="Progressing"))
    w, changes = watcher(watch_timeout=1, backoff_max=0.2)
    w.start()
    wait_until(lambda: changes.phases("login-fix") == [Phase.SYNCED])
    kube.gone_before = 10**9  # etcd compacted: resuming the watch is no longer possible
    wait_until(lambda: w.listings >= 2, timeout=4)
    kube.gone_before = 0
    kube.fail_next["applications"] = [500]  # the next listing fails once, then works
    kube.put("applications", ARGOCD, application("payments-api"))
    wait_until(lambda: changes.phases("login-fix")[-1] is Phase.HEALTHY, timeout=4)
    watches = kube.calls(plural="applications", verb="watch")
    assert any(r.query.get("resourceVersion") for r in watches)
    assert all(r.query.get("labelSelector") == APPLICATION_SELECTOR for r in kube.calls(plural="applications"))


def test_a_watcher_without_permission_reports_why(
    kube: KubeStandIn, watcher: Callable[..., tuple[StatusWatcher, Changes]]
) -> None:
    kube.rules = {ARGOCD: []}
    w, changes = watcher(backoff_max=0.2)
    w.start()
    wait_until(lambda: "403" in w.last_error)
    assert "cannot list resource \"applications\"" in w.last_error
    assert not changes.seen

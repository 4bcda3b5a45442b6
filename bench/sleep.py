"""Scenario 6, sleep and wake (issue 17).

**Wake**: a preview is put to sleep (``POST /api/commands``, then its push); the clock starts when a
request reaches ``/wake/<feature>/<service>`` and stops when the bare remote's branch head moves (the
entry written awake and pushed). Beside it, in the same loop, plain ``git add && commit && push`` of the
same awake entry file in a clone of an identical remote: the floor of any git write-back. Target: under
1 s at p50.

**Reap**: the reaper's sleep pass over 10,000 previews at 22:00 in Berlin (three quarters idle for 3 h,
outside their repository's working hours; a quarter active 10 minutes ago), with an injected clock:
deciding every service and journaling the sleep commands. Beside it, the floor of any pass: reading
the 10,000 entry files' JSON. Target: under 2 s.
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx

from bench import entries_gen
from bench.harness import (
    ENTRY_DIR,
    SERVICE,
    Env,
    Figure,
    PlainGit,
    RefWatcher,
    Target,
    make_remote,
    percentile,
    pr_payload,
    say,
    server,
    settings_data,
    sha_of,
    signed,
)
from devstack import sleep as sleeping
from devstack.catalog import load_settings
from devstack.journal import Journal
from devstack.reaper import Sleeper

NAME = "6 sleep and wake"
NUMBER = 7
BRANCH = "sleepy"
TOKEN = "bench-api-token-0123456789"


@dataclass(frozen=True, kw_only=True)
class SleepParams:
    iterations: int = 15
    seed_previews: int = 50
    previews: int = 10_000  # for the reap pass
    wake_target_ms: float = 1000.0
    reap_target_ms: float = 2000.0


def _wait_pushed(watch: RefWatcher, head: str | None) -> str:
    moved, _ = watch.wait_change(head, timeout=30)
    return moved


def wake(env: Env, work: Path, params: SleepParams) -> list[Figure]:
    catalog = entries_gen.settings()
    seed = entries_gen.many(catalog, params.seed_previews, prefix="other", start=1000)
    remote = make_remote(env, work / "gitops.git", files=seed)
    plain = PlainGit(env, remote=make_remote(env, work / "plain.git", files=seed), workdir=work / "plain")
    settings = settings_data(state_dir=work / "state", remote=remote, security={"api_tokens": [TOKEN]},
                             sleep={"wake_rate": 1000})
    watch = RefWatcher(remote)
    woke: list[float] = []
    acked: list[float] = []
    floor: list[float] = []
    auth = {"Authorization": f"Bearer {TOKEN}"}
    with server(env, workdir=work, settings=settings) as srv, httpx.Client(timeout=30) as client:
        head = watch.head()
        body, headers = signed(pr_payload(number=NUMBER, sha=sha_of("sleep", 0), branch=BRANCH),
                               delivery=str(uuid.uuid4()))
        if client.post(srv.url + "/webhooks/github", content=body, headers=headers).status_code != 202:
            raise RuntimeError("the PR was refused")
        head = _wait_pushed(watch, head)
        feature = ""
        deadline = time.monotonic() + 30
        while not feature and time.monotonic() < deadline:  # the snapshot follows the push
            feature = next((p["feature"] for p in client.get(srv.url + "/api/previews").json()
                            if p["feature"].startswith(BRANCH)), "")
            time.sleep(0.01)
        if not feature:
            raise RuntimeError("the preview never appeared in /api/previews")
        path = f"/wake/{feature}/{SERVICE}"
        for i in range(params.iterations + 1):  # iteration 0 warms up and is not counted
            response = client.post(srv.url + "/api/commands", json={"op": "sleep", "feature": feature}, headers=auth)
            if response.status_code != 202:
                raise RuntimeError(f"sleep refused: {response.status_code} {response.text[:200]}")
            head = _wait_pushed(watch, head)
            _wait_asleep(client, srv.url, feature)  # the server's snapshot follows its push
            asleep = env_entry(env, remote, feature)
            started = time.monotonic()
            answer = client.get(srv.url + path, headers={"Accept": "application/json"})
            answered = time.monotonic()
            if answer.status_code != 503:
                raise RuntimeError(f"the wake endpoint answered {answer.status_code} {answer.text[:200]}")
            head, moved = watch.wait_change(head, timeout=30)
            awake = env_entry(env, remote, feature)
            if any(e.get("sleep") for e in json.loads(awake)) or not any(e.get("sleep") for e in json.loads(asleep)):
                raise RuntimeError("the wake did not write the entry awake")
            plain.change(f"{ENTRY_DIR}/{feature}.json", asleep, message=f"sleep {feature}")  # not timed
            took = plain.change(f"{ENTRY_DIR}/{feature}.json", awake, message=f"wake {feature}")
            if i:
                woke.append((moved - started) * 1000)
                acked.append((answered - started) * 1000)
                floor.append(took * 1000)
    figures = []
    for q in (50, 99):
        mine, base = percentile(woke, q), percentile(floor, q)
        figures.append(Figure(scenario=NAME, name=f"wake request -> entry pushed awake p{q}", value=mine, unit="ms",
                              baseline=base, ratio=mine / base, ratio_of="devstack / git",
                              target=Target(op="<", value=params.wake_target_ms) if q == 50 else None,
                              samples=len(woke)))
    figures.append(Figure(scenario=NAME, name="of which the wake page answered p50", value=percentile(acked, 50),
                          unit="ms", samples=len(acked)))
    return figures


def _wait_asleep(client: httpx.Client, url: str, feature: str) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        previews = {p["feature"]: p for p in client.get(url + "/api/previews").json()}
        if all(s["asleepSince"] for s in previews[feature]["services"]):
            return
        time.sleep(0.005)
    raise RuntimeError("the preview never showed asleep in /api/previews")


def env_entry(env: Env, remote: Path, feature: str) -> bytes:
    from bench.harness import git

    return git(env, "--git-dir", str(remote), "show", f"main:{ENTRY_DIR}/{feature}.json").encode()


def reap(env: Env, work: Path, params: SleepParams) -> list[Figure]:
    now = datetime(2026, 11, 4, 21, 0, tzinfo=UTC)  # a Wednesday evening in Berlin
    data = settings_data(state_dir=work / "reap-state", remote=work / "none.git",
                         sleep={"schedules": {"acme/pay*": "Mon-Fri 07:00-20:00 Europe/Berlin"}})
    settings = load_settings(None, overrides=data)
    files = entries_gen.many(settings, params.previews, prefix="p", start=1, first=now - timedelta(hours=1))
    started = time.perf_counter()
    state = {Path(rel).stem: json.loads(raw) for rel, raw in files.items()}
    read = time.perf_counter() - started
    (work / "reap-state").mkdir(parents=True, exist_ok=True)
    journal = Journal(work / "reap-state" / "journal.sqlite3")
    try:
        features = sorted(state)
        active = {sleeping.activity_key(f): (now - timedelta(minutes=10)).timestamp() for f in features[::4]}
        idle = {sleeping.activity_key(f): (now - timedelta(hours=3)).timestamp()
                for i, f in enumerate(features) if i % 4}
        journal.touch_many({**active, **idle})
        sleeper = Sleeper(settings=settings, journal=journal, entries=lambda: state, clock=lambda: now)
        started = time.perf_counter()
        summary = sleeper.run_once()
        took = time.perf_counter() - started
    finally:
        journal.close()
    if len(summary.sleeping) != params.previews - len(features[::4]):
        raise RuntimeError(f"expected {params.previews - len(features[::4])} to sleep, got {len(summary.sleeping)}")
    say(f"[sleep] reap: {summary.checked} checked, {len(summary.sleeping)} to sleep in {took * 1000:.0f} ms")
    return [Figure(scenario=NAME, name=f"sleep pass over {params.previews:,} previews (decide + journal)",
                   value=took * 1000, unit="ms", baseline=read * 1000, ratio=took / read,
                   ratio_of="pass / reading the entries' JSON", target=Target(op="<", value=params.reap_target_ms),
                   samples=1)]


def run(env: Env, params: SleepParams) -> list[Figure]:
    say(f"[sleep] {params.iterations} wakes through the wake endpoint, interleaved with plain git")
    figures = wake(env, env.root / "wake", params)
    say(f"[sleep] the sleep pass over {params.previews:,} previews")
    return figures + reap(env, env.root / "reap", params)

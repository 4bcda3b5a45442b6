"""Scenario 2, event to pushed commit, one event at a time, beside plain ``git add && commit && push``.

devstack: from the start of the webhook POST until the bare remote's branch head moves (its ref file is
polled every millisecond; no subprocess). Plain git: writing the same entry file (the bytes devstack's
planner produces) and running ``git add && git commit && git push`` in a clone of an identical bare
remote. The two are interleaved, iteration by iteration, so machine noise hits both alike; a random
pause before each event makes it arrive at a random point of the worker's poll cycle, as a lone
webhook does.

It runs twice: with the default ``worker.poll_interval`` (what ships), and with a 10 ms poll, which
stands in for a worker woken as soon as a delivery is journalled (see docs/performance.md).
"""

from __future__ import annotations

import random
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import httpx

from bench import entries_gen
from bench.harness import (
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

NAME = "2 single event"
NUMBER = 42
BRANCH = "login-fix"


@dataclass(frozen=True, kw_only=True)
class SingleParams:
    iterations: int = 30
    seed_previews: int = 50  # other previews already in the repository
    fast_poll: float = 0.01  # the second run's worker.poll_interval
    jitter: float = 0.25  # a random pause before each event: it arrives at a random point of the worker's poll
    ratio_target: float = 1.5


@dataclass(kw_only=True)
class Samples:
    devstack: list[float]
    git: list[float]
    ack: list[float]


def measure(env: Env, work: Path, params: SingleParams, *, poll: float | None) -> Samples:
    catalog = entries_gen.settings()
    seed = entries_gen.many(catalog, params.seed_previews, prefix="other", start=1000)
    remote = make_remote(env, work / "gitops.git", files=seed)
    plain_remote = make_remote(env, work / "plain.git", files=seed)
    plain = PlainGit(env, remote=plain_remote, workdir=work / "plain")
    overrides = {"worker": {"poll_interval": poll}} if poll is not None else {}
    settings = settings_data(state_dir=work / "state", remote=remote, **overrides)
    watch = RefWatcher(remote)
    rng = random.Random(2)
    samples = Samples(devstack=[], git=[], ack=[])
    with server(env, workdir=work, settings=settings) as srv, httpx.Client(timeout=30) as client:
        url = srv.url + "/webhooks/github"
        for i in range(params.iterations + 1):  # iteration 0 warms both up and is not counted
            sha = sha_of("single", poll, i)
            action = "opened" if i == 0 else "synchronize"
            body, headers = signed(pr_payload(number=NUMBER, sha=sha, branch=BRANCH, action=action),
                                   delivery=str(uuid.uuid4()))
            head = watch.head()
            time.sleep(rng.uniform(0, params.jitter))
            started = time.monotonic()
            response = client.post(url, content=body, headers=headers)
            acked = time.monotonic()
            if response.status_code != 202:
                raise RuntimeError(f"delivery refused: {response.status_code} {response.text[:200]}")
            _, moved = watch.wait_change(head, timeout=30)
            rel, data = entries_gen.entry(catalog, number=NUMBER, sha=sha, branch=BRANCH)
            took = plain.change(rel, data, message=f"preview {BRANCH} at {sha[:12]}")
            if i:
                samples.devstack.append((moved - started) * 1000)
                samples.ack.append((acked - started) * 1000)
                samples.git.append(took * 1000)
    return samples


def figures(samples: Samples, *, label: str, params: SingleParams, main: bool) -> list[Figure]:
    result = []
    for q in (50, 99):
        mine, base = percentile(samples.devstack, q), percentile(samples.git, q)
        result.append(
            Figure(scenario=NAME, name=f"event -> pushed p{q}{label}", value=mine, unit="ms", baseline=base,
                   ratio=mine / base, ratio_of="devstack / git",
                   target=Target(op="<=", value=params.ratio_target, on="ratio") if q == 50 else None,
                   samples=len(samples.devstack))
        )
    if main:
        result.append(Figure(scenario=NAME, name="of which acknowledgement p50", value=percentile(samples.ack, 50),
                             unit="ms", samples=len(samples.ack)))
    return result


def run(env: Env, params: SingleParams) -> list[Figure]:
    say(f"[single] {params.iterations} events, default worker.poll_interval, interleaved with plain git")
    default = measure(env, env.root / "default", params, poll=None)
    say(f"[single] {params.iterations} events, worker.poll_interval={params.fast_poll}")
    fast = measure(env, env.root / "fast", params, poll=params.fast_poll)
    default_poll = entries_gen.settings().worker.poll_interval
    return [
        *figures(default, label=f" (poll {default_poll:g} s, default)", params=params, main=True),
        *figures(fast, label=f" (poll {params.fast_poll:g} s)", params=params, main=False),
    ]

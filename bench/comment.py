"""Scenario 4, event to sticky comment: how long a developer waits for the preview URL on a new PR.

A stand-in GitHub API (:mod:`bench.standin_github`, its own process, real HTTP on loopback) receives
devstack's PyGithub calls and stamps each comment write. For each of ``iterations`` new PRs, one
``opened`` delivery is posted and the figure is the time from the start of the POST until the comment
holding the PR's head sha was written at the stand-in. Each event is isolated: the next one is sent
only after the previous deployment status arrived (and GitHub's write pacing has elapsed).

Two server configurations: ``providers.github.seconds_between_writes: 0`` (devstack's own cost) and
the default 1.0 s (GitHub asks integrators for about a second between writes; PyGithub enforces it).
In each, ``burst_prs`` PRs are also opened at once: the last comment shows what the pacing costs when
several PRs need feedback together (three writes per new PR: comment, deployment, status).
"""

from __future__ import annotations

import random
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from bench.harness import (
    TOKEN,
    Env,
    Figure,
    make_remote,
    percentile,
    pr_payload,
    say,
    server,
    settings_data,
    sha_of,
    signed,
    standin,
)

NAME = "4 comment"


@dataclass(frozen=True, kw_only=True)
class CommentParams:
    iterations: int = 15  # isolated new PRs, no write pacing
    paced_iterations: int = 4  # isolated new PRs, with the default pacing
    burst_prs: int = 5  # PRs opened at once, in each configuration
    pacing: float = 1.0  # GitHub's advice, devstack's default


def _comment_at(api: httpx.Client, sha: str) -> float:
    return _wait_for(api, "/_bench/wait", contains=sha[:12])


def _status_at(api: httpx.Client, sha: str) -> float:
    return _wait_for(api, "/_bench/wait_status", sha=sha)


def _wait_for(api: httpx.Client, path: str, **params: str) -> float:
    response = api.get(path, params={**params, "timeout": "60"}, timeout=70)
    if response.status_code != 200:
        raise RuntimeError(f"stand-in GitHub {path}: {response.status_code} {response.text[:200]}")
    at: float = response.json()["at"]
    return at


def _open(client: httpx.Client, url: str, *, number: int, sha: str) -> float:
    body, headers = signed(pr_payload(number=number, sha=sha, branch=f"comment-{number}", action="opened"),
                           delivery=str(uuid.uuid4()))
    started = time.monotonic()
    response = client.post(url, content=body, headers=headers)
    if response.status_code != 202:
        raise RuntimeError(f"delivery refused: {response.status_code} {response.text[:200]}")
    return started


def measure(env: Env, work: Path, *, pacing: float, iterations: int, burst_prs: int) -> dict[str, Any]:
    remote = make_remote(env, work / "gitops.git")
    with standin(env, work) as api_url:
        settings = settings_data(
            state_dir=work / "state", remote=remote,
            providers={"github": {"webhook_secrets": ["bench-webhook-secret"], "token": TOKEN, "api_url": api_url,
                                  "seconds_between_writes": pacing}},
        )
        with (
            server(env, workdir=work, settings=settings) as srv,
            httpx.Client(timeout=30) as client,
            httpx.Client(base_url=api_url) as api,
        ):
            hook = srv.url + "/webhooks/github"
            latencies: list[float] = []
            rng = random.Random(3)
            for i in range(iterations + 1):  # PR 0 warms up (PyGithub's first calls) and is not counted
                number = 100 + i
                sha = sha_of("comment", pacing, number)
                started = _open(client, hook, number=number, sha=sha)
                at = _comment_at(api, sha)
                if i:
                    latencies.append((at - started) * 1000)
                _status_at(api, sha)
                time.sleep(pacing + rng.uniform(0, 0.5))  # quiet again, and a random phase of the polls
            shas = [sha_of("comment-burst", pacing, n) for n in range(burst_prs)]
            started = time.monotonic()
            for n, sha in enumerate(shas):
                _open(client, hook, number=500 + n, sha=sha)
            last = max(_comment_at(api, sha) for sha in shas)
            stats = api.get("/_bench/stats").json()
    return {"latencies": latencies, "burst_last": (last - started) * 1000, "stats": stats}


def run(env: Env, params: CommentParams) -> list[Figure]:
    say(f"[comment] {params.iterations} new PRs, seconds_between_writes=0, then {params.burst_prs} at once")
    fast = measure(env, env.root / "unpaced", pacing=0.0, iterations=params.iterations, burst_prs=params.burst_prs)
    say(f"[comment] {params.paced_iterations} new PRs, seconds_between_writes={params.pacing:g} (default), "
        f"then {params.burst_prs} at once")
    paced = measure(env, env.root / "paced", pacing=params.pacing, iterations=params.paced_iterations,
                    burst_prs=params.burst_prs)
    result = []
    for label, data in (("writes unpaced", fast), (f"writes paced {params.pacing:g} s (default)", paced)):
        samples = data["latencies"]
        for q in (50, 99):
            result.append(Figure(scenario=NAME, name=f"new PR -> comment p{q}, {label}",
                                 value=percentile(samples, q), unit="ms", samples=len(samples)))
        result.append(Figure(scenario=NAME, name=f"{params.burst_prs} PRs at once -> last comment, {label}",
                             value=data["burst_last"], unit="ms"))
    return result

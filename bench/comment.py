"""Scenario 4, event to sticky comment, and what feedback spends of GitHub's write budget.

A stand-in GitHub API (:mod:`bench.standin_github`, its own process, real HTTP on loopback) receives
devstack's PyGithub calls, stamps each comment write and counts requests by kind. For each of
``iterations`` new PRs, one ``opened`` delivery is posted and the figure is the time from the start of
the POST until the comment holding the PR's head sha was written at the stand-in.

Two server configurations: ``providers.github.seconds_between_writes: 0`` (devstack's own cost) and
the default 1.0 s, which the stand-in then enforces per token (GitHub asks integrators for about a
second between writes and answers faster ones with a secondary rate limit). In each, ``burst_prs``
PRs are opened at once together with a refused comment command: the last comment is compared with
the floor (one comment write per PR at one write a second), and the reply must not wait for the
burst. Unpaced, the requests of one PR open, of a push and of a close after ``pushes`` pushes are
counted (writes and reads).
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
    Target,
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
    burst_prs: int = 20  # PRs opened at once, in each configuration
    pacing: float = 1.0  # GitHub's advice, devstack's default; the paced stand-in enforces it per token
    pushes: int = 20  # the history of the PR whose close is counted
    burst_ratio_target: float = 1.2  # last comment of the paced burst / the one-write-per-second floor
    reply_target_s: float = 3.0  # a refused command's reply, while the paced burst drains
    alone_target_ms: float = 1000.0  # one PR alone, webhook -> comment (paced)


def _comment_at(api: httpx.Client, sha: str) -> float:
    return _wait_for(api, "/_bench/wait", contains=sha[:12])


def _status_at(api: httpx.Client, sha: str) -> float:
    return _wait_for(api, "/_bench/wait_status", sha=sha)


def _wait_for(api: httpx.Client, path: str, **params: str) -> float:
    response = api.get(path, params={**params, "timeout": "90"}, timeout=100)
    if response.status_code != 200:
        raise RuntimeError(f"stand-in GitHub {path}: {response.status_code} {response.text[:200]}")
    at: float = response.json()["at"]
    return at


def _post(client: httpx.Client, url: str, payload: dict[str, Any], *, event: str = "pull_request") -> float:
    body, headers = signed(payload, delivery=str(uuid.uuid4()), event=event)
    started = time.monotonic()
    response = client.post(url, content=body, headers=headers)
    if response.status_code != 202:
        raise RuntimeError(f"delivery refused: {response.status_code} {response.text[:200]}")
    return started


def _open(client: httpx.Client, url: str, *, number: int, sha: str, action: str = "opened",
          state: str = "open") -> float:
    return _post(client, url, pr_payload(number=number, sha=sha, branch=f"comment-{number}", action=action,
                                         state=state))


def _refused_command(number: int) -> dict[str, Any]:
    """A comment command by someone who may only read: devstack answers with a reply, nothing else."""
    repo = {"full_name": "acme/payments"}
    return {"action": "created", "repository": repo, "sender": {"login": "visitor"},
            "issue": {"number": number, "html_url": f"https://github.com/acme/payments/pull/{number}",
                      "pull_request": {"url": f"https://api.github.com/repos/acme/payments/pulls/{number}"}},
            "comment": {"id": 77_000 + number, "body": "/devstack extend", "user": {"login": "visitor",
                                                                                   "type": "User"}}}


def _kinds(api: httpx.Client) -> dict[str, int]:
    kinds: dict[str, int] = api.get("/_bench/stats").json()["kinds"]
    return kinds


def _delta(before: dict[str, int], after: dict[str, int]) -> tuple[int, int]:
    """(writes, reads) between two counts by kind."""
    writes = sum(n - before.get(k, 0) for k, n in after.items() if not k.startswith("GET "))
    reads = sum(n - before.get(k, 0) for k, n in after.items() if k.startswith("GET "))
    return writes, reads


def _settled(api: httpx.Client, *, quiet: float = 0.6) -> dict[str, int]:
    """The counts once no request has arrived for ``quiet`` seconds (feedback has finished)."""
    last = _kinds(api)
    while True:
        time.sleep(quiet)
        now = _kinds(api)
        if now == last:
            return now
        last = now


def measure(env: Env, work: Path, *, pacing: float, iterations: int, burst_prs: int, pushes: int = 0
            ) -> dict[str, Any]:
    remote = make_remote(env, work / "gitops.git")
    with standin(env, work, write_interval=pacing) as api_url:
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
            costs: dict[str, tuple[int, int]] = {}
            if pushes:  # requests per open, per push, and per close after ``pushes`` pushes (isolated)
                number = 300
                before = _settled(api)
                sha = sha_of("costs", number, 0)
                _open(client, hook, number=number, sha=sha)
                _status_at(api, sha)
                costs["open"] = _delta(before, after := _settled(api))
                for push in range(1, pushes + 1):
                    sha = sha_of("costs", number, push)
                    _open(client, hook, number=number, sha=sha, action="synchronize")
                    _status_at(api, sha)
                    before, after = after, _settled(api)
                    costs["push"] = _delta(before, after)
                _open(client, hook, number=number, sha=sha, action="closed", state="closed")
                costs["close"] = _delta(after, _settled(api))
            shas = [sha_of("comment-burst", pacing, n) for n in range(burst_prs)]
            started = time.monotonic()
            for n, sha in enumerate(shas):
                _open(client, hook, number=500 + n, sha=sha)
            asked = _post(client, hook, _refused_command(500), event="issue_comment")
            reply = _wait_for(api, "/_bench/wait", contains="only people with write access") - asked
            last = max(_comment_at(api, sha) for sha in shas)
            stats = api.get("/_bench/stats").json()
    return {"latencies": latencies, "burst_last": last - started, "reply": reply, "costs": costs, "stats": stats}


def run(env: Env, params: CommentParams) -> list[Figure]:
    say(f"[comment] {params.iterations} new PRs, seconds_between_writes=0, then {params.burst_prs} at once, "
        f"then the requests of an open, a push and a close after {params.pushes} pushes")
    fast = measure(env, env.root / "unpaced", pacing=0.0, iterations=params.iterations, burst_prs=params.burst_prs,
                   pushes=params.pushes)
    say(f"[comment] {params.paced_iterations} new PRs, seconds_between_writes={params.pacing:g} (default, enforced "
        f"by the stand-in per token), then {params.burst_prs} at once with a refused command")
    paced = measure(env, env.root / "paced", pacing=params.pacing, iterations=params.paced_iterations,
                    burst_prs=params.burst_prs)
    result = []
    for label, data in (("writes unpaced", fast), (f"writes paced {params.pacing:g} s (default)", paced)):
        samples = data["latencies"]
        paced_run = data is paced
        for q in (50, 99):
            result.append(Figure(scenario=NAME, name=f"new PR -> comment p{q}, {label}",
                                 value=percentile(samples, q), unit="ms", samples=len(samples),
                                 target=Target(op="<", value=params.alone_target_ms) if paced_run and q == 50
                                 else None))
        floor = params.burst_prs * params.pacing  # one comment write per PR, one write a second per token
        result.append(Figure(
            scenario=NAME, name=f"{params.burst_prs} PRs at once -> last comment, {label}",
            value=data["burst_last"], unit="s",
            baseline=floor if paced_run else None,
            ratio=data["burst_last"] / floor if paced_run else None, ratio_of="devstack / floor",
            target=Target(op="<=", value=params.burst_ratio_target, on="ratio") if paced_run else None,
            note=(f"floor: {params.burst_prs} comment writes at one per {params.pacing:g} s; "
                  f"{data['stats']['refused_writes']} writes refused by the stand-in") if paced_run else "",
        ))
        result.append(Figure(scenario=NAME, name=f"refused command -> reply during the burst, {label}",
                             value=data["reply"], unit="s",
                             target=Target(op="<", value=params.reply_target_s) if paced_run else None))
    budgets = {"open": (3, 1), "push": (3, None), "close": (None, None)}
    for phase, (writes, reads) in fast["costs"].items():
        limit_w, limit_r = budgets[phase]
        if phase == "close":
            result.append(Figure(scenario=NAME, name=f"requests of a close after {params.pushes} pushes",
                                 value=writes + reads, unit="requests", target=Target(op="<=", value=3),
                                 note=f"{writes} writes, {reads} reads"))
            continue
        result.append(Figure(scenario=NAME, name=f"writes of a PR {phase}", value=writes, unit="writes",
                             target=Target(op="<=", value=limit_w or 3), note=f"{reads} reads"))
        if limit_r is not None:
            result.append(Figure(scenario=NAME, name=f"reads of a PR {phase}", value=reads, unit="reads",
                                 target=Target(op="<=", value=limit_r)))
    return result

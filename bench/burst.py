"""Scenario 3, burst: ``prs * events_per_pr`` deliveries (default 1,000 over 200 PRs) as fast as the client
can send them, beside one plain ``git add && git commit && git push`` per event.

devstack: the deliveries go out over a pool of keep-alive connections in rounds (round *e* holds event
*e* of every PR: opened, then synchronize with new shas), so one PR's events stay in order; the clock
stops when the journal has every delivery done, i.e. pushed (polled in its SQLite file). The remote is
then checked: one file per PR, at its last sha. Plain git: the same entry bytes, one commit and push
per event, in a clone of an identical bare remote.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from typing import Any

from bench import entries_gen, loadgen
from bench.harness import (
    Env,
    Figure,
    JournalKind,
    PlainGit,
    Target,
    commit_count,
    make_remote,
    pr_payload,
    remote_entries,
    say,
    servers,
    sha_of,
    signed,
    wait_drained,
)

NAME = "3 burst"


@dataclass(frozen=True, kw_only=True)
class BurstParams:
    prs: int = 200
    events_per_pr: int = 5
    connections: int = 16
    speedup_target: float = 10.0
    intake: bool = False  # deliveries to `devstack intake` (its own process), the worker in `devstack serve`
    journal: JournalKind = "sqlite"  # or a PostgreSQL server started for the scenario (journal.url)


def _branch(number: int) -> str:
    return f"burst-{number:04d}"


def _delivery(number: int, sha: str, *, action: str) -> dict[str, Any]:
    body, headers = signed(pr_payload(number=number, sha=sha, branch=_branch(number), action=action),
                           delivery=str(uuid.uuid4()))
    return {"body": body, "headers": headers}


def run(env: Env, params: BurstParams) -> list[Figure]:
    total = params.prs * params.events_per_pr
    catalog = entries_gen.settings()
    numbers = range(1, params.prs + 1)
    shas = {(n, e): sha_of("burst", n, e) for n in numbers for e in range(params.events_per_pr)}
    work = env.root / "devstack"
    remote = make_remote(env, work / "gitops.git")
    before = commit_count(env, remote)
    scenario = NAME + (", intake process" if params.intake else "") + (
        ", PostgreSQL" if params.journal == "postgresql" else "")
    with servers(env, workdir=work, remote=remote, journal=params.journal, intake=params.intake) as (srv, front):
        url = front.url + "/webhooks/github"
        rounds = [  # round e holds event e of every PR: one PR's events stay in order
            [
                loadgen.prepare(url, **_delivery(n, shas[n, e], action="opened" if e == 0 else "synchronize"))
                for n in numbers
            ]
            for e in range(params.events_per_pr)
        ]
        say(f"[burst] devstack: {total} deliveries over {params.prs} PRs, {params.connections} connections")
        started = time.monotonic()
        loadgen.as_fast_as_possible(url, rounds, connections=params.connections, timeout=300)
        acked = time.monotonic()
        refused = [r for requests in rounds for r in requests if r.status != 202]
        if refused:
            raise RuntimeError(f"{len(refused)} of {total} deliveries were not acknowledged with 202: "
                               f"{refused[0].error or refused[0].status}")
        done = wait_drained(srv, expected_done=total, timeout=300)
        memory = srv.memory_mb()
    devstack_seconds = done - started
    commits = commit_count(env, remote) - before
    files = remote_entries(env, remote)
    wrong = sum(
        1 for n in numbers
        if files.get(_branch(n), [{}])[0].get("source", {}).get("sha") != shas[n, params.events_per_pr - 1]
    ) + max(0, len(files) - params.prs)

    say(f"[burst] plain git: {total} commits+pushes")
    changes = [
        entries_gen.entry(catalog, number=n, sha=shas[n, e], branch=_branch(n))
        for e in range(params.events_per_pr) for n in numbers
    ]
    plain_remote = make_remote(env, env.root / "plain.git")
    plain = PlainGit(env, remote=plain_remote, workdir=env.root / "plain")
    plain_started = time.monotonic()
    for rel, data in changes:
        plain.change(rel, data)
    plain_seconds = time.monotonic() - plain_started

    return [
        Figure(scenario=scenario, name=f"{total} events over {params.prs} PRs: all pushed", value=devstack_seconds,
               unit="s", baseline=plain_seconds, ratio=plain_seconds / devstack_seconds, ratio_of="git / devstack",
               target=Target(op=">=", value=params.speedup_target, on="ratio"),
               note=f"plain git: one commit+push per event, {total} in a row"),
        Figure(scenario=scenario, name="of which sending (all acknowledged)", value=acked - started, unit="s"),
        Figure(scenario=scenario, name="commits", value=float(commits), unit="", baseline=float(total),
               ratio=total / commits if commits else None, ratio_of="git / devstack"),
        Figure(scenario=scenario, name="entries not at their PR's last sha", value=float(wrong), unit="",
               target=Target(op="==", value=0), note=f"{len(files)} entry files on the remote"),
        Figure(scenario=scenario, name="devstack serve peak RSS", value=memory.get("VmHWM"), unit="MB",
               note="the process that applies the burst (its worker takes up to worker.batch_size deliveries at once)"),
    ]

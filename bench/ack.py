"""Scenario 1, acknowledgement: signed ``pull_request`` deliveries at a fixed rate, open loop.

The client schedules request *i* at ``t0 + i / rate`` and fires it at that time whether or not earlier
requests have been answered (open loop); its latency is measured from the scheduled time, so a slow
server cannot hide its slowness by slowing the client down (no coordinated omission). ``senders``
keep-alive connections carry the traffic. The worker runs meanwhile (batches, commits, pushes), as in
production. Afterwards every acknowledged delivery id must be in the journal: zero lost.

The baseline is the same client, rate and bodies against a trivial Python HTTP server that reads the
body and answers 202 (:mod:`bench.standin_github`): what the machine and the client cost by themselves
at that moment, so a busy machine shows in the baseline column rather than only in devstack's figures.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from bench import loadgen
from bench.harness import (
    Env,
    Figure,
    JournalKind,
    Target,
    make_remote,
    percentile,
    pr_payload,
    say,
    servers,
    sha_of,
    signed,
    standin,
    wait_drained,
)

NAME = "1 ack"
INTAKE_NAME = "1b ack, intake process"


@dataclass(frozen=True, kw_only=True)
class AckParams:
    rate: float = 200.0  # requests per second, in total
    duration: float = 30.0  # seconds of measured traffic
    baseline_duration: float = 10.0  # seconds of the same traffic against a trivial HTTP server
    senders: int = 8  # concurrent connections
    prs: int = 200  # distinct pull requests the deliveries are spread over
    warmup: int = 100  # requests sent (and not counted) before the measured run
    p99_target_ms: float = 25.0
    cpu_target_ms: float = 1.5  # server CPU per acknowledged request (issue 19)
    intake: bool = False  # acknowledge in `devstack intake` (its own process), the worker in `devstack serve`
    journal: JournalKind = "sqlite"  # or a PostgreSQL server started for the scenario (journal.url)


def _requests(url: str, count: int, *, prs: int, offset: int) -> list[loadgen.Request]:
    result = []
    for i in range(offset, offset + count):
        number = i % prs + 1
        action = "opened" if i < prs else "synchronize"
        payload = pr_payload(number=number, sha=sha_of("ack", i), branch=f"ack-{number}", action=action)
        delivery = str(uuid.uuid4())
        body, headers = signed(payload, delivery=delivery)
        result.append(loadgen.prepare(url, body=body, headers=headers, key=delivery))
    return result


def _baseline(env: Env, params: AckParams, work: Path) -> list[float]:
    """Latencies (ms) of the same client, rate and bodies against a trivial HTTP server (reads the body,
    answers 202): the floor this machine sets right now."""
    count = int(params.rate * params.baseline_duration)
    with standin(env, work / "echo") as base:
        url = base + "/_bench/echo"
        loadgen.open_loop(url, _requests(url, params.warmup, prs=params.prs, offset=0), rate=params.rate,
                          connections=params.senders, timeout=60)
        requests = _requests(url, count, prs=params.prs, offset=params.warmup)
        loadgen.open_loop(url, requests, rate=params.rate, connections=params.senders,
                          timeout=params.baseline_duration + 60)
    return [r.latency * 1000 for r in requests if r.status == 202]


def run(env: Env, params: AckParams) -> list[Figure]:
    work = env.root / ("intake" if params.intake else "ack")
    remote = make_remote(env, work / "gitops.git")
    total = int(params.rate * params.duration)
    say(f"[ack] baseline: a trivial HTTP server, {params.rate:.0f} req/s for {params.baseline_duration:.0f} s")
    floor = _baseline(env, params, work)
    scenario = (INTAKE_NAME if params.intake else NAME) + (", PostgreSQL" if params.journal == "postgresql" else "")
    with servers(env, workdir=work, remote=remote, journal=params.journal, intake=params.intake) as (worker, srv):
        url = srv.url + "/webhooks/github"
        say(f"[ack] building {params.warmup + total} signed deliveries")
        warmup = _requests(url, params.warmup, prs=params.prs, offset=0)
        measured = _requests(url, total, prs=params.prs, offset=params.warmup)
        loadgen.open_loop(url, warmup, rate=params.rate, connections=params.senders, timeout=60)
        say(f"[ack] {params.rate:.0f} req/s for {params.duration:.0f} s over {params.senders} connections")
        cpu_before, worker_before = srv.cpu_seconds(), worker.cpu_seconds()
        loadgen.open_loop(url, measured, rate=params.rate, connections=params.senders,
                          timeout=params.duration + 60)
        server_cpu = srv.cpu_seconds() - cpu_before
        total_cpu = server_cpu + (worker.cpu_seconds() - worker_before if params.intake else 0.0)
        acked = {r.key for r in measured if r.status == 202}
        failed = [r for r in measured if r.status != 202]
        journal = srv.journal_ids()
        lost = len(acked - journal)
        say("[ack] waiting for the worker to push everything")
        started = time.monotonic()
        wait_drained(worker, expected_done=len(journal), timeout=120)
        drain = time.monotonic() - started
        memory = srv.memory_mb()
    answered = [r for r in measured if r.status == 202]
    if not answered:
        raise RuntimeError(f"no delivery was acknowledged; first failure: {failed[0].error if failed else '?'}")
    latencies = [r.latency * 1000 for r in answered]
    first = min(r.scheduled for r in measured)
    elapsed = max(r.done for r in answered) - first
    lag = max(r.sent - r.scheduled for r in measured)
    cpu_ms = server_cpu / len(measured) * 1000
    total_ms = total_cpu / len(measured) * 1000
    size = len(measured[0].raw)
    note = f"{params.senders} connections, {size / 1000:.1f} KB requests, open loop"

    def latency(name: str, pick: Callable[[list[float]], float], target: Target | None = None) -> Figure:
        mine, base = pick(latencies), pick(floor)
        return Figure(scenario=scenario, name=name, value=mine, unit="ms", baseline=base, ratio=mine / base,
                      ratio_of="devstack / trivial server", target=target, samples=len(latencies))

    return [
        Figure(scenario=scenario, name=f"achieved rate (offered {params.rate:.0f}/s)", value=len(acked) / elapsed,
               unit="req/s", target=Target(op=">=", value=params.rate * 0.98), note=note, samples=len(measured)),
        latency("latency p50", lambda s: percentile(s, 50)),
        latency("latency p99", lambda s: percentile(s, 99), Target(op="<", value=params.p99_target_ms)),
        latency("latency max", max),
        Figure(scenario=scenario, name="not acknowledged (non-202 or error)", value=float(len(failed)),
               target=Target(op="==", value=0),
               note=(failed[0].error or f"HTTP {failed[0].status}") if failed else ""),
        Figure(scenario=scenario, name="lost (acknowledged, not in journal)", value=float(lost),
               target=Target(op="==", value=0), note=f"{len(acked)} acknowledged, all looked up in the journal"),
        *([Figure(scenario=scenario, name="intake CPU per acknowledged request", value=cpu_ms, unit="ms",
                  target=Target(op="<=", value=params.cpu_target_ms),
                  note="user+system CPU of the devstack intake process during the run, divided by requests"),
           Figure(scenario=scenario, name="CPU per request, intake + serve (worker)", value=total_ms, unit="ms",
                  note="both processes: what the whole pipeline costs per delivery")] if params.intake else [
            Figure(scenario=scenario, name="server CPU per request (incl. worker)", value=cpu_ms, unit="ms",
                   note="user+system CPU of the server process during the run, divided by requests"),
            Figure(scenario=scenario, name="server capacity at that cost (one GIL)", value=1000 / cpu_ms,
                   unit="req/s", note="1 s of CPU / CPU per request: the rate at which the one process is saturated"),
        ]),
        Figure(scenario=scenario, name="client queueing max (no free connection)", value=lag * 1000, unit="ms",
               note="counted in the latency anyway"),
        Figure(scenario=scenario, name="worker drain after the run", value=drain, unit="s",
               note="until every journalled delivery was pushed"),
        Figure(scenario=scenario, name="server peak RSS", value=memory.get("VmHWM"), unit="MB"),
    ]

"""Scenario 5, scale: ``previews`` entries (default 10,000) in the GitOps repository.

The entries are generated with devstack's planner and committed with plain git in one commit. Then:

* in this process, the parts of a worker start: ``GitStore.open`` (clone) beside a plain ``git clone``,
  ``GitStore.read``, ``EntryCache.decode`` (cold, then warm), and the planner over all entries for one
  event and for one batch of ``batch`` events;
* the real server (a subprocess): spawn to ready, ``/api/previews`` latency, one event's plan+push at
  this size beside plain git, and its peak RSS (``VmHWM``);
* reap and resync (:func:`reap_figures`, :func:`resync_figures`): one pass of devstack's own
  ``Reaper`` / ``Resyncer`` in this process against the running server's journal (as the server's
  threads do), at a time when ``batch`` previews have expired / with ``batch`` PRs opened or closed
  behind devstack's back, and the time until the worker has pushed what they journalled. Where
  ``devstack.reaper`` does not exist, stand-ins journal equivalent PR events instead (marked ``*``).
"""

from __future__ import annotations

import random
import statistics
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import httpx

from bench import entries_gen
from bench.harness import (
    BRANCH,
    ENTRY_DIR,
    Env,
    Figure,
    PlainGit,
    RefWatcher,
    Server,
    Target,
    git,
    make_remote,
    percentile,
    pr_payload,
    remote_entries,
    say,
    server,
    settings_data,
    sha_of,
    signed,
    wait_drained,
)
from devstack.catalog import Settings
from devstack.events import PullRequestEvent
from devstack.gitops import GitStore
from devstack.journal import Journal
from devstack.planner import KeyIndex, plan
from devstack.worker import EntryCache

NAME = "5 scale"
T = TypeVar("T")
PREFIX = "scale"


@dataclass(frozen=True, kw_only=True)
class ScaleParams:
    previews: int = 10_000
    batch: int = 200  # events in one batch (the default worker.batch_size)
    pushes: int = 5  # single events through the server at this size (plain git beside)
    api_calls: int = 10
    repeats: int = 3  # worker-start pieces, each beside a plain git clone (medians)
    single_ratio_target: float = 1.5
    reap_target_s: float = 2.0
    rss_target_mb: float = 200.0


@dataclass(kw_only=True)
class Context:
    """What the reap/resync measurements may use: the running server and the repository."""

    env: Env
    params: ScaleParams
    catalog: Settings
    server: Server
    remote: Path
    first: datetime  # when PR 1 was opened; PR n at first + (n - 1) * spacing
    spacing: timedelta

    def expiry(self, number: int) -> datetime:
        """When the seeded preview of PR ``number`` expires (opened time + the default TTL)."""
        return self.first + (number - 1) * self.spacing + self.catalog.ttl.default

    def done(self) -> int:
        return self.server.journal_counts()["done"]

    def drained(self, *, before: int, new: int) -> float:
        """Wait until ``new`` more deliveries than ``before`` are done; the monotonic time."""
        return wait_drained(self.server, expected_done=before + new, timeout=300)


def _branch(number: int) -> str:
    return f"{PREFIX}-{number:05d}"


def _timed(fn: Callable[..., T], *args: Any) -> tuple[float, T]:
    started = time.perf_counter()
    value = fn(*args)
    return time.perf_counter() - started, value


def run(env: Env, params: ScaleParams) -> list[Figure]:
    n = params.previews
    catalog = entries_gen.settings()
    say(f"[scale] generating {n:,} entries with the planner")
    # Opened one after the other over one default TTL, so their expiries spread the same way (a steady
    # state): a reap pass at a chosen time finds a chosen number expired, the next ones soon to warn.
    first, spacing = datetime.now(UTC), catalog.ttl.default / n
    files = entries_gen.many(catalog, n, prefix=PREFIX, first=first, spacing=spacing)
    size_mb = sum(len(b) for b in files.values()) / 1e6
    seeded, remote = _timed(lambda: make_remote(env, env.root / "gitops.git", files=files))
    figures = [
        Figure(scenario=NAME, name=f"seed {n:,} entries with plain git (one commit)", value=seeded, unit="s",
               note=f"{size_mb:.1f} MB of entry files"),
        *_in_process(env, params, catalog=catalog, remote=remote),
    ]

    say("[scale] starting the server on the big repository")
    plain_remote = env.root / "plain.git"
    git(env, "clone", "--quiet", "--bare", str(remote), str(plain_remote))
    plain = PlainGit(env, remote=plain_remote, workdir=env.root / "plain")
    work = env.root / "server"
    data = settings_data(state_dir=work / "state", remote=remote)
    with server(env, workdir=work, settings=data) as srv:
        figures.append(Figure(scenario=NAME, name="server spawn -> ready (clone, read, decode)",
                              value=srv.ready_after, unit="s"))
        started_mb = srv.memory_mb()["VmHWM"]
        figures.extend(_api(srv, params))
        api_mb = srv.memory_mb()["VmHWM"]
        ctx = Context(env=env, params=params, catalog=entries_gen.settings(work / "state", remote), server=srv,
                      remote=remote, first=first, spacing=spacing)
        figures.extend(_single_events(ctx, plain))
        figures.extend(reap_figures(ctx))
        figures.extend(resync_figures(ctx))
        memory = srv.memory_mb()
    figures += [
        Figure(scenario=NAME, name="server peak RSS after start", value=started_mb, unit="MB",
               note=f"{n:,} previews loaded; VmHWM of the server process (git subprocesses not included)"),
        Figure(scenario=NAME, name="server peak RSS after the /api/previews calls", value=api_mb, unit="MB"),
        Figure(scenario=NAME, name="server peak RSS (VmHWM)", value=memory["VmHWM"], unit="MB",
               target=Target(op="<", value=params.rss_target_mb), note="after everything above"),
    ]
    return figures


def _in_process(env: Env, params: ScaleParams, *, catalog: Settings, remote: Path) -> list[Figure]:
    n = params.previews
    say(f"[scale] worker start, piece by piece (in this process), {params.repeats} times beside git clone")
    clones, opens, reads, colds = [], [], [], []
    raw: dict[str, bytes] = {}
    for i in range(params.repeats):  # alternated with plain git clone, medians reported
        clones.append(_timed(git, env, "clone", "--quiet", str(remote), str(env.root / f"clone-{i}"))[0])
        store = GitStore(url=str(remote), branch=BRANCH, path=ENTRY_DIR, workdir=env.root / f"store-{i}" / "clone")
        try:
            opens.append(_timed(store.open)[0])
            took, raw = _timed(store.read)
            reads.append(took)
        finally:
            store.close()
        colds.append(_timed(EntryCache().decode, raw)[0])
    cache = EntryCache()
    entries = cache.decode(raw)
    decoded_warm, _ = _timed(lambda: cache.decode(raw))
    if len(entries) != n:
        raise RuntimeError(f"read {len(entries)} entries, expected {n}")
    opened, cloned = statistics.median(opens), statistics.median(clones)

    say(f"[scale] the planner over {n:,} entries: one event, then a batch of {params.batch}")
    one = [entries_gen.event(number=7, sha=sha_of("scale-plan", 7), branch=_branch(7), action="synchronize")]
    batch = [
        entries_gen.event(number=k, sha=sha_of("scale-plan", k), branch=_branch(k), action="synchronize")
        for k in range(1, params.batch + 1)
    ]
    planned_one, _ = _timed(lambda: plan(events=one, entries=entries, catalog=catalog, now=one[0].received_at))
    kept = KeyIndex().update(entries)  # as the worker keeps it between batches
    planned_kept, _ = _timed(lambda: plan(events=one, entries=entries, catalog=catalog, now=one[0].received_at,
                                          index=kept))
    planned_batch, result = _timed(lambda: plan(events=batch, entries=entries, catalog=catalog,
                                                now=batch[0].received_at))
    changed = len(result.changed)
    return [
        Figure(scenario=NAME, name="worker start: GitStore.open (clone)", value=opened, unit="s", baseline=cloned,
               ratio=opened / cloned, ratio_of="devstack / git clone", samples=params.repeats),
        Figure(scenario=NAME, name=f"worker start: GitStore.read ({n:,} files)", value=statistics.median(reads),
               unit="s"),
        Figure(scenario=NAME, name=f"worker start: EntryCache.decode ({n:,} files, cold)",
               value=statistics.median(colds), unit="s"),
        Figure(scenario=NAME, name="EntryCache.decode again (warm, unchanged bytes)", value=decoded_warm, unit="s"),
        Figure(scenario=NAME, name=f"planner: 1 event over {n:,} entries", value=planned_one, unit="s",
               note="a fresh index of the entries' PR keys, as any caller but the worker"),
        Figure(scenario=NAME, name=f"planner: 1 event over {n:,} entries, index kept", value=planned_kept, unit="s",
               note="the worker's KeyIndex, kept between batches: only changed entries are read again"),
        Figure(scenario=NAME, name=f"planner: {params.batch} events over {n:,} entries", value=planned_batch,
               unit="s", note=f"{changed} entries changed"),
    ]


def _api(srv: Server, params: ScaleParams) -> list[Figure]:
    say(f"[scale] GET /api/previews x{params.api_calls}")
    samples, size = [], 0
    with httpx.Client(timeout=60) as client:
        for _ in range(params.api_calls):
            started = time.perf_counter()
            response = client.get(srv.url + "/api/previews")
            samples.append((time.perf_counter() - started) * 1000)
            response.raise_for_status()
            size = len(response.content)
            if len(response.json()) != params.previews:
                raise RuntimeError(f"/api/previews listed {len(response.json())}, expected {params.previews}")
    return [
        Figure(scenario=NAME, name=f"/api/previews p50 ({params.previews:,} previews)", value=percentile(samples, 50),
               unit="ms", samples=len(samples), note=f"{size / 1e6:.1f} MB of JSON"),
        Figure(scenario=NAME, name="/api/previews max", value=max(samples), unit="ms", samples=len(samples)),
    ]


def _single_events(ctx: Context, plain: PlainGit) -> list[Figure]:
    params = ctx.params
    say(f"[scale] {params.pushes} single events at this size, interleaved with plain git")
    watch = RefWatcher(ctx.remote)
    rng = random.Random(1)
    mine: list[float] = []
    base: list[float] = []
    done = ctx.done()
    with httpx.Client(timeout=60) as client:
        for i in range(params.pushes):
            number = rng.randint(1, params.previews)
            sha = sha_of("scale-single", i)
            body, headers = signed(pr_payload(number=number, sha=sha, branch=_branch(number)),
                                   delivery=str(uuid.uuid4()))
            head = watch.head()
            time.sleep(rng.uniform(0, 0.25))  # a random point of the worker's poll cycle
            started = time.monotonic()
            response = client.post(ctx.server.url + "/webhooks/github", content=body, headers=headers)
            if response.status_code != 202:
                raise RuntimeError(f"delivery refused: {response.status_code} {response.text[:200]}")
            _, moved = watch.wait_change(head, timeout=60)
            mine.append((moved - started) * 1000)
            rel, data = entries_gen.entry(ctx.catalog, number=number, sha=sha, branch=_branch(number))
            base.append(plain.change(rel, data) * 1000)
    ctx.drained(before=done, new=params.pushes)
    p50, b50 = percentile(mine, 50), percentile(base, 50)
    return [
        Figure(scenario=NAME, name=f"one event -> pushed p50 ({params.previews:,} previews)", value=p50, unit="ms",
               baseline=b50, ratio=p50 / b50, ratio_of="devstack / git",
               target=Target(op="<=", value=params.single_ratio_target, on="ratio"), samples=len(mine)),
    ]


# --- reap and resync ------------------------------------------------------------------------------
#
# With devstack.reaper present, the real Reaper / Resyncer run one pass in this process against the
# running server's journal (as the server's own reap/resync threads do), and the worker applies what
# they journalled. Without it, the stand-ins below put equivalent PR events into the journal.


def reap_figures(ctx: Context) -> list[Figure]:
    try:
        from devstack.reaper import Reaper
    except ImportError:
        return _reap_stand_in(ctx)
    params = ctx.params
    state = remote_entries(ctx.env, ctx.remote)  # the current previews, as the worker's snapshot has them
    clock = ctx.expiry(params.batch) + ctx.spacing / 2  # PRs 1..batch have expired
    say(f"[scale] reap: one pass over {len(state):,} previews at a time when {params.batch} have expired")
    before = ctx.done()
    journal = Journal(ctx.server.state_dir / "journal.sqlite3")
    try:
        reaper = Reaper(settings=ctx.catalog, journal=journal, entries=lambda: state, clock=lambda: clock)
        started = time.monotonic()
        summary = reaper.run_once()
        passed = time.monotonic() - started
    finally:
        journal.close()
    finished = ctx.drained(before=before, new=len(summary.expired))
    note = f"{summary.checked:,} checked, {len(summary.expired)} expired, {len(summary.warned)} warned"
    return [
        Figure(scenario=NAME, name=f"reap pass over {len(state):,} previews (journals the expiries)",
               value=passed, unit="s", note=note),
        Figure(scenario=NAME, name=f"reap: pass + {len(summary.expired)} expired previews pushed",
               value=finished - started, unit="s", target=Target(op="<", value=params.reap_target_s), note=note),
    ]


def resync_figures(ctx: Context) -> list[Figure]:
    try:
        from devstack.reaper import Resyncer
    except ImportError:
        return _resync_stand_in(ctx)
    params = ctx.params
    state = remote_entries(ctx.env, ctx.remote)
    numbers = sorted(int(e["source"]["number"]) for elements in state.values() for e in elements)
    half = params.batch // 2
    shas = {int(e["source"]["number"]): e["source"]["sha"] for elements in state.values() for e in elements}
    still_open = numbers[:-half]  # the last `half` were closed while devstack missed the webhook
    missed = range(params.previews + 1, params.previews + 1 + half)  # opened while it missed the webhook
    now = datetime.now(UTC)
    prs = [entries_gen.event(number=k, sha=shas[k], branch=_branch(k), action="resync", received_at=now)
           for k in still_open]
    prs += [entries_gen.event(number=k, sha=sha_of("resync", k), branch=_branch(k), action="resync",
                              received_at=now) for k in missed]
    say(f"[scale] resync: one pass, {len(prs):,} open PRs against {len(state):,} previews")
    before = ctx.done()
    journal = Journal(ctx.server.state_dir / "journal.sqlite3")
    try:
        resyncer = Resyncer(settings=ctx.catalog, journal=journal, entries=lambda: state,
                            clients={"github": _OpenPullRequests(prs)}, clock=lambda: now)
        started = time.monotonic()
        summary = resyncer.run_once()
        passed = time.monotonic() - started
    finally:
        journal.close()
    finished = ctx.drained(before=before, new=len(summary.healed) + len(summary.pruned))
    note = (f"{summary.open:,} open PRs listed (in process, no HTTP), {len(summary.healed)} created, "
            f"{len(summary.pruned)} pruned")
    return [
        Figure(scenario=NAME, name=f"resync pass over {len(state):,} previews (journals the differences)",
               value=passed, unit="s", note=note),
        Figure(scenario=NAME, name=f"resync: pass + {len(summary.healed) + len(summary.pruned)} changes pushed",
               value=finished - started, unit="s", target=Target(op="<", value=params.reap_target_s), note=note),
    ]


class _OpenPullRequests:
    """A provider client for resync that lists prepared open PRs (no network); a PR it does not list
    reads as closed (resync reads every PR it would prune on its own)."""

    def __init__(self, prs: list[PullRequestEvent]) -> None:
        self._prs = prs
        self._by_number = {(pr.repo, pr.number): pr for pr in prs}

    def open_pull_requests(self, *, repo: str) -> list[PullRequestEvent]:
        return [pr for pr in self._prs if pr.repo == repo]

    def pull_request(self, *, repo: str, number: int) -> PullRequestEvent:
        listed = self._by_number.get((repo, number))
        if listed is not None:
            return listed
        return entries_gen.event(number=number, sha=sha_of("closed", number), branch=_branch(number),
                                 action="closed", closed=True)


def _journal_batch(ctx: Context, events: list[PullRequestEvent]) -> float:
    """Put ``events`` into the running server's journal and wait until the worker has pushed them all;
    seconds from the first insert."""
    journal = Journal(ctx.server.state_dir / "journal.sqlite3")
    before = ctx.done()
    started = time.monotonic()
    try:
        for event in events:
            journal.record(delivery_id=event.delivery_id, provider="github", event="pull_request", pr=event.key,
                           payload=event.to_json())
    finally:
        journal.close()
    return ctx.drained(before=before, new=len(events)) - started


def _reap_stand_in(ctx: Context) -> list[Figure]:
    """Without devstack.reaper: ``batch`` 'closed' events (an expiry removes a preview the same way)
    journalled at once, until pushed."""
    params = ctx.params
    say(f"[scale] reap stand-in: {params.batch} previews removed through the journal")
    events = [
        entries_gen.event(number=k, sha=f"{k:040x}", branch=_branch(k), action="closed", closed=True,
                          delivery=f"reap-{uuid.uuid4()}")
        for k in range(1, params.batch + 1)
    ]
    seconds = _journal_batch(ctx, events)
    return [
        Figure(scenario=NAME, name=f"reap: {params.batch} of {params.previews:,} removed, journal -> pushed",
               value=seconds, unit="s", target=Target(op="<", value=params.reap_target_s),
               stand_in=f"no devstack.reaper: {params.batch} 'closed' events journalled at once, timed until "
               "the worker pushed them (plan + validate + commit + push over the whole repository)"),
    ]


def _resync_stand_in(ctx: Context) -> list[Figure]:
    """Without devstack.reaper: ``batch`` PRs the repository does not know yet, journalled at once
    (resync creates what is missing), until pushed."""
    params = ctx.params
    say(f"[scale] resync stand-in: {params.batch} missing previews created through the journal")
    start = params.previews + 1
    events = [
        entries_gen.event(number=k, sha=sha_of("resync", k), branch=_branch(k), delivery=f"resync-{uuid.uuid4()}")
        for k in range(start, start + params.batch)
    ]
    seconds = _journal_batch(ctx, events)
    return [
        Figure(scenario=NAME, name=f"resync: {params.batch} created beside {params.previews:,}, journal -> pushed",
               value=seconds, unit="s", target=Target(op="<", value=params.reap_target_s),
               stand_in=f"no devstack.reaper: {params.batch} 'opened' events for missing PRs journalled at "
               "once, timed until the worker pushed them; listing open PRs at the provider is not included"),
    ]

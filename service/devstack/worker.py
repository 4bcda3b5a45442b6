"""The worker: drains the journal in batches — plan, validate, one commit, push — then queues feedback.

One path for every change (DESIGN §2). A batch is planned on the current tree of the GitOps repo; the
git store calls the planning function again on the new tree whenever a push is rejected, so the
plan is always made against what is really there. Every entry is validated before the commit; an
event whose entry does not validate is isolated (the batch is retried event by event) and becomes a
dead letter, so one bad event never blocks the others nor freezes the ApplicationSet.

Nothing stalls silently:

* **Quarantine.** An entry file devstack cannot read (not JSON, or JSON that does not satisfy
  ``entries.schema.json``: a hand edit, an older devstack) is *quarantined*: it is left out of the
  planner's view, never written nor deleted, reported (:meth:`Worker.quarantined`, ``/api/previews``,
  the dashboard, ``devstack_quarantined_entries``, one error log line per version of the file), and
  the deliveries that target its feature become dead letters naming the file, so the operator fixes
  or deletes it and runs ``devstack redrive`` (resync's own deliveries are only marked ignored: its
  next pass asks again). Every other feature goes on.
* **Any planning failure is isolated.** Whatever the planner (or the validation of what it made)
  raises becomes :class:`~devstack.errors.PlanFailed`: the batch is split in halves until the
  delivery that fails is alone, which becomes a dead letter with the reason; the others are applied.
* **Transient failures never dead-letter.** A git failure (remote unreachable, 5xx, a push that
  keeps being rejected) or an unexpected error outside planning counts an attempt and retries the
  batch with capped backoff, for as long as it takes; the worker is unhealthy meanwhile (``/readyz``
  says ``degraded``), and the age of the oldest pending delivery is a metric that makes ``/readyz``
  say ``degraded`` past ``worker.stalled_after``.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

from devstack import entries as entry_format
from devstack import gates
from devstack.catalog import Settings
from devstack.entries import Element
from devstack.errors import InvalidEntry, PermanentError, PlanFailed, TemporaryError
from devstack.events import Command, PullRequestEvent, event_from_json
from devstack.feedback import feedback_to_dict
from devstack.gates import GateStatus
from devstack.gitops import CommitResult, GitStore
from devstack.journal import Delivery, Journal
from devstack.journal.backend import JournalUnavailable
from devstack.log import bind
from devstack.metrics import Metrics
from devstack.naming import entry_filename
from devstack.planner import KeyIndex, Plan, PlannerEvent, feature_of, plan, pr_tag, why_no_preview

logger = logging.getLogger(__name__)


@dataclass(kw_only=True)
class BatchResult:
    deliveries: int
    commit: str | None = None
    attempts: int = 0
    changed: tuple[str, ...] = ()
    dead: list[str] = field(default_factory=list)
    error: str = ""
    retrying: bool = False
    """True when the batch (or part of it) failed transiently and waits for its retry."""


class EntryCache:
    """Decoded entry files, reused while their bytes are unchanged (a batch only rewrites a few).

    A file that is not a valid entry (not JSON, or not satisfying the schema) is quarantined: left
    out of what :meth:`decode` returns and listed by :attr:`quarantined` with the reason.
    """

    def __init__(self) -> None:
        self._files: dict[str, tuple[bytes, list[Element] | None, str]] = {}
        self._quarantined: dict[str, str] = {}

    def decode(self, files: Mapping[str, bytes]) -> dict[str, list[Element]]:
        decoded: dict[str, tuple[bytes, list[Element] | None, str]] = {}
        for feature, data in files.items():
            cached = self._files.get(feature)
            if cached is not None and cached[0] == data:
                decoded[feature] = cached
                continue
            try:
                elements = entry_format.decode(feature, data)
                entry_format.validate(feature, elements, fast=True)
            except Exception as exc:  # noqa: BLE001 - whatever is wrong with the file, it is quarantined
                reason = str(exc) if isinstance(exc, InvalidEntry) else (
                    f"{entry_filename(feature)}: {type(exc).__name__}: {exc}")
                logger.error("quarantined entry file (left untouched, its feature is not planned): %s", reason)
                decoded[feature] = (data, None, reason[:500])
                continue
            decoded[feature] = (data, elements, "")
        self._files = decoded
        self._quarantined = {feature: reason for feature, (_, elements, reason) in decoded.items() if elements is None}
        return {feature: elements for feature, (_, elements, _) in decoded.items() if elements is not None}

    @property
    def quarantined(self) -> dict[str, str]:
        """feature -> why its entry file (as last decoded) cannot be read."""
        return dict(self._quarantined)


class Worker:
    def __init__(
        self,
        *,
        settings: Settings,
        journal: Journal,
        store: GitStore,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        metrics: Metrics | None = None,
        on_pushed: Callable[[CommitResult], None] | None = None,
    ) -> None:
        self._settings = settings
        self._metrics = metrics or Metrics()
        self._on_pushed = on_pushed
        self._journal = journal
        self._store = store
        self._clock = clock
        self._cache = EntryCache()
        self._index = KeyIndex()  # kept between batches: each plan re-reads only the entries that changed
        self._snapshot: dict[str, list[Element]] = {}
        self._quarantine: dict[str, str] = {}
        self._snapshot_lock = threading.Lock()
        self.healthy = False
        self.last_error = ""

    # --- state seen by the API -------------------------------------------------------------------

    def snapshot(self) -> dict[str, list[Element]]:
        with self._snapshot_lock:
            return dict(self._snapshot)

    def quarantined(self) -> dict[str, str]:
        """Entry files devstack cannot read and leaves untouched: feature -> reason."""
        with self._snapshot_lock:
            return dict(self._quarantine)

    def _set_snapshot(self, state: Mapping[str, list[Element]], quarantine: Mapping[str, str]) -> None:
        with self._snapshot_lock:
            self._snapshot = dict(state)
            self._quarantine = dict(quarantine)

    def start(self) -> None:
        """Open (or recover) the working clone and load the current entries."""
        self._store.open()
        self._set_snapshot(self._cache.decode(self._store.read()), self._cache.quarantined)
        self.healthy = True
        self.last_error = ""

    # --- one batch ------------------------------------------------------------------------------

    def run_once(self) -> BatchResult | None:
        batch = self._journal.take_batch(limit=self._settings.worker.batch_size)
        if not batch:
            return None
        try:
            with bind(batch=uuid.uuid4().hex[:8]):
                return self._process(batch)
        finally:
            # what is still pending (held back behind a retry) goes back to whoever is next
            self._journal.release([d.seq for d in batch])

    def refresh(self) -> bool:
        """Fetch the GitOps remote; when its head moved (another writer pushed: a direct-mode CLI
        command, a hand edit), re-read the entries so the API and the passes see them. True when
        it moved. One ``git fetch`` (no objects when nothing changed)."""
        try:
            moved = self._store.fetch()
        except TemporaryError as exc:
            logger.log(logging.WARNING if self.healthy else logging.DEBUG, "git fetch failed: %s", exc)
            self.healthy = False
            self.last_error = str(exc)
            return False
        if moved:
            self._set_snapshot(self._cache.decode(self._store.read()), self._cache.quarantined)
            logger.info("the GitOps remote moved (another writer); entries re-read")
        if not self.healthy and not self._journal.pending_by_queue().get("git"):
            self.healthy = True
            self.last_error = ""
        return moved

    def _process(self, batch: Sequence[Delivery]) -> BatchResult:
        events, broken = self._events(batch)
        if not events:
            return BatchResult(deliveries=len(batch), dead=broken)
        try:
            planned, result, blocked, heads = self._commit(events)
        except (InvalidEntry, PlanFailed) as exc:
            self._metrics.plan_failures.inc()
            if len(events) == 1:
                return self._dead(events, error=str(exc), broken=broken)
            logger.warning("batch could not be planned (%s); splitting it to isolate the delivery", exc)
            return self._split(batch, events, broken)
        except PermanentError as exc:
            return self._dead(events, error=str(exc), broken=broken)
        except TemporaryError as exc:
            self._metrics.git_failures.inc()
            return self._retry(batch, events, broken, error=str(exc), delay=exc.delay)
        except Exception as exc:
            logger.exception("batch failed unexpectedly; it will be retried")
            return self._retry(batch, events, broken, error=f"{type(exc).__name__}: {exc}", delay=None)
        self.healthy = True
        self.last_error = ""
        self._set_snapshot(planned.entries, self._cache.quarantined)
        applied = {seq: event for seq, event in events.items() if seq not in blocked}
        self._observe(batch, applied, result)
        # what was worked on is active: the sleep pass counts its idle time from here
        self._journal.touch_many({feature: at.timestamp() for feature, at in planned.active.items()})
        outcomes = {
            seq: (f"{d.outcome}: {d.reason}" if d.reason else d.outcome)
            for seq, d in zip(applied, planned.decisions, strict=True)
        }
        self._journal.complete(
            outcomes,
            feedback=[(f.pr.key, f.pr.provider.value, feedback_to_dict(f)) for f in planned.feedback],
        )
        if heads:  # what each planned PR head's gate was: the gatekeeper acts on the ones not open
            self._journal.set_gate_states({head: _gate_state(statuses) for head, statuses in heads.items()})
        for event, decision in zip(applied.values(), planned.decisions, strict=True):
            with bind(delivery=event.delivery_id, pr=event.key, repo=getattr(event, "repo", None)):
                logger.info("%s %s: %s%s", _action(event), event.key, decision.outcome,
                            f" ({decision.reason})" if decision.reason else "")
        dead = list(broken)
        for seq, reason in blocked.items():
            if getattr(events[seq], "action", "") == "resync":
                # resync asks again on its next pass: a dead letter per pass would only be noise
                self._journal.complete({seq: f"ignored: {reason}"})
                continue
            dead += self._dead({seq: events[seq]}, error=reason, broken=[]).dead
        if result.sha:
            logger.info("pushed %s: %d deliveries, %s changed, %d attempt(s)",
                        result.sha[:12], len(applied), ",".join(result.changed), result.attempts)
            if self._on_pushed is not None:
                self._on_pushed(result)  # e.g. refresh the ApplicationSets now (never blocks)
        return BatchResult(
            deliveries=len(batch), commit=result.sha, attempts=result.attempts, changed=result.changed, dead=dead
        )

    def _split(self, batch: Sequence[Delivery], events: Mapping[int, PlannerEvent], broken: list[str]) -> BatchResult:
        """Process the two halves of the batch in order, to isolate the delivery that cannot be planned.

        A half that fails transiently stops the split: what follows stays pending behind it (first in,
        first out), and is taken again with it once its retry is due."""
        ordered = [d for d in batch if d.seq in events]
        half = len(ordered) // 2
        results: list[BatchResult] = []
        for part in (ordered[:half], ordered[half:]):
            results.append(self._process(part))
            if results[-1].retrying:
                break
        return BatchResult(
            deliveries=len(batch),
            commit=next((r.commit for r in reversed(results) if r.commit), None),
            attempts=sum(r.attempts for r in results),
            changed=tuple(sorted({c for r in results for c in r.changed})),
            dead=broken + [d for r in results for d in r.dead],
            error=next((r.error for r in results if r.retrying), ""),
            retrying=any(r.retrying for r in results),
        )

    def _retry(self, batch: Sequence[Delivery], events: Mapping[int, PlannerEvent], broken: list[str], *,
               error: str, delay: float | None) -> BatchResult:
        """A transient failure: count the attempt and retry with capped backoff, never dead-letter."""
        self.healthy = False
        self.last_error = error
        self._journal.retry(list(events), error=error, max_attempts=None,
                            backoff_max=self._settings.worker.backoff_max, delay=delay)
        logger.warning("git write failed, %d deliveries will be retried: %s", len(events), error)
        return BatchResult(deliveries=len(batch), dead=broken, error=error, retrying=True)

    def _observe(self, batch: Sequence[Delivery], events: Mapping[int, PlannerEvent], result: CommitResult) -> None:
        self._metrics.batch_size.observe(len(events))
        if result.attempts > 1:
            self._metrics.push_retries.inc(result.attempts - 1)
        if result.sha:
            self._metrics.commits.inc()
            now = time.time()
            for delivery in batch:
                if delivery.seq in events:
                    self._metrics.event_to_push.observe(max(0.0, now - delivery.received_at))

    def _events(self, batch: Sequence[Delivery]) -> tuple[dict[int, PlannerEvent], list[str]]:
        events: dict[int, PlannerEvent] = {}
        broken: list[str] = []
        for delivery in batch:
            try:
                event = event_from_json(delivery.payload)
            except (ValueError, KeyError, TypeError) as exc:
                self._journal.dead_letter(delivery.seq, error=f"unreadable journal payload: {exc}")
                broken.append(delivery.delivery_id)
                continue
            if not isinstance(event, PullRequestEvent | Command):
                self._journal.dead_letter(delivery.seq, error=f"a {type(event).__name__} in the git queue")
                broken.append(delivery.delivery_id)
                continue
            events[delivery.seq] = event
        return events, broken

    def _commit(
        self, events: Mapping[int, PlannerEvent]
    ) -> tuple[Plan, CommitResult, dict[int, str], dict[tuple[str, str], dict[str, GateStatus]]]:
        """Plan ``events`` on the newest tree and push; also returns the deliveries held back because
        their feature's entry file is quarantined (seq -> reason), and the gates of the PR heads planned."""
        planned: list[Plan] = []
        blocked: dict[int, str] = {}
        approvals = self._journal.approvals()
        gates = self._gates(events, approvals=approvals)
        # a sleep the reaper decided is checked against the activity recorded since it looked
        guarded = any(isinstance(e, Command) and e.op == "sleep" for e in events.values())
        activity = self._journal.activity() if guarded else {}

        def change(files: dict[str, bytes]) -> dict[str, bytes | None]:
            current = self._cache.decode(files)
            held = self._cache.quarantined
            blocked.clear()
            blocked.update(self._held_back(events, held))
            ordered = [event for seq, event in events.items() if seq not in blocked]
            try:
                result = plan(events=ordered, entries=current, catalog=self._settings, now=self._clock(),
                              approvals=approvals, activity=activity, gates=gates, index=self._index)
            except Exception as exc:
                raise PlanFailed(f"planning failed: {type(exc).__name__}: {exc}"[:1000]) from exc
            out: dict[str, bytes | None] = {}
            for feature, elements in result.changed.items():
                if feature in held:
                    raise PlanFailed(f"{entry_filename(feature)} is quarantined ({held[feature]}); devstack "
                                     "leaves it untouched: fix or delete it, then redrive")
                if elements is None:
                    out[feature] = None
                    continue
                try:
                    entry_format.validate(feature, elements, fast=True)  # the check reading applies
                    out[feature] = entry_format.encode(elements)
                except InvalidEntry:
                    raise
                except Exception as exc:
                    raise PlanFailed(f"{entry_filename(feature)}: {type(exc).__name__}: {exc}"[:1000]) from exc
            planned[:] = [result]
            return out

        result = self._store.apply(change, message=commit_message(list(events.values())))
        return planned[0], result, dict(blocked), gates

    def _gates(
        self, events: Mapping[int, PlannerEvent], *, approvals: Mapping[str, str],
    ) -> dict[tuple[str, str], dict[str, GateStatus]]:
        """(PR, head sha) -> service -> its gate, for the PR events of a batch whose repository has gated
        services. The heads are written to the journal *before* their checks are read (see
        :mod:`devstack.journal.gates`); the head of a PR that wants no preview (closed, a draft, no
        preview label, an unapproved fork) is forgotten: it waits for nothing."""
        settings = self._settings
        latest: dict[str, PullRequestEvent] = {}
        for event in events.values():
            if isinstance(event, PullRequestEvent) and settings.gated(provider=event.provider.value, repo=event.repo):
                latest[event.key] = event  # in order: the last state of each PR counts for its head
        unwanted = [key for key, event in latest.items() if why_no_preview(event, settings, approvals) is not None]
        if unwanted:
            self._journal.forget_heads(unwanted)
        wanted: dict[tuple[str, str], PullRequestEvent] = {}
        for event in events.values():
            if isinstance(event, PullRequestEvent) and event.key in latest and event.key not in unwanted:
                wanted[(event.key, event.head_sha)] = event
        if not wanted:
            return {}
        images = {head: _images(settings, event) for head, event in wanted.items()}
        seen = self._journal.heads_seen([
            (event.key, _repo_key(event), event.head_sha, sorted(images[(event.key, event.head_sha)].values()))
            for event in latest.values() if event.key not in unwanted
        ])
        checks = self._journal.checks_of((_repo_key(event), sha) for (_, sha), event in wanted.items())
        found = self._journal.images_found(ref for refs in images.values() for ref in refs.values())
        bypass = self._journal.bypasses()
        now = self._journal.now()
        deadline = settings.gate.deadline.total_seconds()
        result: dict[tuple[str, str], dict[str, GateStatus]] = {}
        for (pr, sha), event in wanted.items():
            overdue = latest[pr].head_sha == sha and now - seen.get(pr, now) >= deadline
            result[(pr, sha)] = {
                service: gates.decide(gate=settings.gate_of(service), sha=sha, checks=checks[(_repo_key(event), sha)],
                                      image_present=images[(pr, sha)].get(service, "") in found,
                                      bypass=bypass.get(pr) == sha, overdue=overdue)
                for service in settings.gated(provider=event.provider.value, repo=event.repo)
            }
        return result

    def _held_back(self, events: Mapping[int, PlannerEvent], held: Mapping[str, str]) -> dict[int, str]:
        """The deliveries whose feature's entry file is quarantined, with the reason."""
        if not held:
            return {}
        result = {}
        for seq, event in events.items():
            try:
                feature = event.feature if isinstance(event, Command) else feature_of(event, self._settings)
            except Exception:  # noqa: BLE001, S112 - the planner will fail on it too, and isolate it
                continue
            if feature and feature in held:
                result[seq] = (f"{entry_filename(feature)} is quarantined ({held[feature]}); devstack leaves "
                               "it untouched: fix or delete it in the GitOps repo, then redrive")
        return result

    def _dead(self, events: Mapping[int, PlannerEvent], *, error: str, broken: list[str]) -> BatchResult:
        for seq, event in events.items():
            with bind(delivery=event.delivery_id, pr=event.key):
                logger.error("dead letter: %s", error)
            self._journal.dead_letter(seq, error=error)
        return BatchResult(deliveries=len(events), dead=broken + [e.delivery_id for e in events.values()], error=error)

    def run_forever(self, stop: threading.Event) -> None:
        """Process batches until ``stop`` is set; (re)open the store until it works."""
        opened = False
        failures = 0
        refreshed = time.monotonic()
        while not stop.is_set():
            try:
                if not opened:
                    self.start()
                    opened = True
                    refreshed = time.monotonic()
                result = self.run_once()
                failures = 0
                if result is not None:
                    refreshed = time.monotonic()  # a batch reads (or fetches) the newest tree anyway
                elif time.monotonic() - refreshed >= self._settings.worker.refresh_interval:
                    refreshed = time.monotonic()
                    self.refresh()
            except TemporaryError as exc:
                failures += 1
                self.healthy = False
                self.last_error = str(exc)
                logger.warning("%s", exc if isinstance(exc, JournalUnavailable) else f"git store unavailable: {exc}")
                stop.wait(min(self._settings.worker.backoff_max, 2.0 ** min(failures, 8)))
                continue
            except Exception as exc:
                failures += 1
                self.healthy = False
                self.last_error = f"worker: {type(exc).__name__}: {exc}"
                logger.exception("worker crashed; continuing")
                stop.wait(min(self._settings.worker.backoff_max, 2.0 ** min(failures, 8)))
                continue
            if result is None and not stop.is_set():
                # woken at once when a delivery is journaled; the poll catches retries coming due (and
                # rows another process journaled); the next refresh of the remote is not overslept
                until_refresh = self._settings.worker.refresh_interval - (time.monotonic() - refreshed)
                self._journal.wait("git", max(0.0, min(self._settings.worker.poll_interval, until_refresh)))

    def drain(self, *, timeout: float = 30.0) -> int:
        """Process until the journal has nothing due (tests, CLI one-shots); returns batches run."""
        deadline = time.monotonic() + timeout
        batches = 0
        while time.monotonic() < deadline and self.run_once() is not None:
            batches += 1
        return batches


def _repo_key(event: PullRequestEvent) -> str:
    return f"{event.provider.value}:{event.repo}"


def _images(settings: Settings, event: PullRequestEvent) -> dict[str, str]:
    """service -> the image reference its gate waits for at ``event``'s head (image gates only)."""
    return {service: gates.image_ref(settings.services[service].image,
                                     pr_tag(event=event, catalog=settings, service=service))
            for service in settings.gated(provider=event.provider.value, repo=event.repo)
            if settings.gate_of(service).image}


def _gate_state(statuses: Mapping[str, GateStatus]) -> str:
    """A head's gate as a whole: open when every service's is, failed when any failed, else waiting."""
    if any(s.state == "failed" for s in statuses.values()):
        return "failed"
    return "open" if all(s.state == "open" for s in statuses.values()) else "waiting"


def _action(event: PlannerEvent) -> str:
    return event.op if isinstance(event, Command) else event.action


def _target(event: PlannerEvent) -> str:
    if isinstance(event, Command):
        return event.feature or event.pr or "?"
    return f"{event.repo}#{event.number}"


def commit_message(events: Sequence[PlannerEvent]) -> str:
    keys = sorted({_target(e) for e in events})
    title = f"devstack: {len(events)} event(s) for {', '.join(keys[:3])}" + (
        f" and {len(keys) - 3} more" if len(keys) > 3 else ""
    )
    trailers = "\n".join(f"Delivery: {e.delivery_id} {_action(e)} {e.key}" for e in events[:50])
    return f"{title}\n\n{trailers}\n"

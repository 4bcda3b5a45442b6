"""The sticky PR comment: rendered (pure) from a :class:`~devstack.planner.Feedback`, and sent.

One comment per PR, found by the hidden marker, edited in place and never re-posted (DESIGN §6).
The text is a ``string.Template`` shipped in the package (``templates/comment-*.md``), so it can be
reviewed on its own and is tested against golden files.

:class:`FeedbackSender` drains the outbox apart from the git path: the journal keeps only the
latest state per PR, so a burst of pushes becomes one edit; failures are retried with backoff
(honouring ``Retry-After`` / rate-limit resets) and dead-lettered after ``feedback.max_attempts``.
With no provider token the feedback is *recorded* locally (shown by the API and the dashboard).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import defaultdict, deque
from collections.abc import Callable, Collection
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import asdict
from functools import cache
from importlib import resources
from string import Template
from typing import Any, Protocol

from devstack.catalog import Settings
from devstack.errors import DevstackError, PermanentError, TemporaryError
from devstack.events import Provider, PullRequestRef
from devstack.journal import Journal, OutboxItem
from devstack.log import bind
from devstack.loops import drain_forever
from devstack.metrics import Metrics
from devstack.planner import NEVER, Feedback, GateNote, ServiceLink

logger = logging.getLogger(__name__)
_SCAN = 100  # items read per step when a provider has several write budgets (GitHub App installations)
_BUDGETS_AT_ONCE = 8  # of those, how many send at the same time

MARKER = "<!-- devstack:preview -->"


def feedback_to_dict(feedback: Feedback) -> dict[str, Any]:
    data = asdict(feedback)
    data["pr"] = {"provider": feedback.pr.provider.value, "repo": feedback.pr.repo, "number": feedback.pr.number}
    return data


def feedback_from_dict(data: dict[str, Any]) -> Feedback:
    pr = data["pr"]
    return Feedback(
        pr=PullRequestRef(provider=Provider(pr["provider"]), repo=pr["repo"], number=int(pr["number"])),
        pr_url=data["pr_url"],
        status=data["status"],
        feature=data["feature"],
        sha=data["sha"],
        services=tuple(ServiceLink(**s) for s in data.get("services", ())),
        header=data.get("header", ""),
        expires_at=data.get("expires_at", NEVER),
        reason=data.get("reason", ""),
        notes=tuple(data.get("notes", ())),
        warning=data.get("warning", ""),
        gates=tuple(GateNote(**{**g, "waiting": tuple(g.get("waiting", ())), "failed": tuple(g.get("failed", ()))})
                    for g in data.get("gates", ())),
    )


@cache
def _template(name: str) -> Template:
    return Template(resources.files("devstack").joinpath("templates", name).read_text(encoding="utf-8"))


_REASONS = {
    "merged": "the pull request was merged",
    "closed": "the pull request was closed",
    "draft": "the pull request was converted to a draft",
    "expired": "it expired",
    "no preview label": "the preview label was removed",
    "fork": "forks are not deployed",
    "down": "it was taken down from the CLI",
    "repository not allowed": "this repository is not allowed",
}


_PHASES = {"healthy": ":white_check_mark: healthy", "synced": ":hourglass: synced, starting",
           "pending": ":hourglass: pending", "degraded": ":x: degraded"}


def render_comment(feedback: Feedback, *, live: tuple[str, str] | None = None) -> str:
    """The whole body of the sticky comment (Markdown), starting with the hidden marker.

    ``live``: Argo CD's (phase, reason) for the feature, when devstack can read it.
    """
    if feedback.status == "waiting":
        failed = any(note.state == "failed" for note in feedback.gates)
        return _template("comment-waiting.md").substitute(
            marker=MARKER,
            headline=(f":x: Preview {_code(feedback.feature)} was not created: CI failed on {_code(feedback.sha[:7])}"
                      if failed else
                      f":hourglass_flowing_sand: Preview {_code(feedback.feature)} waits for CI on "
                      f"{_code(feedback.sha[:7])}"),
            gates=_gates(feedback),
            notes=_notes(feedback),
        ).rstrip("\n") + "\n"
    if feedback.status != "active":
        return _template("comment-removed.md").substitute(
            marker=MARKER,
            feature=_code(feedback.feature),
            reason=_REASONS.get(feedback.reason, feedback.reason or "it was removed"),
            notes=_notes(feedback),
        ).rstrip("\n") + "\n"
    rows = "\n".join(
        f"| `{link.service}` | {link.url} | `{_short_image(link.image)}` | {_from(link, feedback)} | {_state(link)} |"
        for link in feedback.services
    )
    return _template("comment-active.md").substitute(
        marker=MARKER,
        headline=(f":zzz: Preview {_code(feedback.feature)} is asleep: it wakes on the first request"
                  if feedback.services and all(link.asleep_since for link in feedback.services)
                  else _headline(_code(feedback.feature), live)),
        rows=rows,
        header=feedback.header,
        feature_plain=feedback.feature,
        sha=_code(feedback.sha[:12] or "-") + _head_waits(feedback),
        expires="never" if feedback.expires_at == NEVER else feedback.expires_at.replace("T", " ").replace("Z", " UTC"),
        notes=_gates(feedback) + _notes(feedback),
        status=_status(live),
    ).rstrip("\n") + "\n"


def _headline(feature: str, live: tuple[str, str] | None) -> str:
    """Say only what is true: "deployed" once Argo CD reports the preview healthy, before that what
    devstack did (wrote the entry to the GitOps repo) or what Argo CD is doing."""
    phase = live[0] if live else None
    if phase == "healthy":
        return f":rocket: Preview {feature} is deployed"
    if phase == "degraded":
        return f":x: Preview {feature} failed to deploy"
    if phase in ("synced", "pending"):
        return f":hourglass: Preview {feature} is being deployed"
    return f":memo: Preview {feature} is written to the GitOps repo"


def _status(live: tuple[str, str] | None) -> str:
    if live is None:
        return ""
    phase, reason = live
    text = _PHASES.get(phase, phase)
    return f" · **Status:** {text}" + (f" ({reason.replace('`', '')[:300]})" if reason else "")


def _notes(feedback: Feedback) -> str:
    lines = []
    if feedback.warning:
        lines.append(f"> :hourglass: {feedback.warning}")
    lines.extend(f"> :warning: {note}" for note in feedback.notes)
    return ("\n" + "\n>\n".join(lines) + "\n") if lines else ""


def _gates(feedback: Feedback) -> str:
    """One line per service whose head sha its gate holds back: what it waits for, what still serves."""
    lines = []
    for note in feedback.gates:
        link = f" ([details]({note.url}))" if note.url else ""
        sha = _code(note.sha[:7])
        if note.state == "failed":
            what = ", ".join(_code(name) for name in note.failed)
            after = (f"the preview stays at {_code(note.serving[:7])}" if note.serving else "it was not deployed")
            lines.append(f"> :x: {_code(note.service)}: {what} failed on {sha}{link}; {after}. Fix the build and "
                         "push, re-run the check, or comment `/devstack deploy` to deploy it anyway.")
            continue
        what = ", ".join("the image in its registry" if name == "image" else _code(name) for name in note.waiting)
        after = (f"{_code(note.serving[:7])} keeps serving meanwhile" if note.serving else
                 "it is deployed when that succeeds")
        line = f"> :hourglass_flowing_sand: {_code(note.service)}: waiting for {what} on {sha}{link}; {after}."
        if note.overdue:
            line += " Still waiting past the gate's deadline: check CI, or comment `/devstack deploy` to deploy anyway."
        lines.append(line)
    return ("\n" + "\n>\n".join(lines) + "\n") if lines else ""


def _head_waits(feedback: Feedback) -> str:
    heads = {note.sha for note in feedback.gates if note.serving}
    return f" (head {_code(min(heads)[:7])} not deployed yet: see below)" if heads else ""


def _code(text: str) -> str:
    return f"`{text.replace('`', '')}`"


def _short_image(image: str) -> str:
    repository, _, tag = image.rpartition(":")
    return f"{repository}:{tag[:12]}" if len(tag) == 40 else image


def _state(link: ServiceLink) -> str:
    """awake, or since when it sleeps (and that a request wakes it)."""
    if link.dev_until and not link.asleep_since:
        return f":hammer_and_wrench: dev mode until {link.dev_until.replace('T', ' ').replace('Z', ' UTC')}"
    if not link.asleep_since:
        return "awake"
    return f":zzz: sleeping since {link.asleep_since.replace('T', ' ').replace('Z', ' UTC')}, wakes on first request"


def _from(link: ServiceLink, feedback: Feedback) -> str:
    if not link.source:
        return "base"
    return "this PR" if link.source == feedback.pr.key else link.source.split(":", 1)[-1]


class FeedbackClient(Protocol):
    """What a provider's API client offers for feedback (GitHub, GitLab, or a local recorder)."""

    def upsert_comment(self, *, repo: str, number: int, body: str, marker: str, comment_id: int | None = None) -> int:
        ...

    def deploy(self, *, repo: str, sha: str, environment: str, url: str, description: str, state: str = "success",
               deployment_id: int | None = None) -> int:
        ...

    def deactivate(self, *, repo: str, environment: str, deployment_id: int | None = None) -> int:
        ...

    def reply(self, *, repo: str, number: int, body: str) -> int:
        ...


class FeedbackSender:
    """Drains the outbox: one comment upsert (and deployment update) per PR with pending feedback."""

    def __init__(
        self, *, settings: Settings, journal: Journal, clients: dict[str, FeedbackClient],
        metrics: Metrics | None = None,
        live: Callable[[str], tuple[str, str] | None] = lambda feature: None,
    ) -> None:
        self._settings = settings
        self._journal = journal
        self._clients = clients
        self._metrics = metrics or Metrics()
        self._live = live  # Argo CD's view of a feature: (phase, reason), when devstack can read it
        # lane -> monotonic times of its recent writes (the last hour): the secondary caps are per token
        self._writes: dict[str, deque[float]] = defaultdict(deque)
        self._writes_lock = threading.Lock()
        # lane -> monotonic time until which it asked us to wait (rate limit, Retry-After). A lane is a
        # provider's client (one token or GitHub App installation per provider): the limit is the
        # token's, so no request of that lane goes out before then; the other lanes go on.
        self._paused: dict[str, float] = {}
        # a GitHub App installed in several organisations: its installations send in parallel
        self._several_budgets = any(getattr(c, "several_budgets", False) for c in clients.values())

    def run_once(self, *, limit: int = 20, lanes: Collection[str] | None = None) -> int:
        """Send what is due, at most ``limit`` items, for the providers in ``lanes`` (default: all);
        returns how many items were handled (sent, recorded or failed).

        Each step takes the single most urgent item of each write budget again (replies to commands,
        then first comments, then comment edits, and deployments only when no comment of that budget
        is due), so what arrives while a budget drains a burst waits for one write at most. A budget
        is a provider's token, or each installation of a GitHub App installed in several
        organisations: those progress independently, each at its own pace.
        """
        recorded = self._record_locally(lanes=lanes, limit=limit)
        if recorded:
            return recorded
        if not self._several_budgets:
            handled = 0
            while handled < limit and (chosen := self._choose(lanes=lanes, busy=set(), scan=1)):
                for lane, item in chosen.items():
                    self._send_one(lane, item)
                handled += len(chosen)
            return handled
        handled = 0
        in_flight: dict[str, Future[None]] = {}
        with ThreadPoolExecutor(max_workers=_BUDGETS_AT_ONCE, thread_name_prefix="feedback-budget") as pool:
            while True:
                room = min(limit - handled, _BUDGETS_AT_ONCE - len(in_flight))
                if room > 0:
                    chosen = self._choose(lanes=lanes, busy=set(in_flight), scan=_SCAN)
                    for lane, item in list(chosen.items())[:room]:
                        in_flight[lane] = pool.submit(self._send_one, lane, item)
                        handled += 1
                if not in_flight:
                    return handled
                done, _ = wait(in_flight.values(), return_when=FIRST_COMPLETED)
                for lane in [lane for lane, future in in_flight.items() if future in done]:
                    in_flight.pop(lane).result()

    def _choose(self, *, lanes: Collection[str] | None, busy: set[str], scan: int) -> dict[str, OutboxItem]:
        """The most urgent item of each write budget that is neither paused, nor over its caps, nor
        already sending (``busy``)."""
        now = time.monotonic()
        paused = {lane for lane, until in dict(self._paused).items() if until > now}  # a copy: other threads
        skip = set(paused)  # a paused provider-wide budget is not even read
        chosen: dict[str, OutboxItem] = {}
        commented: set[str] = set()
        for item in self._journal.take_feedback(limit=scan, skip=skip, only=lanes):
            lane = self._lane(item)
            commented.add(lane)
            if lane not in paused and lane not in busy:
                chosen.setdefault(lane, item)
        for item in self._journal.take_feedback(limit=scan, skip=skip, only=lanes, phase="deployment"):
            lane = self._lane(item)
            if lane not in paused and lane not in busy and lane not in commented:
                chosen.setdefault(lane, item)
        for lane in list(chosen):
            wait_for = self._budget_wait(lane)
            if wait_for > 0:  # slow down before a cap, not after a 403
                self._paused[lane] = time.monotonic() + wait_for
                logger.info("feedback lane %s: write budget spent, pausing %.0f s", lane, wait_for)
                del chosen[lane]
        return chosen

    def _send_one(self, lane: str, item: OutboxItem) -> None:
        with bind(pr=item.pr, provider=item.provider):
            self._send(item, lane=lane)

    def _record_locally(self, *, lanes: Collection[str] | None, limit: int) -> int:
        """Feedback for a provider with no token configured is only recorded (``GET /api/feedback``):
        no write budget to pace, so what is due is rendered and recorded in one transaction, not one PR
        at a time. How many items were recorded."""
        offline = [p for p in ("github", "gitlab") if p not in self._clients and (lanes is None or p in lanes)]
        if not offline:
            return 0
        items = self._journal.take_feedback(limit=limit, only=offline)
        if not items:
            return 0
        self._journal.feedback_recorded([(item, self._rendered(item)[1]) for item in items])
        logger.info("feedback recorded locally for %d PR(s) (no %s token configured)", len(items),
                    " or ".join(sorted({item.provider for item in items})))
        return len(items)

    def _rendered(self, item: OutboxItem) -> tuple[Feedback | None, str]:
        """What the PR is told: a command's reply as it is (no feedback state), or the state and its
        sticky comment."""
        if item.payload.get("kind") == "reply":
            return None, str(item.payload["body"])
        feedback = feedback_from_dict(item.payload)
        return feedback, render_comment(feedback, live=self._live(feedback.feature))

    def _lane(self, item: OutboxItem) -> str:
        """The write budget an item spends: its provider's, or its GitHub App installation's."""
        client = self._clients.get(item.provider)
        if client is None or not getattr(client, "several_budgets", False):
            return item.provider
        pr = item.payload.get("pr")
        repo = str(item.payload.get("repo") or (pr.get("repo") if isinstance(pr, dict) else ""))
        try:
            return str(client.lane(repo=repo))  # type: ignore[attr-defined]
        except DevstackError:
            return item.provider  # the send will fail the same way, and say why

    def queues(self) -> dict[tuple[str, str], tuple[int, float]]:
        """(lane, phase) -> (items waiting, age in seconds of the oldest), for the metrics: per write
        budget, so each GitHub App installation's queue shows on its own (no API call at scrape time)."""
        now = self._journal.now()
        result: dict[tuple[str, str], tuple[int, float]] = {}
        for provider, phase, repo, updated_at in self._journal.feedback_waiting():
            client = self._clients.get(provider)
            lane = client.known_lane(repo=repo) if getattr(client, "several_budgets", False) else provider  # type: ignore[union-attr]
            count, age = result.get((lane, phase), (0, 0.0))
            result[(lane, phase)] = (count + 1, max(age, now - updated_at))
        return result

    def writes(self) -> dict[str, tuple[int, int]]:
        """lane -> writes in the last minute and the last hour."""
        now = time.monotonic()
        with self._writes_lock:
            return {lane: (sum(1 for t in times if now - t < 60), sum(1 for t in times if now - t < 3600))
                    for lane, times in self._writes.items()}

    def _wrote(self, lane: str, count: int) -> None:
        now = time.monotonic()
        with self._writes_lock:
            times = self._writes[lane]
            times.extend([now] * count)
            while times and now - times[0] >= 3600:
                times.popleft()

    def _budget_wait(self, lane: str) -> float:
        """Seconds until ``lane`` may write again under ``feedback.max_writes_per_minute/hour`` (0: now)."""
        now = time.monotonic()
        limits = self._settings.feedback
        with self._writes_lock:
            times = self._writes.get(lane)
            if not times:
                return 0.0
            while times and now - times[0] >= 3600:
                times.popleft()
            minute = [t for t in times if now - t < 60]
            wait = 0.0
            if len(minute) >= limits.max_writes_per_minute:
                wait = 60 - (now - minute[-limits.max_writes_per_minute])
            if len(times) >= limits.max_writes_per_hour:
                wait = max(wait, 3600 - (now - times[-limits.max_writes_per_hour]))
            return max(0.0, wait)

    def _send(self, item: OutboxItem, *, lane: str | None = None) -> None:
        lane = lane or item.provider
        client = self._clients.get(item.provider)
        feedback, body = self._rendered(item)
        if client is None:
            self._journal.feedback_sent(item, body=body, status="recorded")
            logger.info("feedback recorded locally (no %s token configured)", item.provider)
            return
        try:
            if feedback is None:
                client.reply(repo=item.payload["repo"], number=int(item.payload["number"]), body=body)
                self._wrote(lane, 1)
                self._journal.feedback_sent(item, body=body)
                self._metrics.feedback_sent.labels(item.provider).inc()
                return
            if item.phase == "deployment":
                deployed, deployment_id = self._deployment(client, feedback, item)
                self._wrote(lane, 2 if deployment_id is not None else 1)
                self._journal.feedback_sent(item, body=item.sent_body, deployed_sha=deployed,
                                            deployment_id=deployment_id)
                return
            comment_id = client.upsert_comment(
                repo=feedback.pr.repo, number=feedback.pr.number, body=body, marker=MARKER,
                comment_id=item.comment_id,
            )
            self._wrote(lane, 0 if body == item.sent_body else 1)
        except TemporaryError as exc:
            self._metrics.feedback_failures.labels(item.provider, "temporary").inc()
            if exc.delay:
                self._paused[lane] = time.monotonic() + exc.delay
            dead = self._journal.feedback_failed(
                item, error=str(exc), max_attempts=self._settings.feedback.max_attempts,
                backoff_max=self._settings.feedback.backoff_max, delay=exc.delay,
            )
            logger.warning("feedback failed (%s)%s", exc, ": dead letter" if dead else "; will retry")
            return
        except PermanentError as exc:
            self._metrics.feedback_failures.labels(item.provider, "permanent").inc()
            self._journal.feedback_failed(
                item, error=str(exc), max_attempts=1, backoff_max=self._settings.feedback.backoff_max, permanent=True
            )
            logger.error("feedback rejected (%s): dead letter", exc)
            return
        self._journal.feedback_sent(item, body=body, comment_id=comment_id,
                                    then_deploy=self._deployment_due(feedback, item))
        self._metrics.feedback_sent.labels(item.provider).inc()
        logger.info("feedback sent: %s comment %s", feedback.status, comment_id)

    def _deployment_due(self, feedback: Feedback, item: OutboxItem) -> bool:
        """Whether :meth:`_deployment` would write anything for this state."""
        return self._deployment_step(feedback, item) is not None

    def _deployment_step(self, feedback: Feedback, item: OutboxItem) -> tuple[str, str, str] | None:
        """What the provider's deployment needs now, as (what, sha, state), or None: nothing.

        ``deployed_sha`` remembers the last step: a sha (deployed), ``queued:<sha>`` (a deployment made
        while its gate was closed, GitHub's ``queued`` state) or ``failed:<sha>`` (its gate failed)."""
        if not self._settings.feedback.deployments:
            return None
        done = item.deployed_sha
        if feedback.status not in ("active", "waiting"):
            return ("deactivate", "", "") if done else None
        held = feedback.gates[0] if feedback.gates else None
        if held is not None:
            if held.state == "failed":
                return ("status", held.sha, "failure") if done == f"queued:{held.sha}" else None
            return ("create", held.sha, "queued") if done != f"queued:{held.sha}" else None
        own = any(link.source == feedback.pr.key for link in feedback.services)
        if not own or not feedback.sha or feedback.sha == done:
            return None
        if done in (f"queued:{feedback.sha}", f"failed:{feedback.sha}") and item.deployment_id is not None:
            return ("status", feedback.sha, "success")
        return ("create", feedback.sha, "success")

    def _deployment(
        self, client: FeedbackClient, feedback: Feedback, item: OutboxItem
    ) -> tuple[str | None, int | None]:
        """Keep the provider's deployment/environment in step: one deployment per head sha (queued while
        its gate is closed, then success), and on removal only the latest one. Returns what is now
        deployed (see :meth:`_deployment_step`) and its deployment id (None: unchanged)."""
        step = self._deployment_step(feedback, item)
        if step is None:
            return None, None
        what, sha, state = step
        environment = f"preview/{feedback.feature}"
        if what == "deactivate":
            # after a queued deployment, the one that still served is active too: walk them all
            latest_only = not item.deployed_sha.startswith(("queued:", "failed:"))
            client.deactivate(repo=feedback.pr.repo, environment=environment,
                              deployment_id=item.deployment_id if latest_only else None)
            return "", None
        own = [link for link in feedback.services if link.source == feedback.pr.key]
        deployment_id = client.deploy(
            repo=feedback.pr.repo, sha=sha, environment=environment, url=own[0].url if own else "",
            description=f"devstack preview {feedback.feature}" + ("" if state == "success" else
                                                                  f": {state}, waiting for CI" if state == "queued"
                                                                  else ": CI failed"),
            state=state, deployment_id=item.deployment_id if what == "status" else None,
        )
        return (sha if state == "success" else f"{'queued' if state == 'queued' else 'failed'}:{sha}"), deployment_id

    def run_forever(self, stop: threading.Event, *, interval: float = 0.5) -> None:
        """One thread per lane (a provider's client: its own token or installation, its own write pacing,
        pauses and backoff), so one provider's pacing or rate limit never delays another's feedback."""
        lanes = sorted({*self._clients, "github", "gitlab"})
        wake = threading.Condition()
        generation = [0]

        def dispatch() -> None:  # the journal's signal, broadcast to every lane
            while not stop.is_set():
                self._journal.wait("feedback", interval)
                with wake:
                    generation[0] += 1
                    wake.notify_all()

        def idle(seen: list[int]) -> None:
            with wake:
                if generation[0] == seen[0]:
                    wake.wait(interval)
                seen[0] = generation[0]

        threads = [threading.Thread(target=dispatch, name="feedback-signal", daemon=True)]
        for lane in lanes:
            seen = [0]
            threads.append(threading.Thread(
                target=drain_forever, name=f"feedback-{lane}", daemon=True,
                kwargs={"stop": stop, "step": lambda lane=lane: self.run_once(lanes={lane}),
                        "name": f"feedback sender ({lane})", "idle": lambda seen=seen: idle(seen)},
            ))
        for thread in threads:
            thread.start()
        stop.wait()
        with wake:
            wake.notify_all()
        for thread in threads:
            thread.join(interval + 5)

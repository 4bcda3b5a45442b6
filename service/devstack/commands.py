"""Comment commands: ``/devstack ttl 3d``, ``extend``, ``add <service>``, ``remove <service>``,
``redeploy``, ``approve``, ``help``.

:func:`parse_comment` is pure (Atlantis style): comment text in, a :class:`Parsed` command, a
:class:`Reply` (help, or why the text is not a valid command) or None (not a command at all) out.

:class:`CommandRunner` does the I/O around it, apart from the git path (it drains the journal's
``comments`` queue): it ignores edited comments and bots (devstack's own comments included), checks
through the provider API that the author may write to the repository (cached briefly), and then:

* ``add`` / ``remove`` / ``ttl`` change the PR's ``devstack/with:`` and ``devstack/ttl:`` labels, so
  the labels stay the one place a PR's wishes live (visible on the PR, and what resync re-reads);
  the PR's fresh state is then journaled so the change applies without waiting for the webhook;
* ``deploy`` opens the gate of the PR's current head once (docs/gates.md): recorded for that sha, then
  the PR's state is journaled so it is deployed now; a later push waits for CI again;
* ``extend`` and ``redeploy`` become :class:`~devstack.events.Command` events in the git queue;
* ``approve`` records the approval of the head sha the approver saw: the one named in the command
  (``/devstack approve 1a2b3c4``), else the head devstack knew when the comment *arrived*
  (:attr:`~devstack.events.CommentEvent.head_sha`, journaled with the comment). The head is never
  re-read to decide what is approved: if the PR's head has moved since (a push while the command
  waited for a retry), the approval is refused with a reply saying so. A later push needs a new
  approval. Then the PR's state is journaled so the fork PR is deployed;
* refusals, help and errors are answered with a reply comment through the feedback outbox.
"""

from __future__ import annotations

import logging
import re
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Protocol

from devstack import naming
from devstack.catalog import Settings
from devstack.durations import InvalidDuration, parse_duration
from devstack.errors import PermanentError, TemporaryError
from devstack.events import Command, CommentEvent, PullRequestEvent, event_from_json
from devstack.journal import Delivery, Journal
from devstack.log import bind
from devstack.loops import drain_forever
from devstack.planner import label

logger = logging.getLogger(__name__)

PREFIX = "/devstack"
SHA_PREFIX = re.compile(r"[0-9a-f]{7,64}")  # an abbreviated or full commit id (SHA-1 or SHA-256)
WRITE_PERMISSIONS = frozenset({"admin", "maintain", "write"})

HELP = """\
**devstack commands** (comment on the pull request; only people with write access can run them):

| command | what it does |
|---|---|
| `/devstack ttl <duration>` | set how long this preview lives: `30m`, `12h`, `3d`, `forever` where allowed |
| `/devstack extend` | move the expiry forward by the default TTL |
| `/devstack add <service>` | add a catalog service (and what it depends on) to this preview |
| `/devstack remove <service>` | remove a service added with `add` |
| `/devstack redeploy` | restart this pull request's services |
| `/devstack deploy` | deploy the current head now, without waiting for CI (its gate), once; the next push waits \
again |
| `/devstack sleep [<service>]` | put this preview (or one service) to sleep now: scaled to zero, woken by the \
first request to its URL |
| `/devstack wake [<service>]` | wake this preview (or one service) now |
| `/devstack dev <service>` | dev mode for a service: it runs its hot-reload command for files synced from a \
laptop (`devstack dev devspace`), for 8 h; `/devstack dev off <service>` returns to this PR's \
build |
| `/devstack approve [<sha>]` | deploy this fork pull request at the commit you reviewed (the head when you \
commented, or `<sha>`: 7+ hex digits); a new push needs a new approval |
| `/devstack help` | this help |"""


@dataclass(frozen=True, kw_only=True)
class Parsed:
    name: str  # ttl | extend | add | remove | redeploy | deploy | approve | sleep | wake | dev | dev-off
    arg: str = ""


@dataclass(frozen=True, kw_only=True)
class Reply:
    text: str


def parse_comment(body: str, *, services: Sequence[str]) -> Parsed | Reply | None:
    """The command in ``body`` (its first line starting with ``/devstack``), a reply, or None."""
    line = next((ln.strip() for ln in body.splitlines() if ln.strip().startswith(PREFIX)), None)
    if line is None:
        return None
    words = line.split()
    if words[0] != PREFIX:  # "/devstackish" is not ours
        return None
    if len(words) == 1:
        return Reply(text=HELP)
    name, args = words[1].lower(), words[2:]
    if name == "help":
        return Reply(text=HELP)
    if name in ("extend", "redeploy", "deploy"):
        return Parsed(name=name) if not args else _usage(f"`{name}` takes no argument")
    if name == "approve":
        if not args:
            return Parsed(name="approve")
        sha = args[0].lower()
        if len(args) > 1 or not SHA_PREFIX.fullmatch(sha):
            return _usage("`approve` takes nothing, or the commit you reviewed (at least 7 hex digits), "
                          "like `/devstack approve 1a2b3c4`")
        return Parsed(name="approve", arg=sha)
    if name == "ttl":
        if len(args) != 1:
            return _usage("`ttl` takes one duration, like `/devstack ttl 3d`")
        try:
            parse_duration(args[0])
        except InvalidDuration as exc:
            return _usage(str(exc))
        return Parsed(name="ttl", arg=args[0].lower())
    if name in ("sleep", "wake"):
        if len(args) > 1:
            return _usage(f"`{name}` takes nothing (the whole preview) or one service, like `/devstack {name} ledger`")
        if args:
            return _service(name, args[0], services)
        return Parsed(name=name)
    if name == "dev":
        off = bool(args) and args[0].lower() == "off"
        rest = args[1:] if off else args
        if len(rest) != 1:
            return _usage("`dev` takes one service, like `/devstack dev ledger` (or `/devstack dev off ledger`)")
        parsed = _service("dev-off" if off else "dev", rest[0], services)
        return parsed
    if name in ("add", "remove"):
        if len(args) != 1:
            return _usage(f"`{name}` takes one service name, like `/devstack {name} ledger`")
        return _service(name, args[0], services)
    return _usage(f"unknown command `{name[:40].replace('`', '')}`")


def _service(name: str, service: str, services: Sequence[str]) -> Parsed | Reply:
    if naming.service_name_problem(service) or service not in services:
        catalog = ", ".join(f"`{s}`" for s in sorted(services))
        return Reply(text=f"Unknown service `{service[:40].replace('`', '')}`. The catalog has: {catalog}.")
    return Parsed(name=name, arg=service)


def _usage(problem: str) -> Reply:
    return Reply(text=f"{problem}.\n\n{HELP}")


class CommandClient(Protocol):
    """The provider calls comment commands need (GitHub and GitLab clients offer them)."""

    def permission(self, *, repo: str, user: str) -> str:
        """``admin`` / ``maintain`` / ``write`` / ``triage`` / ``read`` / ``none``."""

    def set_labels(self, *, repo: str, number: int, add: Sequence[str], remove: Sequence[str]) -> None:
        ...

    def pull_request(self, *, repo: str, number: int) -> PullRequestEvent:
        """The PR's current state (delivery_id and action are left for the caller to set)."""


class CommandRunner:
    """Drains the ``comments`` queue: parse, check permission, act; never blocks the git path."""

    def __init__(
        self, *, settings: Settings, journal: Journal, clients: dict[str, CommandClient],
        clock: Callable[[], float] = time.monotonic, permission_ttl: float = 60.0,
    ) -> None:
        self._settings = settings
        self._journal = journal
        self._clients = clients
        self._clock = clock
        self._permission_ttl = permission_ttl
        self._permissions: dict[tuple[str, str, str], tuple[float, bool]] = {}

    def run_once(self, *, limit: int = 20) -> int:
        """Handle the due comments, in the order they were written per PR; returns how many were handled.

        A command that must be retried holds back the later commands of the same PR (in this batch,
        and in the next ones: :meth:`Journal.take_in_order_per_pr`), never those of other PRs. So
        ``add ledger`` failing, then ``remove ledger``, ends with ledger removed once ``add`` is retried.
        """
        batch = self._journal.take_in_order_per_pr(limit=limit, queue="comments")
        held: set[str] = set()
        skipped: list[int] = []
        for delivery in batch:
            if delivery.pr in held:
                skipped.append(delivery.seq)
                continue
            with bind(delivery=delivery.delivery_id, pr=delivery.pr):
                if not self._handle(delivery):
                    held.add(delivery.pr)
        if skipped:
            self._journal.release(skipped)  # taken again once the command before them is done
        return len(batch) - len(skipped)

    def _handle(self, delivery: Delivery) -> bool:
        """Apply one comment; False when it is to be retried (what follows it on its PR must wait)."""
        try:
            comment = event_from_json(delivery.payload)
            if not isinstance(comment, CommentEvent):
                raise TypeError(f"a {type(comment).__name__} in the comments queue")
        except (ValueError, KeyError, TypeError) as exc:
            self._journal.dead_letter(delivery.seq, error=f"unreadable comment: {exc}")
            return True
        try:
            outcome = self._run(comment)
        except TemporaryError as exc:
            dead = self._journal.retry([delivery.seq], error=str(exc), max_attempts=self._settings.worker.max_attempts,
                                       backoff_max=self._settings.worker.backoff_max, delay=exc.delay)
            logger.warning("comment command will be retried: %s", exc)
            return bool(dead)
        except PermanentError as exc:
            self._journal.dead_letter(delivery.seq, error=str(exc))
            logger.error("comment command failed for good: %s", exc)
            return True
        self._journal.complete({delivery.seq: outcome})
        logger.info("comment: %s", outcome)
        return True

    def _run(self, comment: CommentEvent) -> str:
        if comment.action != "created":
            return "ignored: edited or deleted comments are not commands"
        if comment.author_is_bot or "<!-- devstack:" in comment.body:
            return "ignored: a bot's comment"
        parsed = parse_comment(comment.body, services=sorted(self._settings.services))
        if parsed is None:
            return "ignored: not a command"
        client = self._clients.get(comment.provider.value)
        if client is None:
            self._reply(comment, "devstack cannot check permissions without a provider token; command ignored.")
            return "ignored: no provider token"
        if not self._may_write(client, comment):
            self._reply(comment, f"@{comment.author} only people with write access to `{comment.repo}` can run "
                                 "devstack commands; nothing was changed.")
            return f"refused: {comment.author} has no write permission"
        if isinstance(parsed, Reply):
            self._reply(comment, parsed.text)
            return "replied"
        return self._act(client, comment, parsed)

    def _act(self, client: CommandClient, comment: CommentEvent, parsed: Parsed) -> str:
        prefix = self._settings.labels.prefix
        if parsed.name in ("extend", "redeploy"):
            self._command(comment, op=parsed.name)
            return f"{parsed.name} queued"
        if parsed.name in ("sleep", "wake"):
            self._command(comment, op=parsed.name, services=((parsed.arg, ""),) if parsed.arg else ())
            return f"{parsed.name} {parsed.arg or 'preview'} queued"
        if parsed.name in ("dev", "dev-off"):
            mode = "off" if parsed.name == "dev-off" else "on"
            self._command(comment, op="dev", services=((parsed.arg, ""),), args=(("mode", mode),))
            return f"dev {mode} {parsed.arg} queued"
        if parsed.name == "ttl":
            current = client.pull_request(repo=comment.repo, number=comment.number)  # labels as they are now
            wanted = label(self._settings, f"ttl:{parsed.arg}")
            stale = [lbl for lbl in current.labels if lbl.startswith(f"{prefix}ttl:") and lbl != wanted]
            client.set_labels(repo=comment.repo, number=comment.number, add=[wanted], remove=stale)
            self._command(comment, op="ttl", args=(("ttl", parsed.arg),))
            return f"ttl {parsed.arg}"
        if parsed.name in ("add", "remove"):
            wanted = label(self._settings, f"with:{parsed.arg}")
            client.set_labels(repo=comment.repo, number=comment.number,
                              add=[wanted] if parsed.name == "add" else [],
                              remove=[wanted] if parsed.name == "remove" else [])
            self._refresh(client, comment)
            return f"{parsed.name} {parsed.arg}"
        if parsed.name == "approve":
            return self._approve(client, comment, parsed)
        if parsed.name == "deploy":
            state = client.pull_request(repo=comment.repo, number=comment.number)
            self._journal.bypass_gate(pr=comment.key, sha=state.head_sha, actor=comment.author)
            self._refresh(client, comment, state=state)
            return f"deploy {state.head_sha[:12]} without its gate"
        return f"ignored: {parsed.name}"

    def _approve(self, client: CommandClient, comment: CommentEvent, parsed: Parsed) -> str:
        """Approve the commit the approver saw, never the head as it is when the command runs."""
        seen = parsed.arg or comment.head_sha
        if not seen:
            self._reply(comment, "devstack did not know this pull request's head commit when you commented, so it "
                                 "cannot tell what you reviewed; nothing was approved. Name the commit: "
                                 "`/devstack approve <sha>`.")
            return "refused: head unknown when the comment arrived"
        state = client.pull_request(repo=comment.repo, number=comment.number)  # only to compare
        if not state.head_sha.startswith(seen):
            self._reply(comment, f"The head of this pull request moved since the approval was written: you "
                                 f"approved `{seen[:12]}`, it is now at `{state.head_sha[:12]}`. Nothing was "
                                 f"approved; review the new commits, then `/devstack approve {state.head_sha[:12]}`.")
            return f"refused: approved {seen[:12]}, head is now {state.head_sha[:12]}"
        self._journal.approve(pr=comment.key, sha=state.head_sha, approver=comment.author)
        self._refresh(client, comment, state=state)
        return f"approved {state.head_sha[:12]}"

    def _may_write(self, client: CommandClient, comment: CommentEvent) -> bool:
        key = (comment.provider.value, comment.repo, comment.author)
        cached = self._permissions.get(key)
        now = self._clock()
        if cached is not None and now - cached[0] < self._permission_ttl:
            return cached[1]
        allowed = client.permission(repo=comment.repo, user=comment.author) in WRITE_PERMISSIONS
        self._permissions[key] = (now, allowed)
        return allowed

    def _command(self, comment: CommentEvent, *, op: str, args: tuple[tuple[str, str], ...] = (),
                 services: tuple[tuple[str, str], ...] = ()) -> None:
        command = Command(delivery_id=f"{comment.delivery_id}/{op}", op=op, pr=comment.key, args=args,
                          services=services, actor=f"{comment.provider.value}:{comment.author}",
                          received_at=comment.received_at)
        self._journal.record(delivery_id=command.delivery_id, provider=comment.provider.value, event=f"command:{op}",
                             pr=comment.key, payload=command.to_json())

    def _refresh(self, client: CommandClient, comment: CommentEvent, *, state: PullRequestEvent | None = None) -> None:
        """Journal the PR's current state (labels included) so the change applies now."""
        current = state or client.pull_request(repo=comment.repo, number=comment.number)
        event = PullRequestEvent(**{
            **{f: getattr(current, f) for f in current.__dataclass_fields__},
            "delivery_id": f"{comment.delivery_id}/refresh", "action": "edited", "received_at": comment.received_at,
        })
        self._journal.record(delivery_id=event.delivery_id, provider=event.provider.value, event="pull_request",
                             pr=event.key, payload=event.to_json())

    def _reply(self, comment: CommentEvent, text: str) -> None:
        self._journal.enqueue_feedback(
            pr=f"reply:{comment.delivery_id}", provider=comment.provider.value,
            payload={"kind": "reply", "repo": comment.repo, "number": comment.number,
                     "body": f"> {comment.body.splitlines()[0][:200] if comment.body else ''}\n\n{text}"},
        )

    def run_forever(self, stop: threading.Event, *, interval: float = 0.5) -> None:
        drain_forever(stop, step=self.run_once, name="command runner",
                      idle=lambda: self._journal.wait("comments", interval))


# --- previews without a PR: devstack up / down / set / restart / sleep / wake ---------------------

CLI_OPS = ("up", "down", "set", "restart", "sleep", "wake", "dev")
_TAG = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")
_ENV_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,127}")


def cli_command(
    *, op: str, feature: str, catalog: Settings, services: Sequence[str] = (), env: Mapping[str, str] | None = None,
    ttl: str | None = None, actor: str = "cli", now: datetime | None = None, mode: str = "",
) -> Command:
    """A :class:`Command` from what a person typed (CLI or API); :class:`ValueError` says what is wrong.

    ``services``: ``name`` or ``name@tag``. A valid feature name is the stack of that name, also one
    that looks hashed (a person names a stack, e.g. one ``devstack previews`` lists); other text goes
    through :mod:`devstack.naming` like a branch name does.
    """
    if op not in CLI_OPS:
        raise ValueError(f"unknown operation {op[:20]!r}: use one of {', '.join(CLI_OPS)}")
    pinned: list[tuple[str, str]] = []
    for item in services:
        name, _, tag = item.partition("@")
        if name not in catalog.services:
            raise ValueError(f"unknown service {name[:40]!r}; the catalog has: {', '.join(sorted(catalog.services))}")
        if tag and not _TAG.fullmatch(tag):
            raise ValueError(f"{tag[:40]!r} is not an image tag")
        pinned.append((name, tag))
    if op in ("up", "set", "restart") and not pinned:
        raise ValueError(f"{op} needs at least one service")
    if op == "dev":
        if mode not in ("on", "off") or len(pinned) != 1:
            raise ValueError("dev takes on or off and one service")
        if mode == "on" and catalog.services[pinned[0][0]].dev is None:
            raise ValueError(f"{pinned[0][0]} has no dev block in the catalog (services.{pinned[0][0]}.dev: "
                             "see docs/develop.md)")
    if op in ("set", "restart", "sleep", "wake", "dev") and any(tag for _, tag in pinned):
        raise ValueError(f"{op} takes service names without a tag")
    args: list[tuple[str, str]] = []
    for key, value in (env or {}).items():
        if not _ENV_KEY.fullmatch(key):
            raise ValueError(f"{key[:40]!r} is not an environment variable name")
        args.append((f"env.{key}", value))
    if op == "set" and not args:
        raise ValueError("set needs at least one KEY=VALUE")
    if ttl is not None:
        parse_duration(ttl)  # raises InvalidDuration (a ValueError) with a clear message
        args.append(("ttl", ttl))
    if op == "dev":
        args.append(("mode", mode))
    stack = feature if naming.is_feature_name(feature) else naming.feature_name(feature)
    return Command(
        delivery_id=f"cli:{op}:{uuid.uuid4()}", op=op, feature=stack, services=tuple(pinned),
        args=tuple(args), actor=actor, received_at=now or datetime.now(UTC),
    )

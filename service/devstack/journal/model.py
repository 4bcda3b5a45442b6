"""What the journal hands out (:class:`Delivery`, :class:`OutboxItem`), the claim owner, backoff,
and the converters from rows."""

from __future__ import annotations

import json
import os
import random
import socket
import uuid
from dataclasses import dataclass
from typing import Any


def backoff_delay(attempt: int, *, base: float = 1.0, cap: float = 300.0, rng: random.Random | None = None) -> float:
    """Exponential backoff with jitter: ``base * 2**(attempt-1)`` capped at ``cap``, times 0.5..1."""
    ceiling = min(cap, base * float(2 ** max(0, min(attempt - 1, 30))))
    return ceiling * (0.5 + 0.5 * (rng or random).random())


@dataclass(frozen=True, kw_only=True)
class Delivery:
    seq: int
    delivery_id: str
    provider: str
    event: str
    pr: str
    payload: str
    status: str
    outcome: str
    attempts: int
    last_error: str
    received_at: float


@dataclass(frozen=True, kw_only=True)
class OutboxItem:
    pr: str
    provider: str
    payload: dict[str, Any]
    version: int
    status: str
    attempts: int
    last_error: str
    updated_at: float
    sent_body: str
    comment_id: int | None
    deployed_sha: str
    deployment_id: int | None = None
    phase: str = "comment"  # "comment", or "deployment" once the comment is out


DEFAULT_LEASE = 300.0


def new_owner() -> str:
    """This process's name as a claimer: ``host:pid:random`` (random: two journals in one process)."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def claimer_gone(owner: str) -> bool:
    """True when ``owner`` was a process on this host that no longer exists (its claims are stale)."""
    host, _, rest = owner.partition(":")
    pid_text = rest.partition(":")[0]
    if host != socket.gethostname() or not pid_text.isdigit():
        return False
    try:
        os.kill(int(pid_text), 0)
    except ProcessLookupError:
        return True
    except OSError:  # exists, but not ours to signal
        return False
    return False


def _kind(payload: str) -> str:
    """The ``kind`` of a journaled event ("" when unreadable)."""
    try:
        data = json.loads(payload)
    except ValueError:
        return ""
    return str(data.get("kind", "")) if isinstance(data, dict) else ""


def _delivery(row: Any) -> Delivery:
    return Delivery(
        seq=row["seq"], delivery_id=row["delivery_id"], provider=row["provider"], event=row["event"], pr=row["pr"],
        payload=row["payload"], status=row["status"], outcome=row["outcome"], attempts=row["attempts"],
        last_error=row["last_error"], received_at=row["received_at"],
    )


def _outbox(row: Any) -> OutboxItem:
    return OutboxItem(
        pr=row["pr"], provider=row["provider"], payload=json.loads(row["payload"]), version=row["version"],
        status=row["status"], attempts=row["attempts"], last_error=row["last_error"], updated_at=row["updated_at"],
        sent_body=row["sent_body"], comment_id=row["comment_id"], deployed_sha=row["deployed_sha"],
        deployment_id=row["deployment_id"], phase=row["phase"],
    )

"""The journal: a durable queue in SQLite (deliveries, dedupe, attempts, dead letters, feedback outbox).

Git holds the desired state (the entries); the journal holds what is in flight. A delivery is
acknowledged (202) only after :meth:`Journal.record` has committed it, and it stays ``pending``
until the worker has pushed its effect, so a restart (or ``kill -9``) resumes where it stopped.

* ``deliveries``: every accepted delivery, deduplicated by its delivery id. ``pending`` deliveries
  are taken strictly in arrival order (``seq``) in batches; a failed batch is retried with exponential
  backoff and jitter, holding back the deliveries behind it; after ``max_attempts`` the delivery
  becomes a dead letter (``dead``), listed by
  :meth:`dead_letters` and re-driven by :meth:`redrive`. Ignored deliveries are kept too (``ignored``)
  so the dashboard can show what arrived and why nothing happened.
* ``outbox``: the latest feedback per PR (coalesced: ten pushes in a burst make one comment edit).
  Each enqueue replaces the payload and bumps ``version``; a send only completes the version it sent.
* ``sticky``: per PR, the id of the sticky comment and the last deployed sha, to spend few API calls.
* ``checks``, ``gate_heads``, ``images``, ``gate_bypass``: what gates wait on (:mod:`.gates`).
* ``activity``: per feature and per preview service, when it was last active (PR events, commands,
  wake requests, Traefik's request counts): what the reaper's sleep pass decides on.

One connection guarded by a lock; WAL mode with ``synchronous=FULL`` so an acknowledged delivery
survives a crash of the process and of the machine.

Several processes may open one journal (the server, and CLI commands in direct mode on its
``state_dir``): :meth:`Journal.take_batch` *claims* the rows it returns (owner ``host:pid:random``
and a lease, in one ``IMMEDIATE`` transaction), so one process applies each row. History is
bounded: :meth:`Journal.prune` forgets finished rows older than the retention window, and every
listing the dashboard and the API read takes a limit.
"""

from devstack.journal.deliveries import _Deliveries
from devstack.journal.gates import GateHead, _Gates
from devstack.journal.marks import _Marks
from devstack.journal.model import DEFAULT_LEASE, Delivery, OutboxItem, backoff_delay, claimer_gone, new_owner
from devstack.journal.outbox import _Outbox
from devstack.journal.schema import SCHEMA


class Journal(_Deliveries, _Marks, _Outbox, _Gates):
    """The journal (see the module's documentation): deliveries, marks, the outbox and gates on one connection."""


__all__ = ["DEFAULT_LEASE", "SCHEMA", "Delivery", "GateHead", "Journal", "OutboxItem", "backoff_delay", "claimer_gone",
           "new_owner"]

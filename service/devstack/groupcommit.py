"""Group commit for the webhook route: under load, many deliveries share one transaction (one fsync).

A delivery is acknowledged only after the transaction holding it committed (nothing changes in what a
202 means). The route hands its row to one writer thread and awaits it; the writer takes everything
queued meanwhile (up to ``max_batch``) into one :meth:`Journal.record_group`. Alone, a delivery is
committed at once; under load the commits stay few while their rows grow, instead of every request
paying its own commit and a thread-pool hop.
"""

from __future__ import annotations

import asyncio
import queue
import threading
from collections.abc import Callable, Mapping, Sequence

from devstack.journal import Journal

_Item = tuple[Mapping[str, str], "asyncio.Future[bool]", asyncio.AbstractEventLoop]


class GroupCommitter:
    """``on_commit(queues)``: called in the writer thread after each commit with the queues that got new
    rows (``devstack intake`` rings the doorbell there: once per group, not once per delivery)."""

    def __init__(self, journal: Journal, *, max_batch: int = 256,
                 on_commit: Callable[[set[str]], None] | None = None) -> None:
        self._journal = journal
        self._max = max_batch
        self._on_commit = on_commit
        self._queue: queue.SimpleQueue[_Item | None] = queue.SimpleQueue()  # None: stop
        self._thread = threading.Thread(target=self._run, name="devstack-group-commit", daemon=True)
        self._thread.start()

    async def record(self, row: Mapping[str, str]) -> bool:
        """Journal ``row`` (see :meth:`Journal.record_group`); True when it was new. Raises what the
        journal raised (then nothing of this row was committed)."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[bool] = loop.create_future()
        self._queue.put((row, future, loop))
        return await future

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join(10)

    def _run(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            group: list[_Item] = [first]
            while len(group) < self._max:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    self._queue.put(None)  # stop after this group
                    break
                group.append(item)
            try:
                results: Sequence[bool | BaseException] = self._journal.record_group([row for row, _, _ in group])
            except Exception as exc:  # noqa: BLE001 - handed to every waiting request
                results = [exc] * len(group)
            else:
                new = {row.get("queue", "git") for (row, _, _), fresh in zip(group, results, strict=True) if fresh}
                if new and self._on_commit is not None:
                    self._on_commit(new)
            # one wake-up of each event loop per group, not one per request
            by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future[bool], bool | BaseException]]] = {}
            for (_, future, loop), result in zip(group, results, strict=True):
                by_loop.setdefault(loop, []).append((future, result))
            for loop, outcomes in by_loop.items():
                loop.call_soon_threadsafe(_settle, outcomes)


def _settle(outcomes: list[tuple[asyncio.Future[bool], bool | BaseException]]) -> None:
    for future, result in outcomes:
        if future.done():
            continue
        if isinstance(result, BaseException):
            future.set_exception(result)
        else:
            future.set_result(result)

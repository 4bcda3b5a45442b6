"""A small HTTP/1.1 load generator on asyncio streams, much cheaper per request than a full client.

On a 2-core machine the client must not take the server's CPU: a general-purpose async client
(httpx) spends several milliseconds of CPU per 25 KB request, about as much as the server it
measures. Here each request is prepared once as raw bytes (request line, headers, body); sending it is
one write, reading the answer one status line, the headers and ``Content-Length`` bytes.

``connections`` keep-alive connections each carry one request at a time (no pipelining). Requests are
taken from a queue in order; with :func:`open_loop` the queue is filled on a schedule, whether or not
earlier answers came back, and latency is counted from the scheduled time (no coordinated omission).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit


@dataclass(kw_only=True)
class Request:
    raw: bytes
    key: str = ""  # e.g. the delivery id
    scheduled: float = 0.0  # monotonic time it was due
    sent: float = 0.0  # monotonic time a connection started writing it
    done: float = 0.0  # monotonic time the whole answer was read
    status: int = 0
    body: bytes = b""
    error: str = ""

    @property
    def latency(self) -> float:
        return self.done - self.scheduled


def prepare(url: str, *, body: bytes, headers: dict[str, str], key: str = "") -> Request:
    parts = urlsplit(url)
    lines = [f"POST {parts.path or '/'} HTTP/1.1", f"Host: {parts.netloc}", f"Content-Length: {len(body)}"]
    lines += [f"{name}: {value}" for name, value in headers.items() if name.lower() != "content-length"]
    return Request(raw=("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body, key=key)


async def _connection(host: str, port: int, queue: asyncio.Queue[Request | None]) -> None:
    reader, writer = await asyncio.open_connection(host, port)
    try:
        while True:
            request = await queue.get()
            try:
                if request is None:
                    return
                request.sent = time.monotonic()
                try:
                    await _exchange(reader, writer, request)
                except (OSError, ValueError, IndexError, asyncio.IncompleteReadError) as exc:
                    request.error = f"{type(exc).__name__}: {exc}"[:200]
                    writer.close()
                    reader, writer = await asyncio.open_connection(host, port)
                request.done = time.monotonic()
            finally:
                queue.task_done()
    finally:
        writer.close()


async def _exchange(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: Request) -> None:
    writer.write(request.raw)
    await writer.drain()
    status_line = await reader.readline()
    request.status = int(status_line.split(b" ", 2)[1])
    length = 0
    while True:
        line = await reader.readline()
        if line in (b"\r\n", b"\n", b""):
            break
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value.strip())
    request.body = await reader.readexactly(length) if length else b""


async def _run(
    url: str, rounds: Sequence[Sequence[Request]], *, connections: int, rate: float | None
) -> None:
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    queue: asyncio.Queue[Request | None] = asyncio.Queue()
    workers = [asyncio.create_task(_connection(host, port, queue)) for _ in range(connections)]
    try:
        await asyncio.sleep(0.05)  # let the connections open before the clock starts
        start = time.monotonic()
        for requests in rounds:
            for index, request in enumerate(requests):
                if rate is not None:
                    due = start + index / rate
                    delay = due - time.monotonic()
                    if delay > 0:
                        await asyncio.sleep(delay)
                    request.scheduled = due
                else:
                    request.scheduled = time.monotonic()
                queue.put_nowait(request)
            await queue.join()  # a round is answered in full before the next one starts
            for task in workers:
                if task.done() and task.exception() is not None:
                    raise RuntimeError(f"load generator connection failed: {task.exception()}")
        for _ in workers:
            queue.put_nowait(None)
        await asyncio.gather(*workers)
    finally:
        for task in workers:
            task.cancel()


def open_loop(url: str, requests: Sequence[Request], *, rate: float, connections: int, timeout: float) -> None:
    """Send ``requests`` at ``rate`` per second over ``connections`` connections; fills in each request."""
    asyncio.run(asyncio.wait_for(_run(url, [requests], connections=connections, rate=rate), timeout))


def as_fast_as_possible(
    url: str, rounds: Sequence[Sequence[Request]], *, connections: int, timeout: float
) -> None:
    """Send each round's requests over ``connections`` connections, each as soon as a connection is free;
    a round starts when the previous one is answered in full (so the events of one PR stay in order when
    each round holds at most one event per PR)."""
    asyncio.run(asyncio.wait_for(_run(url, rounds, connections=connections, rate=None), timeout))

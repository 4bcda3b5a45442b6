"""A doorbell between processes on one host: ``devstack intake`` rings it after journaling a delivery,
``devstack serve`` (its worker) wakes at once instead of at its next poll.

A UNIX datagram socket in ``state_dir`` (``doorbell.sock``): a ring is one datagram naming the queue
(``git``, ``comments``, ``checks``), sent without blocking and dropped when nobody listens (the worker's
poll, ``worker.poll_interval``, still finds the delivery). Nothing is carried but the wake-up: the
journal stays the only channel for data.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
from collections.abc import Callable
from pathlib import Path

logger = logging.getLogger(__name__)

NAME = "doorbell.sock"
_QUEUES = frozenset({"git", "comments", "checks", "feedback"})


def path_in(state_dir: Path) -> Path:
    return state_dir / NAME


_sender: list[socket.socket] = []  # one unbound datagram socket per process, made at the first ring
_sender_lock = threading.Lock()


def ring(path: Path, queue: str) -> None:
    """Wake whoever listens at ``path`` for ``queue``; never blocks, never fails."""
    with contextlib.suppress(OSError):
        if not _sender:
            with _sender_lock:
                if not _sender:
                    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
                    sock.setblocking(False)
                    _sender.append(sock)
        _sender[0].sendto(queue.encode(), str(path))


class Listener:
    """Receives rings at ``path`` and calls ``on_ring(queue)`` for each, in a thread of its own."""

    def __init__(self, path: Path, on_ring: Callable[[str], None]) -> None:
        self._path = path
        self._on_ring = on_ring
        self._sock: socket.socket | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> bool:
        """Bind and listen; False (logged) when the socket cannot be made (a path too long, a read-only dir)."""
        try:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self._path)
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            self._sock.bind(str(self._path))
        except OSError as exc:
            logger.warning("no doorbell at %s (%s): intake processes' deliveries wait for the worker's poll",
                           self._path, exc)
            self._sock = None
            return False
        self._thread = threading.Thread(target=self._run, name="devstack-doorbell", daemon=True)
        self._thread.start()
        return True

    def _run(self) -> None:
        sock = self._sock
        while sock is not None:
            try:
                data = sock.recv(64)
            except OSError:
                return  # closed
            queue = data.decode(errors="replace")
            if queue in _QUEUES:
                self._on_ring(queue)

    def close(self) -> None:
        if self._sock is not None:
            sock, self._sock = self._sock, None
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()
            with contextlib.suppress(OSError):
                os.unlink(self._path)

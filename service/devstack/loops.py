"""The background loops of devstack serve: drain a queue until stopped, or run a pass periodically.

A failing step is logged with its traceback and never ends the loop; a loop ends promptly when its
stop event is set.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
from collections.abc import Callable

from devstack.errors import TemporaryError

logger = logging.getLogger(__name__)


def lower_priority(by: int) -> int | None:
    """Lower the CPU priority of the calling thread by ``by`` nice steps (at most to 19); its new nice
    value, or None where that is not possible (not Linux, a sandbox refusing it: logged, never fatal).

    On Linux the nice value belongs to the thread, and the processes it starts (git) inherit it: the
    background loops yield the CPU to acknowledging webhooks and answering the API whenever both want
    it, and take all of it when nobody else does. Raising the value needs no privilege."""
    if by <= 0:
        return None
    try:
        tid = threading.get_native_id()
        value = min(19, os.getpriority(os.PRIO_PROCESS, tid) + by)
        os.setpriority(os.PRIO_PROCESS, tid, value)
    except (OSError, AttributeError) as exc:
        logger.debug("could not lower the priority of %s: %s", threading.current_thread().name, exc)
        return None
    return value


SWITCH_INTERVAL = 0.001  # seconds a thread may hold the GIL while another waits (CPython's default: 0.005)


def short_gil_turns() -> None:
    """Let threads take turns at the GIL every millisecond instead of every 5 (``sys.setswitchinterval``),
    for the servers (``devstack serve``, ``devstack intake``): a thread that holds the journal's write
    lock and needs the GIL back between two statements waited up to 5 ms per statement behind a busy
    thread (the worker planning), so its transaction held the lock, shared with every other process on
    the journal, for tens of milliseconds and acknowledging waited behind it (docs/performance.md)."""
    sys.setswitchinterval(SWITCH_INTERVAL)


def in_background(run: Callable[[], object], *, nice: int) -> Callable[[], None]:
    """``run`` in a thread whose priority is lowered by ``nice`` first (:func:`lower_priority`)."""

    def target() -> None:
        lower_priority(nice)
        run()

    return target


def drain_forever(
    stop: threading.Event, *, step: Callable[[], int], name: str, idle: Callable[[], object] | None = None,
    interval: float = 0.5,
) -> None:
    """Call ``step`` (which returns how much it handled) until ``stop``.

    When idle, call ``idle`` (e.g. a wait that returns as soon as new work is signalled), else wait
    ``interval``.
    """
    while not stop.is_set():
        try:
            handled = step()
        except TemporaryError as exc:  # the journal's database restarting, an API down: expected, retried
            logger.warning("%s: %s; retrying", name, exc)
            handled = 0
        except Exception:
            logger.exception("%s crashed; continuing", name)
            handled = 0
        if not handled and not stop.is_set():
            if idle is not None:
                idle()
            else:
                stop.wait(interval)


def run_periodically(
    stop: threading.Event, *, every: float, task: Callable[[], object], name: str, first_delay: float = 5.0
) -> None:
    """Run ``task`` every ``every`` seconds until ``stop``; a failing pass is logged, never fatal."""
    if stop.wait(first_delay):
        return
    while True:
        try:
            result = task()
            logger.info("%s", result.format() if hasattr(result, "format") else result)
        except TemporaryError as exc:
            logger.warning("%s pass failed (%s); next pass in %.0fs", name, exc, every)
        except Exception:
            logger.exception("%s pass failed; next pass in %.0fs", name, every)
        if stop.wait(every):
            return

"""Sleeping previews: working-hours schedules, the sleep decision, and what sleeping does to an element.

Pure (no I/O, no clock): everything comes in as arguments, so the reaper's pass (``devstack.reaper.
Sleeper``), the planner and the benchmark share one set of rules.

* A **schedule** is working hours like kube-downscaler's uptime: ``Mon-Fri 07:00-20:00 Europe/Berlin``
  (days, a time range in that zone's wall-clock time, an IANA zone). :func:`parse_schedule` refuses
  anything else with a message fit for a config error; :func:`is_within` says whether a moment is
  inside (zoneinfo does the daylight-saving arithmetic: ``07:00`` is 07:00 local, winter and summer).
* :func:`decide` says, for one preview service, ``sleep`` (idle for ``sleep.after``, or outside its
  schedule and idle for ``sleep.outside_schedule_after``), ``wake`` (asleep because of the schedule,
  and the schedule's hours began again) or ``keep``.
* An element sleeps when it carries ``sleep: {since, reason}`` and ``values.sleep: true`` (plus
  ``values.wake``, devstack's own Service for the chart's wake route): the chart then scales the
  service and its Redis to zero and routes its hosts to the wake endpoint. The Application stays, so a
  database is never dropped by sleep.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import cache
from typing import TYPE_CHECKING, Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

if TYPE_CHECKING:
    from devstack.catalog import Settings

DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
REASONS = ("idle", "schedule", "command")
MAX_SCHEDULE = 200
_SCHEDULE = re.compile(r"^(?P<days>[A-Za-z,-]+)\s+(?P<start>\d{2}:\d{2})-(?P<end>\d{2}:\d{2})\s+(?P<zone>\S+)$")
_ZONE = re.compile(r"^(UTC|[A-Z][A-Za-z0-9_+-]{0,30}(/[A-Za-z0-9_+-]{1,30}){0,2})$")

Action = Literal["sleep", "wake", "keep"]


class InvalidSchedule(ValueError):
    """A schedule that cannot be read; the message says what is wrong and what is expected."""


@dataclass(frozen=True, kw_only=True)
class Schedule:
    """Working hours: on ``days`` (0 = Monday), from ``start`` to ``end`` (minutes after local
    midnight; ``end`` may be 1440 for ``24:00``), in ``zone``."""

    text: str
    days: frozenset[int]
    start: int
    end: int
    zone: ZoneInfo


_EXPECTED = "expected like 'Mon-Fri 07:00-20:00 Europe/Berlin' (days, a time range, an IANA time zone)"


@cache
def parse_schedule(text: str) -> Schedule:
    """Read ``Mon-Fri 07:00-20:00 Europe/Berlin``; raise :class:`InvalidSchedule` saying what is wrong.

    Days: a day (``Mon``), a range (``Mon-Fri``, ``Sat-Sun``) or a comma list of both (``Mon,Wed-Fri``).
    The time range is local wall-clock time, the end after the start (``24:00`` allowed). The zone is
    an IANA name (``UTC``, ``Europe/Berlin``) checked against the system's zone database: no path,
    nothing else is ever opened."""
    if not isinstance(text, str):
        raise InvalidSchedule(f"a schedule is text, {_EXPECTED}")
    shown = text[:60].encode("unicode_escape").decode("ascii")
    if len(text) > MAX_SCHEDULE:
        raise InvalidSchedule(f"{shown!r}...: longer than {MAX_SCHEDULE} characters; {_EXPECTED}")
    match = _SCHEDULE.match(text.strip())
    if match is None:
        raise InvalidSchedule(f"{shown!r} is not a schedule: {_EXPECTED}")
    days = _days(match["days"], shown)
    start, end = _minutes(match["start"], shown), _minutes(match["end"], shown)
    if end <= start:
        raise InvalidSchedule(f"{shown!r}: the end {match['end']} is not after the start {match['start']} "
                              "(a range past midnight is two schedules' worth: split the days instead)")
    zone_name = match["zone"]
    if not _ZONE.match(zone_name) or ".." in zone_name:
        raise InvalidSchedule(f"{shown!r}: {zone_name[:40]!r} is not an IANA time zone name like Europe/Berlin")
    try:
        zone = ZoneInfo(zone_name)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        raise InvalidSchedule(f"{shown!r}: unknown time zone {zone_name[:40]!r} (an IANA name like Europe/Berlin "
                              "or UTC)") from None
    return Schedule(text=text.strip(), days=frozenset(days), start=start, end=end, zone=zone)


def _days(text: str, shown: str) -> set[int]:
    result: set[int] = set()
    for part in text.lower().split(","):
        first, _, last = part.partition("-")
        if first not in DAYS or (last and last not in DAYS):
            raise InvalidSchedule(f"{shown!r}: {part[:20]!r} is not a day or a range of days (Mon, Tue, Wed, Thu, "
                                  "Fri, Sat, Sun; like Mon-Fri)")
        a, b = DAYS.index(first), DAYS.index(last or first)
        if b < a:
            raise InvalidSchedule(f"{shown!r}: the day range {part!r} runs backwards (write it like Mon-Fri)")
        result.update(range(a, b + 1))
    return result


def _minutes(text: str, shown: str) -> int:
    hours, minutes = int(text[:2]), int(text[3:])
    if minutes > 59 or hours > 24 or (hours == 24 and minutes):
        raise InvalidSchedule(f"{shown!r}: {text!r} is not a time of day (00:00 to 24:00)")
    return hours * 60 + minutes


def is_within(schedule: Schedule | None, now: datetime) -> bool:
    """True when ``now`` (an aware datetime) is inside the working hours; no schedule: always."""
    if schedule is None:
        return True
    local = now.astimezone(schedule.zone)
    minute = local.hour * 60 + local.minute
    return local.weekday() in schedule.days and schedule.start <= minute < schedule.end


# --- which schedule and team applies ---------------------------------------------------------------


def team_of(settings: Settings, *, service: str, repo: str) -> str:
    """The team of a service: ``services.<name>.team``, else the ``teams:`` mapping (repository glob ->
    team; the last pattern that matches wins, like CODEOWNERS), else ""."""
    spec = settings.services.get(service)
    if spec is not None and spec.team:
        return spec.team
    team = ""
    for pattern, name in settings.teams.items():
        if fnmatch.fnmatchcase(repo, pattern):
            team = name
    return team


def schedule_of(settings: Settings, *, service: str, repo: str) -> Schedule | None:
    """The working hours of a service: ``sleep.schedules`` by its team, else by its repository (a key
    with a ``/``, globs allowed; the last match wins), else ``sleep.schedule``; None: always working hours."""
    schedules = settings.sleep.schedules
    team = team_of(settings, service=service, repo=repo)
    text = schedules.get(team) if team else None
    if text is None:
        for pattern, value in schedules.items():
            if "/" in pattern and fnmatch.fnmatchcase(repo, pattern):
                text = value
    text = text if text is not None else settings.sleep.schedule
    return parse_schedule(text) if text else None


# --- the decision ----------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class Verdict:
    action: Action
    reason: str = ""  # sleep: idle | schedule; wake: schedule


KEEP = Verdict(action="keep")


def decide(
    *, asleep: Mapping[str, Any] | None, last_activity: datetime, schedule: Schedule | None, now: datetime,
    after: timedelta, outside_schedule_after: timedelta,
) -> Verdict:
    """What to do with one preview service now.

    ``asleep``: its ``sleep`` field (``{since, reason}``) or None when awake; ``last_activity``: the
    latest PR event, command or request seen for it (or when devstack first saw it).

    * awake, outside its working hours and idle for ``outside_schedule_after``: sleep (``schedule``);
    * awake and idle for ``after``: sleep (``idle``);
    * asleep because of the schedule, and inside working hours again: wake (``schedule``): the preview
      is there when people start working, and goes back to sleep when nobody uses it;
    * otherwise keep: a service put to sleep for being idle, or by a command, wakes on the first request.
    """
    idle = now - last_activity
    inside = is_within(schedule, now)
    if asleep is None:
        if not inside and idle >= outside_schedule_after:
            return Verdict(action="sleep", reason="schedule")
        if idle >= after:
            return Verdict(action="sleep", reason="idle")
        return KEEP
    if asleep.get("reason") == "schedule" and inside and schedule is not None:
        return Verdict(action="wake", reason="schedule")
    return KEEP


# --- what sleeping does to an element (used by the planner) -----------------------------------------


def is_asleep(element: Mapping[str, Any]) -> bool:
    return bool(element.get("sleep"))


def put_to_sleep(element: dict[str, Any], *, since: str, reason: str, wake: Mapping[str, Any]) -> None:
    """Mark ``element`` asleep (in place): the chart scales it to zero and routes to ``wake``."""
    element["sleep"] = {"since": since, "reason": reason if reason in REASONS else "command"}
    element["values"] = {**element["values"], "sleep": True, "wake": dict(wake)}


def wake_up(element: dict[str, Any]) -> bool:
    """Mark ``element`` awake (in place); False when it was awake already."""
    if not is_asleep(element):
        return False
    element.pop("sleep", None)
    element["values"] = {k: v for k, v in element["values"].items() if k not in ("sleep", "wake")}
    return True


def carry_sleep(old: Mapping[str, Any], new: dict[str, Any]) -> None:
    """A rebuilt element (resync, a base-tag fallback) keeps the sleep state of the one it replaces."""
    if is_asleep(old):
        new["sleep"] = dict(old["sleep"])
        new["values"] = {**new["values"], "sleep": True, "wake": dict(old["values"].get("wake", {}))}


def activity_key(feature: str, service: str | None = None) -> str:
    """The journal's activity key: a feature (PR events and commands touch the whole stack), or one of
    its services (wake requests, Traefik's request counts)."""
    return f"{feature}/{service}" if service else feature

"""Sleeping previews (issue 17): schedules, the decision, the planner's sleep / wake, the reaper's sleep
pass with an injectable clock, and an event that arrives while a sleep is in flight (real git remote)."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml

from devstack import entries
from devstack import sleep as sleeping
from devstack.catalog import Settings, load_settings
from devstack.commands import Parsed, Reply, cli_command, parse_comment
from devstack.errors import ConfigError
from devstack.events import Command, PullRequestState
from devstack.journal import Journal
from devstack.planner import Plan, plan
from devstack.reaper import Sleeper, traefik_service
from devstack.runtime import open_store
from devstack.worker import Worker
from tests.conftest import remote_files
from tests.test_planner import SHA1, SHA2, T0, event

BERLIN = "Mon-Fri 07:00-20:00 Europe/Berlin"


# --- schedules -----------------------------------------------------------------------------------


def at(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


@pytest.mark.parametrize(("moment", "inside"), [
    ("2026-01-12T06:30:00", True),   # Monday 07:30 CET (UTC+1)
    ("2026-01-12T05:59:00", False),  # Monday 06:59 CET
    ("2026-07-13T05:30:00", True),   # Monday 07:30 CEST (UTC+2): the same wall-clock hours in summer
    ("2026-07-13T17:59:00", True),   # Monday 19:59 CEST
    ("2026-07-13T18:00:00", False),  # Monday 20:00 CEST: the end is exclusive
    ("2026-01-12T18:59:00", True),   # Monday 19:59 CET
    ("2026-01-17T10:00:00", False),  # Saturday
    ("2026-01-16T22:30:00", False),  # Friday 23:30 CET
])
def test_working_hours_are_local_wall_clock_time_winter_and_summer(moment: str, inside: bool) -> None:
    assert sleeping.is_within(sleeping.parse_schedule(BERLIN), at(moment)) is inside


def test_the_daylight_saving_edges_follow_the_zone() -> None:
    # 29 March 2026: Berlin skips 02:00-03:00; a 01:00-03:00 window lasts one real hour.
    spring = sleeping.parse_schedule("Sun 01:00-03:00 Europe/Berlin")
    assert sleeping.is_within(spring, at("2026-03-29T00:30:00"))      # 01:30 CET
    assert not sleeping.is_within(spring, at("2026-03-29T01:00:00"))  # 03:00 CEST (02:xx never happens)
    assert not sleeping.is_within(spring, at("2026-03-28T23:59:00"))  # 00:59 CET
    # 25 October 2026: 02:00-03:00 happens twice; a 02:00-03:00 window lasts two real hours.
    autumn = sleeping.parse_schedule("Sun 02:00-03:00 Europe/Berlin")
    assert sleeping.is_within(autumn, at("2026-10-25T00:30:00"))      # 02:30 CEST
    assert sleeping.is_within(autumn, at("2026-10-25T01:30:00"))      # 02:30 CET, the second time
    assert not sleeping.is_within(autumn, at("2026-10-25T02:00:00"))  # 03:00 CET


def test_day_lists_and_the_whole_day() -> None:
    schedule = sleeping.parse_schedule("mon,wed-thu 00:00-24:00 UTC")
    assert schedule.days == {0, 2, 3} and (schedule.start, schedule.end) == (0, 1440)
    assert sleeping.is_within(schedule, at("2026-01-14T23:59:59"))
    assert not sleeping.is_within(schedule, at("2026-01-13T12:00:00"))
    assert sleeping.is_within(None, at("2026-01-17T03:00:00"))  # no schedule: always working hours


@pytest.mark.parametrize(("text", "says"), [
    ("Mon-Fri 07:00-20:00 ../../../etc/passwd", "is not an IANA time zone name"),
    ("Mon-Fri 07:00-20:00 /etc/localtime", "is not an IANA time zone name"),
    ("Mon-Fri 07:00-20:00 Europe/../../etc", "is not an IANA time zone name"),
    ("Mon-Fri 07:00-20:00 Mars/Olympus_Mons", "unknown time zone"),
    ("Mon-Fri 07:00-20:00 Europe/Berlin\n- injected: yaml", "is not a schedule"),
    ("Mon-Fri 07:00-20:00 Europe/Berlin\x00", "is not an IANA time zone name"),
    ("Fri-Mon 07:00-20:00 UTC", "runs backwards"),
    ("Mon-Fri 20:00-07:00 UTC", "is not after the start"),
    ("Mon-Fri 07:00-25:00 UTC", "is not a time of day"),
    ("Mon-Fri 07:61-20:00 UTC", "is not a time of day"),
    ("Moonday 07:00-20:00 UTC", "is not a day"),
    ("every weekday", "is not a schedule"),
    ("Mon " * 80 + "07:00-20:00 UTC", "longer than 200 characters"),
])
def test_a_hostile_or_broken_schedule_is_a_clear_config_error(tmp_path: Path, text: str, says: str) -> None:
    config = tmp_path / "devstack.yaml"
    config.write_text(yaml.safe_dump({"sleep": {"schedule": text}}))
    with pytest.raises(ConfigError) as raised:
        load_settings(config)
    message = str(raised.value)
    assert "sleep.schedule:" in message and says in message, message
    assert "\x00" not in message and "\n- injected" not in message  # shown escaped, on one line
    assert "Traceback" not in message


def test_team_and_repository_schedules_are_checked_by_key(tmp_path: Path) -> None:
    config = tmp_path / "devstack.yaml"
    config.write_text(yaml.safe_dump({"sleep": {"schedules": {"payments": "Mon-Fri 09:00-17:00 Nowhere/City",
                                                               "bad team!": BERLIN}},
                                      "teams": {"acme/*": "has spaces"}}))
    with pytest.raises(ConfigError) as raised:
        load_settings(config)
    message = str(raised.value)
    assert "sleep.schedules:" in message and "'payments'" in message and "unknown time zone" in message
    assert "'bad team!' is not a team name" in message
    assert "teams:" in message and "'has spaces' is not a team name" in message


def test_schedule_by_team_then_repository_then_default(make_settings: Callable[..., Settings]) -> None:
    settings = make_settings(
        services={**make_settings().model_dump()["services"], "ledger": {
            "repo": "acme/ledger", "image": "ghcr.io/acme/ledger", "port": 9000, "team": "finance"}},
        teams={"acme/*": "platform", "acme/pay*": "payments"},
        sleep={"schedule": "Mon-Sun 00:00-24:00 UTC",
               "schedules": {"payments": BERLIN, "finance": "Mon-Fri 09:00-17:00 America/New_York",
                             "bradrydzewski/*": "Sat-Sun 10:00-12:00 UTC"}},
    )
    assert sleeping.team_of(settings, service="payments-api", repo="acme/payments") == "payments"  # last match
    assert sleeping.team_of(settings, service="ledger", repo="acme/ledger") == "finance"  # the catalog's own
    assert sleeping.team_of(settings, service="meet", repo="wings-software/meet-git-sync-test") == ""
    schedule = sleeping.schedule_of(settings, service="payments-api", repo="acme/payments")
    assert schedule is not None and schedule.text == BERLIN
    finance = sleeping.schedule_of(settings, service="ledger", repo="acme/ledger")
    assert finance is not None and str(finance.zone) == "America/New_York"
    drone = sleeping.schedule_of(settings, service="drone-test", repo="bradrydzewski/drone-test-go")
    assert drone is not None and drone.text == "Sat-Sun 10:00-12:00 UTC"
    default = sleeping.schedule_of(settings, service="meet", repo="wings-software/meet-git-sync-test")
    assert default is not None and default.text == "Mon-Sun 00:00-24:00 UTC"


# --- decide --------------------------------------------------------------------------------------

MONDAY_NOON = at("2026-01-12T11:00:00")  # 12:00 in Berlin
MONDAY_NIGHT = at("2026-01-12T21:00:00")  # 22:00 in Berlin


@pytest.mark.parametrize(("asleep", "idle", "now", "expected"), [
    (None, timedelta(hours=1), MONDAY_NOON, ("keep", "")),
    (None, timedelta(hours=2), MONDAY_NOON, ("sleep", "idle")),
    (None, timedelta(minutes=29), MONDAY_NIGHT, ("keep", "")),
    (None, timedelta(minutes=30), MONDAY_NIGHT, ("sleep", "schedule")),
    ({"since": "2026-01-12T19:30:00Z", "reason": "schedule"}, timedelta(hours=9), MONDAY_NIGHT, ("keep", "")),
    ({"since": "2026-01-12T19:30:00Z", "reason": "schedule"}, timedelta(hours=12), MONDAY_NOON, ("wake", "schedule")),
    ({"since": "2026-01-12T09:00:00Z", "reason": "idle"}, timedelta(hours=4), MONDAY_NOON, ("keep", "")),
    ({"since": "2026-01-12T09:00:00Z", "reason": "command"}, timedelta(hours=4), MONDAY_NOON, ("keep", "")),
])
def test_decide(asleep: dict[str, str] | None, idle: timedelta, now: datetime, expected: tuple[str, str]) -> None:
    verdict = sleeping.decide(asleep=asleep, last_activity=now - idle, schedule=sleeping.parse_schedule(BERLIN),
                              now=now, after=timedelta(hours=2), outside_schedule_after=timedelta(minutes=30))
    assert (verdict.action, verdict.reason) == expected


def test_without_a_schedule_only_idleness_counts_and_nothing_wakes_by_itself() -> None:
    def verdict(asleep: dict[str, str] | None, idle: timedelta) -> str:
        return sleeping.decide(asleep=asleep, last_activity=MONDAY_NIGHT - idle, schedule=None, now=MONDAY_NIGHT,
                               after=timedelta(hours=2), outside_schedule_after=timedelta(minutes=30)).action

    assert verdict(None, timedelta(hours=1)) == "keep"
    assert verdict(None, timedelta(hours=2)) == "sleep"
    assert verdict({"since": "2026-01-12T19:00:00Z", "reason": "schedule"}, timedelta(days=1)) == "keep"


# --- the planner's sleep and wake ----------------------------------------------------------------


@pytest.fixture
def settings(make_settings: Callable[..., Settings]) -> Settings:
    return make_settings()


def applied(settings: Settings, *events: Any, state: Mapping[str, Sequence[dict[str, Any]]] | None = None,
            activity: Mapping[str, float] | None = None) -> Plan:
    result = plan(events=list(events), entries=state or {}, catalog=settings, now=T0, activity=activity)
    for feature, elements in result.changed.items():
        if elements is not None:
            entries.validate(feature, elements)  # every planned file satisfies the contract
    return result


def command(op: str, *services: str, feature: str = "login-fix", minutes: int = 10, **args: str) -> Command:
    return Command(delivery_id=f"{op}-{minutes}-{'-'.join(services)}", op=op, feature=feature,
                   services=tuple((s, "") for s in services), args=tuple(args.items()), actor="test",
                   received_at=T0 + timedelta(minutes=minutes))


@pytest.fixture
def stack(settings: Settings) -> dict[str, list[dict[str, Any]]]:
    """login-fix: payments-api built by PR 42, and ledger (its dependency) at its base tag."""
    return applied(settings, event(labels=("devstack/with:payments-api",))).entries


def test_sleep_scales_the_stack_down_through_its_entry_and_keeps_every_application(
    settings: Settings, stack: dict[str, list[dict[str, Any]]],
) -> None:
    result = applied(settings, command("sleep"), state=stack)
    elements = {e["service"]: e for e in result.changed["login-fix"] or []}
    assert set(elements) == {"ledger", "payments-api"}
    for name, element in elements.items():
        assert element["sleep"] == {"since": "2026-11-20T10:10:00Z", "reason": "command"}
        assert element["values"]["sleep"] is True
        assert element["values"]["wake"] == {"service": "devstack", "namespace": "devstack", "port": 80}
        before = next(e for e in stack["login-fix"] if e["service"] == name)
        # the Application (and so its database, whose PostDelete hook drops it) stays as it was
        assert (element["app"], element["namespace"], element["values"]["image"], element["values"]["hooks"]) == (
            before["app"], before["namespace"], before["values"]["image"], before["values"]["hooks"])
    assert [f.services[0].asleep_since for f in result.feedback] == ["2026-11-20T10:10:00Z"]
    assert result.decisions[0].outcome == "applied"


def test_sleep_and_wake_one_service_then_refusals_say_why(
    settings: Settings, stack: dict[str, list[dict[str, Any]]],
) -> None:
    slept = applied(settings, command("sleep", "ledger"), state=stack).entries
    asleep = {e["service"]: bool(e.get("sleep")) for e in slept["login-fix"]}
    assert asleep == {"ledger": True, "payments-api": False}
    again = applied(settings, command("sleep", "ledger", minutes=20), state=slept)
    assert (again.decisions[0].outcome, again.decisions[0].reason, again.changed) == ("ignored", "already asleep", {})
    missing = applied(settings, command("wake", "meet", minutes=20), state=slept)
    assert missing.decisions[0].reason == "not in this preview: meet" and not missing.changed
    woken = applied(settings, command("wake", minutes=30), state=slept)
    assert all("sleep" not in e and "sleep" not in e["values"] and "wake" not in e["values"]
               for e in woken.entries["login-fix"])
    assert woken.entries["login-fix"] == stack["login-fix"]  # awake again is exactly the entry it was
    assert woken.active == {"login-fix": T0 + timedelta(minutes=30)}  # waking restarts its idle time
    awake = applied(settings, command("wake", minutes=40), state=woken.entries)
    assert awake.decisions[0].reason == "not asleep"


def test_a_push_wakes_the_whole_stack_and_resync_keeps_it_asleep(
    settings: Settings, stack: dict[str, list[dict[str, Any]]],
) -> None:
    slept = applied(settings, command("sleep"), state=stack).entries
    healed = applied(settings, event(action="resync", head_sha=SHA2, delivery_id="r1",
                                     labels=("devstack/with:payments-api",)), state=slept)
    elements = {e["service"]: e for e in healed.entries["login-fix"]}
    assert elements["payments-api"]["values"]["image"]["tag"] == SHA2  # healed to the new head ...
    assert all(e["sleep"]["reason"] == "command" for e in elements.values())  # ... and still asleep
    assert healed.active == {}  # healing is no activity
    pushed = applied(settings, event(action="synchronize", head_sha=SHA2, delivery_id="p1",
                                     received_at=T0 + timedelta(hours=1), labels=("devstack/with:payments-api",)),
                     state=slept)
    assert not any(sleeping.is_asleep(e) for e in pushed.entries["login-fix"])  # ledger too: the whole stack
    assert pushed.active == {"login-fix": T0 + timedelta(hours=1)}


def test_commands_of_people_wake_the_stack_and_the_reaper_s_expiry_does_not(
    settings: Settings, stack: dict[str, list[dict[str, Any]]],
) -> None:
    slept = applied(settings, command("sleep"), state=stack).entries
    for op, args in (("set", {"env.LOG_LEVEL": "debug"}), ("restart", {}), ("extend", {})):
        result = applied(settings, command(op, "ledger", minutes=20, **args), state=slept)
        assert not any(sleeping.is_asleep(e) for e in result.entries["login-fix"]), op
    up = applied(settings, Command(delivery_id="u", op="up", feature="login-fix", services=(("ledger", ""),),
                                   received_at=T0), state=slept)
    assert not any(sleeping.is_asleep(e) for e in up.entries["login-fix"])
    closed = applied(settings, event(action="closed", state=PullRequestState.CLOSED, delivery_id="c1",
                                     received_at=T0 + timedelta(hours=1)), state=slept)
    assert closed.changed == {"login-fix": None} and closed.active == {}


def test_a_reaper_sleep_is_refused_for_a_service_active_since_it_looked(
    settings: Settings, stack: dict[str, list[dict[str, Any]]],
) -> None:
    seen = T0.timestamp()
    sleep = command("sleep", "ledger", "payments-api", minutes=200, reason="idle",
                    **{"seen.ledger": repr(seen), "seen.payments-api": repr(seen)})
    # 1. a wake request for payments-api was recorded after the reaper looked: only ledger sleeps
    result = applied(settings, sleep, state=stack, activity={"login-fix/payments-api": seen + 60})
    asleep = {e["service"]: e.get("sleep") for e in result.entries["login-fix"]}
    assert asleep == {"ledger": {"since": "2026-11-20T13:20:00Z", "reason": "idle"}, "payments-api": None}
    # 2. a push to the stack since (the worker touched the feature): nothing sleeps
    busy = applied(settings, sleep, state=stack, activity={"login-fix": seen + 1})
    assert (busy.decisions[0].outcome, busy.decisions[0].reason) == ("ignored", "active since the reaper looked")
    assert busy.changed == {}
    # 3. a push earlier in the same batch: the batch's own activity counts too
    push = event(action="synchronize", delivery_id="p2", received_at=T0 + timedelta(minutes=100),
                 labels=("devstack/with:payments-api",))
    both = applied(settings, push, sleep, state=stack)
    assert [d.outcome for d in both.decisions] == ["applied", "ignored"]
    assert not any(sleeping.is_asleep(e) for e in both.entries["login-fix"])
    # 4. a push right after the sleep (later in the journal): it wakes what was put to sleep
    after = applied(settings, sleep, replace(push, delivery_id="p3", received_at=T0 + timedelta(minutes=201)),
                    state=stack)
    assert [d.outcome for d in after.decisions] == ["applied", "applied"]
    assert not any(sleeping.is_asleep(e) for e in after.entries["login-fix"])


def test_an_entry_whose_sleep_fields_disagree_is_refused(
    settings: Settings, stack: dict[str, list[dict[str, Any]]],
) -> None:
    slept = applied(settings, command("sleep"), state=stack).entries["login-fix"]
    broken = [dict(e) for e in slept]
    broken[0] = {**broken[0], "values": {k: v for k, v in broken[0]["values"].items() if k != "wake"}}
    with pytest.raises(Exception, match=r"sleep, values\.sleep and values\.wake disagree"):
        entries.validate("login-fix", broken)
    hostile = [dict(e) for e in slept]
    hostile[0] = {**hostile[0], "sleep": {"since": "2026-11-20T10:10:00Z", "reason": "idle\nx: y"}}
    with pytest.raises(Exception, match="sleep/reason"):
        entries.validate("login-fix", hostile)


def test_cli_and_comment_commands_name_sleep_and_wake(settings: Settings) -> None:
    sleep = cli_command(op="sleep", feature="login-fix", catalog=settings, services=["ledger"])
    assert (sleep.op, sleep.feature, sleep.services) == ("sleep", "login-fix", (("ledger", ""),))
    unsafe = cli_command(op="wake", feature="Login Fix!", catalog=settings).feature  # the stack `down` names too
    assert unsafe == cli_command(op="down", feature="Login Fix!", catalog=settings).feature != "Login Fix!"
    with pytest.raises(ValueError, match="without a tag"):
        cli_command(op="sleep", feature="x", catalog=settings, services=["ledger@v1"])
    with pytest.raises(ValueError, match="unknown service"):
        cli_command(op="wake", feature="x", catalog=settings, services=["../etc"])
    services = sorted(settings.services)
    assert parse_comment("/devstack sleep", services=services) == Parsed(name="sleep")
    assert parse_comment("/devstack wake ledger", services=services) == Parsed(name="wake", arg="ledger")
    unknown = parse_comment("/devstack wake ../etc", services=services)
    assert isinstance(unknown, Reply) and "Unknown service" in unknown.text
    too_many = parse_comment("/devstack sleep ledger meet", services=services)
    assert isinstance(too_many, Reply) and "takes nothing (the whole preview) or one service" in too_many.text


# --- the reaper's sleep pass, with an injectable clock ---------------------------------------------


class Clock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
def journal(tmp_path: Path) -> Iterator[Journal]:
    opened = Journal(tmp_path / "journal.sqlite3")
    yield opened
    opened.close()


def pending_commands(journal: Journal) -> list[Command]:
    rows = [d for d in journal.recent(limit=100) if d.status == "pending" and d.event.startswith("command:")]
    return [Command.from_dict(json.loads(d.payload)) for d in reversed(rows)]


def test_the_sleep_pass_counts_idle_time_from_first_sight_and_decides_per_service(
    make_settings: Callable[..., Settings], journal: Journal,
) -> None:
    settings = make_settings(ttl={"default": "14d"})
    state = applied(settings, event(labels=("devstack/with:payments-api",))).entries
    clock = Clock(T0)
    sleeper = Sleeper(settings=settings, journal=journal, entries=lambda: state, clock=clock)
    first = sleeper.run_once()
    assert (first.checked, first.sleeping) == (2, [])  # never seen before: idle from now on
    assert set(journal.activity()) == {"login-fix/ledger", "login-fix/payments-api"}
    clock.now = T0 + timedelta(hours=1)
    journal.touch("login-fix/ledger", (T0 + timedelta(hours=1)).timestamp())  # a wake request
    clock.now = T0 + timedelta(hours=2)
    dry = sleeper.run_once(dry_run=True)
    assert dry.sleeping == [("login-fix", "payments-api", "idle")] and pending_commands(journal) == []
    assert "would be scaled to zero" in dry.format()
    summary = sleeper.run_once()
    assert summary.sleeping == [("login-fix", "payments-api", "idle")]
    [sleep] = pending_commands(journal)
    assert (sleep.op, sleep.feature, sleep.services, sleep.actor) == ("sleep", "login-fix", (("payments-api", ""),),
                                                                      "reaper")
    assert dict(sleep.args) == {"reason": "idle", "seen.payments-api": repr(T0.timestamp())}
    sleeper.run_once()
    assert len(pending_commands(journal)) == 1  # the same decision again is the same delivery: recorded once


def test_the_sleep_pass_follows_working_hours_and_skips_what_expired(
    make_settings: Callable[..., Settings], journal: Journal,
) -> None:
    settings = make_settings(sleep={"schedule": BERLIN}, ttl={"default": "3d"})
    monday_evening = at("2026-01-12T18:40:00")  # 19:40 in Berlin
    state = applied(settings, replace(event(), received_at=monday_evening)).entries
    clock = Clock(monday_evening)
    sleeper = Sleeper(settings=settings, journal=journal, entries=lambda: state, clock=clock)
    journal.touch("login-fix", monday_evening.timestamp())
    clock.now = at("2026-01-12T19:20:00")  # 20:20: outside, idle 40 minutes
    assert sleeper.run_once().sleeping == [("login-fix", "payments-api", "schedule")]
    asleep = plan(events=pending_commands(journal), entries=state, catalog=settings, now=clock.now).entries
    assert asleep["login-fix"][0]["sleep"]["reason"] == "schedule"
    clock.now = at("2026-01-13T06:00:00")  # Tuesday 07:00 in Berlin
    woken = Sleeper(settings=settings, journal=journal, entries=lambda: asleep, clock=clock).run_once()
    assert woken.waking == [("login-fix", "payments-api")]
    wake = pending_commands(journal)[-1]
    assert (wake.op, dict(wake.args)) == ("wake", {"reason": "schedule"})
    assert wake.delivery_id == "wake:login-fix:schedule:2026-01-12T19:20:00Z"  # one wake per sleep
    clock.now = at("2026-01-16T12:00:00")  # expired on Thursday: the reaper removes it, sleep leaves it
    assert Sleeper(settings=settings, journal=journal, entries=lambda: state, clock=clock).run_once().checked == 0


def test_sleep_disabled_decides_nothing(make_settings: Callable[..., Settings], journal: Journal) -> None:
    settings = make_settings(sleep={"enabled": False})
    state = applied(settings, event()).entries
    summary = Sleeper(settings=settings, journal=journal, entries=lambda: state,
                      clock=Clock(T0 + timedelta(days=2))).run_once()
    assert summary.format() == "sleep: off (sleep.enabled is false)" and pending_commands(journal) == []


def test_traefik_request_counts_are_activity(make_settings: Callable[..., Settings], journal: Journal) -> None:
    settings = make_settings()
    state = applied(settings, event()).entries
    [element] = state["login-fix"]
    name = traefik_service(element)
    assert name == "preview-login-fix-payments-api-8080@kubernetescrd"
    counts = {name: 10.0, "other-ns-x-80@kubernetescrd": 5.0}
    clock = Clock(T0)
    sleeper = Sleeper(settings=settings, journal=journal, entries=lambda: state, clock=clock,
                      requests=lambda: dict(counts))
    sleeper.run_once()  # first reading: a baseline, no activity
    clock.now = T0 + timedelta(hours=3)
    counts[name] = 11.0  # one request in between
    assert sleeper.run_once().sleeping == []
    assert journal.activity()["login-fix/payments-api"] == clock.now.timestamp()
    clock.now = T0 + timedelta(hours=5, minutes=1)  # no request for two hours since
    assert sleeper.run_once().sleeping == [("login-fix", "payments-api", "idle")]


# --- an event while a sleep is in flight (the worker, a real git remote) ----------------------------


class HeldJournal:
    """The sleep pass's journal, holding back what it records until :meth:`release` (a slow reaper)."""

    def __init__(self, journal: Journal) -> None:
        self._journal = journal
        self.held: list[Sequence[Mapping[str, str]]] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self._journal, name)

    def record_many(self, items: Sequence[Mapping[str, str]], *, queue: str = "git") -> int:
        self.held.append(items)
        return len(items)

    def release(self) -> None:
        for items in self.held:
            self._journal.record_many(items)


@pytest.fixture
def worker_parts(make_settings: Callable[..., Settings]) -> Iterator[tuple[Settings, Journal, Worker]]:
    settings = make_settings(ttl={"default": "14d"})
    journal = Journal(settings.journal_path)
    store = open_store(settings)
    worker = Worker(settings=settings, journal=journal, store=store)
    worker.start()
    yield settings, journal, worker
    store.close()
    journal.close()


def deliver(journal: Journal, *items: Any) -> None:
    for item in items:
        provider = "devstack" if isinstance(item, Command) else "github"
        kind = f"command:{item.op}" if isinstance(item, Command) else "pull_request"
        assert journal.record(delivery_id=item.delivery_id, provider=provider, event=kind, pr=item.key,
                              payload=item.to_json())


def test_a_push_while_the_reapers_sleep_is_in_flight_keeps_the_preview_awake(
    worker_parts: tuple[Settings, Journal, Worker], bare_remote: str,
) -> None:
    settings, journal, worker = worker_parts
    deliver(journal, event())
    worker.drain()
    assert journal.activity() == {"login-fix": T0.timestamp()}  # the worker recorded the PR's activity
    held = HeldJournal(journal)
    clock = Clock(T0 + timedelta(hours=3))
    summary = Sleeper(settings=settings, journal=held, entries=worker.snapshot, clock=clock).run_once()  # type: ignore[arg-type]
    assert summary.sleeping == [("login-fix", "payments-api", "idle")] and held.held
    deliver(journal, event(action="synchronize", head_sha=SHA2, delivery_id="push",
                           received_at=T0 + timedelta(hours=3, seconds=1)))
    worker.drain()  # the push lands first ...
    held.release()  # ... then the sleep the reaper decided before it
    worker.drain()
    [row] = [d for d in journal.recent(limit=10) if d.event == "command:sleep"]
    assert (row.status, row.outcome) == ("done", "ignored: active since the reaper looked")
    [element] = remote_files(bare_remote)["login-fix"]
    assert "sleep" not in element and element["values"]["image"]["tag"] == SHA2


def test_a_sleep_then_a_push_in_the_journal_ends_awake_and_the_comment_says_so(
    worker_parts: tuple[Settings, Journal, Worker], bare_remote: str,
) -> None:
    settings, journal, worker = worker_parts
    deliver(journal, event())
    worker.drain()
    Sleeper(settings=settings, journal=journal, entries=worker.snapshot,
            clock=Clock(T0 + timedelta(hours=3))).run_once()
    worker.drain()
    [asleep] = remote_files(bare_remote)["login-fix"]
    assert asleep["sleep"] == {"since": "2026-11-20T13:00:00Z", "reason": "idle"}
    assert asleep["values"]["sleep"] is True
    comment = journal.feedback("github:acme/payments#42")[0].payload
    assert comment["services"][0]["asleep_since"] == "2026-11-20T13:00:00Z"
    deliver(journal, event(action="synchronize", head_sha=SHA2, delivery_id="push2",
                           received_at=T0 + timedelta(hours=3, minutes=5)))
    worker.drain()
    [awake] = remote_files(bare_remote)["login-fix"]
    assert "sleep" not in awake and "wake" not in awake["values"]
    assert journal.feedback("github:acme/payments#42")[0].payload["services"][0]["asleep_since"] == ""
    assert journal.activity()["login-fix"] == (T0 + timedelta(hours=3, minutes=5)).timestamp()
    assert SHA1 != SHA2

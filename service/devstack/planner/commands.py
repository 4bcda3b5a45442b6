"""Commands: the CLI, comment commands, the reaper (expire, sleep) and the wake endpoint."""

from __future__ import annotations

from collections.abc import Mapping

from devstack import devmode
from devstack import sleep as sleeping
from devstack.catalog import Settings
from devstack.durations import InvalidDuration, parse_duration
from devstack.entries import Element
from devstack.events import Command
from devstack.planner.elements import _expires, _later, _set_expiry, _ttl, base_element, stack_expiry
from devstack.planner.model import (
    CLI_REQUESTER,
    NEVER,
    _Batch,
    _find,
    _requesters,
    _State,
    _touch,
    dependency_closure,
    format_time,
    source_key,
)

# --- commands (CLI, comment commands, reaper) ----------------------------------------------------


def _command(state: _State, command: Command, catalog: Settings, batch: _Batch) -> str | None:
    """Apply a command; return why it did nothing (None when it changed or confirmed the state)."""
    feature = command.feature or (state.stack_of(command.pr) if command.pr else None)
    if feature is None or (command.op != "up" and not state.get(feature)):
        return "no such preview"
    batch.touched.add(feature)
    elements = state.own(feature)
    try:
        reason = _run_command(state, elements, command, catalog, batch, feature=feature)
        if reason is None and command.op in _WAKES_THE_STACK:  # someone works on it: it wakes
            for element in elements:
                sleeping.wake_up(element)
            _touch(batch, feature, command.received_at)
        return reason
    finally:
        state.reindex(feature)


_WAKES_THE_STACK = ("up", "set", "restart", "redeploy", "extend", "ttl", "dev")


def _run_command(
    state: _State, elements: list[Element], command: Command, catalog: Settings, batch: _Batch, *, feature: str
) -> str | None:
    args = dict(command.args)
    if command.op == "up":
        refused, note = _up(elements, command, catalog, feature=feature)
        if note:
            batch.applied_with[command.delivery_id] = note  # applied, with the TTL capped: not a refusal
        return refused
    if command.op == "down":
        state.replace(feature, [])
        for key in _requesters(elements):
            batch.why_not[key] = "down"
        return None
    if command.op == "expire":
        if stack_expiry(elements) != args.get("expiresAt") or args.get("expiresAt") == NEVER:
            return "extended meanwhile"
        state.replace(feature, [])
        for key in _requesters(elements):
            batch.why_not[key] = "expired"
        return None
    if command.op in ("extend", "ttl"):
        ttl, note = _ttl(catalog, args.get("ttl"))
        mine = _expires(command.received_at, ttl)
        current = stack_expiry(elements)
        _set_expiry(elements, mine if command.op == "ttl" else _later(current, mine))
        if note:
            batch.applied_with[command.delivery_id] = note
            if command.pr:
                batch.notes.setdefault(command.pr, []).append(note)
        return None
    if command.op in ("set", "restart", "redeploy"):
        return _override(elements, command, args)
    if command.op == "sleep":
        return _sleep(elements, command, catalog, batch, feature=feature)
    if command.op == "wake":
        return _wake(elements, command, batch, feature=feature)
    if command.op == "dev":
        return _dev(elements, command, catalog)
    return f"unknown command {command.op!r}"


def _dev(elements: list[Element], command: Command, catalog: Settings) -> str | None:
    """``dev`` on / off one service (docs/develop.md); ``expire`` is the reaper's off, naming the expiry
    it saw (dev mode extended meanwhile stays on)."""
    args = dict(command.args)
    if len(command.services) != 1:
        return "dev takes one service"
    service = command.services[0][0]
    element = _find(elements, service)
    if element is None:
        return f"no preview of {service} in this stack (dev mode needs one: add it first)"
    mode = args.get("mode", "on")
    if mode == "off":
        return None if devmode.turn_off(element) else "not in dev mode"
    if mode == "expire":
        if not devmode.is_on(element) or element["dev"]["expiresAt"] != args.get("expiresAt"):
            return "extended meanwhile"
        devmode.turn_off(element)
        return None
    spec = catalog.services.get(service)
    if spec is None or spec.dev is None:
        return f"{service} has no dev block in the catalog (services.{service}.dev)"
    try:
        ttl = parse_duration(args["ttl"]) if args.get("ttl") else spec.dev.ttl
    except InvalidDuration as exc:
        return str(exc)
    ttl = ttl or spec.dev.ttl  # dev mode is never forever
    if catalog.ttl.max is not None and ttl > catalog.ttl.max:
        ttl = catalog.ttl.max
    devmode.turn_on(element, spec=spec, since=format_time(command.received_at),
                    expires=format_time(command.received_at + ttl))
    return None


def _targets(elements: list[Element], command: Command) -> tuple[list[Element], str | None]:
    """The elements a command names (all of the stack when it names none), or why it names wrongly."""
    named = [service for service, _ in command.services]
    missing = [s for s in named if _find(elements, s) is None]
    if missing:
        return [], f"not in this preview: {', '.join(missing)}"
    return [e for e in elements if not named or e["service"] in named], None


def _sleep(elements: list[Element], command: Command, catalog: Settings, batch: _Batch, *, feature: str) -> str | None:
    """Put services to sleep. A sleep the reaper decided names, per service, the activity it saw
    (``seen.<service>``): a service active since then (a push, a command, a request; also one earlier
    in this batch) stays awake."""
    targets, problem = _targets(elements, command)
    if problem:
        return problem
    args = dict(command.args)
    since, reason = format_time(command.received_at), args.get("reason", "command")
    wake = catalog.sleep.wake.model_dump()
    slept = active = 0
    for element in targets:
        if sleeping.is_asleep(element):
            continue
        seen = args.get(f"seen.{element['service']}")
        if seen is not None and _last_activity(batch, feature, element["service"]) > float(seen):
            active += 1
            continue
        sleeping.put_to_sleep(element, since=since, reason=reason, wake=wake)
        slept += 1
    if slept:
        return None
    return "active since the reaper looked" if active else "already asleep"


def _last_activity(batch: _Batch, feature: str, service: str) -> float:
    times = [batch.activity.get(sleeping.activity_key(feature), 0.0),
             batch.activity.get(sleeping.activity_key(feature, service), 0.0)]
    if feature in batch.active:
        times.append(batch.active[feature].timestamp())
    return max(times)


def _wake(elements: list[Element], command: Command, batch: _Batch, *, feature: str) -> str | None:
    targets, problem = _targets(elements, command)
    if problem:
        return problem
    woken = [e for e in targets if sleeping.wake_up(e)]
    if not woken:
        return "not asleep"
    _touch(batch, feature, command.received_at)  # its idle time starts again
    return None


def _up(elements: list[Element], command: Command, catalog: Settings, *, feature: str) -> tuple[str | None, str]:
    """Why ``up`` was refused (None when applied), and a note on what it adjusted (a capped TTL)."""
    pins = dict(command.services)
    unknown = sorted(name for name in pins if name not in catalog.services)
    if unknown:
        return f"unknown service {', '.join(unknown)}", ""
    prior = stack_expiry(elements)
    for service in dependency_closure(catalog, pins):
        existing = _find(elements, service)
        if existing is None:
            elements.append(base_element(catalog=catalog, feature=feature, service=service,
                                         requester=CLI_REQUESTER, tag=pins.get(service) or None))
            continue
        requested = sorted({*existing["requestedBy"], CLI_REQUESTER})
        if pins.get(service) and not source_key(existing):
            replacement = base_element(catalog=catalog, feature=feature, service=service,
                                       requester=CLI_REQUESTER, tag=pins[service], keep=existing)
            elements[elements.index(existing)] = replacement
            existing = replacement
        existing["requestedBy"] = requested
    ttl, note = _ttl(catalog, dict(command.args).get("ttl"))
    _set_expiry(elements, _later(prior, _expires(command.received_at, ttl)))
    return None, note


def _override(elements: list[Element], command: Command, args: Mapping[str, str]) -> str | None:
    services = [s for s, _ in command.services] or (
        [e["service"] for e in elements if command.pr and source_key(e) == command.pr] if command.op == "redeploy"
        else []
    )
    if not services:
        return "no service named"
    missing = [s for s in services if _find(elements, s) is None]
    if missing:
        return f"not in this preview: {', '.join(missing)}"
    for service in services:
        element = _find(elements, service)
        assert element is not None
        overrides = {**element.get("overrides", {})}
        if command.op == "set":
            overrides["env"] = {**overrides.get("env", {}), **{k[4:]: v for k, v in args.items() if k[:4] == "env."}}
        else:
            overrides["restartedAt"] = format_time(command.received_at)
        element["overrides"] = overrides
        element["values"] = {**element["values"], "env": {**element["values"]["env"], **overrides.get("env", {})}}
        if overrides.get("restartedAt"):
            element["values"]["restartedAt"] = overrides["restartedAt"]
    return None


# --- feedback ------------------------------------------------------------------------------------

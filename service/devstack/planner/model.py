"""What the planner works on and returns: its results (:class:`Plan`, :class:`Feedback`, ...), the
state of a batch, and the small helpers every part of the planner shares."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from devstack import devmode
from devstack import sleep as sleeping
from devstack.catalog import Settings
from devstack.entries import Element
from devstack.events import Command, PullRequestEvent, PullRequestRef

NEVER = "never"
CLI_REQUESTER = "cli:up"

PlannerEvent = PullRequestEvent | Command


def format_time(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True, kw_only=True)
class ServiceLink:
    """One service of a stack, as the PR comment and the API show it."""

    service: str
    url: str
    image: str
    source: str  # the PR key that builds this service, or "" for a base / pinned build
    asleep_since: str = ""  # when it was put to sleep ("" while awake)
    dev_until: str = ""  # dev mode ends then ("" when not in dev mode)


@dataclass(frozen=True, kw_only=True)
class GateNote:
    """A service of the PR whose head sha waits for its gate (or whose gate failed): what the comment says."""

    service: str
    state: str  # "waiting" | "failed"
    sha: str  # the head sha that waits
    serving: str = ""  # the sha still deployed meanwhile ("" when none is)
    waiting: tuple[str, ...] = ()
    failed: tuple[str, ...] = ()
    url: str = ""
    overdue: bool = False


@dataclass(frozen=True, kw_only=True)
class Feedback:
    """What one PR should be told after a batch: the latest state only (coalesced per PR)."""

    pr: PullRequestRef
    pr_url: str
    status: str  # "active" | "removed" | "waiting" (no preview yet: its gate is closed)
    feature: str
    sha: str
    services: tuple[ServiceLink, ...] = ()
    header: str = ""
    expires_at: str = NEVER
    reason: str = ""  # why a preview was removed or not created
    notes: tuple[str, ...] = ()  # things the PR author should know (unknown services, refused TTLs)
    warning: str = ""  # set by the reaper shortly before expiry
    gates: tuple[GateNote, ...] = ()  # services whose head sha is not deployed: its gate is closed


@dataclass(frozen=True, kw_only=True)
class Decision:
    """What the planner did with one event, for logs and the journal."""

    delivery_id: str
    pr: str
    outcome: str  # "applied" | "ignored"
    reason: str = ""


@dataclass(kw_only=True)
class Plan:
    entries: dict[str, list[Element]]  # the whole new state: feature -> elements
    changed: dict[str, list[Element] | None]  # only what differs from the input; None: delete
    feedback: list[Feedback] = field(default_factory=list)
    decisions: list[Decision] = field(default_factory=list)
    active: dict[str, datetime] = field(default_factory=dict)  # feature -> its latest activity in this batch


@dataclass(kw_only=True)
class _Batch:
    """What applying a batch learns besides the entries: per PR, its last event, notes, reasons."""

    latest: dict[str, PullRequestEvent] = field(default_factory=dict)
    why_not: dict[str, str] = field(default_factory=dict)
    notes: dict[str, list[str]] = field(default_factory=dict)
    touched: set[str] = field(default_factory=set)  # features a command changed
    applied_with: dict[str, str] = field(default_factory=dict)  # delivery id -> what an applied change adjusted
    active: dict[str, datetime] = field(default_factory=dict)  # feature -> latest PR event / command applied
    activity: Mapping[str, float] = field(default_factory=dict)  # the journal's activity table (sleep guard)
    # PR key -> (its feature, its services the gate holds back)
    gates: dict[str, tuple[str, list[GateNote]]] = field(default_factory=dict)


class KeyIndex:
    """PR key -> the features whose elements name it (as requester or builder), over a set of entries.

    The worker keeps one between batches (:func:`~devstack.planner.plan`'s ``index``): :meth:`update`
    reads again only the features whose elements are not the very objects it read last time (the entry
    cache hands back the same objects for unchanged files), so planning one event over 10,000 entries
    costs what changed, not what the repository holds. Element lists are never changed in place (the
    planner copies on write), which is what makes identity enough."""

    def __init__(self) -> None:
        self._read: dict[str, tuple[Sequence[Element], frozenset[str]]] = {}  # feature -> (elements, its keys)
        self._features: dict[str, set[str]] = {}  # PR key -> features naming it

    def update(self, entries: Mapping[str, Sequence[Element]]) -> KeyIndex:
        """Index ``entries`` (and nothing else); returns self."""
        for feature in [f for f in self._read if f not in entries]:
            self._forget(feature)
        for feature, elements in entries.items():
            known = self._read.get(feature)
            if known is not None and known[0] is elements:
                continue
            if known is not None:
                self._forget(feature)
            keys = keys_named(elements)
            self._read[feature] = (elements, keys)
            for key in keys:
                self._features.setdefault(key, set()).add(feature)
        return self

    def features(self, key: str) -> frozenset[str] | set[str]:
        return self._features.get(key, frozenset())

    def _forget(self, feature: str) -> None:
        for key in self._read.pop(feature)[1]:
            features = self._features[key]
            features.discard(feature)
            if not features:
                del self._features[key]


def keys_named(elements: Iterable[Element]) -> frozenset[str]:
    """The PR keys ``elements`` name: who requested each, and the PR that builds it."""
    keys: set[str] = set()
    for element in elements:
        keys.update(element["requestedBy"])
        built = source_key(element)
        if built:
            keys.add(built)
    return frozenset(keys)


class _State:
    """The entries while one batch is planned.

    Copy on write: a feature's elements are copied the first time the batch changes them, so the
    caller's entries (shared with the worker's cache and snapshot) are never mutated, and a batch
    costs what it touches, not what the repository holds. The PR key -> features index of the entries
    as they came (:class:`KeyIndex`, the worker's kept one or a new one) is read only; the features the
    batch changed are indexed beside it.
    """

    def __init__(self, entries: Mapping[str, Sequence[Element]], *, index: KeyIndex | None = None) -> None:
        self.before = entries
        self.current: dict[str, Sequence[Element]] = dict(entries)
        self.touched: set[str] = set()
        self._base = (index or KeyIndex()).update(entries)
        self._keys: dict[str, frozenset[str]] = {}  # feature reindexed in this batch -> the PR keys it names
        self._features: dict[str, set[str]] = {}  # PR key -> features reindexed in this batch naming it

    def get(self, feature: str) -> Sequence[Element]:
        return self.current.get(feature, ())

    def own(self, feature: str) -> list[Element]:
        """The elements of ``feature``, copied once per batch, to be changed in place (then reindexed)."""
        if feature not in self.touched:
            self.current[feature] = [dict(e) for e in self.current.get(feature, ())]
            self.touched.add(feature)
        elements = self.current[feature]
        assert isinstance(elements, list)
        return elements

    def replace(self, feature: str, elements: list[Element]) -> None:
        self.touched.add(feature)
        self.current[feature] = elements
        self._index(feature)

    def reindex(self, feature: str) -> None:
        self._index(feature)

    def features_naming(self, key: str) -> list[str]:
        found = {feature for feature in self._base.features(key) if feature not in self._keys}
        found.update(self._features.get(key, ()))
        return sorted(found)

    def stack_of(self, key: str) -> str | None:
        """The feature whose stack PR ``key`` asks for (first by name, should there be two)."""
        return next((f for f in self.features_naming(key) if key in _requesters(self.get(f))), None)

    def stack_before(self, key: str) -> str | None:
        """:meth:`stack_of` in the entries as they were before the batch."""
        features = sorted(self._base.features(key))
        return next((f for f in features if key in _requesters(self.before.get(f, ()))), None)

    def _index(self, feature: str) -> None:
        for key in self._keys.get(feature, ()):
            self._features[key].discard(feature)
        keys = keys_named(self.current.get(feature, ()))
        self._keys[feature] = keys
        for key in keys:
            self._features.setdefault(key, set()).add(feature)


def _touch(batch: _Batch, feature: str, at: datetime) -> None:
    if feature not in batch.active or batch.active[feature] < at:
        batch.active[feature] = at


def _put(elements: list[Element], element: Element, key: str) -> None:
    """Place a PR-built element, keeping who else asked for the service and the CLI overrides."""
    existing = _find(elements, element["service"])
    if existing is not None:
        element["requestedBy"] = sorted({*existing["requestedBy"], key})
        _carry_overrides(existing, element)
        elements.remove(existing)
    elements.append(element)


def _find(elements: Sequence[Element], service: str) -> Element | None:
    return next((e for e in elements if e["service"] == service), None)


def label(catalog: Settings, name: str) -> str:
    return f"{catalog.labels.prefix}{name}"


def source_key(element: Element) -> str | None:
    """The PR that builds this element, or None for a base / pinned build."""
    source = element["source"]
    if source["number"] == "0":
        return None
    return f"{source['provider']}:{source['repo']}#{source['number']}"


def _requesters(elements: Iterable[Element]) -> set[str]:
    return {key for element in elements for key in element["requestedBy"]}




def _is_pr(key: str) -> bool:
    return key.startswith(("github:", "gitlab:"))


def dependency_closure(catalog: Settings, services: Iterable[str]) -> list[str]:
    """``services`` and everything they depend on, transitively (cycles are harmless)."""
    seen: set[str] = set()
    pending = list(services)
    while pending:
        name = pending.pop()
        if name in seen:
            continue
        seen.add(name)
        pending.extend(catalog.services[name].depends_on)
    return sorted(seen)


def _label_values(event: PullRequestEvent, catalog: Settings, name: str) -> list[str]:
    prefix = label(catalog, f"{name}:")
    return sorted(lbl[len(prefix):].strip() for lbl in event.labels if lbl.startswith(prefix))


def _carry_overrides(old: Element, new: Element) -> None:
    """What ``devstack set`` / ``restart`` changed, and sleeping, survive a rebuild of the element."""
    sleeping.carry_sleep(old, new)
    devmode.carry(old, new)
    overrides = old.get("overrides")
    if not overrides:
        return
    new["overrides"] = overrides
    new["values"] = {**new["values"], "env": {**new["values"]["env"], **overrides.get("env", {})}}
    if overrides.get("restartedAt"):
        new["values"]["restartedAt"] = overrides["restartedAt"]

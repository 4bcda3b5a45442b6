"""What previews cost: awake and asleep hours, CPU- and memory-hours, by author, repository or team.

Computed from the GitOps repository's history, the record of every state devstack wrote (and of any
hand edit): each commit on the branch is the moment a preview appeared, went to sleep, woke or went
away. :func:`read_history` reads the entry files at the start of the window and every change after it
(git log --raw and the changed blobs only); :func:`tally` (pure) integrates the states over time.

Attribution of an element (one service of one preview) for its time:

* **author** and **repo**: of the pull request that asked for it (``requestedBy[0]``): a dependent
  service at its base version counts for the PR whose preview needed it; a preview from the CLI
  counts as author ``cli`` and repo ``-``;
* **team**: ``services.<name>.team`` of the service that PR builds, else the ``teams`` mapping of its
  repository, else ``-``.

CPU- and memory-hours count only awake time: the service's requests (``services.<name>.resources``,
else the chart's default ``50m`` / ``64Mi``), plus its Redis's requests when it has one.
"""

from __future__ import annotations

import csv
import io
import json
import subprocess
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any, Literal

from devstack import naming
from devstack import sleep as sleeping
from devstack.catalog import Settings
from devstack.durations import InvalidDuration, parse_duration
from devstack.errors import ConfigError, TemporaryError
from devstack.quantity import parse_quantity

By = Literal["author", "repo", "team"]
BY: tuple[By, ...] = ("author", "repo", "team")
DEFAULT_REQUESTS = {"cpu": "50m", "memory": "64Mi"}  # templates/feature-release/values.yaml
GIB = Decimal(2**30)

Elements = list[dict[str, Any]]
Change = tuple[datetime, dict[str, Elements | None]]  # when, feature -> its elements (None: removed)


@dataclass(kw_only=True)
class Row:
    key: str
    previews: int = 0
    awake_hours: float = 0.0
    asleep_hours: float = 0.0
    cpu_hours: float = 0.0
    memory_gib_hours: float = 0.0
    _features: set[str] = field(default_factory=set, repr=False)

    def view(self) -> dict[str, Any]:
        data = {k: v for k, v in asdict(self).items() if not k.startswith("_")}
        for name in ("awake_hours", "asleep_hours", "cpu_hours", "memory_gib_hours"):
            data[name] = round(data[name], 2)
        return data


@dataclass(frozen=True, kw_only=True)
class Report:
    by: By
    since: datetime
    until: datetime
    rows: list[Row]

    def view(self) -> dict[str, Any]:
        return {"by": self.by, "since": _iso(self.since), "until": _iso(self.until),
                "rows": [row.view() for row in self.rows]}

    @classmethod
    def from_view(cls, data: Mapping[str, Any]) -> Report:
        """A report as ``/api/usage`` answers it (what :meth:`view` gives)."""
        rows = [Row(key=str(r["key"]), previews=int(r["previews"]), awake_hours=float(r["awake_hours"]),
                    asleep_hours=float(r["asleep_hours"]), cpu_hours=float(r["cpu_hours"]),
                    memory_gib_hours=float(r["memory_gib_hours"])) for r in data["rows"]]
        return cls(by=_by(str(data["by"])), since=_parse_iso(str(data["since"])),
                   until=_parse_iso(str(data["until"])), rows=rows)

    def table(self) -> str:
        header = (self.by.upper(), "PREVIEWS", "AWAKE_H", "ASLEEP_H", "CPU_H", "MEM_GIB_H")
        lines = [header] + [(r.key, str(r.previews), f"{r.awake_hours:.1f}", f"{r.asleep_hours:.1f}",
                              f"{r.cpu_hours:.2f}", f"{r.memory_gib_hours:.2f}") for r in self.rows]
        if len(lines) == 1:
            return f"no previews between {_iso(self.since)} and {_iso(self.until)}"
        widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
        body = "\n".join("  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip() for line in lines)
        return f"{body}\n({_iso(self.since)} to {_iso(self.until)})"

    def csv(self) -> str:
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow([self.by, "previews", "awake_hours", "asleep_hours", "cpu_hours", "memory_gib_hours"])
        for row in self.rows:
            view = row.view()
            # a cell never starts a formula in a spreadsheet (a branch or author is user text)
            key = f"'{row.key}" if row.key[:1] in ("=", "+", "-", "@") and row.key != "-" else row.key
            writer.writerow([key, view["previews"], view["awake_hours"], view["asleep_hours"], view["cpu_hours"],
                             view["memory_gib_hours"]])
        return out.getvalue()


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _parse_iso(text: str) -> datetime:
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)


# --- the pure part -----------------------------------------------------------------------------------


def tally(
    *, start: Mapping[str, Elements], changes: Iterable[Change], settings: Settings, since: datetime,
    until: datetime, by: By,
) -> Report:
    """Integrate the states from ``start`` (as of ``since``) through ``changes`` (in time order) until
    ``until``, attributed ``by`` author, repo or team."""
    if by not in BY:
        raise ValueError(f"by must be one of {', '.join(BY)}")
    rows: dict[str, Row] = {}
    state: dict[str, Elements] = {k: v for k, v in start.items() if v}
    moment = since
    requests: dict[str, tuple[Decimal, Decimal]] = {}

    def account(until_then: datetime) -> None:
        hours = max(0.0, (min(until_then, until) - max(moment, since)).total_seconds() / 3600)
        if not hours:
            return
        for feature, elements in state.items():
            owners = {_source_key(e): e for e in elements if e.get("source", {}).get("number", "0") != "0"}
            for element in elements:
                key = _key(element, owners, settings, by)
                row = rows.setdefault(key, Row(key=key))
                row._features.add(feature)
                if sleeping.is_asleep(element):
                    row.asleep_hours += hours
                    continue
                row.awake_hours += hours
                service = str(element.get("service", ""))
                if service not in requests:
                    requests[service] = _requests(settings, service)
                cpu, memory = requests[service]
                redis = element.get("values", {}).get("hooks", {}).get("redis")
                if isinstance(redis, dict):
                    extra = redis.get("resources", {}).get("requests", {})
                    cpu, memory = cpu + _quantity(extra.get("cpu", "0")), memory + _quantity(extra.get("memory", "0"))
                row.cpu_hours += float(cpu) * hours
                row.memory_gib_hours += float(memory / GIB) * hours

    for when, changed in changes:
        if when > until:
            break
        account(when)
        moment = max(moment, when)
        for feature, elements in changed.items():
            if elements:
                state[feature] = elements
            else:
                state.pop(feature, None)
    account(until)
    for row in rows.values():
        row.previews = len(row._features)
    ordered = sorted(rows.values(), key=lambda r: (-r.awake_hours, -r.asleep_hours, r.key))
    return Report(by=by, since=since, until=until, rows=ordered)


def _source_key(element: Mapping[str, Any]) -> str:
    source = element.get("source", {})
    return f"{source.get('provider')}:{source.get('repo')}#{source.get('number')}"


def _key(element: Mapping[str, Any], owners: Mapping[str, Mapping[str, Any]], settings: Settings, by: By) -> str:
    requested = element.get("requestedBy") or [""]
    owner = owners.get(str(requested[0])) or (element if _source_key(element) in owners else None)
    if owner is None:  # a preview from the CLI, or a PR whose own element is gone
        if by == "author":
            return "cli" if str(requested[0]).startswith("cli") else "-"
        if by == "repo":
            return "-"
    source = (owner or element).get("source", {})
    if by == "author":
        return str(source.get("author") or "-")
    if by == "repo":
        return str(source.get("repo") or "-")
    service = str((owner or element).get("service", ""))
    return sleeping.team_of(settings, service=service, repo=str(source.get("repo", ""))) or "-"


def _requests(settings: Settings, service: str) -> tuple[Decimal, Decimal]:
    spec = settings.services.get(service)
    wanted = {**DEFAULT_REQUESTS, **(spec.resources if spec is not None else {})}
    return _quantity(wanted["cpu"]), _quantity(wanted["memory"])


def _quantity(text: object) -> Decimal:
    try:
        return Decimal(parse_quantity(str(text)))
    except (ValueError, ArithmeticError):
        return Decimal(0)


# --- reading the history ---------------------------------------------------------------------------


def read_history(*, repo: Path, ref: str, path: str, since: datetime) -> tuple[dict[str, Elements], list[Change]]:
    """The entries as of ``since`` and every change to them after it, from the git repository at
    ``repo`` (a working clone: only read), following ``ref``'s first parents (devstack only ever
    fast-forwards its branch)."""
    prefix = f"{path.strip('/')}/" if path.strip("/") else ""
    stamp = str(int(since.timestamp()))
    base = _git(repo, "rev-list", "-1", f"--before={stamp}", ref).strip()
    start: dict[str, Elements] = {}
    blobs = _Blobs(repo)
    try:
        if base:
            listing = _git(repo, "ls-tree", "-z", base, "--", prefix or ".")
            for line in filter(None, listing.split("\0")):
                meta, _, name = line.partition("\t")
                feature = _feature(name, prefix)
                if feature is not None and meta.split()[1] == "blob":
                    elements = _parse(blobs.read(meta.split()[2]))
                    if elements:
                        start[feature] = elements
        span = f"{base}..{ref}" if base else ref
        log = _git(repo, "log", "--reverse", "--first-parent", "--no-renames", "--no-abbrev", "--raw", "-z",
                   "--format=%x01%H %ct", span, "--", prefix or ".")
        changes: list[Change] = []
        for chunk in filter(None, log.split("\x01")):
            head, _, raw = chunk.partition("\0")  # "<sha> <time>\0\n:<meta>\0<path>\0..."
            when = datetime.fromtimestamp(int(head.split()[1]), UTC)
            changed: dict[str, Elements | None] = {}
            fields = raw.strip("\0\n").split("\0")
            for meta, name in zip(fields[0::2], fields[1::2], strict=False):
                feature = _feature(name, prefix)
                if feature is None or not meta.startswith(":"):
                    continue
                new_sha, status = meta.split()[3], meta.split()[4]
                changed[feature] = None if status.startswith("D") else _parse(blobs.read(new_sha)) or None
            if changed:
                changes.append((when, changed))
        return start, changes
    finally:
        blobs.close()


def _feature(name: str, prefix: str) -> str | None:
    if not name.startswith(prefix) or "/" in name[len(prefix):]:
        return None
    return naming.feature_from_filename(name[len(prefix):])


def _parse(data: bytes) -> Elements:
    try:
        elements = json.loads(data)
    except ValueError:
        return []  # a file devstack cannot read (quarantined by the worker): no usage to count
    if not isinstance(elements, list):
        return []
    return [e for e in elements if isinstance(e, dict) and isinstance(e.get("values"), dict)]


def _git(repo: Path, *args: str) -> str:
    try:
        done = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, check=True, timeout=120)
    except subprocess.CalledProcessError as exc:
        raise TemporaryError(f"git {args[0]}: {exc.stderr.decode(errors='replace')[:300]}") from None
    except subprocess.TimeoutExpired:
        raise TemporaryError(f"git {args[0]} took longer than 120 s") from None
    return done.stdout.decode()


class _Blobs:
    """``git cat-file --batch``: every blob of the window through one process."""

    def __init__(self, repo: Path) -> None:
        self._process = subprocess.Popen(["git", "-C", str(repo), "cat-file", "--batch"], stdin=subprocess.PIPE,
                                         stdout=subprocess.PIPE)

    def read(self, sha: str) -> bytes:
        assert self._process.stdin is not None
        assert self._process.stdout is not None
        self._process.stdin.write(sha.encode() + b"\n")
        self._process.stdin.flush()
        header = self._process.stdout.readline().split()
        if len(header) != 3:
            return b""
        data = self._process.stdout.read(int(header[2]))
        self._process.stdout.read(1)
        return data

    def close(self) -> None:
        if self._process.stdin is not None:
            self._process.stdin.close()
        self._process.wait(timeout=10)


def report(*, repo: Path, ref: str, settings: Settings, since: datetime, until: datetime, by: str) -> Report:
    """:func:`read_history` then :func:`tally`; ``by`` is checked (a ConfigError names the choices)."""
    checked = _by(by)
    start, changes = read_history(repo=repo, ref=ref, path=settings.gitops.path, since=since)
    return tally(start=start, changes=changes, settings=settings, since=since, until=until, by=checked)


class UsageCache:
    """Reports of the last minute, per (by, window): the dashboard and ``/api/usage`` read the git
    history at most once a minute per question, and again at once when the branch moved."""

    def __init__(self, *, ttl: float = 60.0) -> None:
        self._ttl = ttl
        self._lock = threading.Lock()
        self._reports: dict[tuple[str, int, str], tuple[float, Report]] = {}

    def report(self, *, repo: Path, settings: Settings, window: timedelta, by: str, now: datetime) -> Report:
        head = _head(repo)
        key = (by, int(window.total_seconds()), head)
        with self._lock:
            cached = self._reports.get(key)
            if cached is not None and time.monotonic() - cached[0] < self._ttl:
                return cached[1]
        if not head:
            result = tally(start={}, changes=(), settings=settings, since=now - window, until=now, by=_by(by))
        else:
            result = report(repo=repo, ref=head, settings=settings, since=now - window, until=now, by=by)
        with self._lock:
            if len(self._reports) > 64:
                self._reports.clear()
            self._reports[key] = (time.monotonic(), result)
        return result


def _head(repo: Path) -> str:
    """The commit a report follows; "" while the repository has none (nothing was ever written)."""
    if not (repo / ".git").exists():
        return ""
    done = subprocess.run(["git", "-C", str(repo), "rev-parse", "--verify", "-q", "HEAD^{commit}"],
                          capture_output=True, check=False, timeout=30)
    return done.stdout.decode().strip() if done.returncode == 0 else ""


def _by(by: str) -> By:
    if by not in BY:
        raise ConfigError(f"--by {by[:40]!r}: one of {', '.join(BY)}")
    return by


MAX_WINDOW = timedelta(days=400)


def window(text: str) -> timedelta:
    """``--since 30d``: how far back a report looks (at most 400 days; not ``forever``)."""
    try:
        parsed = parse_duration(text)
    except InvalidDuration as exc:
        raise ConfigError(f"--since: {exc}") from None
    if parsed is None or parsed > MAX_WINDOW or parsed <= timedelta(0):
        raise ConfigError(f"--since {text[:20]!r}: a duration up to 400d, like 30d or 12h")
    return parsed

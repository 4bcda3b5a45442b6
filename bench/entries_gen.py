"""Entry files generated with devstack's own planner, so plain git commits exactly what devstack would."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

from bench.harness import ENTRY_DIR, REPO, settings_data
from devstack import entries as entry_format
from devstack.catalog import Settings, load_settings
from devstack.events import Provider, PullRequestEvent, PullRequestState
from devstack.planner import plan


def settings(state_dir: Path | None = None, remote: Path | None = None) -> Settings:
    here = Path("/nonexistent")
    return load_settings(None, overrides=settings_data(state_dir=state_dir or here, remote=remote or here))


def event(
    *, number: int, sha: str, branch: str, action: str = "opened", received_at: datetime | None = None,
    delivery: str = "", closed: bool = False,
) -> PullRequestEvent:
    return PullRequestEvent(
        delivery_id=delivery or f"bench-{number}-{sha[:8]}", provider=Provider.GITHUB, action=action, repo=REPO,
        number=number, url=f"https://github.com/{REPO}/pull/{number}", title=f"Change {number}",
        author="octocat", head_sha=sha, head_branch=branch, base_branch="main",
        state=PullRequestState.CLOSED if closed else PullRequestState.OPEN,
        received_at=received_at or datetime.now(UTC),
    )


def entry(
    catalog: Settings, *, number: int, sha: str, branch: str, received_at: datetime | None = None
) -> tuple[str, bytes]:
    """(relative path, file bytes) of the entry devstack writes for this PR opened at this sha (and time:
    the expiry is the time received plus the default TTL)."""
    opened = event(number=number, sha=sha, branch=branch, received_at=received_at)
    result = plan(events=[opened], entries={}, catalog=catalog, now=opened.received_at)
    [(feature, elements)] = result.changed.items()
    if elements is None:
        raise ValueError(f"the planner made no entry for PR {number}")
    return f"{ENTRY_DIR}/{feature}.json", entry_format.encode(elements)


def many(
    catalog: Settings, count: int, *, prefix: str, start: int = 1, first: datetime | None = None,
    spacing: timedelta = timedelta(0),
) -> dict[str, bytes]:
    """``count`` entry files for PRs ``start..start+count-1`` on branches ``<prefix>-<n>``, PR *n* opened
    at ``first + (n - start) * spacing`` (so the expiries are spread out the same way)."""
    first = first or datetime.now(UTC)
    files = {}
    for number in range(start, start + count):
        rel, data = entry(catalog, number=number, sha=f"{number:040x}", branch=f"{prefix}-{number:05d}",
                          received_at=first + (number - start) * spacing)
        files[rel] = data
    return files

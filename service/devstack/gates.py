"""Gates: a PR's head sha is deployed only once CI has built it (docs/gates.md). Pure: no I/O.

A gate names the checks that must have succeeded for the sha (GitHub check runs, check suites by
their app's slug, commit statuses by their context; GitLab pipelines as ``pipeline`` and their jobs by
name) and/or asks that the image tag exist in its registry. :func:`decide` turns what is known about
a sha into a :class:`GateStatus`; the planner keeps the previous sha serving while it is not open.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from devstack.durations import Duration

CheckState = Literal["pending", "success", "failure"]
GateState = Literal["open", "waiting", "failed"]

_CHECK_NAME = re.compile(r"[^\x00-\x1f\x7f]{1,200}")


class GateSettings(BaseModel):
    """``services.<name>.gate`` (and the defaults of ``gate``): what must be true of a head sha."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    checks: list[str] = Field(default_factory=list, max_length=20,
                              description="check runs / statuses / jobs that must have succeeded for the sha")
    image: bool = Field(False, description="the image tag must exist in its registry (OCI HEAD of the manifest)")

    @field_validator("checks")
    @classmethod
    def _names(cls, value: list[str]) -> list[str]:
        for name in value:
            if not _CHECK_NAME.fullmatch(name):
                raise ValueError(f"{name[:40]!r} is not a check name (1-200 characters, no control characters)")
        return value

    @property
    def active(self) -> bool:
        return bool(self.checks) or self.image


class GlobalGateSettings(GateSettings):
    """``gate``: the default gate of every service, and how gates are watched."""

    deadline: Duration = Field(timedelta(minutes=30),
                               description="a gate still closed this long after the push is reported")
    poll_initial: Duration = Field(timedelta(seconds=5), description="first wait between image checks")
    poll_max: Duration = Field(timedelta(minutes=2), description="the longest wait between image checks")
    pull_secret: Path | None = Field(None, description="a .dockerconfigjson file with registry credentials")
    insecure_registries: list[str] = Field(default_factory=list,
                                           description="registries (host:port) spoken to over plain HTTP")
    timeout: float = Field(5.0, gt=0, le=60, description="seconds one registry request may take")

    def of(self, service: GateSettings | None) -> GateSettings:
        """The gate of a service: its own, else these defaults."""
        return service if service is not None else GateSettings(checks=self.checks, image=self.image)


@dataclass(frozen=True, kw_only=True)
class CheckResult:
    """What CI reported for one check of one sha (the latest report wins)."""

    name: str
    state: CheckState
    url: str = ""


@dataclass(frozen=True, kw_only=True)
class GateStatus:
    """Whether ``sha`` may be deployed for one service, and what it waits for."""

    state: GateState
    sha: str
    waiting: tuple[str, ...] = ()  # checks (and "image") not yet there
    failed: tuple[str, ...] = ()  # checks that failed
    url: str = ""  # a link to the first failed or waiting check
    overdue: bool = False  # closed for longer than gate.deadline
    bypassed: bool = False  # /devstack deploy opened it once

    def to_dict(self) -> dict[str, object]:
        return {"state": self.state, "sha": self.sha, "waiting": list(self.waiting), "failed": list(self.failed),
                "url": self.url, "overdue": self.overdue, "bypassed": self.bypassed}

    @classmethod
    def from_dict(cls, data: Mapping[str, object]) -> GateStatus:
        state = str(data.get("state", "waiting"))
        return cls(state="open" if state == "open" else "failed" if state == "failed" else "waiting",
                   sha=str(data.get("sha", "")),
                   waiting=tuple(str(x) for x in _seq(data.get("waiting"))),
                   failed=tuple(str(x) for x in _seq(data.get("failed"))),
                   url=str(data.get("url", "")), overdue=bool(data.get("overdue")), bypassed=bool(data.get("bypassed")))


def _seq(value: object) -> Sequence[object]:
    return value if isinstance(value, list | tuple) else ()


IMAGE = "image"


def decide(
    *, gate: GateSettings, sha: str, checks: Mapping[str, CheckResult], image_present: bool, bypass: bool = False,
    overdue: bool = False,
) -> GateStatus:
    """The gate of ``sha``: open when every named check succeeded and (if asked) the image exists.

    A failed check closes it for good (until CI reports the check again: a re-run that succeeds
    opens it). ``bypass``: ``/devstack deploy`` for this sha opens it whatever CI says.
    """
    if bypass:
        return GateStatus(state="open", sha=sha, bypassed=True)
    failed = [name for name in gate.checks if name in checks and checks[name].state == "failure"]
    waiting = [name for name in gate.checks if name not in checks or checks[name].state == "pending"]
    if gate.image and not image_present:
        waiting.append(IMAGE)
    if not failed and not waiting:
        return GateStatus(state="open", sha=sha)
    first = next((checks[n].url for n in failed + waiting if n in checks and checks[n].url), "")
    return GateStatus(state="failed" if failed else "waiting", sha=sha, waiting=tuple(waiting), failed=tuple(failed),
                      url=first, overdue=overdue and not failed)


def qualified(image: str) -> bool:
    """Whether ``image`` (without its tag) names its registry host first, as an image gate needs."""
    first, _, rest = image.partition("/")
    return bool(rest) and ("." in first or ":" in first or first == "localhost")


def image_ref(repository: str, tag: str) -> str:
    return f"{repository}:{tag}"

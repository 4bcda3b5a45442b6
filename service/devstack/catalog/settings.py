"""The whole configuration (:class:`Settings`), how it is loaded (the file, then ``DEVSTACK_*``), and
how a validation error is told (the key, the problem, the closest valid key)."""

from __future__ import annotations

import fnmatch
import os
from collections.abc import Mapping, Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from devstack.catalog.sections import (
    ChartSettings,
    ClusterSettings,
    FeedbackSettings,
    GitOpsSettings,
    JournalSettings,
    LabelSettings,
    ProvidersSettings,
    RoutingSettings,
    SecuritySettings,
    ServiceSettings,
    SleepSettings,
    TTLSettings,
    WorkerSettings,
    _team_name,
    public_url,
)
from devstack.durations import Duration
from devstack.errors import ConfigError
from devstack.gates import GateSettings, GlobalGateSettings, qualified
from devstack.hooks.config import HooksSettings
from devstack.naming import FEATURE_MAX, hostname_problem, service_name_problem


class Settings(BaseSettings):
    """Everything devstack can be told; see docs/configuration.md for each key."""

    model_config = SettingsConfigDict(
        env_prefix="DEVSTACK_", env_nested_delimiter="__", extra="forbid", frozen=True
    )

    state_dir: Path = Path(".devstack")
    gitops: GitOpsSettings = GitOpsSettings()
    chart: ChartSettings = ChartSettings()
    domain: str = "preview.localhost"
    routing: RoutingSettings = RoutingSettings()
    ttl: TTLSettings = TTLSettings()
    trigger: Literal["all", "label"] = "all"
    resync_interval: Duration = timedelta(minutes=10)
    reap_interval: Duration = timedelta(minutes=1)
    retention: Duration = timedelta(days=14)
    deploy_drafts: bool = False
    labels: LabelSettings = LabelSettings()
    security: SecuritySettings = SecuritySettings()
    providers: ProvidersSettings = ProvidersSettings()
    services: dict[str, ServiceSettings] = Field(default_factory=dict)
    journal: JournalSettings = JournalSettings()
    worker: WorkerSettings = WorkerSettings()
    feedback: FeedbackSettings = FeedbackSettings()
    hooks: HooksSettings = HooksSettings()
    cluster: ClusterSettings = ClusterSettings()
    sleep: SleepSettings = SleepSettings()
    gate: GlobalGateSettings = GlobalGateSettings()
    teams: dict[str, str] = Field(default_factory=dict, description="repository glob -> team (CODEOWNERS-like: "
                                                                    "the last matching pattern wins)")

    @field_validator("teams")
    @classmethod
    def _teams(cls, value: dict[str, str]) -> dict[str, str]:
        for pattern, team in value.items():
            if not pattern or len(pattern) > 255:
                raise ValueError(f"{pattern[:40]!r} is not a repository pattern like acme/payments-*")
            _team_name(team)
        return value

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # The environment overrides the file (which arrives as init arguments).
        return env_settings, init_settings

    @field_validator("domain")
    @classmethod
    def _domain(cls, value: str) -> str:
        problem = hostname_problem(value)
        if problem:
            raise ValueError(f"is not a DNS name: {problem}")
        return value

    @field_validator("services")
    @classmethod
    def _service_names(cls, value: dict[str, ServiceSettings]) -> dict[str, ServiceSettings]:
        problems = service_problems({name: {"depends_on": s.depends_on} for name, s in value.items()}, hooks=None)
        if problems:
            raise ValueError("\n".join(problems))
        return value

    @model_validator(mode="after")
    def _hosts_fit(self) -> Settings:
        """``routing.host`` must make a valid host for the longest names it can get: a feature of
        30 characters and the longest catalog service name (not only for short samples)."""
        longest = max(self.services, key=len, default="s")
        sample = self.routing.host.format(feature="f" * FEATURE_MAX, service=longest, domain=self.domain)
        problem = hostname_problem(sample)
        if problem:
            raise ValueError(
                f"routing.host: {self.routing.host!r} does not make a valid host name for a "
                f"{FEATURE_MAX}-character feature and service {longest!r} ({sample!r}): {problem}"
            )
        return self

    @model_validator(mode="after")
    def _hooks_runnable(self) -> Settings:
        """Every service's hooks must turn into chart values: refuse at startup, not at the first PR."""
        problems = service_problems({name: {"hooks": s.hooks} for name, s in self.services.items()},
                                    hooks=self.hooks)
        if problems:
            raise ValueError("\n".join(problems))
        return self

    @model_validator(mode="after")
    def _image_gates_name_their_registry(self) -> Settings:
        """An image gate asks the image's registry: the image must name it (``ghcr.io/acme/api``)."""
        problems = [f"services.{name}.image: {spec.image!r} does not name its registry (like ghcr.io/acme/api), "
                    "which its image gate must ask (docs/gates.md)"
                    for name, spec in sorted(self.services.items()) if self.gate_of(name).image
                    and not qualified(spec.image)]
        if problems:
            raise ValueError("\n".join(problems))
        return self

    def gate_of(self, service: str) -> GateSettings:
        """The gate of a catalog service: its own ``gate``, else the global one."""
        return self.gate.of(self.services[service].gate)

    def gated(self, *, provider: str, repo: str) -> list[str]:
        """The services of a repository whose head sha waits for a gate."""
        return [name for name in self.services_of_repo(provider=provider, repo=repo) if self.gate_of(name).active]

    def repo_allowed(self, repo: str) -> bool:
        patterns = self.security.repos or sorted({s.repo for s in self.services.values()})
        return any(fnmatch.fnmatchcase(repo, pattern) for pattern in patterns)

    def services_of_repo(self, *, provider: str, repo: str) -> list[str]:
        return sorted(
            name for name, s in self.services.items() if s.provider == provider and s.repo == repo
        )

    @property
    def journal_path(self) -> Path:
        return self.state_dir / "journal.sqlite3"

    @property
    def journal_target(self) -> Path | str:
        """Where the journal lives: ``journal.url`` (PostgreSQL), else the SQLite file in ``state_dir``."""
        return self.journal.url or self.journal_path

    @property
    def local_remote_path(self) -> Path:
        return self.state_dir / "gitops.git"

    @property
    def clone_path(self) -> Path:
        return self.state_dir / "clone"

    @property
    def gitops_url(self) -> str:
        return self.gitops.url or str(self.local_remote_path.resolve())

    @property
    def chart_repo_url(self) -> str:
        """The chart's repository as Argo CD is given it: without credentials (Argo CD has its own)."""
        return public_url(self.chart.repo_url or self.gitops_url)

    @property
    def chart_target_revision(self) -> str:
        return self.chart.target_revision or self.gitops.branch


SAMPLE_CATALOG: dict[str, Any] = {
    "payments-api": {
        "repo": "acme/payments",
        "image": "ghcr.io/acme/payments-api",
        "port": 8080,
        "depends_on": ["ledger"],
    },
    "ledger": {"repo": "acme/ledger", "image": "ghcr.io/acme/ledger", "port": 8080},
}


def load_settings(path: Path | None = None, *, overrides: Mapping[str, Any] | None = None) -> Settings:
    """Read ``path`` (YAML), apply ``DEVSTACK_*`` overrides, validate; no file: embedded defaults.

    With no file and no services from the environment, the sample catalog is used, so that
    ``devstack serve`` runs on a fresh machine with nothing configured.
    """
    data: dict[str, Any] = {}
    if path is not None:
        try:
            loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
        except OSError as exc:
            raise ConfigError(f"config file {path}: cannot be read: {exc.strerror}") from None
        except yaml.YAMLError as exc:
            raise ConfigError(f"config file {path}: not valid YAML: {exc}") from None
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"config file {path}: must be a mapping of keys, not {type(loaded).__name__}")
        data = loaded
    if overrides:
        data = {**data, **overrides}
    from_env = any(k.upper().startswith("DEVSTACK_SERVICES") for k in os.environ)
    if path is None and "services" not in data and not from_env:
        data = {**data, "services": SAMPLE_CATALOG}
    try:
        return Settings(**data)
    except ValidationError as exc:
        source = f"config file {path}" if path else "configuration"
        # Pydantic stops at the first failing layer (fields before the checks across them), so the
        # catalog's own checks run on the raw data too: every problem is reported in one run.
        services = data.get("services")
        extra = service_problems(services, hooks=_platform_hooks(data)) if isinstance(services, dict) else []
        raise ConfigError(format_validation_error(exc, source=source, extra=extra)) from None


def _platform_hooks(data: Mapping[str, Any]) -> HooksSettings | None:
    try:
        return HooksSettings(**(data.get("hooks") or {}))
    except (ValidationError, TypeError):
        return None  # reported by pydantic already; hooks are then checked for their names only


def service_problems(services: Mapping[str, Any], *, hooks: HooksSettings | None) -> list[str]:
    """Every problem of the catalog's service names, ``depends_on`` and hooks, one line each, named by
    key path, with the closest name where it looks like a typo. ``hooks=None``: hooks not checked."""
    from devstack.hooks.values import did_you_mean, hook_values

    problems = []
    names = [str(name) for name in services]
    for name in names:
        problem = service_name_problem(name)
        if problem:
            problems.append(f"services.{name}: service name {name!r} {problem}")
    for name, service in services.items():
        if not isinstance(service, Mapping):
            continue
        depends_on = service.get("depends_on") or []
        for dep in depends_on if isinstance(depends_on, list) else []:
            if dep not in services:
                problems.append(f"services.{name}.depends_on: names {dep!r}, which is not in services"
                                f"{did_you_mean([str(dep)], names)}")
        declared = service.get("hooks")
        if declared and hooks is not None:
            try:
                hook_values(service=str(name), declared=declared, platform=hooks)
            except ConfigError as exc:
                problems.append(f"services.{name}.hooks: {str(exc).removeprefix(f'service {name!r}: ')}")
    return problems


def format_validation_error(exc: ValidationError, *, source: str, extra: Sequence[str] = ()) -> str:
    lines: list[str] = []
    for error in exc.errors(include_url=False, include_input=False):
        key = ".".join(str(part) for part in error["loc"]) or "(top level)"
        message = error["msg"].removeprefix("Value error, ")
        if error["type"] == "extra_forbidden":
            message = "unknown key" + _closest_key(error["loc"])
        if message.startswith("services."):  # the catalog's checks: already one key path per line
            lines.extend(message.splitlines())
        else:
            lines.append(f"{key}: {message}")
    lines.extend(line for line in extra if line not in lines)
    lines.sort(key=lambda line: line.partition(": ")[0])  # by key path, so a section's problems sit together
    return "\n".join([f"invalid {source}:",
                      *(f"  {line}" for line in lines)])


def _closest_key(loc: Sequence[int | str]) -> str:
    """`` (did you mean 'depends_on'?)`` for an unknown key, from the keys its model knows."""
    from devstack.hooks.values import did_you_mean

    model: type[BaseModel] = Settings
    parts = list(loc[:-1])
    while parts:
        part = parts.pop(0)
        if model is Settings and part == "services":
            model = ServiceSettings
            parts = parts[1:]  # the service's name
            continue
        field = model.model_fields.get(str(part))
        annotation = field.annotation if field is not None else None
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return ""
        model = annotation
    return did_you_mean([str(loc[-1])], list(model.model_fields))

"""The sections of the configuration (``gitops``, ``routing``, ``ttl``, ``security``, ``providers``,
``services``, ``journal``, ``worker``, ``feedback``, ``cluster``, ``wake``, ``sleep``, ``labels``): one model
each, with its defaults and its checks. :class:`~devstack.catalog.Settings` puts them together."""

from __future__ import annotations

import re
from datetime import timedelta
from pathlib import Path, PurePosixPath
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    field_validator,
    model_validator,
)

from devstack.durations import Duration, OptionalDuration
from devstack.gates import GateSettings
from devstack.naming import host_template_problem, hostname_problem

_USERINFO = re.compile(r"(?i)^([a-z][a-z0-9+.-]*://)[^/@\s]+@")


def public_url(url: str) -> str:
    """``url`` without credentials (``https://token@host/x`` -> ``https://host/x``): what may be written to
    the GitOps repository and given to Argo CD, which has repository credentials of its own."""
    return _USERINFO.sub(r"\1", url)




class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class GitOpsSettings(_Model):
    url: str = Field("", description="GitOps repo URL; empty: a local bare repo in state_dir")
    branch: str = "main"
    path: str = Field("previews", description="the flat folder that holds previews/<feature>.json")
    author_name: str = "devstack"
    author_email: str = "devstack@localhost"
    max_push_attempts: int = Field(5, ge=1, le=50)

    @field_validator("path")
    @classmethod
    def _flat_relative(cls, value: str) -> str:
        value = value.strip("/")
        if not value or value.startswith(".") or ".." in value.split("/") or "\\" in value:
            raise ValueError("must be a relative folder inside the repo, like 'previews'")
        return value

    @field_validator("branch")
    @classmethod
    def _branch(cls, value: str) -> str:
        if not value or value.startswith("-") or ".." in value or " " in value:
            raise ValueError("is not a valid branch name")
        return value


class ChartSettings(_Model):
    repo_url: str = Field("", description="git repo of the feature-release chart; empty: the GitOps repo")
    path: str = "templates/feature-release"
    target_revision: str = Field("", description="revision of the chart; empty: gitops.branch")


class RoutingSettings(_Model):
    header: str = "x-devstack-feature"
    host: str = "{feature}--{service}.{domain}"

    @field_validator("header")
    @classmethod
    def _header(cls, value: str) -> str:
        if not value or not all(c.isalnum() or c == "-" for c in value):
            raise ValueError("must be an HTTP header name (letters, digits, '-')")
        return value.lower()

    @field_validator("host")
    @classmethod
    def _host(cls, value: str) -> str:
        if "{feature}" not in value or "{service}" not in value:
            raise ValueError("must contain {feature} and {service}")
        ambiguous = host_template_problem(value)
        if ambiguous:
            raise ValueError(ambiguous)
        try:
            sample = value.format(feature="f", service="s", domain="example.com")
        except (KeyError, IndexError, ValueError):
            raise ValueError("may only use {feature}, {service} and {domain}") from None
        problem = hostname_problem(sample)
        if problem:
            raise ValueError(f"does not make a valid host name: {problem}")
        return value


class TTLSettings(_Model):
    default: Duration = timedelta(hours=72)
    max: OptionalDuration = timedelta(days=14)  # None: forever is allowed
    warn_before: Duration = timedelta(hours=6)

    @model_validator(mode="after")
    def _default_within_max(self) -> TTLSettings:
        if self.max is not None and self.default > self.max:
            raise ValueError("ttl.default is longer than ttl.max")
        return self


class SecuritySettings(_Model):
    repos: list[str] = Field(
        default_factory=list,
        description="allowlist of repos (glob patterns); empty: the repos named in the catalog",
    )
    allow_forks: bool = False
    max_body_bytes: int = Field(5 * 1024 * 1024, ge=1024, description="the largest webhook body accepted")
    max_api_body_bytes: int = Field(
        1024 * 1024, ge=1024, description="the largest body of any other request (the API, the dashboard)",
    )
    api_tokens: list[SecretStr] = Field(
        default_factory=list,
        description="bearer tokens for the mutating API (CLI against a server); none: one is generated in state_dir",
    )


class GitHubSettings(_Model):
    api_url: str = "https://api.github.com"
    web_url: str = Field("", description="GitHub's web address; empty: derived from api_url (github.com, GHES)")
    token: SecretStr | None = None
    app_id: int | None = Field(None, ge=1, description="GitHub App authentication instead of a token")
    private_key: SecretStr | None = Field(None, description="the App's private key (PEM)")
    private_key_file: Path | None = Field(None, description="or a file holding it (a mounted Secret)")
    installation_id: int | None = Field(None, ge=1, description="the App's installation; none: looked up per "
                                                                "repository owner, one budget per installation")
    webhook_secrets: list[SecretStr] = Field(default_factory=list)
    seconds_between_writes: float = Field(1.0, ge=0)
    redeliver: bool = Field(True, description="on start and on taking over, ask GitHub to redeliver what devstack "
                                              "missed (the App's webhook, and hooks)")
    hooks: list[GitHubHookRef] = Field(default_factory=list, description="repository / organization webhooks whose "
                                                                         "missed deliveries are redelivered")

    @model_validator(mode="after")
    def _one_way_to_authenticate(self) -> GitHubSettings:
        app = [self.app_id, self.private_key or self.private_key_file]
        if any(app) or self.installation_id:
            if not all(app):
                raise ValueError("a GitHub App needs app_id, private_key (or private_key_file); installation_id is "
                                 "optional (without it each repository's installation is looked up)")
            if self.token is not None:
                raise ValueError("set either token or a GitHub App, not both")
            if self.private_key_file is not None and not self.private_key_file.is_file():
                raise ValueError(f"private_key_file {self.private_key_file} does not exist")
        return self

    def app_key(self) -> SecretStr | None:
        """The App's private key, read from private_key or private_key_file (None without an App)."""
        if self.private_key is not None:
            return self.private_key
        if self.private_key_file is not None:
            return SecretStr(self.private_key_file.read_text(encoding="utf-8"))
        return None


class GitHubHookRef(_Model):
    """A repository or organization webhook whose missed deliveries devstack asks GitHub to redeliver."""

    repo: str = Field("", description="owner/name of a repository webhook")
    org: str = Field("", description="or the organization of an organization webhook")
    id: int = Field(..., ge=1, description="the hook's id (in its settings page URL)")

    @model_validator(mode="after")
    def _one_owner(self) -> GitHubHookRef:
        if bool(self.repo) == bool(self.org):
            raise ValueError("name either repo (owner/name) or org")
        if self.repo and (not re.fullmatch(r"[A-Za-z0-9-]{1,39}/[A-Za-z0-9_.-]{1,100}", self.repo)
                          or self.repo.split("/")[1] in (".", "..")):
            raise ValueError(f"repo: {self.repo[:60]!r} is not owner/name")
        if self.org and not re.fullmatch(r"[A-Za-z0-9-]{1,39}", self.org):
            raise ValueError(f"org: {self.org[:60]!r} is not an organization name")
        return self

    @property
    def prefix(self) -> str:
        return f"/repos/{self.repo}/hooks/{self.id}" if self.repo else f"/orgs/{self.org}/hooks/{self.id}"


class GitLabSettings(_Model):
    url: str = "https://gitlab.com"
    token: SecretStr | None = None
    webhook_secrets: list[SecretStr] = Field(default_factory=list)


class ProvidersSettings(_Model):
    github: GitHubSettings = GitHubSettings()
    gitlab: GitLabSettings = GitLabSettings()


class DevSync(_Model):
    local: str = Field(".", description="a folder of the developer's checkout, relative to where devstack dev runs")
    remote: str = Field(..., description="an absolute path in the container (a writable emptyDir in dev mode)")

    @field_validator("local")
    @classmethod
    def _local(cls, value: str) -> str:
        parts = PurePosixPath(value).parts
        if not value or len(value) > 200 or value.startswith("/") or ".." in parts or any(c in value for c in ":\n\0"):
            raise ValueError(f"{value[:60]!r} is not a folder inside the checkout (relative, no '..' or ':')")
        return value

    @field_validator("remote")
    @classmethod
    def _remote(cls, value: str) -> str:
        parts = PurePosixPath(value).parts
        if (not re.fullmatch(r"/[A-Za-z0-9_./-]{1,199}", value) or ".." in parts
                or value.rstrip("/") in ("", "/tmp", "/proc", "/sys", "/dev", "/etc")):  # noqa: S108 (refused)
            raise ValueError(f"{value[:60]!r} is not an absolute path for the workdir, like /app")
        return value.rstrip("/") or value


class DevSettings(_Model):
    """``services.<name>.dev``: how the service runs in dev mode (docs/develop.md)."""

    image: str = Field("", description="the dev image (with the hot-reload tool); empty: the PR's build")
    command: list[str] = Field(..., min_length=1, max_length=50, description="the hot-reload command")
    sync: list[DevSync] = Field(default_factory=lambda: [DevSync(local=".", remote="/app")], max_length=10)
    ports: list[int] = Field(default_factory=list, max_length=10, description="forwarded; default: the service port")
    ttl: Duration = timedelta(hours=8)
    base_namespace: str = Field("", description="the base Deployment's namespace (mirrord without a preview); "
                                                "empty: hooks.secrets_namespace, else default")
    base_deployment: str = Field("", description="the base Deployment's name; empty: the service name")

    @field_validator("image")
    @classmethod
    def _image(cls, value: str) -> str:
        if value and not re.fullmatch(r"[a-z0-9][a-z0-9._/:@-]{0,254}", value):
            raise ValueError(f"{value[:60]!r} is not an image reference like node:20-alpine")
        return value

    @field_validator("command")
    @classmethod
    def _command(cls, value: list[str]) -> list[str]:
        for word in value:
            if not word or len(word) > 500 or any(c in word for c in "\n\0"):
                raise ValueError(f"{word[:40]!r}: each word of the command is one line of text")
        return value

    @field_validator("ports")
    @classmethod
    def _ports(cls, value: list[int]) -> list[int]:
        if any(not 1 <= port <= 65535 for port in value):
            raise ValueError("ports are 1 to 65535")
        return value

    @field_validator("base_namespace", "base_deployment")
    @classmethod
    def _name(cls, value: str) -> str:
        if value and not re.fullmatch(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?", value):
            raise ValueError(f"{value[:70]!r} is not a Kubernetes name (a DNS label)")
        return value


class ServiceSettings(_Model):
    repo: str = Field(..., description="where the service's PRs come from: owner/name or group/sub/project")
    provider: Literal["github", "gitlab"] = "github"
    image: str
    tag: str = Field("{sha}", description="image tag of a PR build: {sha}, {short_sha}, {branch}, {number}")
    base_tag: str = "main"
    port: int = Field(8080, ge=1, le=65535)
    base_host: str | None = Field(None, description="host of the base version, for header routing")
    depends_on: list[str] = Field(default_factory=list)
    env: dict[str, str] = Field(default_factory=dict)
    hooks: dict[str, Any] = Field(default_factory=dict)
    team: str = Field("", description="the team that owns the service (usage by team, sleep.schedules)")
    dev: DevSettings | None = Field(None, description="dev mode: hot reload from the laptop (docs/develop.md)")
    resources: dict[str, str] = Field(default_factory=dict, description="the container's requests: {cpu, memory}")
    gate: GateSettings | None = Field(None, description="deploy a head sha only once CI built it (docs/gates.md); "
                                                        "none: the global gate")

    @field_validator("team")
    @classmethod
    def _team(cls, value: str) -> str:
        return _team_name(value)

    @field_validator("resources")
    @classmethod
    def _resources(cls, value: dict[str, str]) -> dict[str, str]:
        from devstack.quantity import parse_quantity

        problems = [f"unknown key {key[:20]!r} (cpu, memory)" for key in value if key not in ("cpu", "memory")]
        for key, quantity in value.items():
            try:
                if key in ("cpu", "memory") and (len(quantity) > 20 or parse_quantity(quantity) <= 0):
                    raise ValueError
            except (ValueError, ArithmeticError):
                problems.append(f"{key}: {quantity[:20]!r} is not a positive Kubernetes quantity like 250m or 128Mi")
        if problems:
            raise ValueError("; ".join(problems))
        return value

    @field_validator("image")
    @classmethod
    def _image(cls, value: str) -> str:
        if not re.fullmatch(r"[a-z0-9][a-z0-9._/:-]{0,254}", value):
            raise ValueError("must be an image repository in lowercase, like ghcr.io/acme/payments-api (no tag)")
        return value

    @field_validator("tag")
    @classmethod
    def _tag(cls, value: str) -> str:
        try:
            value.format(sha="0" * 40, short_sha="0" * 7, branch="b", number="1")
        except (KeyError, IndexError, ValueError):
            raise ValueError("may only use {sha}, {short_sha}, {branch} and {number}") from None
        return value


class JournalSettings(_Model):
    url: str = Field("", description="postgresql://user:password@host:5432/db: the journal on PostgreSQL (several "
                                     "replicas share it); empty: SQLite in state_dir")

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        if value and not value.startswith(("postgresql://", "postgres://")):
            raise ValueError("a PostgreSQL URL (postgresql://user:password@host:5432/db), or empty for SQLite")
        return value


class WorkerSettings(_Model):
    batch_size: int = Field(1000, ge=1, le=10_000)
    poll_interval: float = Field(0.2, gt=0)
    max_attempts: int = Field(20, ge=1, description="comment commands only: git deliveries never dead-letter "
                                                     "on a transient failure")
    backoff_max: float = Field(300.0, gt=0)
    stalled_after: float = Field(300.0, gt=0, description="seconds the oldest pending delivery may wait before "
                                                          "/readyz says degraded")
    claim_lease: float = Field(300.0, gt=0, description="seconds a process's claim on the rows it applies lasts")
    refresh_interval: float = Field(5.0, gt=0, description="when idle, fetch the GitOps remote this often to see "
                                                           "what other writers (the CLI) pushed")
    nice: int = Field(10, ge=0, le=19, description="nice steps the background loops (and the git they run) give "
                                                   "way to acknowledging webhooks; 0: same priority")


class FeedbackSettings(_Model):
    max_attempts: int = Field(12, ge=1)
    backoff_max: float = Field(900.0, gt=0)
    deployments: bool = True
    max_writes_per_minute: int = Field(72, ge=1, description="per lane: slow down before GitHub's 80/minute cap")
    max_writes_per_hour: int = Field(480, ge=1, description="per lane: slow down before GitHub's 500/hour cap")


class LeaderElectionSettings(_Model):
    enabled: bool = False
    name: str = Field("devstack", description="the Lease's name")
    namespace: str = Field("", description="the Lease's namespace; empty: the Pod's own namespace")
    lease_duration: int = Field(15, ge=1)
    renew_deadline: float = Field(10.0, gt=0)
    retry_period: float = Field(2.0, gt=0)


class ArgoCDSettings(_Model):
    enabled: bool = Field(False, description="refresh the ApplicationSets after each push and watch Applications")
    namespace: str = "argocd"
    applicationsets: list[str] = Field(
        default_factory=lambda: ["devstack-previews", "devstack-preview-namespaces"]
    )
    status: bool = Field(True, description="show the Applications' live status in PR comments")


class ClusterSettings(_Model):
    kubeconfig: str | None = Field(None, description="outside a cluster: a kubeconfig path (default: in-cluster)")
    leader_election: LeaderElectionSettings = LeaderElectionSettings()
    argocd: ArgoCDSettings = ArgoCDSettings()


def _team_name(value: str) -> str:
    if value and not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}", value):
        raise ValueError(f"{value[:40]!r} is not a team name (letters, digits, '-', '_', '.'; at most 63)")
    return value


def _schedule(value: str) -> str:
    from devstack.sleep import InvalidSchedule, parse_schedule

    try:
        parse_schedule(value)
    except InvalidSchedule as exc:
        raise ValueError(str(exc)) from None
    return value


class WakeSettings(_Model):
    service: str = Field("devstack", description="devstack's own Service, where a sleeping preview's routes go")
    namespace: str = Field("devstack", description="... in this namespace")
    port: int = Field(80, ge=1, le=65535, description="... on this port (the Service port, not the container's)")

    @field_validator("service", "namespace")
    @classmethod
    def _dns_label(cls, value: str) -> str:
        if not re.fullmatch(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?", value):
            raise ValueError(f"{value[:70]!r} is not a Kubernetes name (a DNS label)")
        return value


class SleepSettings(_Model):
    enabled: bool = Field(True, description="the reaper puts idle previews to sleep (commands work either way)")
    after: Duration = timedelta(hours=2)
    outside_schedule_after: Duration = timedelta(minutes=30)
    schedule: str | None = Field(None, description="working hours; none: always working hours")
    schedules: dict[str, str] = Field(default_factory=dict, description="per team, or per repository glob")
    wake: WakeSettings = WakeSettings()
    wake_rate: int = Field(30, ge=1, le=100_000, description="wake requests per preview host per minute")
    traefik_metrics_url: str = Field("", description="Traefik's Prometheus endpoint: requests count as activity")

    @field_validator("schedule")
    @classmethod
    def _one(cls, value: str | None) -> str | None:
        return _schedule(value) if value is not None else None

    @field_validator("schedules")
    @classmethod
    def _each(cls, value: dict[str, str]) -> dict[str, str]:
        problems = []
        for key, text in value.items():
            try:
                if "/" not in key:
                    _team_name(key)
                _schedule(text)
            except ValueError as exc:
                problems.append(f"{key[:60]!r}: {exc}")
        if problems:
            raise ValueError("; ".join(problems))
        return value

    @field_validator("traefik_metrics_url")
    @classmethod
    def _url(cls, value: str) -> str:
        if value and not re.fullmatch(r"https?://[^\s]+", value):
            raise ValueError("must be an http(s) URL of Traefik's Prometheus metrics, like http://traefik.traefik:9100/metrics")
        return value


class LabelSettings(_Model):
    prefix: str = "devstack/"

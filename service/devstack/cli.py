"""``devstack serve | previews | replay | render | hook``."""

from __future__ import annotations

import argparse
import getpass
import hashlib
import hmac
import json
import logging
import os
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import requests

from devstack import __version__
from devstack import log as devstack_log
from devstack.catalog import Settings, load_settings
from devstack.errors import ConfigError, DevstackError

if TYPE_CHECKING:
    from devstack.journal import Delivery
    from devstack.runtime import Runtime
    from devstack.worker import BatchResult

logger = logging.getLogger(__name__)

DEFAULT_URL = "http://127.0.0.1:8080"


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    words = list(sys.argv[1:] if argv is None else argv)
    tail: list[str] = []
    if words[:2] == ["dev", "mirrord"] and "--" in words:  # the local command, passed on as it is
        cut = words.index("--")
        words, tail = words[:cut], words[cut + 1:]
    args = parser.parse_args(words)
    if tail:
        args.argv = tail
    devstack_log.setup(level=args.log_level or ("INFO" if args.command in ("serve", "intake") else "WARNING"),
                       fmt=args.log_format)
    try:
        code: int = args.func(args)
    except ConfigError as exc:
        print(f"devstack: {exc}", file=sys.stderr)
        return 2
    except DevstackError as exc:
        print(f"devstack: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:  # a file named on the command line that cannot be read or written
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"devstack: {where}{exc.strerror or exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("devstack: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # a bug, not a user error: one line, the traceback only when asked for
        logger.debug("unexpected error", exc_info=True)
        print(f"devstack: unexpected error: {type(exc).__name__}: {exc} (run with --log-level DEBUG for the "
              "traceback, and please report it)", file=sys.stderr)
        return 1
    return code


def unreachable(url: str, exc: requests.RequestException) -> str:
    """What to say when a devstack server cannot be reached: where, and what to do instead."""
    if isinstance(exc, requests.ConnectionError):
        why = "nothing answers there" if "refused" in str(exc).lower() else "the connection failed"
    elif isinstance(exc, requests.Timeout):
        why = "it did not answer in time"
    else:
        why = type(exc).__name__
    return (f"no devstack server is reachable at {url} ({why}): start one with `devstack serve`, pass --url, "
            "or read the GitOps repo directly with --config devstack.yaml")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="devstack", description="Preview environments per pull request.")
    parser.add_argument("--version", action="version", version=f"devstack {__version__}")
    parser.add_argument("--log-level", default=None, choices=["DEBUG", "INFO", "WARNING", "ERROR"],
                        help="default: INFO for serve, WARNING for the other commands")
    parser.add_argument("--log-format", default="text", choices=["text", "json"])
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = commands.add_parser("serve", help="run the webhook service")
    _config_argument(serve)
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    serve.add_argument("--port", type=int, default=8080, help="port to listen on (default 8080)")
    serve.set_defaults(func=cmd_serve)

    intake = commands.add_parser("intake", help="acknowledge webhooks only, in a process of their own")
    _config_argument(intake)
    intake.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    intake.add_argument("--port", type=int, default=8081, help="port to listen on (default 8081)")
    intake.set_defaults(func=cmd_intake)

    previews = commands.add_parser("previews", help="list the previews (from a server, or the GitOps repo)")
    source = previews.add_mutually_exclusive_group()
    source.add_argument("--url", help=f"a running devstack (default {DEFAULT_URL})")
    source.add_argument("--config", type=Path, help="read the GitOps repo of this configuration directly")
    previews.add_argument("--json", action="store_true", help="print JSON instead of a table")
    previews.set_defaults(func=cmd_previews)

    usage = commands.add_parser("usage", help="preview-hours and CPU/memory-hours by author, repo or team")
    source = usage.add_mutually_exclusive_group()
    source.add_argument("--url", help=f"a running devstack (default {DEFAULT_URL})")
    source.add_argument("--config", type=Path, help="read the GitOps repo of this configuration directly")
    usage.add_argument("--since", default="30d", help="how far back: 30d (default), 12h, 2w; at most 400d")
    usage.add_argument("--by", default="author", choices=("author", "repo", "team"), help="group by (default author)")
    output = usage.add_mutually_exclusive_group()
    output.add_argument("--json", action="store_true", help="print JSON instead of a table")
    output.add_argument("--csv", action="store_true", help="print CSV instead of a table")
    usage.set_defaults(func=cmd_usage)

    replay = commands.add_parser("replay", help="send a recorded webhook payload, signed, to a running server")
    replay.add_argument("file", type=Path, help="the JSON payload")
    replay.add_argument("--event", required=True, help="event name, e.g. pull_request (X-GitHub-Event)")
    replay.add_argument("--url", default=DEFAULT_URL, help=f"the server (default {DEFAULT_URL})")
    replay.add_argument("--provider", default="github", choices=["github"], help="how to sign it")
    replay.add_argument("--delivery", help="delivery id (default: a new UUID)")
    replay.add_argument("--secret", help="webhook secret (default: from --config, else the generated one)")
    _config_argument(replay)
    replay.set_defaults(func=cmd_replay)

    for op, help_text in (("up", "create or extend a preview without a PR"), ("down", "remove a preview"),
                          ("set", "set environment variables of a service in a preview"),
                          ("restart", "restart a service of a preview (a rollout)"),
                          ("sleep", "put a preview (or some of its services) to sleep: scaled to zero until woken"),
                          ("wake", "wake a sleeping preview (or some of its services)")):
        cmd = commands.add_parser(op, help=help_text)
        cmd.add_argument("feature", help="the preview's feature name")
        if op == "up":
            cmd.add_argument("--with", dest="services", action="append", default=[], metavar="SERVICE[@TAG]",
                             required=True, help="a catalog service, at a tag (default: its base_tag); repeatable")
            cmd.add_argument("--ttl", help="how long it lives: 30m, 12h, 3d, forever (where allowed)")
        elif op in ("set", "restart"):
            cmd.add_argument("service", help="the service")
        elif op in ("sleep", "wake"):
            cmd.add_argument("services", nargs="*", metavar="SERVICE", help="only these services (default: all)")
        if op == "set":
            cmd.add_argument("pairs", nargs="+", metavar="KEY=VALUE", help="environment variables")
        _target_arguments(cmd)
        cmd.set_defaults(func=cmd_change, op=op)

    dev = commands.add_parser("dev", help="dev mode: hot reload from the laptop into a preview (docs/develop.md)")
    modes = dev.add_subparsers(dest="mode", metavar="on|off|devspace|mirrord", required=True)
    for mode, help_text in (("on", "run the service's hot-reload command in the preview (services.<name>.dev)"),
                            ("off", "back to the PR's build")):
        cmd = modes.add_parser(mode, help=help_text)
        cmd.add_argument("feature", help="the preview's feature name")
        cmd.add_argument("service", help="the service")
        if mode == "on":
            cmd.add_argument("--ttl", help="how long dev mode lasts (default: services.<name>.dev.ttl, 8h)")
        _target_arguments(cmd)
        cmd.set_defaults(func=cmd_change, op="dev")
    for tool, help_text in (("devspace", "write devspace.yaml for the preview and run `devspace dev`"),
                            ("mirrord", "write .mirrord/mirrord.json and run a local process in the preview")):
        cmd = modes.add_parser(tool, help=help_text)
        cmd.add_argument("feature", help="the feature")
        cmd.add_argument("service", help="the service")
        cmd.add_argument("--out", type=Path, default=Path("."), help="where to write it (default: here)")
        _target_arguments(cmd)
        if tool == "mirrord":
            cmd.usage = "devstack dev mirrord FEATURE SERVICE [--out DIR] [--config FILE] -- COMMAND [ARG ...]"
        cmd.set_defaults(func=cmd_devtool, tool=tool, argv=[])

    for name, help_text in (("reap", "one pass: remove expired previews, warn those expiring soon, sleep idle ones"),
                            ("resync", "heal the previews from the providers' open pull requests")):
        cmd = commands.add_parser(name, help=help_text)
        cmd.add_argument("--dry-run", action="store_true", help="only say what would happen")
        _target_arguments(cmd)
        cmd.set_defaults(func=cmd_pass, task=name)

    redrive = commands.add_parser("redrive", help="put every dead letter back in the queue")
    _target_arguments(redrive)
    redrive.set_defaults(func=cmd_redrive)

    _extra_commands(commands)
    return parser


def _target_arguments(parser: argparse.ArgumentParser) -> None:
    """Where a change goes: a running server (``--url``), or straight to the GitOps repo (default)."""
    _config_argument(parser)
    parser.add_argument("--url", help="send it to a running devstack instead of writing the GitOps repo directly")
    parser.add_argument("--token", help="API token for --url (default: $DEVSTACK_API_TOKEN, else the generated one)")


def _extra_commands(commands: Any) -> None:
    """``render`` and ``hook``: their modules import their heavy dependencies (helm, psycopg, boto3)
    only when a command runs, so a plain install (no extras) still has a working CLI."""
    from devstack import bootstrap, doctor, render
    from devstack.hooks import cli as hooks_cli

    parser = commands.add_parser("bootstrap", help="make the GitOps repo ready: chart, ApplicationSets, AppProject")
    bootstrap.add_arguments(parser)
    parser.set_defaults(func=bootstrap.run)
    parser = commands.add_parser("doctor", help="check a configuration end to end: git, bootstrap, tokens, cluster")
    doctor.add_arguments(parser)
    parser.set_defaults(func=doctor.run)

    parser = commands.add_parser("render", help="print the Applications and manifests for an entry file")
    render.add_arguments(parser)
    parser.set_defaults(func=render.run)
    parser = commands.add_parser("hook", help="run a provisioning hook (inside a preview's hook Jobs)")
    hooks_cli.add_arguments(parser)
    parser.set_defaults(func=hooks_cli.run)


def _config_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config", type=Path, default=None,
        help="devstack.yaml (default: embedded defaults; DEVSTACK_* variables override either)",
    )


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from devstack.app import create_app
    from devstack.loops import short_gil_turns
    from devstack.runtime import ensure_webhook_secret, local_mode

    settings = load_settings(args.config)
    if local_mode(settings):  # never in a cluster: a generated secret is never printed to a Pod's log
        secret, created = ensure_webhook_secret(settings.state_dir)
        where = settings.state_dir / "webhook-secret"
        if created:
            print(f"Generated a webhook secret (shown once; kept in {where}):\n\n    {secret.get_secret_value()}\n",
                  flush=True)
        else:
            logger.info("using the generated webhook secret in %s", where)
    if not settings.gitops.url:
        logger.info("GitOps repo: local bare repo %s (branch %s)", settings.local_remote_path, settings.gitops.branch)
    if settings.providers.github.token is None and settings.providers.github.app_id is None:
        logger.info("no GitHub token: PR feedback is recorded locally (GET /api/feedback)")
    short_gil_turns()
    uvicorn.run(create_app(settings), host=args.host, port=args.port, log_config=None, access_log=False)
    return 0


def cmd_intake(args: argparse.Namespace) -> int:
    import uvicorn

    from devstack.intake import create_intake_app
    from devstack.loops import short_gil_turns

    settings = load_settings(args.config)
    short_gil_turns()
    uvicorn.run(create_intake_app(settings), host=args.host, port=args.port, log_config=None, access_log=False)
    return 0


def cmd_replay(args: argparse.Namespace) -> int:
    body = args.file.read_bytes()
    secret = args.secret or _default_secret(args.config)
    delivery = args.delivery or str(uuid.uuid4())
    digest = hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    headers = {
        "Content-Type": "application/json",
        "X-GitHub-Event": args.event,
        "X-GitHub-Delivery": delivery,
        "X-Hub-Signature-256": f"sha256={digest}",
        "User-Agent": f"devstack-replay/{__version__}",
    }
    try:
        response = requests.post(f"{args.url.rstrip('/')}/webhooks/github", data=body, headers=headers, timeout=30)
    except requests.RequestException as exc:
        print(f"devstack: {unreachable(args.url, exc)}", file=sys.stderr)
        return 1
    print(f"{response.status_code} {response.text}")
    return 0 if response.ok else 1


def cmd_change(args: argparse.Namespace) -> int:
    """``up | down | set | restart``: one Command, through the journal and the planner like any event."""
    settings = load_settings(args.config)
    env: dict[str, str] = {}
    for pair in getattr(args, "pairs", []):
        key, sep, value = pair.partition("=")
        if not sep:
            raise ConfigError(f"{pair[:40]!r} is not KEY=VALUE")
        env[key] = value
    services = getattr(args, "services", None) or ([args.service] if getattr(args, "service", None) else [])
    request = {"op": args.op, "feature": args.feature, "services": services, "env": env,
               "ttl": getattr(args, "ttl", None), "actor": f"cli:{getpass.getuser()}",
               "mode": getattr(args, "mode", "") if args.op == "dev" else ""}
    if args.url:
        response = _api(args, settings, "post", "/api/commands", json=request)
        delivery = response.json()["delivery"]
        outcome = _wait_for(args, settings, delivery)
        print(f"{response.json()['feature']}: {_outcome_words(outcome)}")
        return 0 if not outcome.startswith(("dead", "ignored")) else 1
    from devstack.commands import cli_command

    try:
        command = cli_command(catalog=settings, **{k: v for k, v in request.items() if k != "actor"},
                              actor=str(request["actor"]))
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    with _local_runtime(settings) as runtime:
        runtime.journal.record(delivery_id=command.delivery_id, provider="devstack", event=f"command:{command.op}",
                               pr=command.key, payload=command.to_json())
        results = _drain(runtime)
        row = _finished(runtime, command.delivery_id)
    outcome = row.outcome if row else "unknown"
    if row is not None and row.status == "pending":
        print(f"{command.feature}: still pending (queued in the journal; applied when the GitOps repo can be "
              "written)")
        return 1
    if row is not None and row.status == "dead":
        print(f"devstack: {command.feature}: failed: {row.last_error}", file=sys.stderr)
        return 1
    commits = [r.commit for r in results if r.commit]
    if commits:
        where = f" (commit {commits[-1][:12]})"
    elif row is not None and row.status == "done" and not results:
        where = " (applied by another devstack process on this journal)"
    else:
        where = " (nothing changed)"
    print(f"{command.feature}: {_outcome_words(outcome)}{where}")
    return 0 if outcome.startswith("applied") else 1


def _outcome_words(outcome: str) -> str:
    """``applied: TTL capped at 2w (...)`` reads ``applied, TTL capped at 2w (...)``: applied, with a note."""
    return "applied, " + outcome[len("applied: "):] if outcome.startswith("applied: ") else outcome


def cmd_pass(args: argparse.Namespace) -> int:
    """``reap`` / ``resync``: one pass, with a summary; applied through the journal unless --dry-run."""
    settings = load_settings(args.config)
    if args.url:
        response = _api(args, settings, "post", f"/api/{args.task}", params={"dry_run": str(args.dry_run).lower()})
        print(response.json()["summary"])
        return 0
    with _local_runtime(settings) as runtime:
        if args.task == "reap":
            print(runtime.reap(dry_run=args.dry_run))
        else:
            print(runtime.resyncer.run_once(dry_run=args.dry_run).format())
        if not args.dry_run:
            for result in _drain(runtime):
                if result.commit:
                    print(f"commit {result.commit[:12]}: {', '.join(result.changed)}")
    return 0


def cmd_redrive(args: argparse.Namespace) -> int:
    settings = load_settings(args.config)
    if args.url:
        count = _api(args, settings, "post", "/api/redrive").json()["redriven"]
    else:
        from devstack.journal import Journal

        journal = Journal(settings.journal_target)
        try:
            count = journal.redrive()
        finally:
            journal.close()
    print(f"{count} dead letter(s) back in the queue")
    return 0


@contextmanager
def _local_runtime(settings: Settings) -> Iterator[Runtime]:
    """The journal of ``state_dir`` and a clone of its own (a running server keeps its clone)."""
    from devstack.runtime import Runtime

    with tempfile.TemporaryDirectory(prefix="devstack-cli-") as tmp:
        runtime = Runtime.build(settings, clone_path=Path(tmp) / "clone")
        try:
            runtime.worker.start()
            yield runtime
        finally:
            runtime.close()


def _finished(runtime: Runtime, delivery_id: str, *, timeout: float = 60.0) -> Delivery | None:
    """The journal row of ``delivery_id`` once it is finished: a server running on the same journal
    may have claimed it first (one writer per row), then it is that server that applies it."""
    deadline = time.monotonic() + timeout
    row = runtime.journal.get(delivery_id)
    while row is not None and row.status == "pending" and time.monotonic() < deadline:
        time.sleep(0.1)
        _drain(runtime)
        row = runtime.journal.get(delivery_id)
    return row


def _drain(runtime: Runtime) -> list[BatchResult]:
    results = []
    while (result := runtime.worker.run_once()) is not None:
        results.append(result)
        if result.retrying:
            raise DevstackError(f"the GitOps repo could not be written: {result.error}; the change stays queued in "
                                "the journal and is applied when the remote is back (by the server, or the next "
                                "command)")
    runtime.sender.run_once()
    return results


def _api(args: argparse.Namespace, settings: Settings, method: str, path: str, **kwargs: Any) -> requests.Response:
    token = args.token or os.environ.get("DEVSTACK_API_TOKEN") or _generated_token(settings)
    try:
        response = requests.request(method, args.url.rstrip("/") + path, timeout=30,
                                    headers={"Authorization": f"Bearer {token}"}, **kwargs)
    except requests.RequestException as exc:
        raise DevstackError(unreachable(args.url, exc)) from None
    if not response.ok:
        raise DevstackError(f"{args.url}{path}: {response.status_code} {response.text[:500]}")
    return response


def _generated_token(settings: Settings) -> str:
    if settings.security.api_tokens:
        return settings.security.api_tokens[0].get_secret_value()
    path = settings.state_dir / "api-token"
    if not path.exists():
        raise ConfigError(
            f"no API token: pass --token, set DEVSTACK_API_TOKEN, or run where the server's state_dir is ({path})"
        )
    return path.read_text(encoding="utf-8").strip()


def _wait_for(args: argparse.Namespace, settings: Settings, delivery: str, timeout: float = 60.0) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        row = _api(args, settings, "get", f"/api/deliveries/{delivery}").json()
        if row["status"] != "pending":
            return f"{row['status']}: {row['outcome'] or row['error']}" if row["status"] != "done" else row["outcome"]
        time.sleep(0.2)
    return "still pending (the server will apply it)"


def _default_secret(config: Path | None) -> str:
    settings = load_settings(config)
    if settings.providers.github.webhook_secrets:
        return settings.providers.github.webhook_secrets[0].get_secret_value()
    path = settings.state_dir / "webhook-secret"
    if not path.exists():
        raise ConfigError(f"no webhook secret: pass --secret, or start `devstack serve` once to generate {path}")
    return path.read_text(encoding="utf-8").strip()


def cmd_previews(args: argparse.Namespace) -> int:
    if args.config is not None:
        data = _previews_from_repo(load_settings(args.config))
    else:
        url = (args.url or DEFAULT_URL).rstrip("/")
        try:
            response = requests.get(f"{url}/api/previews", timeout=30)
        except requests.RequestException as exc:
            print(f"devstack: {unreachable(url, exc)}", file=sys.stderr)
            return 1
        if not response.ok:
            print(f"devstack: {url}/api/previews answered {response.status_code} {response.text[:200]}",
                  file=sys.stderr)
            return 1
        data = response.json()
    if args.json:
        print(json.dumps(data, indent=2))
    else:
        print(format_previews(data))
    return 0


def cmd_devtool(args: argparse.Namespace) -> int:
    """``devstack dev devspace | mirrord``: write the tool's configuration, then run the tool."""
    from devstack import devtools

    settings = load_settings(args.config)
    data = _api(args, settings, "get", "/api/previews").json() if args.url else _previews_from_repo(settings)
    previews = devtools.previews_of(data)
    out = args.out.resolve()
    if args.tool == "devspace":
        path = devtools.write_devspace(settings=settings, previews=previews, feature=args.feature,
                                       service=args.service, out=out)
        print(f"wrote {path}")
        return devtools.run_tool(tool="devspace", argv=["dev"], cwd=out, install=devtools.DEVSPACE_INSTALL,
                                 written=path)
    command = list(args.argv)
    path, preview = devtools.write_mirrord(settings=settings, previews=previews, feature=args.feature,
                                           service=args.service, out=out)
    target = "the preview" if preview else "the base Deployment, only the requests of this feature"
    print(f"wrote {path} (target: {target})")
    if not command:
        raise ConfigError("give the local command after --, like: devstack dev mirrord demo ledger -- npm start")
    return devtools.run_tool(tool="mirrord", argv=["exec", "-f", str(path), "--", *command], cwd=out,
                             install=devtools.MIRRORD_INSTALL, written=path)


def cmd_usage(args: argparse.Namespace) -> int:
    from devstack import usage

    window = usage.window(args.since)  # a user error before anything is read
    if args.config is not None:
        settings = load_settings(args.config)
        report = _usage_from_repo(settings, window=window, by=args.by).view()
    else:
        url = (args.url or DEFAULT_URL).rstrip("/")
        try:
            response = requests.get(f"{url}/api/usage", params={"since": args.since, "by": args.by}, timeout=120)
        except requests.RequestException as exc:
            print(f"devstack: {unreachable(url, exc)}", file=sys.stderr)
            return 1
        if not response.ok:
            print(f"devstack: {url}/api/usage answered {response.status_code} {response.text[:200]}", file=sys.stderr)
            return 1
        report = response.json()
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    parsed = usage.Report.from_view(report)
    print(parsed.csv() if args.csv else parsed.table(), end="" if args.csv else "\n")
    return 0


def _usage_from_repo(settings: Settings, *, window: Any, by: str) -> Any:
    from datetime import UTC, datetime

    from devstack import usage
    from devstack.gitops import GitStore

    with (
        tempfile.TemporaryDirectory(prefix="devstack-usage-") as tmp,
        GitStore(url=settings.gitops_url, branch=settings.gitops.branch, path=settings.gitops.path,
                 workdir=Path(tmp) / "clone") as store,
    ):
        store.read()  # clones
        return usage.UsageCache().report(repo=store.workdir, settings=settings, window=window, by=by,
                                         now=datetime.now(UTC))


def _previews_from_repo(settings: Settings) -> list[dict[str, Any]]:
    from devstack.app import previews_view
    from devstack.gitops import GitStore
    from devstack.worker import EntryCache

    with (
        tempfile.TemporaryDirectory(prefix="devstack-previews-") as tmp,
        GitStore(url=settings.gitops_url, branch=settings.gitops.branch, path=settings.gitops.path,
                 workdir=Path(tmp) / "clone") as store,
    ):
        cache = EntryCache()
        return previews_view(cache.decode(store.read()), quarantined=cache.quarantined)


def _state(service: dict[str, Any]) -> str:
    """awake, asleep since ..., or dev mode until ... (docs/sleep.md, docs/develop.md)."""
    if service.get("asleepSince"):
        return f"asleep since {service['asleepSince']}"
    if service.get("devUntil"):
        return f"dev until {service['devUntil']}"
    return "awake"


def format_previews(data: list[dict[str, Any]]) -> str:
    rows = [("FEATURE", "SERVICE", "URL", "IMAGE", "PR", "EXPIRES", "STATE")]
    for preview in data:
        if preview.get("quarantined"):
            rows.append((preview["feature"], "-", "quarantined: " + str(preview["quarantined"])[:120], "", "", "", ""))
        for service in preview["services"]:
            rows.append((preview["feature"], service["service"], service["url"], service["image"].rsplit("/", 1)[-1],
                         service["pr"], preview["expiresAt"], _state(service)))
    if len(rows) == 1:
        return "no previews"
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in rows)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

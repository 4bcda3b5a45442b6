"""Dev mode (issue 18): the planner's dev on / off and its expiry, the chart's dev variant (real Helm
engine, strict validation), the ApplicationSet's ignoreDifferences (Application CRD), the DevSpace and
mirrord files (their published JSON schemas, in ../shared), and the CLI with the tools missing or stood
in for by scripts on PATH. DevSpace and mirrord themselves cannot run here (no cluster)."""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from devstack import devmode, entries, render
from devstack.catalog import Settings, load_settings
from devstack.cli import main
from devstack.commands import Parsed, Reply, cli_command, parse_comment
from devstack.events import Command
from devstack.planner import Plan, plan
from devstack.reaper import Reaper, Sleeper
from tests.conftest import catalog, remote_files
from tests.render_helpers import ARGOCD_DIR, validate_all, validate_manifest
from tests.test_chart import entry_values
from tests.test_chart import render as render_chart
from tests.test_planner import SHA2, T0, event

SHARED = Path(__file__).resolve().parents[2] / "shared"
SCHEMAS = SHARED / "schemas" / "devtools"
NODE = {"image": "node:20-alpine", "command": ["nodemon", "server.js"], "sync": [{"local": ".", "remote": "/app"}]}
GO = {"command": ["CompileDaemon", "-command=./app"], "sync": [{"local": ".", "remote": "/src"}], "ports": [8080, 2345]}


def _catalog() -> dict[str, Any]:
    services = catalog()
    services["payments-api"] = {**services["payments-api"], "dev": NODE, "base_host": "payments-api.example.com",
                                "hooks": {"redis": True}}
    services["ledger"] = {**services["ledger"], "dev": {**GO, "base_namespace": "ledger", "ttl": "4h"}}
    return services


@pytest.fixture
def settings(make_settings: Callable[..., Settings]) -> Settings:
    return make_settings(services=_catalog())


def applied(settings: Settings, *events: Any, state: Mapping[str, Sequence[dict[str, Any]]] | None = None,
            now: datetime = T0) -> Plan:
    result = plan(events=list(events), entries=state or {}, catalog=settings, now=now)
    for feature, elements in result.changed.items():
        if elements is not None:
            entries.validate(feature, elements)
    return result


def dev(service: str, mode: str = "on", *, minutes: int = 10, **args: str) -> Command:
    return Command(delivery_id=f"dev-{mode}-{minutes}", op="dev", feature="login-fix", services=((service, ""),),
                   args=(("mode", mode), *args.items()), actor="test", received_at=T0 + timedelta(minutes=minutes))


@pytest.fixture
def stack(settings: Settings) -> dict[str, list[dict[str, Any]]]:
    return applied(settings, event(labels=("devstack/with:ledger",))).entries


def by_service(state: Mapping[str, Sequence[dict[str, Any]]]) -> dict[str, dict[str, Any]]:
    return {e["service"]: e for e in state["login-fix"]}


# --- the planner ---------------------------------------------------------------------------------


def test_dev_on_survives_a_push_and_off_returns_exactly_to_the_prs_build(
    settings: Settings, stack: dict[str, list[dict[str, Any]]],
) -> None:
    on = applied(settings, dev("payments-api"), state=stack)
    assert on.decisions[0].outcome == "applied"
    element = by_service(on.entries)["payments-api"]
    assert element["dev"] == {"since": "2026-11-20T10:10:00Z", "expiresAt": "2026-11-20T18:10:00Z"}  # 8 h default
    assert element["values"]["dev"] == {"command": ["nodemon", "server.js"], "workdirs": ["/app"],
                                        "image": "node:20-alpine"}
    assert "dev" not in by_service(on.entries)["ledger"]
    pushed = applied(settings, event(action="synchronize", head_sha=SHA2, delivery_id="p",
                                     labels=("devstack/with:ledger",)), state=on.entries)
    after = by_service(pushed.entries)["payments-api"]
    assert after["values"]["image"]["tag"] == SHA2 and after["dev"] == element["dev"]  # still syncing
    off = applied(settings, dev("payments-api", "off", minutes=20), state=on.entries)
    assert off.entries == stack  # exactly the entry it was
    again = applied(settings, dev("payments-api", "off", minutes=30), state=off.entries)
    assert again.decisions[0].reason == "not in dev mode"


def test_refusals_say_why_and_the_ttl_is_capped(make_settings: Callable[..., Settings]) -> None:
    services = _catalog()
    services["meet"] = {**services["meet"]}  # no dev block
    settings = make_settings(services=services, ttl={"max": "2h", "default": "1h"})
    state = applied(settings, event(labels=("devstack/with:ledger", "devstack/with:meet"))).entries
    missing = applied(settings, Command(delivery_id="x", op="dev", feature="login-fix",
                                        services=(("drone-test", ""),), args=(("mode", "on"),), received_at=T0),
                      state=state)
    assert missing.decisions[0].reason.startswith("no preview of drone-test in this stack")
    no_block = applied(settings, Command(delivery_id="y", op="dev", feature="login-fix", services=(("meet", ""),),
                                         args=(("mode", "on"),), received_at=T0), state=state)
    assert no_block.decisions[0].reason == "meet has no dev block in the catalog (services.meet.dev)"
    capped = applied(settings, dev("ledger", minutes=0, ttl="3d"), state=state)
    assert by_service(capped.entries)["ledger"]["dev"]["expiresAt"] == "2026-11-20T12:00:00Z"  # ttl.max 2h
    default = applied(settings, dev("ledger", minutes=0), state=state)
    assert by_service(default.entries)["ledger"]["dev"]["expiresAt"] == "2026-11-20T12:00:00Z"  # its 4h, capped


def test_the_reaper_ends_dev_mode_unless_it_was_extended_and_sleep_leaves_it_alone(
    settings: Settings, stack: dict[str, list[dict[str, Any]]], tmp_path: Path,
) -> None:
    from devstack.journal import Journal

    on = applied(settings, dev("ledger"), state=stack).entries
    journal = Journal(tmp_path / "journal.sqlite3")
    journal.touch("login-fix", T0.timestamp())  # the PR opened then: idle since
    assert by_service(on)["ledger"]["dev"]["expiresAt"] == "2026-11-20T14:10:00Z"  # ledger's dev.ttl: 4h
    late = T0 + timedelta(hours=5)
    summary = Reaper(settings=settings, journal=journal, entries=lambda: on, clock=lambda: late).run_once()
    assert summary.dev_ended == [("login-fix", "ledger", "2026-11-20T14:10:00Z")]
    [row] = [d for d in journal.recent(limit=10) if d.event == "command:dev"]
    command = Command.from_dict(json.loads(row.payload))
    ended = applied(settings, command, state=on, now=late)
    assert "dev" not in by_service(ended.entries)["ledger"] and ended.entries == stack
    # dev mode turned on again meanwhile (a new expiry): the reaper's old command changes nothing
    renewed = applied(settings, dev("ledger", minutes=200), state=on).entries
    assert applied(settings, command, state=renewed, now=late).decisions[0].reason == "extended meanwhile"
    # the sleep pass never puts a service in dev mode to sleep, however idle
    sleeper = Sleeper(settings=settings, journal=journal, entries=lambda: on, clock=lambda: late)
    asleep = sleeper.run_once(dry_run=True)
    assert ("login-fix", "ledger") not in [(f, s) for f, s, _ in asleep.sleeping]
    assert ("login-fix", "payments-api") in [(f, s) for f, s, _ in asleep.sleeping]
    journal.close()


def test_an_entry_whose_dev_fields_disagree_is_refused(
    settings: Settings, stack: dict[str, list[dict[str, Any]]],
) -> None:
    on = applied(settings, dev("ledger"), state=stack).entries["login-fix"]
    broken = [dict(e) for e in on]
    index = next(i for i, e in enumerate(broken) if e["service"] == "ledger")
    broken[index] = {**broken[index], "values": {k: v for k, v in broken[index]["values"].items() if k != "dev"}}
    with pytest.raises(Exception, match=r"dev and values\.dev disagree"):
        entries.validate("login-fix", broken)
    hostile = [dict(e) for e in on]
    hostile[index] = {**hostile[index], "values": {**hostile[index]["values"],
                                                   "dev": {"command": ["x"], "workdirs": ["/app/../etc"]}}}
    with pytest.raises(Exception, match="workdirs"):
        entries.validate("login-fix", hostile)


@pytest.mark.parametrize(("block", "says"), [
    ({"command": []}, "command"),
    ({"command": ["x\nrm -rf /"]}, "one line"),
    ({"command": ["x"], "sync": [{"local": "../secrets", "remote": "/app"}]}, "inside the checkout"),
    ({"command": ["x"], "sync": [{"local": ".", "remote": "/etc"}]}, "absolute path"),
    ({"command": ["x"], "sync": [{"local": ".", "remote": "app"}]}, "absolute path"),
    ({"command": ["x"], "image": "Node:20 ; curl"}, "image reference"),
    ({"command": ["x"], "ports": [0]}, "1 to 65535"),
    ({"command": ["x"], "base_namespace": "Payments!"}, "Kubernetes name"),
])
def test_a_bad_dev_block_is_a_config_error_by_key_path(tmp_path: Path, block: dict[str, Any], says: str) -> None:
    from devstack.errors import ConfigError

    config = tmp_path / "devstack.yaml"
    services = catalog()
    services["ledger"] = {**services["ledger"], "dev": block}
    config.write_text(yaml.safe_dump({"services": services}))
    with pytest.raises(ConfigError) as raised:
        load_settings(config)
    assert "services.ledger.dev" in str(raised.value) and says in str(raised.value), str(raised.value)


def test_comment_and_cli_commands_name_dev(settings: Settings) -> None:
    services = sorted(settings.services)
    assert parse_comment("/devstack dev ledger", services=services) == Parsed(name="dev", arg="ledger")
    assert parse_comment("/devstack dev off ledger", services=services) == Parsed(name="dev-off", arg="ledger")
    for body in ("/devstack dev", "/devstack dev ledger payments-api", "/devstack dev ../etc"):
        assert isinstance(parse_comment(body, services=services), Reply), body
    command = cli_command(op="dev", feature="login-fix", catalog=settings, services=["ledger"], mode="on")
    assert (command.op, command.services, dict(command.args)["mode"]) == ("dev", (("ledger", ""),), "on")
    with pytest.raises(ValueError, match="has no dev block"):
        cli_command(op="dev", feature="x", catalog=settings, services=["meet"], mode="on")
    with pytest.raises(ValueError, match="on or off and one service"):
        cli_command(op="dev", feature="x", catalog=settings, services=["ledger", "payments-api"], mode="on")


# --- the chart and the ApplicationSet --------------------------------------------------------------


def test_the_dev_variant_renders_and_validates_strictly() -> None:
    helm = pytest.importorskip("helm_python")
    del helm
    values = entry_values(replicas=3, dev={"command": ["nodemon", "server.js"], "workdirs": ["/app", "/srv/cache"],
                                          "image": "node:20-alpine"})
    objects = render_chart(values)
    assert "Kubernetes" in validate_all(objects)[0]
    deployment = next(o for o in objects if o["kind"] == "Deployment")
    assert deployment["spec"]["replicas"] == 1  # one replica, whatever the platform sets
    pod = deployment["spec"]["template"]["spec"]
    [container] = pod["containers"]
    assert container["image"] == "node:20-alpine" and container["command"] == ["nodemon", "server.js"]
    assert container["workingDir"] == "/app"
    assert "livenessProbe" not in container and container["readinessProbe"]["failureThreshold"] == 60
    assert container["securityContext"]["readOnlyRootFilesystem"] is True  # only the workdirs are writable
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    assert mounts == {"/tmp": "tmp", "/app": "dev-workdir-0", "/srv/cache": "dev-workdir-1"}
    assert {v["name"]: v for v in pod["volumes"]}["dev-workdir-1"] == {"name": "dev-workdir-1", "emptyDir": {}}
    plain = next(o for o in render_chart(entry_values()) if o["kind"] == "Deployment")
    assert "command" not in plain["spec"]["template"]["spec"]["containers"][0]
    own_build = next(o for o in render_chart(entry_values(dev={"command": ["x"], "workdirs": ["/app"]}))
                     if o["kind"] == "Deployment")
    assert own_build["spec"]["template"]["spec"]["containers"][0]["image"].startswith("ghcr.io/acme/payments-api:")
    asleep = next(o for o in render_chart(entry_values(dev={"command": ["x"], "workdirs": ["/app"]}, sleep=True,
                                                       wake={"service": "devstack", "namespace": "devstack",
                                                             "port": 80})) if o["kind"] == "Deployment")
    assert asleep["spec"]["replicas"] == 0


def test_a_dev_entry_expands_to_an_application_that_ignores_the_deployments_drift(
    settings: Settings, stack: dict[str, list[dict[str, Any]]],
) -> None:
    pytest.importorskip("helm_python")
    on = by_service(applied(settings, dev("payments-api"), state=stack).entries)
    appset = ARGOCD_DIR / "applicationset.yaml"
    app = render.expand_applicationset(on["payments-api"], appset_path=appset,
                                       filename=f"previews/{entries.entry_filename('login-fix')}")
    assert validate_manifest(app) == "CRD argoproj.io/Application"
    assert app["spec"]["ignoreDifferences"] == [{"group": "apps", "kind": "Deployment", "name": "payments-api",
                                                 "jsonPointers": ["/spec/replicas", "/spec/template"]}]
    assert "RespectIgnoreDifferences=true" in app["spec"]["syncPolicy"]["syncOptions"]
    assert app["spec"]["syncPolicy"]["automated"] == {"prune": True, "selfHeal": True}  # the rest still heals
    assert {"CreateNamespace=true", "FailOnSharedResource=true"} <= set(app["spec"]["syncPolicy"]["syncOptions"])
    other = render.expand_applicationset(on["ledger"], appset_path=appset,
                                         filename=f"previews/{entries.entry_filename('login-fix')}")
    assert "ignoreDifferences" not in other["spec"]
    assert "RespectIgnoreDifferences=true" not in other["spec"]["syncPolicy"]["syncOptions"]
    manifests = render.render_application(app, chart_dir=Path(__file__).resolve().parents[1] / "templates" /
                                          "feature-release")
    validate_all(manifests)


# --- DevSpace and mirrord --------------------------------------------------------------------------


def _schema(name: str) -> jsonschema.Draft202012Validator:
    path = SCHEMAS / name
    if not path.is_file():
        pytest.skip(f"{path} is absent (../shared is not checked out beside the project)")
    return jsonschema.Draft202012Validator(json.loads(path.read_text()))


SHAPES = {  # service -> has a preview in login-fix
    "payments-api": True,  # dev image, base host, a redis hook
    "ledger": True,  # no dev image, two ports, a base namespace
}


@pytest.mark.parametrize("service", sorted(SHAPES))
def test_devspace_files_validate_against_devspace_s_schema(settings: Settings, service: str) -> None:
    validator = _schema("devspace-schema.json")
    config = devmode.devspace_config(settings=settings, feature="login-fix", service=service)
    errors = sorted(validator.iter_errors(config), key=str)
    assert not errors, [e.message for e in errors[:3]]
    [(name, pod)] = config["dev"].items()
    assert name == service and pod["namespace"] == "preview-login-fix"
    assert pod["labelSelector"] == {"devstack.io/feature": "login-fix", "devstack.io/service": service}
    spec = settings.services[service].dev
    assert spec is not None
    assert pod["command"] == spec.command
    assert [s["path"] for s in pod["sync"]] == [f"{s.local}:{s.remote}" for s in spec.sync]
    assert pod["ports"] == [{"port": f"{p}:{p}"} for p in (spec.ports or [settings.services[service].port])]
    assert ("devImage" in pod) == bool(spec.image)


@pytest.mark.parametrize(("service", "preview"), [("payments-api", True), ("payments-api", False),
                                                  ("ledger", True), ("ledger", False), ("meet", False)])
def test_mirrord_files_validate_and_target_the_preview_or_only_the_features_requests_on_base(
    settings: Settings, service: str, preview: bool,
) -> None:
    validator = _schema("mirrord-schema.json")
    config = devmode.mirrord_config(settings=settings, feature="login-fix", service=service, preview=preview)
    errors = sorted(validator.iter_errors(config), key=str)
    assert not errors, [e.message for e in errors[:3]]
    incoming = config["feature"]["network"]["incoming"]
    assert incoming["mode"] == "steal" and config["feature"]["network"]["dns"] is True
    assert config["feature"]["network"]["outgoing"] is True and config["feature"]["env"] is True
    if preview:
        assert config["target"] == {"path": f"deployment/{service}", "namespace": "preview-login-fix"}
        assert "http_filter" not in incoming  # the whole preview pod's traffic
        return
    namespace = "ledger" if service == "ledger" else "default"
    assert config["target"] == {"path": f"deployment/{service}", "namespace": namespace}
    filters = [re.compile(f["header"]) for f in incoming["http_filter"]["any_of"]]

    def stolen(header: str) -> bool:
        return any(f.search(header) for f in filters)

    assert stolen("x-devstack-feature: login-fix") and stolen("X-Devstack-Feature: login-fix")
    assert stolen("baggage: userId=7, devstack-feature=login-fix;ttl=3, other=x")
    assert stolen("baggage: devstack-feature = login-fix")
    for other in ("x-devstack-feature: login-fix-2", "x-devstack-feature: login-fixx", "x-devstack-feature: login",
                  "baggage: devstack-feature=login-fix2", "baggage: not-devstack-feature=login-fix",
                  "x-other: login-fix"):
        assert not stolen(other), other


def test_a_feature_name_with_regex_characters_is_escaped_in_the_filter(settings: Settings) -> None:
    config = devmode.mirrord_config(settings=settings, feature="a.b", service="ledger", preview=False)
    [header, _] = [re.compile(f["header"]) for f in config["feature"]["network"]["incoming"]["http_filter"]["any_of"]]
    assert header.search("x-devstack-feature: a.b") and not header.search("x-devstack-feature: aXb")


# --- the CLI ---------------------------------------------------------------------------------------


@pytest.fixture
def config(tmp_path: Path, bare_remote: str) -> Path:
    path = tmp_path / "devstack.yaml"
    path.write_text(yaml.safe_dump({"state_dir": str(tmp_path / "state"), "domain": "preview.example.com",
                                    "gitops": {"url": bare_remote, "path": "previews"},
                                    "hooks": {"secrets_namespace": "payments"}, "services": _catalog()}))
    return path


def _only_git(tmp_path: Path) -> str:
    """A PATH with git (devstack needs it) and nothing else: neither devspace nor mirrord."""
    git = shutil.which("git")
    assert git is not None
    only = tmp_path / "only-git"
    only.mkdir(exist_ok=True)
    (only / "git").symlink_to(git)
    return str(only)


def _tool(bin_dir: Path, name: str) -> Path:
    """A stand-in for the tool on PATH: records its arguments and working directory."""
    bin_dir.mkdir(exist_ok=True)
    script = bin_dir / name
    script.write_text(f'#!/bin/sh\necho "$PWD" > "{bin_dir}/{name}.cwd"\necho "$@" > "{bin_dir}/{name}.args"\nexit 7\n')
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    return script


def test_the_cli_turns_dev_mode_on_and_off_through_the_gitops_repo(
    config: Path, bare_remote: str, capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["up", "demo", "--with", "ledger", "--config", str(config)]) == 0
    assert main(["dev", "on", "demo", "ledger", "--ttl", "2h", "--config", str(config)]) == 0
    assert "demo: applied" in capsys.readouterr().out
    [element] = remote_files(bare_remote)["demo"]
    assert element["values"]["dev"]["command"] == ["CompileDaemon", "-command=./app"]
    assert main(["dev", "off", "demo", "ledger", "--config", str(config)]) == 0
    [element] = remote_files(bare_remote)["demo"]
    assert "dev" not in element and "dev" not in element["values"]
    assert main(["dev", "on", "demo", "meet", "--config", str(config)]) == 2
    assert "meet has no dev block" in capsys.readouterr().err


def test_devspace_without_devspace_writes_the_file_and_says_how_to_install_it(
    config: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("PATH", _only_git(tmp_path))
    assert main(["up", "demo", "--with", "ledger", "--config", str(config)]) == 0
    capsys.readouterr()
    out = tmp_path / "checkout"
    assert main(["dev", "devspace", "demo", "ledger", "--out", str(out), "--config", str(config)]) == 2
    printed = capsys.readouterr()
    assert f"wrote {out / 'devspace.yaml'}" in printed.out
    assert "devspace is not installed" in printed.err and "devspace.sh" in printed.err
    assert "Traceback" not in printed.err
    written = yaml.safe_load((out / "devspace.yaml").read_text())
    assert not list(_schema("devspace-schema.json").iter_errors(written))
    assert written["dev"]["ledger"]["namespace"] == "preview-demo"
    # no preview of that service in the feature: DevSpace would have nothing to sync into
    assert main(["dev", "devspace", "demo", "payments-api", "--out", str(out), "--config", str(config)]) == 2
    assert "demo has no preview of payments-api" in capsys.readouterr().err


def test_devspace_and_mirrord_run_when_installed(
    config: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
) -> None:
    bin_dir = tmp_path / "bin"
    _tool(bin_dir, "devspace")
    _tool(bin_dir, "mirrord")
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    assert main(["up", "demo", "--with", "ledger", "--config", str(config)]) == 0
    out = tmp_path / "checkout"
    assert main(["dev", "devspace", "demo", "ledger", "--out", str(out), "--config", str(config)]) == 7
    assert (bin_dir / "devspace.args").read_text().split() == ["dev"]
    assert (bin_dir / "devspace.cwd").read_text().strip() == str(out.resolve())
    # payments-api has no preview in demo: mirrord targets its base Deployment, with the feature filter
    code = main(["dev", "mirrord", "demo", "payments-api", "--out", str(out), "--config", str(config),
                 "--", "npm", "start"])
    assert code == 7
    mirrord_json = out / ".mirrord" / "mirrord.json"
    assert (bin_dir / "mirrord.args").read_text().split() == ["exec", "-f", str(mirrord_json.resolve()), "--",
                                                              "npm", "start"]
    written = json.loads(mirrord_json.read_text())
    assert written["target"] == {"path": "deployment/payments-api", "namespace": "payments"}  # hooks' base ns
    assert "http_filter" in written["feature"]["network"]["incoming"]
    assert "the base Deployment" in capsys.readouterr().out
    assert main(["dev", "mirrord", "demo", "ledger", "--out", str(out), "--config", str(config)]) == 2
    assert "give the local command after --" in capsys.readouterr().err


def test_mirrord_without_mirrord_is_exit_2_with_the_file_written(
    config: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("PATH", _only_git(tmp_path))
    assert main(["up", "demo", "--with", "ledger", "--config", str(config)]) == 0
    out = tmp_path / "checkout"
    assert main(["dev", "mirrord", "demo", "ledger", "--out", str(out), "--config", str(config), "--", "go",
                 "run", "."]) == 2
    err = capsys.readouterr().err
    assert "mirrord is not installed" in err and "metalbear.com" in err
    written = json.loads((out / ".mirrord" / "mirrord.json").read_text())
    assert written["target"] == {"path": "deployment/ledger", "namespace": "preview-demo"}  # the preview


def test_the_dashboard_and_the_api_show_dev_mode(settings: Settings, stack: dict[str, list[dict[str, Any]]]) -> None:
    from devstack.app import previews_view
    from devstack.dashboard import _previews

    on = applied(settings, dev("payments-api"), state=stack).entries
    [preview] = _previews(on, now=T0, outbox={}, titles={}, live=None)
    views = {s.service: s for s in preview.services}
    assert views["payments-api"].dev_until == "2026-11-20 18:10:00Z" and views["ledger"].dev_until == ""
    [api] = previews_view(on)
    assert {s["service"]: s["devUntil"] for s in api["services"]} == {"ledger": None,
                                                                       "payments-api": "2026-11-20T18:10:00Z"}
    from devstack.cli import format_previews

    table = format_previews([api]).splitlines()
    assert table[0].split()[-1] == "STATE"
    assert table[1].endswith("awake") and table[2].endswith("dev until 2026-11-20T18:10:00Z")


def test_dev_mode_through_the_api_of_a_running_server(
    settings: Settings, serve: Callable[..., Any], bare_remote: str,
) -> None:
    import httpx

    server = serve(settings)
    token = server.app.state.api_tokens[0].get_secret_value()
    auth = {"Authorization": f"Bearer {token}"}

    def command(body: dict[str, Any]) -> httpx.Response:
        return httpx.post(server.url + "/api/commands", json=body, headers=auth, timeout=30)

    assert command({"op": "up", "feature": "demo", "services": ["ledger"]}).status_code == 202
    server.wait_idle()
    assert command({"op": "dev", "feature": "demo", "services": ["ledger"], "mode": "on", "ttl": "1h"}).status_code \
        == 202
    server.wait_idle()
    [element] = remote_files(bare_remote)["demo"]
    assert element["values"]["dev"]["workdirs"] == ["/src"]
    refused = command({"op": "dev", "feature": "demo", "services": ["ledger"], "mode": "sideways"})
    assert refused.status_code == 400 and "dev takes on or off and one service" in refused.json()["error"]
    assert command({"op": "dev", "feature": "demo", "services": ["ledger"], "mode": "off"}).status_code == 202
    server.wait_idle()
    [element] = remote_files(bare_remote)["demo"]
    assert "dev" not in element["values"]

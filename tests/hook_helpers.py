"""Shared test helpers of the hook tests: a real PostgreSQL, a moto server, a stand-in Kubernetes API.

Each is a context manager, wrapped by module-scoped fixtures in the test modules:

* :func:`running_postgres` runs ``initdb`` and ``postgres`` from the installed PostgreSQL (found on
  PATH, in /usr/local/bin or /usr/lib/postgresql/*/bin) in a throwaway directory, on 127.0.0.1 and a
  free port, as the ``postgres`` (or ``nobody``) user when the tests run as root; skips when no
  PostgreSQL is installed.
* :func:`running_moto` runs ``moto.server.ThreadedMotoServer`` on 127.0.0.1.
* :class:`FakeKube` serves get/create/replace/delete of Secrets and ConfigMaps
  (``/api/v1/namespaces/{ns}/{secrets|configmaps}[/{name}]``), optionally enforcing Role rules.
* :class:`MemoryStore` is an in-memory :class:`devstack.hooks.kube.ObjectStore`.
"""

from __future__ import annotations

import argparse
import contextlib
import glob
import json
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

LOOPBACK = "127.0.0.1"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


# --------------------------------------------------------------------------------------- PostgreSQL


def find_postgres_bin() -> Path | None:
    """The directory holding ``initdb`` and ``postgres``, or None."""
    candidates: list[Path] = []
    found = shutil.which("initdb")
    if found:
        candidates.append(Path(found))
    candidates.append(Path("/usr/local/bin/initdb"))
    versions = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/initdb"),
        key=lambda p: [int(x) for x in re.findall(r"\d+", p)],
        reverse=True,
    )
    candidates.extend(Path(p) for p in versions)
    for initdb in candidates:
        if not initdb.exists():
            continue
        bindir = initdb.resolve().parent
        if (bindir / "postgres").exists():
            return bindir
    return None


@dataclass(frozen=True)
class PostgresServer:
    host: str
    port: int
    superuser: str
    superpassword: str
    admin_user: str
    admin_password: str
    control: PostgresControl | None = field(default=None, compare=False)  # stop and start it (a restart)

    def connect(self, *, user: str, password: str, dbname: str = "postgres", **kwargs: Any) -> Any:
        import psycopg

        return psycopg.connect(
            host=self.host, port=self.port, user=user, password=password, dbname=dbname,
            connect_timeout=5, sslmode="disable", **kwargs,
        )

    def superconnect(self, dbname: str = "postgres") -> Any:
        return self.connect(user=self.superuser, password=self.superpassword, dbname=dbname, autocommit=True)


class PostgresControl:
    """Stops and starts the server process of :func:`running_postgres` (same data, same port)."""

    def __init__(self, start: Any) -> None:
        self._start = start
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.proc = self._start()

    def stop(self) -> None:
        """A fast shutdown (SIGINT): sessions are cut, in-flight transactions rolled back."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None


def _run_as() -> tuple[int, int] | None:
    """(uid, gid) of the user to run PostgreSQL as when we are root (it refuses root), else None."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        try:
            entry = pwd.getpwnam(name)
        except KeyError:
            continue
        return entry.pw_uid, entry.pw_gid
    pytest.skip("running as root and there is no 'postgres' or 'nobody' user to run PostgreSQL as")


@contextlib.contextmanager
def running_postgres(tmp_path: Path) -> Iterator[PostgresServer]:
    """A throwaway PostgreSQL server; an admin role with CREATEDB/CREATEROLE (not superuser)."""
    bindir = find_postgres_bin()
    if bindir is None:
        reason = ("PostgreSQL is not installed (no initdb/postgres on PATH, /usr/local/bin or "
                  "/usr/lib/postgresql/*/bin); install the Debian package 'postgresql'")
        if os.environ.get("CI"):
            pytest.fail(f"{reason}: CI must run the hook tests against a real server (.ci/run installs it)")
        pytest.skip(reason)
    owner = _run_as()
    # As root, pytest's tmp_path (under a 0700 root directory) is not reachable by the postgres user.
    base = Path(tempfile.mkdtemp(prefix="devstack-pg-")) if owner else tmp_path / "pg"
    base.mkdir(exist_ok=True)
    data = base / "data"
    pwfile = base / "pwfile"
    superpassword = uuid.uuid4().hex
    pwfile.write_text(superpassword + "\n")
    kwargs: dict[str, Any] = {}
    if owner:
        for path in (base, pwfile):
            os.chown(path, *owner)
        kwargs = {"user": owner[0], "group": owner[1], "extra_groups": []}
    env = {**os.environ, "LC_ALL": "C", "LANG": "C"}
    log = base / "postgres.log"
    port = free_port()

    def start() -> subprocess.Popen[bytes]:
        with open(log, "ab") as log_file:
            return subprocess.Popen(
                [str(bindir / "postgres"), "-D", str(data), "-p", str(port),
                 "-c", f"listen_addresses={LOOPBACK}", "-c", "unix_socket_directories=",
                 "-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off",
                 "-c", "max_connections=40", "-c", "shared_buffers=16MB"],
                stdout=log_file, stderr=subprocess.STDOUT, env=env, cwd=base, **kwargs,
            )

    control = PostgresControl(start)
    try:
        subprocess.run(
            [str(bindir / "initdb"), "-D", str(data), "-U", "pgsuper", f"--pwfile={pwfile}",
             "--auth=scram-sha-256", "-E", "UTF8", "--locale=C", "--no-sync"],
            check=True, capture_output=True, env=env, cwd=base, timeout=120, **kwargs,
        )
        control.start()
        server = PostgresServer(
            host=LOOPBACK, port=port, superuser="pgsuper", superpassword=superpassword,
            admin_user="devstack_admin", admin_password=uuid.uuid4().hex, control=control,
        )
        assert control.proc is not None
        _wait_ready(server, control.proc, log)
        from psycopg import sql

        with server.superconnect() as conn:
            conn.execute(
                sql.SQL("CREATE ROLE devstack_admin LOGIN CREATEDB CREATEROLE PASSWORD {}").format(
                    sql.Literal(server.admin_password)
                )
            )
        yield server
    except subprocess.CalledProcessError as exc:
        pytest.fail(f"initdb failed: {exc.stderr.decode(errors='replace')[-2000:]}")
    finally:
        control.stop()  # a fast shutdown
        if owner:
            shutil.rmtree(base, ignore_errors=True)


def _wait_ready(server: PostgresServer, proc: subprocess.Popen[bytes], log: Path) -> None:
    import psycopg

    deadline = time.monotonic() + 30
    while True:
        if proc.poll() is not None:
            pytest.fail(f"postgres exited with {proc.returncode}: {log.read_text(errors='replace')[-2000:]}")
        try:
            with server.superconnect():
                return
        except psycopg.OperationalError:
            if time.monotonic() > deadline:
                pytest.fail(f"postgres did not start in 30 s: {log.read_text(errors='replace')[-2000:]}")
            time.sleep(0.1)


# ------------------------------------------------------------------------------------------- moto


@contextlib.contextmanager
def running_moto() -> Iterator[str]:
    """``moto`` in server mode on loopback; yields its URL."""
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address=LOOPBACK, port=port, verbose=False)
    server.start()
    try:
        yield f"http://{LOOPBACK}:{port}"
    finally:
        server.stop()


# --------------------------------------------------------------------------------- Kubernetes API

_PATH = re.compile(r"^/api/v1/namespaces/([^/]+)/(secrets|configmaps)(?:/([^/]+))?$")
_VERBS = {"GET": "get", "POST": "create", "PUT": "update", "PATCH": "patch", "DELETE": "delete"}


def _rule_allows(rule: Mapping[str, Any], *, verb: str, resource: str, name: str | None) -> bool:
    if "" not in rule.get("apiGroups", []) and "*" not in rule.get("apiGroups", []):
        return False
    if resource not in rule.get("resources", []) and "*" not in rule.get("resources", []):
        return False
    if verb not in rule.get("verbs", []) and "*" not in rule.get("verbs", []):
        return False
    restricted = rule.get("resourceNames")
    if restricted:
        # As in Kubernetes: a rule limited by name never authorizes create (or list).
        return name is not None and verb not in ("create", "list") and name in restricted
    return True


@dataclass
class FakeKube:
    """A tiny stand-in for the Kubernetes API: Secrets and ConfigMaps, in memory, on loopback.

    ``rules``: when set, ``{namespace: [Role rules]}`` that every request must satisfy (403 otherwise),
    like RBAC for a ServiceAccount bound to those Roles.
    """

    rules: dict[str, list[dict[str, Any]]] | None = None
    fail_next: list[int] = field(default_factory=list)  # statuses to answer the next requests with
    missing_namespaces: set[str] = field(default_factory=set)  # creating objects there gives 404
    objects: dict[tuple[str, str, str], dict[str, Any]] = field(default_factory=dict)
    requests: list[tuple[str, str, str, str | None]] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _version: int = 0
    _server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        assert self._server is not None
        return f"http://{LOOPBACK}:{self._server.server_address[1]}"

    def put(self, resource: str, namespace: str, body: dict[str, Any]) -> dict[str, Any]:
        """Store an object directly (test setup), as the API server would after a create."""
        with self._lock:
            return self._store(resource, namespace, json.loads(json.dumps(body)), uid=None)

    def get(self, resource: str, namespace: str, name: str) -> dict[str, Any] | None:
        with self._lock:
            found = self.objects.get((resource, namespace, name))
            return json.loads(json.dumps(found)) if found else None

    def writes(self) -> list[tuple[str, str, str, str | None]]:
        return [r for r in self.requests if r[0] != "GET"]

    def _store(
        self, resource: str, namespace: str, body: dict[str, Any], *, uid: str | None
    ) -> dict[str, Any]:
        self._version += 1
        meta = body.setdefault("metadata", {})
        meta["namespace"] = namespace
        meta["uid"] = uid or str(uuid.uuid4())
        meta["resourceVersion"] = str(self._version)
        meta.setdefault("creationTimestamp", "2026-01-01T00:00:00Z")
        body.setdefault("apiVersion", "v1")
        body.setdefault("kind", "Secret" if resource == "secrets" else "ConfigMap")
        self.objects[(resource, namespace, meta["name"])] = body
        return body

    def handle(self, method: str, path: str, body: dict[str, Any] | None) -> tuple[int, dict[str, Any]]:
        match = _PATH.match(path.split("?", 1)[0])
        if not match:
            return 404, _status(404, "NotFound", f"no route {path}")
        namespace, resource, name = match.groups()
        verb = _VERBS.get(method, "?")
        if method == "GET" and name is None:
            verb = "list"
        with self._lock:
            self.requests.append((method, namespace, resource, name))
            if self.fail_next:
                code = self.fail_next.pop(0)
                return code, _status(code, "ServiceUnavailable", "try again later")
            if self.rules is not None and not any(
                _rule_allows(rule, verb=verb, resource=resource, name=name)
                for rule in self.rules.get(namespace, [])
            ):
                return 403, _status(403, "Forbidden", f'{resource} "{name}" is forbidden: cannot {verb} '
                                    f'resource "{resource}" in namespace "{namespace}"')
            key = (resource, namespace, name or "")
            current = self.objects.get(key)
            if method == "GET" and name is not None:
                if current is None:
                    return 404, _status(404, "NotFound", f'{resource} "{name}" not found')
                return 200, current
            if method == "POST" and namespace in self.missing_namespaces:
                return 404, _status(404, "NotFound", f'namespaces "{namespace}" not found')
            if method == "POST" and name is None and body is not None:
                key = (resource, namespace, body["metadata"]["name"])
                if key in self.objects:
                    return 409, _status(409, "AlreadyExists", f'{resource} "{key[2]}" already exists')
                body["metadata"].pop("resourceVersion", None)
                return 201, self._store(resource, namespace, body, uid=None)
            if method == "PUT" and name is not None and body is not None:
                if current is None:
                    return 404, _status(404, "NotFound", f'{resource} "{name}" not found')
                sent = body.get("metadata", {}).get("resourceVersion")
                if sent and sent != current["metadata"]["resourceVersion"]:
                    return 409, _status(409, "Conflict", "the object has been modified")
                if resource == "secrets" and body.get("type", "Opaque") != current.get("type", "Opaque"):
                    return 422, _status(422, "Invalid", "type: Invalid value: field is immutable")
                return 200, self._store(resource, namespace, body, uid=current["metadata"]["uid"])
            if method == "DELETE" and name is not None:
                if current is None:
                    return 404, _status(404, "NotFound", f'{resource} "{name}" not found')
                del self.objects[key]
                return 200, _status(200, "", "deleted", status="Success")
        return 405, _status(405, "MethodNotAllowed", f"{method} {path}")

    @contextlib.contextmanager
    def running(self) -> Iterator[FakeKube]:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def _serve(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                body = json.loads(raw) if raw else None
                status, payload = fake.handle(self.command, self.path, body)
                out = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(out)))
                self.end_headers()
                self.wfile.write(out)

            do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = _serve

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer((LOOPBACK, 0), Handler)
        thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )
        thread.start()
        try:
            yield self
        finally:
            self._server.shutdown()
            self._server.server_close()
            thread.join(5)

    def api_client(self) -> Any:
        from kubernetes import client

        configuration = client.Configuration(host=self.url)
        return client.ApiClient(configuration)

    def write_kubeconfig(self, path: Path) -> Path:
        path.write_text(json.dumps({
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "fake", "cluster": {"server": self.url}}],
            "users": [{"name": "hook", "user": {"token": "not-a-real-token"}}],
            "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "hook"}}],
            "current-context": "fake",
        }))
        return path


def _status(code: int, reason: str, message: str, *, status: str = "Failure") -> dict[str, Any]:
    return {"kind": "Status", "apiVersion": "v1", "status": status, "message": message,
            "reason": reason, "code": code}


# --------------------------------------------------------------------------------- object store


@dataclass
class MemoryStore:
    """An in-memory ObjectStore that counts its writes."""

    secrets: dict[tuple[str, str], dict[str, str]] = field(default_factory=dict)
    config_maps: dict[tuple[str, str], dict[str, str]] = field(default_factory=dict)
    labels: dict[tuple[str, str, str], dict[str, str]] = field(default_factory=dict)
    writes: int = 0

    def read_secret(self, *, namespace: str, name: str) -> dict[str, str] | None:
        found = self.secrets.get((namespace, name))
        return dict(found) if found is not None else None

    def apply_secret(
        self, *, namespace: str, name: str, data: Mapping[str, str], labels: Mapping[str, str]
    ) -> bool:
        return self._apply(self.secrets, "secret", namespace, name, data, labels)

    def apply_config_map(
        self, *, namespace: str, name: str, data: Mapping[str, str], labels: Mapping[str, str]
    ) -> bool:
        return self._apply(self.config_maps, "configmap", namespace, name, data, labels)

    def _apply(
        self, target: dict[tuple[str, str], dict[str, str]], kind: str, namespace: str, name: str,
        data: Mapping[str, str], labels: Mapping[str, str],
    ) -> bool:
        unchanged = target.get((namespace, name)) == dict(data)
        if unchanged and self.labels.get((kind, namespace, name)) == dict(labels):
            return False
        target[(namespace, name)] = dict(data)
        self.labels[(kind, namespace, name)] = dict(labels)
        self.writes += 1
        return True


# ------------------------------------------------------------------------------------------- CLI


def run_cli(monkeypatch: pytest.MonkeyPatch, hook: str, action: str, env: Mapping[str, str]) -> int:
    """``devstack hook <hook> <action>`` as the CLI runs it: parsed arguments, the process environment."""
    from devstack.hooks import cli

    for key in list(os.environ):
        if key.startswith("DEVSTACK_HOOK_"):
            monkeypatch.delenv(key)
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)  # never the in-cluster config
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    parser = argparse.ArgumentParser(prog="devstack hook")
    cli.add_arguments(parser)
    return cli.run(parser.parse_args([hook, action]))

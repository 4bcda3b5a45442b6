"""A stand-in Kubernetes API on loopback for tests/test_cluster.py (stdlib ``http.server``, state in memory).

It serves what :mod:`devstack.cluster` calls, the way the API server answers it, so a real
``kubernetes.client.ApiClient`` can be pointed at it:

* ``coordination.k8s.io/v1`` ``leases``: get, create (409 AlreadyExists), update (the
  ``resourceVersion`` sent must be the current one, else 409 Conflict; MicroTime fields must have
  exactly six fraction digits, as ``metav1.MicroTime`` parses them), delete;
* ``argoproj.io/v1alpha1`` ``applicationsets``: get, and patch with ``application/merge-patch+json``
  only (RFC 7386);
* ``authorization.k8s.io/v1`` ``selfsubjectaccessreviews``: create, answered from ``rules`` (below) the
  way requests are authorized (kept in ``reviews``, not in ``requests``);
* ``argoproj.io/v1alpha1`` ``applications``: get, list with ``labelSelector`` (``k``, ``!k``, ``k=v``,
  ``k==v``, ``k!=v``), and watch (``watch=true``: a chunked stream of ADDED/MODIFIED/DELETED events
  after ``resourceVersion``, ended after ``timeoutSeconds``; a resourceVersion older than
  ``gone_before`` gets an ERROR event with a 410 Status, as after etcd compaction).

Every request is recorded (:class:`Request`). Optional behaviour for fault injection: ``rules``
(``{namespace: [Role rules]}``, enforced like RBAC for one ServiceAccount: 403 otherwise),
``fail_next`` (statuses to answer the next requests of a resource with), ``partitioned`` (clients,
named by the ``X-Stand-In-Client`` header :meth:`KubeStandIn.api_client` sets, whose requests all get
503), ``stalled`` (clients whose requests hang for ``stall_seconds`` before they are served), and
``before_write`` (called before a write is applied: a test plays another writer there).
"""

from __future__ import annotations

import contextlib
import copy
import json
import re
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

LOOPBACK = "127.0.0.1"
CLIENT_HEADER = "X-Stand-In-Client"

_PATH = re.compile(
    r"^/apis/(?P<group>[^/]+)/(?P<version>[^/]+)/namespaces/(?P<namespace>[^/]+)/(?P<plural>[^/]+)"
    r"(?:/(?P<name>[^/]+))?$"
)
KINDS: dict[tuple[str, str, str], str] = {
    ("coordination.k8s.io", "v1", "leases"): "Lease",
    ("argoproj.io", "v1alpha1", "applicationsets"): "ApplicationSet",
    ("argoproj.io", "v1alpha1", "applications"): "Application",
}
# The verbs the API server serves for each resource here (what devstack may call).
SERVED: dict[str, set[str]] = {
    "leases": {"get", "create", "update", "delete"},
    "applicationsets": {"get", "list", "patch"},
    "applications": {"get", "list", "watch"},
}
_SSAR = "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews"
_MICROTIME = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{6}(Z|[+-]\d{2}:\d{2})$")
_VERBS = {"GET": "get", "POST": "create", "PUT": "update", "PATCH": "patch", "DELETE": "delete"}


@dataclass(frozen=True)
class Request:
    method: str
    verb: str
    group: str
    plural: str
    namespace: str
    name: str | None
    query: dict[str, str]
    content_type: str
    body: Any
    client: str
    status: int


def status_body(code: int, reason: str, message: str, *, status: str = "Failure") -> dict[str, Any]:
    return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": status, "message": message,
            "reason": reason, "code": code}


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = copy.deepcopy(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def selector_matches(selector: str, labels: Mapping[str, str]) -> bool:
    """Equality- and existence-based label selectors (what devstack sends)."""
    for requirement in filter(None, (part.strip() for part in selector.split(","))):
        if "!=" in requirement:
            key, value = (s.strip() for s in requirement.split("!=", 1))
            if labels.get(key) == value:
                return False
        elif "=" in requirement:
            key, value = (s.strip() for s in requirement.replace("==", "=").split("=", 1))
            if labels.get(key) != value:
                return False
        elif requirement.startswith("!"):
            if requirement[1:].strip() in labels:
                return False
        elif requirement not in labels:
            return False
    return True


def _rule_allows(rule: Mapping[str, Any], *, group: str, verb: str, resource: str, name: str | None) -> bool:
    if group not in rule.get("apiGroups", []) and "*" not in rule.get("apiGroups", []):
        return False
    if resource not in rule.get("resources", []) and "*" not in rule.get("resources", []):
        return False
    if verb not in rule.get("verbs", []) and "*" not in rule.get("verbs", []):
        return False
    restricted = rule.get("resourceNames")
    if restricted:
        # As in Kubernetes: a rule limited by name never authorizes create, list or watch.
        return name is not None and verb not in ("create", "list", "watch") and name in restricted
    return True


def _lease_problems(body: Mapping[str, Any]) -> list[str]:
    spec = body.get("spec") or {}
    problems = []
    for key in ("acquireTime", "renewTime"):
        value = spec.get(key)
        if value is not None and not (isinstance(value, str) and _MICROTIME.match(value)):
            problems.append(f'spec.{key}: Invalid value: "{value}": parsing time as RFC3339Micro failed')
    duration = spec.get("leaseDurationSeconds")
    if duration is not None and (not isinstance(duration, int) or isinstance(duration, bool) or duration <= 0):
        problems.append(f"spec.leaseDurationSeconds: Invalid value: {duration!r}: must be greater than 0")
    transitions = spec.get("leaseTransitions")
    if transitions is not None and (not isinstance(transitions, int) or transitions < 0):
        problems.append(f"spec.leaseTransitions: Invalid value: {transitions!r}: must be >= 0")
    holder = spec.get("holderIdentity")
    if holder is not None and not isinstance(holder, str):
        problems.append("spec.holderIdentity: must be a string")
    return problems


@dataclass
class KubeStandIn:
    """The stand-in API server. Use ``with KubeStandIn().running() as kube: ...``."""

    rules: dict[str, list[dict[str, Any]]] | None = None
    fail_next: dict[str, list[int]] = field(default_factory=dict)  # plural -> statuses for its next requests
    partitioned: set[str] = field(default_factory=set)
    stalled: set[str] = field(default_factory=set)  # clients whose requests hang for stall_seconds first
    stall_seconds: float = 3.0
    before_write: Callable[[KubeStandIn, str, str, str | None], None] | None = None  # (stand-in, verb, plural, name)
    gone_before: int = 0
    objects: dict[tuple[str, str, str], dict[str, Any]] = field(default_factory=dict)  # (plural, ns, name)
    requests: list[Request] = field(default_factory=list)
    reviews: list[dict[str, Any]] = field(default_factory=list)  # SelfSubjectAccessReview attributes asked
    events: list[tuple[int, str, str, dict[str, Any]]] = field(default_factory=list)  # (rv, type, plural, obj)
    _cond: threading.Condition = field(default_factory=lambda: threading.Condition(threading.RLock()))
    _version: int = 100
    _server: ThreadingHTTPServer | None = None
    _closing: bool = False

    # --- direct access (test setup and assertions) ------------------------------------------------

    @property
    def url(self) -> str:
        assert self._server is not None
        return f"http://{LOOPBACK}:{self._server.server_address[1]}"

    def put(self, plural: str, namespace: str, obj: Mapping[str, Any]) -> dict[str, Any]:
        """Create or replace an object as a controller would (Argo CD writing an Application)."""
        with self._cond:
            body = copy.deepcopy(dict(obj))
            name = body["metadata"]["name"]
            current = self.objects.get((plural, namespace, name))
            uid = current["metadata"]["uid"] if current else None
            return self._store(plural, namespace, body, uid=uid, event="MODIFIED" if current else "ADDED")

    def delete(self, plural: str, namespace: str, name: str) -> None:
        with self._cond:
            current = self.objects.pop((plural, namespace, name))
            self._version += 1
            gone = copy.deepcopy(current)
            gone["metadata"]["resourceVersion"] = str(self._version)
            self.events.append((self._version, "DELETED", plural, gone))
            self._cond.notify_all()

    def get(self, plural: str, namespace: str, name: str) -> dict[str, Any] | None:
        with self._cond:
            found = self.objects.get((plural, namespace, name))
            return copy.deepcopy(found) if found is not None else None

    def calls(self, *, plural: str | None = None, verb: str | None = None) -> list[Request]:
        with self._cond:
            return [r for r in self.requests
                    if (plural is None or r.plural == plural) and (verb is None or r.verb == verb)]

    def verbs_used(self) -> set[tuple[str, str, str]]:
        """``(apiGroup, resource, verb)`` of every request made so far."""
        with self._cond:
            return {(r.group, r.plural, r.verb) for r in self.requests}

    def api_client(self, *, client: str = "") -> Any:
        """A real ``kubernetes.client.ApiClient`` pointed at the stand-in (``client`` names it)."""
        from kubernetes import client as k8s

        configuration = k8s.Configuration(host=self.url)
        api = k8s.ApiClient(configuration)
        if client:
            api.set_default_header(CLIENT_HEADER, client)
        return api

    # --- the API ----------------------------------------------------------------------------------

    def _store(
        self, plural: str, namespace: str, body: dict[str, Any], *, uid: str | None, event: str
    ) -> dict[str, Any]:
        self._version += 1
        meta = body.setdefault("metadata", {})
        meta["namespace"] = namespace
        meta["uid"] = uid or str(uuid.uuid4())
        meta["resourceVersion"] = str(self._version)
        meta.setdefault("creationTimestamp", "2026-11-20T10:00:00Z")
        meta.setdefault("generation", 1)
        group, version, kind = next((g, v, k) for (g, v, p), k in KINDS.items() if p == plural)
        body["apiVersion"] = f"{group}/{version}"
        body["kind"] = kind
        self.objects[(plural, namespace, meta["name"])] = body
        self.events.append((self._version, event, plural, copy.deepcopy(body)))
        self._cond.notify_all()
        return copy.deepcopy(body)

    def handle(
        self, *, method: str, path: str, content_type: str, body: Any, client: str
    ) -> tuple[int, Any]:
        """One request; returns (status, JSON body), or (200, ("watch", args)) for a watch."""
        parts = urlsplit(path)
        query = {key: values[-1] for key, values in parse_qs(parts.query).items()}
        if parts.path == _SSAR and method == "POST":
            return self._review(body)
        match = _PATH.match(parts.path)
        verb = _VERBS.get(method, "?")
        if match is None or (match["group"], match["version"], match["plural"]) not in KINDS:
            return 404, status_body(404, "NotFound", f"the server could not find the requested resource ({path})")
        group, plural, namespace, name = match["group"], match["plural"], match["namespace"], match["name"]
        if method == "GET" and name is None:
            verb = "watch" if query.get("watch") in ("true", "1", "True") else "list"

        if client and client in self.stalled:
            time.sleep(self.stall_seconds)  # an API server that does not answer (a cut-off node)

        def answer(status: int, payload: Any) -> tuple[int, Any]:
            self.requests.append(Request(method=method, verb=verb, group=group, plural=plural, namespace=namespace,
                                         name=name, query=query, content_type=content_type, body=body,
                                         client=client, status=status))
            return status, payload

        with self._cond:
            if client and client in self.partitioned:
                return answer(503, status_body(503, "ServiceUnavailable", "the server is unreachable"))
            queued = self.fail_next.get(plural)
            if queued:
                code = queued.pop(0)
                return answer(code, status_body(code, "ServiceUnavailable", "try again later"))
            if self.rules is not None and not any(
                _rule_allows(rule, group=group, verb=verb, resource=plural, name=name)
                for rule in self.rules.get(namespace, [])
            ):
                return answer(403, status_body(
                    403, "Forbidden", f'{plural}.{group} "{name or ""}" is forbidden: User '
                    f'"system:serviceaccount:devstack:devstack" cannot {verb} resource "{plural}" in API group '
                    f'"{group}" in the namespace "{namespace}"'))
            if verb not in SERVED[plural]:
                return answer(405, status_body(405, "MethodNotAllowed", f"{verb} is not supported here"))
            if verb in ("create", "update", "patch", "delete") and self.before_write is not None:
                self.before_write(self, verb, plural, name)
            key = (plural, namespace, name or "")
            current = self.objects.get(key)
            kind = KINDS[(group, match["version"], plural)]
            if verb == "get":
                if current is None:
                    return answer(404, status_body(404, "NotFound", f'{plural}.{group} "{name}" not found'))
                return answer(200, copy.deepcopy(current))
            if verb == "list":
                selector = query.get("labelSelector", "")
                items = [copy.deepcopy(o) for (p, ns, _), o in sorted(self.objects.items())
                         if p == plural and ns == namespace
                         and selector_matches(selector, o["metadata"].get("labels") or {})]
                return answer(200, {"apiVersion": f"{group}/{match['version']}", "kind": f"{kind}List",
                                    "metadata": {"resourceVersion": str(self._version)}, "items": items})
            if verb == "watch":
                since = int(query.get("resourceVersion") or self._version)
                if since < self.gone_before:
                    return answer(200, ("gone", since))
                return answer(200, ("watch", (plural, namespace, query.get("labelSelector", ""), since,
                                              float(query.get("timeoutSeconds") or 30))))
            if verb == "create":
                if not isinstance(body, dict) or not (body.get("metadata") or {}).get("name"):
                    return answer(422, status_body(422, "Invalid", "metadata.name: Required value"))
                new_key = (plural, namespace, body["metadata"]["name"])
                if new_key in self.objects:
                    return answer(409, status_body(409, "AlreadyExists",
                                                   f'{plural}.{group} "{new_key[2]}" already exists'))
                problems = _lease_problems(body) if plural == "leases" else []
                if problems:
                    return answer(422, status_body(422, "Invalid", "; ".join(problems)))
                stored = copy.deepcopy(body)
                stored["metadata"].pop("resourceVersion", None)
                return answer(201, self._store(plural, namespace, stored, uid=None, event="ADDED"))
            if current is None:
                return answer(404, status_body(404, "NotFound", f'{plural}.{group} "{name}" not found'))
            if verb == "update":
                if not isinstance(body, dict) or (body.get("metadata") or {}).get("name") != name:
                    return answer(400, status_body(400, "BadRequest", "the name of the object does not match"))
                sent = str((body.get("metadata") or {}).get("resourceVersion") or "")
                if sent != current["metadata"]["resourceVersion"]:
                    return answer(409, status_body(
                        409, "Conflict", f'Operation cannot be fulfilled on {plural}.{group} "{name}": the object '
                        "has been modified; please apply your changes to the latest version and try again"))
                problems = _lease_problems(body) if plural == "leases" else []
                if problems:
                    return answer(422, status_body(422, "Invalid", "; ".join(problems)))
                return answer(200, self._store(plural, namespace, copy.deepcopy(body),
                                               uid=current["metadata"]["uid"], event="MODIFIED"))
            if verb == "patch":
                if content_type.split(";")[0].strip() != "application/merge-patch+json":
                    return answer(415, status_body(415, "UnsupportedMediaType",
                                                   f"the body of the request was in an unknown format: {content_type}"))
                patched = merge_patch(current, body)
                patched["metadata"]["name"] = name
                return answer(200, self._store(plural, namespace, patched, uid=current["metadata"]["uid"],
                                               event="MODIFIED"))
            if verb == "delete":
                self.delete(plural, namespace, name or "")
                return answer(200, status_body(200, "", "deleted", status="Success"))
        return answer(405, status_body(405, "MethodNotAllowed", f"{method} {path}"))

    def _review(self, body: Any) -> tuple[int, Any]:
        """A SelfSubjectAccessReview: may the caller do ``spec.resourceAttributes``? Answered from ``rules``
        exactly as requests are authorized (no rules: everything is allowed)."""
        spec = (body or {}).get("spec") if isinstance(body, dict) else None
        attributes = (spec or {}).get("resourceAttributes") if isinstance(spec, dict) else None
        if not isinstance(attributes, dict) or not attributes.get("verb") or not attributes.get("resource"):
            return 422, status_body(422, "Invalid", "spec.resourceAttributes: verb and resource are required")
        with self._cond:
            allowed = self.rules is None or any(
                _rule_allows(rule, group=attributes.get("group", ""), verb=attributes["verb"],
                             resource=attributes["resource"], name=attributes.get("name") or None)
                for rule in self.rules.get(attributes.get("namespace", ""), [])
            )
            self.reviews.append(dict(attributes))
        status: dict[str, Any] = {"allowed": allowed}
        if allowed:
            status["reason"] = "RBAC: allowed by a Role"
        return 201, {"apiVersion": "authorization.k8s.io/v1", "kind": "SelfSubjectAccessReview", "metadata": {},
                     "spec": spec, "status": status}

    def stream_events(
        self, write: Callable[[bytes], None], *, plural: str, namespace: str, selector: str, since: float,
        timeout: float,
    ) -> None:
        """Write watch events (one JSON object per line) after ``since`` until ``timeout`` passes."""
        deadline = time.monotonic() + timeout
        last = since
        while not self._closing and time.monotonic() < deadline:
            with self._cond:
                fresh = [e for e in self.events if e[0] > last]
                if not fresh:
                    self._cond.wait(min(0.05, max(0.0, deadline - time.monotonic())))
                    continue
            for version, kind, event_plural, obj in fresh:
                last = version
                if event_plural != plural or obj["metadata"].get("namespace") != namespace:
                    continue
                if not selector_matches(selector, obj["metadata"].get("labels") or {}):
                    continue
                write(json.dumps({"type": kind, "object": obj}).encode() + b"\n")

    # --- the server -------------------------------------------------------------------------------

    @contextlib.contextmanager
    def running(self) -> Iterator[KubeStandIn]:
        stand_in = self

        class Handler(BaseHTTPRequestHandler):
            def _serve(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                try:
                    body = json.loads(raw) if raw else None
                except ValueError:
                    self._send(400, status_body(400, "BadRequest", "the body is not JSON"))
                    return
                status, payload = stand_in.handle(
                    method=self.command, path=self.path, content_type=self.headers.get("Content-Type", ""),
                    body=body, client=self.headers.get(CLIENT_HEADER, ""),
                )
                if isinstance(payload, tuple) and payload[0] == "gone":
                    self._chunked([json.dumps({"type": "ERROR", "object": status_body(
                        410, "Expired", f"too old resource version: {payload[1]} ({stand_in.gone_before})")}).encode()
                        + b"\n"])
                elif isinstance(payload, tuple) and payload[0] == "watch":
                    plural, namespace, selector, since, timeout = payload[1]
                    self._start_chunked()
                    try:
                        stand_in.stream_events(self._chunk, plural=plural, namespace=namespace, selector=selector,
                                               since=since, timeout=timeout)
                        self._chunk(b"")
                    except OSError:  # the client went away (a stopped watch)
                        pass
                else:
                    with contextlib.suppress(OSError):  # the client gave up waiting (a stalled request)
                        self._send(status, payload)

            def _send(self, status: int, payload: Any) -> None:
                out = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(out)))
                self.end_headers()
                self.wfile.write(out)

            def _start_chunked(self) -> None:
                self.protocol_version = "HTTP/1.1"
                self.close_connection = True
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Transfer-Encoding", "chunked")
                self.send_header("Connection", "close")
                self.end_headers()
                self.wfile.flush()

            def _chunk(self, data: bytes) -> None:
                self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
                self.wfile.flush()

            def _chunked(self, lines: list[bytes]) -> None:
                self._start_chunked()
                for line in lines:
                    self._chunk(line)
                self._chunk(b"")

            do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = _serve

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._closing = False
        self._server = ThreadingHTTPServer((LOOPBACK, 0), Handler)
        self._server.daemon_threads = True
        thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
        thread.start()
        try:
            yield self
        finally:
            self._closing = True
            self._server.shutdown()
            self._server.server_close()
            thread.join(5)

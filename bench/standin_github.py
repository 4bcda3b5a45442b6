"""A stand-in for the few GitHub REST endpoints devstack's feedback uses, served over real HTTP on loopback.

Run as its own process (``python -m bench.standin_github --port N``) so that it shares no GIL with the
server or the client. It keeps issue comments, deployments and statuses in memory and stamps every
write with ``time.monotonic()`` (system-wide on Linux, so comparable with the client's clock). The
benchmark asks it, by long poll, when a comment first contained a given text:

* ``GET /_bench/wait?contains=<text>&timeout=<s>``: ``{"at": <monotonic>, "comment": <id>}`` or 504;
* ``GET /_bench/wait_status?sha=<sha>&timeout=<s>``: when a deployment of that sha got its first status;
* ``GET /_bench/stats``: requests served, by method and by kind (``POST deployment``, ``GET comments``...),
  and the writes it refused;
* with ``--write-interval S``, GitHub's advice is enforced: a write (POST/PATCH/PUT/DELETE) with a token
  sooner than ``S`` seconds after that token's previous write is refused with a secondary rate limit
  (403, ``Retry-After``), as GitHub does when an integrator goes faster than about one write a second;
* ``POST /_bench/echo``: reads the body and answers 202: the floor of an HTTP round trip in Python on
  this machine right now (the acknowledgement scenario's baseline).
"""

from __future__ import annotations

import argparse
import json
import re
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

_REPO = r"/repos/(?P<repo>[^/]+/[^/]+)"


class State:
    def __init__(self, base: str) -> None:
        self.base = base
        self.lock = threading.Condition()
        self.next_id = 1000
        self.comments: dict[int, dict[str, Any]] = {}
        self.comment_log: list[tuple[float, int, str]] = []  # (monotonic, comment id, body)
        self.deployments: dict[int, dict[str, Any]] = {}
        self.statuses: dict[int, list[dict[str, Any]]] = {}
        self.status_log: list[tuple[float, str]] = []  # (monotonic, deployment sha)
        self.calls: Counter[str] = Counter()
        self.kinds: Counter[str] = Counter()  # "POST comment", "GET comments", ...
        self.write_interval = 0.0
        self.last_write: dict[str, float] = {}  # token -> monotonic time of its last accepted write
        self.refused_writes = 0

    def new_id(self) -> int:
        self.next_id += 1
        return self.next_id

    def comment_json(self, comment: dict[str, Any]) -> dict[str, Any]:
        repo, number = comment["repo"], comment["number"]
        return {"id": comment["id"], "body": comment["body"], "user": {"login": "devstack-bot", "id": 1},
                "url": f"{self.base}/repos/{repo}/issues/comments/{comment['id']}",
                "issue_url": f"{self.base}/repos/{repo}/issues/{number}",
                "html_url": f"https://github.com/{repo}/pull/{number}#issuecomment-{comment['id']}"}

    def deployment_json(self, deployment: dict[str, Any]) -> dict[str, Any]:
        url = f"{self.base}/repos/{deployment['repo']}/deployments/{deployment['id']}"
        return {**deployment, "url": url, "statuses_url": f"{url}/statuses"}


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # The status line and headers go out in one write and the body in another: with Nagle's algorithm
    # on, the body would wait for the client's delayed ACK (40 ms on Linux) on every keep-alive request.
    disable_nagle_algorithm = True
    server: StandIn

    def log_message(self, format: str, *args: Any) -> None:
        return

    # --- plumbing

    def _write_allowed(self, method: str) -> bool:
        state = self.server.state
        if method not in ("POST", "PATCH", "PUT", "DELETE") or not state.write_interval:
            return True
        token = self.headers.get("Authorization", "")
        now = time.monotonic()
        with state.lock:
            last = state.last_write.get(token)
            if last is not None and now - last < state.write_interval - 0.02:  # 20 ms of clock slack
                state.refused_writes += 1
                return False
            state.last_write[token] = now
            return True

    def _reply(self, status: int, data: Any, *, headers: dict[str, str] | None = None) -> None:
        body = json.dumps(data).encode()
        self.send_response(status)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _body(self) -> Any:
        length = int(self.headers.get("Content-Length") or 0)
        return json.loads(self.rfile.read(length)) if length else None

    def _route(self, method: str) -> None:
        state = self.server.state
        parts = urlsplit(self.path)
        path, query = parts.path, parse_qs(parts.query)
        with state.lock:
            state.calls[method] += 1
        body = self._body() if method in ("POST", "PATCH") else None
        for verb, pattern, handler in ROUTES:
            if verb != method:
                continue
            match = re.fullmatch(pattern, path)
            if match:
                if not path.startswith("/_bench/") and not self._write_allowed(method):
                    self._reply(403, {"message": "You have exceeded a secondary rate limit."},
                                headers={"Retry-After": str(max(1, round(state.write_interval)))})
                    return
                with state.lock:
                    if not path.startswith("/_bench/"):
                        state.kinds[f"{method} {handler.__name__.lstrip('_').replace('_', ' ')}"] += 1
                status, data = handler(state, match.groupdict(), query, body)
                self._reply(status, data)
                return
        self._reply(404, {"message": "Not Found"})

    def do_GET(self) -> None:
        self._route("GET")

    def do_POST(self) -> None:
        self._route("POST")

    def do_PATCH(self) -> None:
        self._route("PATCH")


class StandIn(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, port: int, *, write_interval: float = 0.0) -> None:
        super().__init__(("127.0.0.1", port), Handler)
        self.state = State(base=f"http://127.0.0.1:{self.server_address[1]}")
        self.state.write_interval = write_interval


Result = tuple[int, Any]
Params = dict[str, str]
Query = dict[str, list[str]]


def _user(state: State, params: Params, query: Query, body: Any) -> Result:
    return 200, {"login": "devstack-bot", "id": 1, "type": "Bot"}


def _repo(state: State, params: Params, query: Query, body: Any) -> Result:
    repo = params["repo"]
    return 200, {"id": 1, "full_name": repo, "name": repo.split("/")[1], "url": f"{state.base}/repos/{repo}"}


def _issue(state: State, params: Params, query: Query, body: Any) -> Result:
    number = int(params["number"])
    return 200, {"id": number, "number": number, "state": "open",
                 "url": f"{state.base}/repos/{params['repo']}/issues/{number}"}


def _list_comments(state: State, params: Params, query: Query, body: Any) -> Result:
    number, repo = int(params["number"]), params["repo"]
    with state.lock:
        items = [state.comment_json(c) for c in state.comments.values() if (c["repo"], c["number"]) == (repo, number)]
    return 200, items if query.get("page", ["1"])[0] == "1" else []


def _create_comment(state: State, params: Params, query: Query, body: Any) -> Result:
    with state.lock:
        comment = {"id": state.new_id(), "repo": params["repo"], "number": int(params["number"]), "body": body["body"]}
        state.comments[comment["id"]] = comment
        state.comment_log.append((time.monotonic(), comment["id"], comment["body"]))
        state.lock.notify_all()
        return 201, state.comment_json(comment)


def _get_comment(state: State, params: Params, query: Query, body: Any) -> Result:
    with state.lock:
        comment = state.comments.get(int(params["id"]))
        return (404, {"message": "Not Found"}) if comment is None else (200, state.comment_json(comment))


def _edit_comment(state: State, params: Params, query: Query, body: Any) -> Result:
    with state.lock:
        comment = state.comments.get(int(params["id"]))
        if comment is None:
            return 404, {"message": "Not Found"}
        comment["body"] = body["body"]
        state.comment_log.append((time.monotonic(), comment["id"], comment["body"]))
        state.lock.notify_all()
        return 200, state.comment_json(comment)


def _create_deployment(state: State, params: Params, query: Query, body: Any) -> Result:
    with state.lock:
        deployment = {**body, "id": state.new_id(), "repo": params["repo"], "sha": body.get("ref")}
        state.deployments[deployment["id"]] = deployment
        state.statuses[deployment["id"]] = []
        return 201, state.deployment_json(deployment)


def _list_deployments(state: State, params: Params, query: Query, body: Any) -> Result:
    environment = query.get("environment", [None])[0]
    with state.lock:
        items = [state.deployment_json(d) for d in state.deployments.values()
                 if d["repo"] == params["repo"] and d.get("environment") == environment]
    return 200, sorted(items, key=lambda d: -d["id"]) if query.get("page", ["1"])[0] == "1" else []


def _get_deployment(state: State, params: Params, query: Query, body: Any) -> Result:
    with state.lock:
        deployment = state.deployments.get(int(params["id"]))
        return (404, {"message": "Not Found"}) if deployment is None else (200, state.deployment_json(deployment))


def _create_status(state: State, params: Params, query: Query, body: Any) -> Result:
    with state.lock:
        deployment_id = int(params["id"])
        if deployment_id not in state.deployments:
            return 404, {"message": "Not Found"}
        status = {**body, "id": state.new_id()}
        state.statuses[deployment_id].append(status)
        state.status_log.append((time.monotonic(), str(state.deployments[deployment_id]["sha"])))
        state.lock.notify_all()
        return 201, status


def _list_statuses(state: State, params: Params, query: Query, body: Any) -> Result:
    with state.lock:
        items = list(reversed(state.statuses.get(int(params["id"]), [])))
    return 200, items if query.get("page", ["1"])[0] == "1" else []


def _wait(state: State, params: Params, query: Query, body: Any) -> Result:
    text, timeout = query["contains"][0], min(float(query.get("timeout", ["30"])[0]), 120.0)
    deadline = time.monotonic() + timeout
    with state.lock:
        while True:
            for at, comment_id, comment_body in state.comment_log:
                if text in comment_body:
                    return 200, {"at": at, "comment": comment_id}
            left = deadline - time.monotonic()
            if left <= 0:
                return 504, {"message": f"no comment contains {text!r}"}
            state.lock.wait(left)


def _wait_status(state: State, params: Params, query: Query, body: Any) -> Result:
    sha, timeout = query["sha"][0], min(float(query.get("timeout", ["30"])[0]), 120.0)
    deadline = time.monotonic() + timeout
    with state.lock:
        while True:
            for at, status_sha in state.status_log:
                if status_sha == sha:
                    return 200, {"at": at}
            left = deadline - time.monotonic()
            if left <= 0:
                return 504, {"message": f"no deployment status for {sha}"}
            state.lock.wait(left)


def _stats(state: State, params: Params, query: Query, body: Any) -> Result:
    with state.lock:
        return 200, {"calls": dict(state.calls), "kinds": dict(state.kinds), "refused_writes": state.refused_writes,
                     "comments": len(state.comments), "deployments": len(state.deployments)}


def _permission(state: State, params: Params, query: Query, body: Any) -> Result:
    # "visitor" may read only: their commands are refused, with a reply (what the bench times).
    permission = "read" if params["user"] == "visitor" else "write"
    return 200, {"permission": permission, "user": {"login": params["user"]}}


def _health(state: State, params: Params, query: Query, body: Any) -> Result:
    return 200, {"status": "ok"}


def _echo(state: State, params: Params, query: Query, body: Any) -> Result:
    """The acknowledgement baseline: read the body, answer 202 at once (no verification, no storage)."""
    return 202, {"status": "queued"}


ROUTES: list[tuple[str, str, Any]] = [
    ("GET", "/_bench/health", _health),
    ("GET", "/_bench/wait", _wait),
    ("GET", "/_bench/wait_status", _wait_status),
    ("GET", "/_bench/stats", _stats),
    ("POST", "/_bench/echo", _echo),
    ("GET", "/user", _user),
    ("GET", _REPO, _repo),
    ("GET", _REPO + r"/(?:issues|pulls)/(?P<number>\d+)", _issue),
    ("GET", _REPO + r"/issues/(?P<number>\d+)/comments", _list_comments),
    ("POST", _REPO + r"/issues/(?P<number>\d+)/comments", _create_comment),
    ("GET", _REPO + r"/issues/comments/(?P<id>\d+)", _get_comment),
    ("PATCH", _REPO + r"/issues/comments/(?P<id>\d+)", _edit_comment),
    ("POST", _REPO + r"/deployments", _create_deployment),
    ("GET", _REPO + r"/deployments", _list_deployments),
    ("GET", _REPO + r"/deployments/(?P<id>\d+)", _get_deployment),
    ("POST", _REPO + r"/deployments/(?P<id>\d+)/statuses", _create_status),
    ("GET", _REPO + r"/deployments/(?P<id>\d+)/statuses", _list_statuses),
    ("GET", _REPO + r"/collaborators/(?P<user>[^/]+)/permission", _permission),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--write-interval", type=float, default=0.0,
                        help="refuse a token's writes closer together than this (GitHub's secondary limit)")
    args = parser.parse_args()
    with StandIn(args.port, write_interval=args.write_interval) as httpd:
        httpd.serve_forever(poll_interval=0.1)


if __name__ == "__main__":
    main()

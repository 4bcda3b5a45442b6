"""A small stateful stand-in for the GitHub REST API, served through `responses` callbacks.

It keeps issue comments, deployments and deployment statuses in memory, so end-to-end tests can
assert on what devstack did (one comment, edited in place) and on every request it sent.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, urlparse

import responses

Call = tuple[str, str, Any]  # method, path, JSON body


@dataclass
class FakeGitHub:
    api_url: str
    comments: dict[int, dict[str, Any]] = field(default_factory=dict)  # id -> comment (with "issue")
    deployments: dict[int, dict[str, Any]] = field(default_factory=dict)
    statuses: dict[int, list[dict[str, Any]]] = field(default_factory=dict)
    pulls: dict[tuple[str, int], dict[str, Any]] = field(default_factory=dict)  # (repo, number) -> PR object
    permissions: dict[str, str] = field(default_factory=dict)  # login -> admin / write / read / ...
    calls: list[Call] = field(default_factory=list)
    fail_next: list[tuple[int, dict[str, str]]] = field(default_factory=list)  # (status, headers) to answer
    on_list_page: Callable[[str, int], None] | None = None  # (repo, page): before a page of open PRs is answered
    # (repo, sha) -> {"check_runs": [...], "check_suites": [...], "statuses": [...]}: what CI reported
    commit_checks: dict[tuple[str, str], dict[str, list[dict[str, Any]]]] = field(default_factory=dict)
    # a webhook's record of deliveries (newest first), what each carried, and where a redelivery goes
    hook_deliveries: list[dict[str, Any]] = field(default_factory=list)
    delivery_bodies: dict[str, tuple[str, bytes]] = field(default_factory=dict)  # guid -> (event, body)
    redeliver_to: str = ""  # the webhook URL (the real server on loopback)
    webhook_secret: str = ""
    _next_id: int = 1000

    def _id(self) -> int:
        self._next_id += 1
        return self._next_id

    def comments_on(self, repo: str, number: int) -> list[dict[str, Any]]:
        return [c for c in self.comments.values() if c["issue"] == (repo, number)]

    def count(self, method: str, pattern: str) -> int:
        return sum(1 for m, path, _ in self.calls if m == method and re.search(pattern, path))

    def install(self, rsps: responses.RequestsMock) -> None:
        parsed = urlparse(self.api_url.rstrip("/"))
        # PyGithub writes the default port into its URLs (https://host:443/...)
        base = re.escape(f"{parsed.scheme}://{parsed.hostname}") + r"(?::\d+)?" + re.escape(parsed.path)
        rsps.add_callback(responses.GET, re.compile(base + r"/repos/([^/]+/[^/]+)$"), callback=self._repo)
        rsps.add_callback(responses.GET, re.compile(base + r"/repos/([^/]+/[^/]+)/issues/(\d+)/comments.*"),
                          callback=self._list_comments)
        rsps.add_callback(responses.POST, re.compile(base + r"/repos/([^/]+/[^/]+)/issues/(\d+)/comments$"),
                          callback=self._create_comment)
        rsps.add_callback(responses.GET, re.compile(base + r"/repos/([^/]+/[^/]+)/issues/comments/(\d+)$"),
                          callback=self._get_comment)
        rsps.add_callback(responses.PATCH, re.compile(base + r"/repos/([^/]+/[^/]+)/issues/comments/(\d+)$"),
                          callback=self._edit_comment)
        rsps.add_callback(responses.GET, re.compile(base + r"/repos/([^/]+/[^/]+)/issues/(\d+)$"),
                          callback=self._issue)
        rsps.add_callback(responses.GET, re.compile(base + r"/repos/([^/]+/[^/]+)/pulls/(\d+)$"),
                          callback=self._issue)
        rsps.add_callback(responses.POST, re.compile(base + r"/repos/([^/]+/[^/]+)/deployments$"),
                          callback=self._create_deployment)
        rsps.add_callback(responses.GET, re.compile(base + r"/repos/([^/]+/[^/]+)/deployments(\?.*)?$"),
                          callback=self._list_deployments)
        rsps.add_callback(responses.GET, re.compile(base + r"/repos/([^/]+/[^/]+)/deployments/(\d+)$"),
                          callback=self._get_deployment)
        rsps.add_callback(responses.POST, re.compile(base + r"/repos/([^/]+/[^/]+)/deployments/(\d+)/statuses$"),
                          callback=self._create_status)
        rsps.add_callback(responses.GET, re.compile(base + r"/repos/([^/]+/[^/]+)/deployments/(\d+)/statuses.*"),
                          callback=self._list_statuses)
        rsps.add_callback(responses.GET, re.compile(base + r"/user$"), callback=self._user)
        hook = r"(/app/hook|/repos/[^/]+/[^/]+/hooks/\d+|/orgs/[^/]+/hooks/\d+)"
        rsps.add_callback(responses.GET, re.compile(base + hook + r"/deliveries(\?.*)?$"), callback=self._deliveries)
        rsps.add_callback(responses.POST, re.compile(base + hook + r"/deliveries/(\d+)/attempts$"),
                          callback=self._redeliver)
        rsps.add_callback(responses.GET, re.compile(
            base + r"/repos/([^/]+/[^/]+)/commits/([0-9a-f]{40})/(check-runs|check-suites|status)(\?.*)?$"),
            callback=self._commit_checks)
        rsps.add_callback(responses.GET, re.compile(base + r"/repos/([^/]+/[^/]+)/pulls(\?.*)?$"),
                          callback=self._list_pulls)
        rsps.add_callback(responses.GET, re.compile(base + r"/repos/([^/]+/[^/]+)/collaborators/([^/]+)/permission$"),
                          callback=self._permission)
        rsps.add_callback(responses.POST, re.compile(base + r"/repos/([^/]+/[^/]+)/issues/(\d+)/labels$"),
                          callback=self._add_labels)
        rsps.add_callback(responses.DELETE, re.compile(base + r"/repos/([^/]+/[^/]+)/issues/(\d+)/labels/(.+)$"),
                          callback=self._remove_label)

    # --- plumbing --------------------------------------------------------------------------------

    def _record(self, request: Any) -> tuple[str, Any, tuple[int, dict[str, str], str] | None]:
        path = urlparse(request.url).path
        body = json.loads(request.body) if request.body else None
        self.calls.append((request.method, path + ("?" + urlparse(request.url).query if urlparse(request.url).query
                                                    else ""), body))
        if self.fail_next:
            status, headers = self.fail_next.pop(0)
            return path, body, (status, {"Content-Type": "application/json", **headers},
                                json.dumps({"message": "injected failure"}))
        return path, body, None

    def _groups(self, request: Any, pattern: str) -> tuple[str, ...]:
        match = re.search(pattern, urlparse(request.url).path)
        assert match, request.url
        return match.groups()

    rate_limit_remaining: int = 4999

    not_modified: int = 0  # conditional reads answered 304 (GitHub does not count them against the rate limit)

    def _json(self, status: int, data: Any, *, etag: bool = False) -> tuple[int, dict[str, str], str]:
        headers = {"Content-Type": "application/json", "X-RateLimit-Limit": "5000",
                   "X-RateLimit-Remaining": str(self.rate_limit_remaining), "X-RateLimit-Reset": "4102444800"}
        if etag:  # a weak ETag of the representation, as GitHub sends on single resources
            headers["ETag"] = self._etag(data)
        return status, headers, json.dumps(data)

    @staticmethod
    def _etag(data: Any) -> str:
        return 'W/"' + hashlib.sha1(json.dumps(data, sort_keys=True).encode(), usedforsecurity=False).hexdigest() + '"'


    def _url(self, path: str) -> str:
        return self.api_url.rstrip("/") + path

    # --- endpoints -------------------------------------------------------------------------------

    def _user(self, request: Any) -> tuple[int, dict[str, str], str]:
        _, _, failed = self._record(request)
        return failed or self._json(200, {"login": "devstack-bot", "id": 1, "type": "Bot"})

    def _repo(self, request: Any) -> tuple[int, dict[str, str], str]:
        _, _, failed = self._record(request)
        (repo,) = self._groups(request, r"/repos/([^/]+/[^/]+)$")
        return failed or self._json(200, {"id": 1, "full_name": repo, "name": repo.split("/")[1],
                                          "url": self._url(f"/repos/{repo}")})

    def _commit_checks(self, request: Any) -> tuple[int, dict[str, str], str]:
        _, _, failed = self._record(request)
        repo, sha, what = self._groups(
            request, r"/repos/([^/]+/[^/]+)/commits/([0-9a-f]{40})/(check-runs|check-suites|status)")
        known = self.commit_checks.get((repo, sha), {})
        key = {"check-runs": "check_runs", "check-suites": "check_suites", "status": "statuses"}[what]
        items = known.get(key, [])
        body: dict[str, Any] = {key: items} if what == "status" else {"total_count": len(items), key: items}
        if what == "status":
            body.update({"sha": sha, "state": "pending", "total_count": len(items)})
        return failed or self._json(200, body)

    def missed(self, *, guid: str, event: str, body: bytes, delivered_at: str, status_code: int = 502) -> None:
        """A delivery GitHub made while devstack could not take it (newest first, as GitHub lists them)."""
        self.delivery_bodies[guid] = (event, body)
        self.hook_deliveries.insert(0, {"id": self._id(), "guid": guid, "event": event, "action": "",
                                        "status_code": status_code, "delivered_at": delivered_at,
                                        "redelivery": False})

    def _deliveries(self, request: Any) -> tuple[int, dict[str, str], str]:
        _, _, failed = self._record(request)
        query = parse_qs(urlparse(request.url).query)
        page = int(query.get("cursor", ["0"])[0])
        per_page = int(query.get("per_page", ["30"])[0])
        items = self.hook_deliveries[page * per_page:(page + 1) * per_page]
        status, headers, body = self._json(200, items)
        if (page + 1) * per_page < len(self.hook_deliveries):
            link = self._url(urlparse(request.url).path) + f"?per_page={per_page}&cursor={page + 1}"
            headers["Link"] = f'<{link}>; rel="next"'
        return failed or (status, headers, body)

    def _redeliver(self, request: Any) -> tuple[int, dict[str, str], str]:
        """GitHub delivers the delivery again, with its guid, signed with the hook's secret."""
        import hmac

        import httpx

        _, _, failed = self._record(request)
        if failed:
            return failed
        delivery_id = int(urlparse(request.url).path.rsplit("/", 2)[-2])
        original = next(d for d in self.hook_deliveries if d["id"] == delivery_id)
        event, body = self.delivery_bodies[original["guid"]]
        signature = "sha256=" + hmac.new(self.webhook_secret.encode(), body, hashlib.sha256).hexdigest()
        answer = httpx.post(self.redeliver_to, content=body, timeout=10, headers={
            "Content-Type": "application/json", "X-GitHub-Event": event, "X-GitHub-Delivery": original["guid"],
            "X-Hub-Signature-256": signature})
        self.hook_deliveries.insert(0, {**original, "id": self._id(), "status_code": answer.status_code,
                                        "redelivery": True})
        return self._json(202, {})

    def add_pull(self, pull_request: dict[str, Any]) -> None:
        """Make a PR known (the ``pull_request`` object of a webhook payload)."""
        repo = pull_request["base"]["repo"]["full_name"]
        pull_request["url"] = self._url(f"/repos/{repo}/pulls/{pull_request['number']}")
        self.pulls[(repo, pull_request["number"])] = pull_request

    def labels(self, repo: str, number: int) -> list[str]:
        return [label["name"] for label in self.pulls[(repo, number)]["labels"]]

    def _issue(self, request: Any) -> tuple[int, dict[str, str], str]:
        _, _, failed = self._record(request)
        repo, number = self._groups(request, r"/repos/([^/]+/[^/]+)/(?:issues|pulls)/(\d+)$")
        if failed:
            return failed
        pull = self.pulls.get((repo, int(number)))
        if "/pulls/" in urlparse(request.url).path:
            return self._json(200, pull) if pull is not None else self._json(404, {"message": "Not Found"})
        return self._json(200, {"id": int(number), "number": int(number), "state": "open",
                                "labels": pull["labels"] if pull else [],
                                "url": self._url(f"/repos/{repo}/issues/{number}")})

    def _list_pulls(self, request: Any) -> tuple[int, dict[str, str], str]:
        """Page-number paging as GitHub does it: each page is cut from the list *as it is now*, so a PR
        that closes between two pages shifts the later ones. ``on_list_page(repo, page)`` runs first."""
        _, _, failed = self._record(request)
        (repo,) = self._groups(request, r"/repos/([^/]+/[^/]+)/pulls")
        query = parse_qs(urlparse(request.url).query)
        page = int(query.get("page", ["1"])[0])
        per_page = min(int(query.get("per_page", ["30"])[0]), 100)
        if self.on_list_page is not None and not failed:
            self.on_list_page(repo, page)
        items = [p for (r, _), p in sorted(self.pulls.items()) if r == repo and p["state"] == "open"]
        return failed or self._json(200, items[(page - 1) * per_page : page * per_page])

    def _permission(self, request: Any) -> tuple[int, dict[str, str], str]:
        _, _, failed = self._record(request)
        _, user = self._groups(request, r"/repos/([^/]+/[^/]+)/collaborators/([^/]+)/permission$")
        if failed:
            return failed
        if user not in self.permissions:
            return self._json(404, {"message": "Not Found"})
        return self._json(200, {"permission": self.permissions[user], "user": {"login": user}})

    def _add_labels(self, request: Any) -> tuple[int, dict[str, str], str]:
        _, body, failed = self._record(request)
        repo, number = self._groups(request, r"/repos/([^/]+/[^/]+)/issues/(\d+)/labels$")
        if failed:
            return failed
        pull = self.pulls[(repo, int(number))]
        names = body["labels"] if isinstance(body, dict) else body
        for name in names:
            if name not in self.labels(repo, int(number)):
                pull["labels"].append({"id": self._id(), "name": name, "color": "ededed"})
        return self._json(200, pull["labels"])

    def _remove_label(self, request: Any) -> tuple[int, dict[str, str], str]:
        _, _, failed = self._record(request)
        repo, number, name = self._groups(request, r"/repos/([^/]+/[^/]+)/issues/(\d+)/labels/(.+)$")
        if failed:
            return failed
        from urllib.parse import unquote

        pull = self.pulls[(repo, int(number))]
        before = len(pull["labels"])
        pull["labels"] = [label for label in pull["labels"] if label["name"] != unquote(name)]
        if len(pull["labels"]) == before:
            return self._json(404, {"message": "Label does not exist"})
        return self._json(200, pull["labels"])

    def _comment_json(self, comment: dict[str, Any]) -> dict[str, Any]:
        repo, number = comment["issue"]
        return {"id": comment["id"], "body": comment["body"], "user": {"login": "devstack-bot", "id": 1},
                "url": self._url(f"/repos/{repo}/issues/comments/{comment['id']}"),
                "issue_url": self._url(f"/repos/{repo}/issues/{number}")}

    def _list_comments(self, request: Any) -> tuple[int, dict[str, str], str]:
        _, _, failed = self._record(request)
        repo, number = self._groups(request, r"/repos/([^/]+/[^/]+)/issues/(\d+)/comments")
        page = int(parse_qs(urlparse(request.url).query).get("page", ["1"])[0])
        items = [self._comment_json(c) for c in self.comments_on(repo, int(number))]
        return failed or self._json(200, items if page == 1 else [])

    def _create_comment(self, request: Any) -> tuple[int, dict[str, str], str]:
        _, body, failed = self._record(request)
        if failed:
            return failed
        repo, number = self._groups(request, r"/repos/([^/]+/[^/]+)/issues/(\d+)/comments$")
        comment = {"id": self._id(), "body": body["body"], "issue": (repo, int(number))}
        self.comments[comment["id"]] = comment
        return self._json(201, self._comment_json(comment), etag=True)

    def _get_comment(self, request: Any) -> tuple[int, dict[str, str], str]:
        _, _, failed = self._record(request)
        _, cid = self._groups(request, r"/repos/([^/]+/[^/]+)/issues/comments/(\d+)$")
        if failed:
            return failed
        if int(cid) not in self.comments:
            return self._json(404, {"message": "Not Found"})
        data = self._comment_json(self.comments[int(cid)])
        if request.headers.get("If-None-Match") == self._etag(data):
            self.not_modified += 1
            return 304, {"ETag": self._etag(data)}, ""
        return self._json(200, data, etag=True)

    def _edit_comment(self, request: Any) -> tuple[int, dict[str, str], str]:
        _, body, failed = self._record(request)
        _, cid = self._groups(request, r"/repos/([^/]+/[^/]+)/issues/comments/(\d+)$")
        if failed:
            return failed
        if int(cid) not in self.comments:
            return self._json(404, {"message": "Not Found"})
        self.comments[int(cid)]["body"] = body["body"]
        return self._json(200, self._comment_json(self.comments[int(cid)]), etag=True)

    def _deployment_json(self, repo: str, deployment: dict[str, Any]) -> dict[str, Any]:
        return {**deployment, "url": self._url(f"/repos/{repo}/deployments/{deployment['id']}"),
                "statuses_url": self._url(f"/repos/{repo}/deployments/{deployment['id']}/statuses")}

    def _create_deployment(self, request: Any) -> tuple[int, dict[str, str], str]:
        _, body, failed = self._record(request)
        if failed:
            return failed
        (repo,) = self._groups(request, r"/repos/([^/]+/[^/]+)/deployments$")
        deployment = {"id": self._id(), "repo": repo, "sha": body.get("ref"), **body}
        self.deployments[deployment["id"]] = deployment
        self.statuses[deployment["id"]] = []
        return self._json(201, self._deployment_json(repo, deployment))

    def _list_deployments(self, request: Any) -> tuple[int, dict[str, str], str]:
        _, _, failed = self._record(request)
        (repo,) = self._groups(request, r"/repos/([^/]+/[^/]+)/deployments")
        query = parse_qs(urlparse(request.url).query)
        page = int(query.get("page", ["1"])[0])
        items = [self._deployment_json(repo, d) for d in self.deployments.values()
                 if d["repo"] == repo and d.get("environment") == query.get("environment", [None])[0]]
        return failed or self._json(200, sorted(items, key=lambda d: -d["id"]) if page == 1 else [])

    def _get_deployment(self, request: Any) -> tuple[int, dict[str, str], str]:
        _, _, failed = self._record(request)
        repo, did = self._groups(request, r"/repos/([^/]+/[^/]+)/deployments/(\d+)$")
        return failed or self._json(200, self._deployment_json(repo, self.deployments[int(did)]))

    def _create_status(self, request: Any) -> tuple[int, dict[str, str], str]:
        _, body, failed = self._record(request)
        if failed:
            return failed
        _, did = self._groups(request, r"/repos/([^/]+/[^/]+)/deployments/(\d+)/statuses$")
        if int(did) not in self.deployments:
            return self._json(404, {"message": "Not Found"})
        status = {"id": self._id(), **body}
        self.statuses[int(did)].append(status)
        self._auto_inactive(int(did), status)
        return self._json(201, status)

    def _auto_inactive(self, did: int, status: dict[str, Any]) -> None:
        """GitHub's rule (REST docs, "Create a deployment status", ``auto_inactive``, default true): a new
        ``success`` adds an ``inactive`` status to all prior non-transient, non-production deployments of
        the same repository and environment that had a ``success`` state."""
        deployment = self.deployments[did]
        if status.get("state") != "success" or not status.get("auto_inactive", True):
            return
        for other_id, other in self.deployments.items():
            if other_id >= did or other["repo"] != deployment["repo"]:
                continue
            if other.get("environment") != deployment.get("environment"):
                continue
            if other.get("transient_environment") or other.get("production_environment"):
                continue
            history = self.statuses.get(other_id, [])
            if history and history[-1].get("state") == "success":
                history.append({"id": self._id(), "state": "inactive", "description": "auto_inactive"})

    def _list_statuses(self, request: Any) -> tuple[int, dict[str, str], str]:
        _, _, failed = self._record(request)
        _, did = self._groups(request, r"/repos/([^/]+/[^/]+)/deployments/(\d+)/statuses")
        page = int(parse_qs(urlparse(request.url).query).get("page", ["1"])[0])
        items = list(reversed(self.statuses.get(int(did), [])))
        return failed or self._json(200, items if page == 1 else [])


@contextmanager
def fake_github(api_url: str) -> Iterator[FakeGitHub]:
    fake = FakeGitHub(api_url=api_url)
    with responses.RequestsMock(assert_all_requests_are_fired=False) as rsps:
        rsps.add_passthru("http://127.0.0.1")
        fake.install(rsps)
        yield fake

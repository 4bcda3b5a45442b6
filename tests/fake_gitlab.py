"""A small stateful stand-in for the GitLab REST API (v4), served through `responses` callbacks,
and builders of the webhook payloads GitLab sends.

It keeps merge request notes and environments in memory, so tests can assert on what devstack did
(one note, edited in place; an environment created, then stopped) and on every request it sent. It
answers 401 to a request without the expected ``PRIVATE-TOKEN``, paginates like GitLab (``Link``,
``X-Page``...), and project ids arrive URL-encoded (``group%2Fsub%2Fproject``), as GitLab requires.
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlencode, urlsplit

import responses

FIXTURES = Path(__file__).parent / "fixtures" / "gitlab"
Call = tuple[str, str, Any]  # method, path (as sent: still URL-encoded) + query, JSON body
Reply = tuple[int, dict[str, str], str]
NOW = "2025-11-20T09:14:00.000Z"


@dataclass
class FakeGitLab:
    url: str  # the instance, e.g. https://gitlab.example.com
    token: str
    username: str = "project_901_bot_3c1f"
    notes: dict[int, dict[str, Any]] = field(default_factory=dict)  # id -> note (with "project", "mr")
    environments: dict[int, dict[str, Any]] = field(default_factory=dict)  # id -> environment (with "project")
    merge_requests: dict[tuple[str, int], dict[str, Any]] = field(default_factory=dict)  # as the API shows them
    members: dict[tuple[str, str], int] = field(default_factory=dict)  # (project, username) -> access level
    calls: list[Call] = field(default_factory=list)
    fail_next: list[tuple[int, dict[str, str]]] = field(default_factory=list)  # (status, headers) to answer
    per_page_cap: int = 100
    on_list_page: Callable[[str, int], None] | None = None  # (project, page): before a page of MRs
    _next_id: int = 5000

    @property
    def api(self) -> str:
        return self.url.rstrip("/") + "/api/v4"

    def _id(self) -> int:
        self._next_id += 1
        return self._next_id

    def notes_on(self, project: str, iid: int) -> list[dict[str, Any]]:
        return [n for n in self.notes.values() if (n["project"], n["mr"]) == (project, iid)]

    def environments_of(self, project: str) -> list[dict[str, Any]]:
        return [e for e in self.environments.values() if e["project"] == project]

    def add_note(self, project: str, iid: int, body: str, *, username: str = "someone", system: bool = False) -> int:
        note = {"id": self._id(), "project": project, "mr": iid, "body": body, "username": username, "system": system}
        self.notes[note["id"]] = note
        return int(note["id"])

    def add_merge_request(
        self, project: str, iid: int, *, sha: str, branch: str = "login-fix", labels: tuple[str, ...] = (),
        state: str = "opened", draft: bool = False, author: str = "ada",
    ) -> dict[str, Any]:
        """An MR the API knows (``GET .../merge_requests/:iid``, the shape of gitlab-api/get-mr.*.json)."""
        web_url = f"{self.url.rstrip('/')}/{project}/-/merge_requests/{iid}"
        mr = {"id": 88000 + iid, "iid": iid, "project_id": 901, "title": "Fix login redirect loop",
              "description": "", "state": state, "created_at": NOW, "updated_at": NOW, "target_branch": "main",
              "source_branch": branch, "author": {"id": 4211, "username": author, "name": author, "state": "active"},
              "source_project_id": 901, "target_project_id": 901, "labels": list(labels), "draft": draft,
              "work_in_progress": draft, "merge_status": "can_be_merged", "sha": sha, "web_url": web_url,
              "references": {"short": f"!{iid}", "full": f"{project}!{iid}"}}
        self.merge_requests[(project, iid)] = mr
        return mr

    def count(self, method: str, pattern: str) -> int:
        return sum(1 for m, path, _ in self.calls if m == method and re.search(pattern, path))

    def install(self, rsps: responses.RequestsMock) -> None:
        base = re.escape(self.api) + r"/projects/([^/?]+)"
        tail = r"(?:\?.*)?$"
        routes: list[tuple[str, str, Any]] = [
            (responses.GET, base + r"/merge_requests/(\d+)/notes" + tail, self._list_notes),
            (responses.POST, base + r"/merge_requests/(\d+)/notes" + tail, self._create_note),
            (responses.GET, base + r"/merge_requests/(\d+)/notes/(\d+)" + tail, self._get_note),
            (responses.PUT, base + r"/merge_requests/(\d+)/notes/(\d+)" + tail, self._edit_note),
            (responses.GET, base + r"/environments" + tail, self._list_environments),
            (responses.POST, base + r"/environments" + tail, self._create_environment),
            (responses.PUT, base + r"/environments/(\d+)" + tail, self._edit_environment),
            (responses.DELETE, base + r"/environments/(\d+)" + tail, self._delete_environment),
            (responses.POST, base + r"/environments/(\d+)/stop" + tail, self._stop_environment),
            (responses.GET, base + r"/merge_requests" + tail, self._list_merge_requests),
            (responses.GET, base + r"/merge_requests/(\d+)" + tail, self._get_merge_request),
            (responses.PUT, base + r"/merge_requests/(\d+)" + tail, self._edit_merge_request),
            (responses.GET, base + r"/members/all/(\d+)" + tail, self._member),
            (responses.GET, re.escape(self.api) + r"/user" + tail, self._user),
            (responses.GET, re.escape(self.api) + r"/users" + tail, self._users),
        ]
        for method, pattern, callback in routes:
            rsps.add_callback(method, re.compile(pattern), callback=self._guarded(pattern, callback))

    # --- plumbing --------------------------------------------------------------------------------

    def _guarded(self, pattern: str, callback: Any) -> Any:
        def handle(request: Any) -> Reply:
            parts = urlsplit(request.url)
            body = json.loads(request.body) if request.body else None
            self.calls.append((request.method, parts.path + (f"?{parts.query}" if parts.query else ""), body))
            if request.headers.get("PRIVATE-TOKEN") != self.token:
                return self._json(401, {"message": "401 Unauthorized"})
            if self.fail_next:
                status, headers = self.fail_next.pop(0)
                return status, {"Content-Type": "application/json", **headers}, json.dumps(
                    {"message": "injected failure"})
            match = re.match(pattern, request.url)
            assert match, request.url
            groups = match.groups()
            # GitLab wants the project path URL-encoded in one path segment: group%2Fsub%2Fproject
            args = (unquote(groups[0]), *[int(g) for g in groups[1:]]) if "/projects/" in pattern else ()
            query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
            reply: Reply = callback(*args, body=body, query=query, path=parts.path)
            return reply

        return handle

    def _json(self, status: int, data: Any, headers: dict[str, str] | None = None) -> Reply:
        return status, {"Content-Type": "application/json", **(headers or {})}, json.dumps(data)

    def _page(self, items: list[dict[str, Any]], *, query: dict[str, str], path: str) -> Reply:
        per_page = min(int(query.get("per_page", "20")), self.per_page_cap)
        page = int(query.get("page", "1"))
        total_pages = max(1, -(-len(items) // per_page))
        chunk = items[(page - 1) * per_page : page * per_page]
        headers = {"X-Page": str(page), "X-Per-Page": str(per_page), "X-Total": str(len(items)),
                   "X-Total-Pages": str(total_pages), "X-Next-Page": str(page + 1) if page < total_pages else ""}
        if page < total_pages:
            following = urlencode({**query, "page": str(page + 1)})
            headers["Link"] = f'<{self.url.rstrip("/")}{path}?{following}>; rel="next"'
        return self._json(200, chunk, headers)

    def _note_json(self, note: dict[str, Any]) -> dict[str, Any]:
        return {"id": note["id"], "type": None, "body": note["body"], "attachment": None,
                "author": {"id": 1 if note["username"] == self.username else 2, "username": note["username"],
                           "name": note["username"], "state": "active"},
                "created_at": NOW, "updated_at": NOW, "system": note["system"], "noteable_id": 88000 + note["mr"],
                "noteable_type": "MergeRequest", "noteable_iid": note["mr"], "resolvable": False,
                "confidential": False, "internal": False}

    def _environment_json(self, env: dict[str, Any]) -> dict[str, Any]:
        return {key: value for key, value in env.items() if key != "project"}

    # --- endpoints -------------------------------------------------------------------------------

    def _user(self, *, body: Any, query: dict[str, str], path: str) -> Reply:
        return self._json(200, {"id": 1, "username": self.username, "name": "devstack", "bot": True,
                                "state": "active"})

    def _user_id(self, username: str) -> int:
        return 1 if username == self.username else 100 + sum(map(ord, username))

    def _users(self, *, body: Any, query: dict[str, str], path: str) -> Reply:
        known = {self.username} | {name for _, name in self.members}
        username = query.get("username", "")
        found = [{"id": self._user_id(username), "username": username, "name": username, "state": "active"}]
        return self._json(200, found if username in known else [])

    def _member(self, project: str, user_id: int, *, body: Any, query: dict[str, str], path: str) -> Reply:
        for (member_project, username), level in self.members.items():
            if member_project == project and self._user_id(username) == user_id:
                return self._json(200, {"id": user_id, "username": username, "state": "active",
                                        "access_level": level})
        return self._json(404, {"message": "404 Not found"})

    def _list_merge_requests(self, project: str, *, body: Any, query: dict[str, str], path: str) -> Reply:
        """Offset paging: each page is cut from the list as it is now (``on_list_page(project, page)`` runs first)."""
        if self.on_list_page is not None:
            self.on_list_page(project, int(query.get("page", "1")))
        found = [mr for (p, _), mr in sorted(self.merge_requests.items(), reverse=True)
                 if p == project and query.get("state", mr["state"]) == mr["state"]]
        return self._page(found, query=query, path=path)

    def _get_merge_request(self, project: str, iid: int, *, body: Any, query: dict[str, str], path: str) -> Reply:
        mr = self.merge_requests.get((project, iid))
        return self._json(200, mr) if mr else self._json(404, {"message": "404 Not found"})

    def _edit_merge_request(self, project: str, iid: int, *, body: Any, query: dict[str, str], path: str) -> Reply:
        mr = self.merge_requests.get((project, iid))
        if mr is None:
            return self._json(404, {"message": "404 Not found"})
        removed = set(filter(None, body.get("remove_labels", "").split(",")))
        added = [name for name in body.get("add_labels", "").split(",") if name and name not in mr["labels"]]
        mr["labels"] = [name for name in mr["labels"] if name not in removed] + added
        return self._json(200, mr)

    def _list_notes(self, project: str, iid: int, *, body: Any, query: dict[str, str], path: str) -> Reply:
        notes = sorted(self.notes_on(project, iid), key=lambda n: n["id"], reverse=query.get("sort") != "asc")
        return self._page([self._note_json(n) for n in notes], query=query, path=path)

    def _create_note(self, project: str, iid: int, *, body: Any, query: dict[str, str], path: str) -> Reply:
        if not body or not body.get("body"):
            return self._json(400, {"message": "400 Bad request - body is missing"})
        note_id = self.add_note(project, iid, body["body"], username=self.username)
        return self._json(201, self._note_json(self.notes[note_id]))

    def _get_note(self, project: str, iid: int, note_id: int, *, body: Any, query: dict[str, str],
                  path: str) -> Reply:
        note = self.notes.get(note_id)
        if note is None or (note["project"], note["mr"]) != (project, iid):
            return self._json(404, {"message": "404 Not found"})
        return self._json(200, self._note_json(note))

    def _edit_note(self, project: str, iid: int, note_id: int, *, body: Any, query: dict[str, str],
                   path: str) -> Reply:
        note = self.notes.get(note_id)
        if note is None or (note["project"], note["mr"]) != (project, iid):
            return self._json(404, {"message": "404 Not found"})
        note["body"] = body["body"]
        return self._json(200, self._note_json(note))

    def _list_environments(self, project: str, *, body: Any, query: dict[str, str], path: str) -> Reply:
        found = [e for e in self.environments_of(project) if "name" not in query or e["name"] == query["name"]]
        return self._page([self._environment_json(e) for e in found], query=query, path=path)

    def _create_environment(self, project: str, *, body: Any, query: dict[str, str], path: str) -> Reply:
        if any(e["name"] == body["name"] for e in self.environments_of(project)):
            return self._json(400, {"message": {"name": ["has already been taken"]}})
        env_id = self._id()
        slug = re.sub(r"[^a-z0-9]+", "-", body["name"].lower()).strip("-")[:17] + "-x1y2z3"
        self.environments[env_id] = {"id": env_id, "project": project, "name": body["name"], "slug": slug,
                                     "external_url": body.get("external_url"), "state": "available",
                                     "tier": "development", "created_at": NOW, "updated_at": NOW,
                                     "auto_stop_at": None}
        return self._json(201, self._environment_json(self.environments[env_id]))

    def _environment(self, project: str, env_id: int) -> dict[str, Any] | None:
        env = self.environments.get(env_id)
        return env if env is not None and env["project"] == project else None

    def _edit_environment(self, project: str, env_id: int, *, body: Any, query: dict[str, str], path: str) -> Reply:
        env = self._environment(project, env_id)
        if env is None:
            return self._json(404, {"message": "404 Environment Not Found"})
        env.update({k: v for k, v in body.items() if k in ("external_url", "tier")})
        return self._json(200, self._environment_json(env))

    def _delete_environment(self, project: str, env_id: int, *, body: Any, query: dict[str, str],
                            path: str) -> Reply:
        env = self._environment(project, env_id)
        if env is None:
            return self._json(404, {"message": "404 Environment Not Found"})
        if env["state"] != "stopped":
            return self._json(403, {"message": "403 Forbidden"})  # GitLab deletes stopped environments only
        del self.environments[env_id]
        return 204, {}, ""

    def _stop_environment(self, project: str, env_id: int, *, body: Any, query: dict[str, str], path: str) -> Reply:
        env = self._environment(project, env_id)
        if env is None:
            return self._json(404, {"message": "404 Environment Not Found"})
        env["state"] = "stopped"
        return self._json(200, self._environment_json(env))


@contextmanager
def fake_gitlab(url: str, token: str) -> Iterator[FakeGitLab]:
    fake = FakeGitLab(url=url, token=token)
    with responses.RequestsMock(assert_all_requests_are_fired=False) as rsps:
        rsps.add_passthru("http://127.0.0.1")
        fake.install(rsps)
        yield fake


# ------------------------------------------------------------------------------------ webhook payloads


def fixture(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((FIXTURES / name).read_text())
    return data


def mr_hook(
    *,
    action: str | None = "open",
    repo: str = "platform/team/ledger-svc",
    iid: int = 7,
    sha: str = "3f1c2b9a8d7e6f5a4b3c2d1e0f9a8b7c6d5e4f3a",
    branch: str = "login-fix",
    state: str = "opened",
    draft: bool = False,
    labels: tuple[str, ...] = (),
    oldrev: str | None = None,
    source_project_id: int = 901,
    url: str = "https://gitlab.example.com",
) -> dict[str, Any]:
    """A ``Merge Request Hook`` payload shaped like GitLab 17's (built from the hand-written fixture)."""
    payload = copy.deepcopy(fixture("merge_request.open.json"))
    web_url = f"{url}/{repo}"
    payload["project"].update(path_with_namespace=repo, web_url=web_url, name=repo.rsplit("/", 1)[-1])
    attrs = payload["object_attributes"]
    attrs.update(iid=iid, source_branch=branch, state=state, draft=draft, work_in_progress=draft,
                 source_project_id=source_project_id, url=f"{web_url}/-/merge_requests/{iid}")
    if action is None:
        del attrs["action"]
    else:
        attrs["action"] = action
    if oldrev is not None:
        attrs["oldrev"] = oldrev
    attrs["last_commit"].update(id=sha, url=f"{web_url}/-/commit/{sha}")
    label_objects = [{"id": 100 + n, "title": name, "color": "#ededed", "type": "ProjectLabel"}
                     for n, name in enumerate(labels)]
    payload["labels"] = label_objects
    attrs["labels"] = copy.deepcopy(label_objects)
    return payload


def note_hook(
    *,
    body: str = "/devstack ttl 3d",
    note_id: int = 55120,
    action: str | None = "create",
    noteable_type: str = "MergeRequest",
    repo: str = "platform/team/ledger-svc",
    iid: int = 7,
    username: str = "grace",
) -> dict[str, Any]:
    """A ``Note Hook`` payload (a comment on a merge request, unless ``noteable_type`` says otherwise)."""
    payload = copy.deepcopy(fixture("note.merge_request.json"))
    payload["user"]["username"] = username
    payload["project"]["path_with_namespace"] = repo
    attrs = payload["object_attributes"]
    attrs.update(note=body, id=note_id, noteable_type=noteable_type)
    if action is None:
        del attrs["action"]
    else:
        attrs["action"] = action
    payload["merge_request"]["iid"] = iid
    return payload

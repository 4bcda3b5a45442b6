"""GitHub's record of a webhook's deliveries, and asking it to deliver one again.

``GET <hook>/deliveries`` lists the deliveries GitHub made (or failed to make) in the last three days,
newest first, paged with a cursor; ``POST <hook>/deliveries/<id>/attempts`` delivers one again, with its
original ``X-GitHub-Delivery`` (the guid devstack dedupes on). ``<hook>`` is ``/app/hook`` for a GitHub
App (authenticated with the App's JWT), ``/repos/<owner>/<repo>/hooks/<id>`` or ``/orgs/<org>/hooks/<id>``
for a repository or organization webhook (authenticated with the token; it needs admin rights on the
hook). Only translation and HTTP here: :mod:`devstack.redelivery` decides what to redeliver.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import requests
from pydantic import SecretStr

from devstack.errors import ProviderError, ProviderRejected
from devstack.providers.http import retry_after

_NEXT = re.compile(r'<([^>]+)>;\s*rel="next"')


@dataclass(frozen=True, kw_only=True)
class HookDelivery:
    id: int
    guid: str  # the X-GitHub-Delivery header: what the journal dedupes on
    event: str
    action: str
    status_code: int  # GitHub's record of our answer (0: no answer)
    delivered_at: str
    redelivery: bool


class GitHubHooks:
    def __init__(self, *, api_url: str, token: SecretStr | None = None, app_id: int | None = None,
                 private_key: SecretStr | None = None, timeout: float = 10.0) -> None:
        self._api = api_url.rstrip("/")
        self._token = token
        self._app = (app_id, private_key) if app_id and private_key is not None else None
        self._timeout = timeout
        self._session = requests.Session()

    def _headers(self, prefix: str) -> dict[str, str]:
        headers = {"Accept": "application/vnd.github+json", "User-Agent": "devstack",
                   "X-GitHub-Api-Version": "2022-11-28"}
        if prefix == "/app/hook":
            if self._app is None:
                raise ProviderRejected("the App's webhook deliveries need providers.github.app_id and private_key")
            from github import Auth

            jwt = Auth.AppAuth(self._app[0], self._app[1].get_secret_value()).create_jwt()
            headers["Authorization"] = f"Bearer {jwt}"
        elif self._token is not None and self._token.get_secret_value():
            headers["Authorization"] = f"token {self._token.get_secret_value()}"
        else:
            raise ProviderRejected(f"the deliveries of {prefix} need providers.github.token (with admin rights on "
                                   "the hook)")
        return headers

    def deliveries(self, prefix: str, *, pages: int = 10) -> Iterator[HookDelivery]:
        """The deliveries of hook ``prefix``, newest first, at most ``pages`` pages of 100."""
        url: str | None = f"{self._api}{prefix}/deliveries?per_page=100"
        for _ in range(pages):
            if url is None:
                return
            response = self._call("GET", url, prefix=prefix)
            data = response.json()
            if not isinstance(data, list):
                raise ProviderRejected(f"{prefix}/deliveries: not a list")
            for item in data:
                if isinstance(item, dict):
                    yield _delivery(item)
            found = _NEXT.search(response.headers.get("Link", ""))
            url = found.group(1) if found else None

    def redeliver(self, prefix: str, delivery_id: int) -> None:
        self._call("POST", f"{self._api}{prefix}/deliveries/{int(delivery_id)}/attempts", prefix=prefix)

    def _call(self, method: str, url: str, *, prefix: str) -> requests.Response:
        try:
            response = self._session.request(method, url, headers=self._headers(prefix), timeout=self._timeout)
        except requests.RequestException as exc:
            raise ProviderError(f"GitHub unreachable ({type(exc).__name__})") from None
        if response.status_code in (429, 500, 502, 503, 504) or (
                response.status_code == 403 and response.headers.get("X-RateLimit-Remaining") == "0"):
            raise ProviderError(f"{method} {prefix}/deliveries: {response.status_code}",
                                delay=retry_after(response.headers.get("Retry-After"), now=time.time()))
        if response.status_code >= 400:
            raise ProviderRejected(f"{method} {prefix}/deliveries: {response.status_code} "
                                   f"{_message(response)}")
        return response


def _delivery(item: dict[str, Any]) -> HookDelivery:
    return HookDelivery(
        id=int(item.get("id") or 0), guid=str(item.get("guid") or ""), event=str(item.get("event") or ""),
        action=str(item.get("action") or ""), status_code=int(item.get("status_code") or 0),
        delivered_at=str(item.get("delivered_at") or ""), redelivery=bool(item.get("redelivery")),
    )


def _message(response: requests.Response) -> str:
    try:
        data = response.json()
    except ValueError:
        return ""
    return str(data.get("message", ""))[:200] if isinstance(data, dict) else ""

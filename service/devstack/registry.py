"""Does an image tag exist? ``HEAD /v2/<name>/manifests/<tag>`` of the OCI distribution API.

Anonymous, or with the credentials of a ``.dockerconfigjson`` (``gate.pull_secret``, the file a
Kubernetes pull Secret mounts; like docker, the default Docker config is read too when there is one),
through the registry's token handshake (``WWW-Authenticate: Bearer``
then the token endpoint, or Basic). The reference parsing, credential lookup and token handshake are
oras-py's; the request itself is made here with a timeout and no retries of its own: the gatekeeper
polls with backoff, so one slow registry never holds it for minutes.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import oras.auth
import oras.container
import requests

from devstack.errors import TemporaryError
from devstack.gates import qualified

logger = logging.getLogger(__name__)

ACCEPT = ", ".join((
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.docker.distribution.manifest.v2+json",
))
_REFERENCE = re.compile(
    r"(?P<registry>[a-zA-Z0-9.-]+(?::[0-9]{1,5})?)/(?P<name>[a-z0-9]+(?:[._-]+[a-z0-9]+)*(?:/[a-z0-9]+(?:[._-]+[a-z0-9]+)*)*)"
    r":(?P<tag>[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})"
)


class RegistryError(TemporaryError):
    """The registry could not say (unreachable, 5xx, credentials refused): ask again later."""


class _Session(requests.Session):
    """A session whose every request (oras-py's token requests too) has a timeout."""

    def __init__(self, timeout: float) -> None:
        super().__init__()
        self._timeout = timeout

    def request(self, method: str | bytes, url: str | bytes, *args: Any, **kwargs: Any) -> requests.Response:
        kwargs.setdefault("timeout", self._timeout)
        return super().request(method, url, *args, **kwargs)


class Registry:
    """Asks registries whether image tags exist."""

    def __init__(self, *, pull_secret: Path | None = None, insecure: Sequence[str] = (), timeout: float = 5.0) -> None:
        self._pull_secret = pull_secret
        self._insecure = frozenset(insecure)
        self._timeout = timeout

    def exists(self, ref: str) -> bool:
        """True when ``registry/name:tag`` exists; False when the registry says it does not (404);
        :class:`RegistryError` when it cannot be told (then ask again later)."""
        match = _REFERENCE.fullmatch(ref)
        if match is None or not qualified(ref.rpartition(":")[0]):
            raise ValueError(f"{ref[:200]!r} is not registry/name:tag")
        container = oras.container.Container(ref)
        insecure = match["registry"] in self._insecure
        session = _Session(self._timeout)
        url = f"{'http' if insecure else 'https'}://{container.manifest_url()}"
        headers = {"Accept": ACCEPT}
        try:
            response = session.head(url, headers=headers, allow_redirects=True)
            if response.status_code == 401:  # the challenge says how: Basic, or a Bearer token handshake
                challenge = response.headers.get("WWW-Authenticate", "")
                backend = "basic" if challenge.lower().startswith("basic") else "token"
                auth = oras.auth.get_auth_backend(backend, session, insecure, tls_verify=True)
                auth.load_configs(container, configs=[str(self._pull_secret)] if self._pull_secret else [])
                if backend == "token" or getattr(auth, "_basic_auth", None):
                    headers, changed = auth.authenticate_request(response, headers)
                    if changed:
                        response = session.head(url, headers=headers, allow_redirects=True)
        except requests.RequestException as exc:
            raise RegistryError(f"registry {match['registry']} unreachable: {type(exc).__name__}") from None
        finally:
            session.close()
        if response.status_code == 200:
            return True
        if response.status_code == 404:
            return False
        if response.status_code in (401, 403):
            raise RegistryError(f"registry {match['registry']} refused the credentials for {match['name']} "
                                f"({response.status_code}): check gate.pull_secret")
        raise RegistryError(f"registry {match['registry']} answered {response.status_code} for {match['name']}")

"""The only way user text (branch names, labels, service names) becomes a name devstack writes.

Every feature name, namespace, Application name, host and file name comes out of this module, and
each is checked against the rule it must satisfy (DNS-1123 label) before it leaves. Nothing a user
typed reaches a path, a host or YAML any other way.

Feature names: a branch (or ``devstack/feature:<name>`` label) that already is a valid name of at
most 30 characters is used as it is (``login-fix``). Anything else (upper case, ``/``, unicode,
``--``, too long, empty) is slugged and given a 6-character hash of the *original* text, so two
different inputs never share a name and the same input always gets the same one:
``feature/Login`` -> ``feature-login-2c1d5e``.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata

FEATURE_MAX = 30
HASH_LEN = 6
DNS_LABEL_MAX = 63
NAMESPACE_PREFIX = "preview-"

_DNS_LABEL = re.compile(r"^[a-z0-9]([a-z0-9-]*[a-z0-9])?$")
# A feature must not contain "--": it separates the feature from the service in preview hosts.
_FEATURE = re.compile(r"^[a-z0-9]+(-[a-z0-9]+)*$")
_SERVICE = re.compile(r"^[a-z](-?[a-z0-9])*$")
_NOT_SLUG = re.compile(r"[^a-z0-9]+")


class InvalidName(ValueError):
    """A name (after all transformations) does not satisfy its rule."""


def _digest(text: str, length: int = HASH_LEN) -> str:
    raw = text.encode("utf-8", errors="surrogatepass")
    return hashlib.sha256(raw).hexdigest()[:length]


def is_dns_label(name: str) -> bool:
    return len(name) <= DNS_LABEL_MAX and bool(_DNS_LABEL.match(name))


def is_feature_name(name: str) -> bool:
    return len(name) <= FEATURE_MAX and bool(_FEATURE.match(name))


def _slug(text: str) -> str:
    ascii_text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode("ascii")
    return _NOT_SLUG.sub("-", ascii_text.lower()).strip("-")


def feature_name(text: str) -> str:
    """A stable, collision-free feature name (DNS-1123 label, at most 30 characters) for any text."""
    if is_feature_name(text):
        return text
    digest = _digest(text)
    base = _slug(text)[: FEATURE_MAX - HASH_LEN - 1].strip("-")
    return f"{base}-{digest}" if base else f"f-{digest}"


_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def display_text(text: str, *, limit: int = 255) -> str:
    """User text kept only as data (a branch name shown in a comment): no control characters, bounded."""
    cleaned = _CONTROL.sub(" ", text.encode("utf-8", errors="replace").decode("utf-8"))
    return cleaned[:limit]


def service_name_problem(name: str) -> str | None:
    """Why ``name`` cannot be a catalog service name, or None when it can."""
    if not (1 <= len(name) <= 30):
        return "must be 1 to 30 characters"
    if not _SERVICE.match(name):
        return "must be lowercase letters, digits and single '-', starting with a letter"
    return None


def namespace(feature: str) -> str:
    return _checked(NAMESPACE_PREFIX + _checked_feature(feature))


def app_name(feature: str, service: str) -> str:
    """The Argo CD Application name ``<feature>-<service>``, shortened with a hash past 63 chars."""
    name = f"{_checked_feature(feature)}-{service}"
    if len(name) > DNS_LABEL_MAX:
        name = f"{name[: DNS_LABEL_MAX - HASH_LEN - 1].rstrip('-')}-{_digest(name)}"
    return _checked(name)


def entry_filename(feature: str) -> str:
    """The entry file of a feature stack, relative to the entries folder (always flat)."""
    return f"{_checked_feature(feature)}.json"


def feature_from_filename(filename: str) -> str | None:
    """The feature an entry file belongs to, or None for files that are not entries."""
    if not filename.endswith(".json") or "/" in filename:
        return None
    stem = filename[: -len(".json")]
    return stem if is_feature_name(stem) else None


def preview_host(*, template: str, feature: str, service: str, domain: str) -> str:
    """The preview host, from ``routing.host`` (default ``{feature}--{service}.{domain}``)."""
    host = template.format(feature=_checked_feature(feature), service=service, domain=domain)
    problem = hostname_problem(host)
    if problem:
        raise InvalidName(f"preview host {host!r}: {problem}")
    return host


def hostname_problem(host: str) -> str | None:
    """Why ``host`` is not a valid DNS name (RFC 1123, lowercase), or None."""
    if not host or len(host) > 253:
        return "must be 1 to 253 characters"
    for label in host.split("."):
        if not is_dns_label(label):
            return f"label {label!r} is not a DNS-1123 label"
    return None


def _checked_feature(feature: str) -> str:
    if not is_feature_name(feature):
        raise InvalidName(f"{feature!r} is not a feature name")
    return feature


def _checked(name: str) -> str:
    if not is_dns_label(name):
        raise InvalidName(f"{name!r} is not a DNS-1123 label")
    return name

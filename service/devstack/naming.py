"""The only way user text (branch names, labels, service names) becomes a name devstack writes.

Every feature name, namespace, Application name, host and file name comes out of this module, and
each is checked against the rule it must satisfy (DNS-1123 label) before it leaves. Nothing a user
typed reaches a path, a host or YAML any other way.

Feature names: a branch (or ``devstack/feature:<name>`` label) that already is a valid name of at
most 30 characters is used as it is (``login-fix``), unless it *looks hashed* (its last part is 6
hexadecimal characters, ``fix-abc123``). Anything else (upper case, ``/``, unicode, ``--``, too long,
empty, looks hashed) is slugged and given a 6-character hash of the *original* text:
``feature/Login`` -> ``feature-login-48fad0``. Every hashed name looks hashed and no name kept as it
is does, so a branch can never take the hashed name of another text: two different inputs share a
name only if their slugs and the first 24 bits of their SHA-256 agree (and a PR already in a stack
keeps it, :func:`legacy_feature_name`). The same input always gets the same name.

Application names: ``<feature>---<service>`` (three dashes). Injective, because a feature never
contains ``--`` nor ends with ``-`` and a service never starts with ``-``: the first ``--`` ends the
feature. At most 30 + 3 + 30 = 63 characters, so never shortened. Disjoint from the namespace
Application ``<feature>--namespace`` (two dashes, then ``namespace``) and from the old scheme
``<feature>-<service>`` (no ``--`` at all), which existing elements keep (:func:`legacy_app_name`):
renaming an Application makes Argo CD delete it and create a new one, and its PostDelete hooks drop
the preview's database.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata

FEATURE_MAX = 30
HASH_LEN = 6
DNS_LABEL_MAX = 63
NAMESPACE_PREFIX = "preview-"
APP_SEPARATOR = "---"

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


_LOOKS_HASHED = re.compile(rf"-[0-9a-f]{{{HASH_LEN}}}$")  # every hashed name: "<base>-<hash>"


def looks_hashed(name: str) -> bool:
    """Whether ``name`` has the shape of a hashed name: a last part (after a ``-``) of 6 hexadecimal
    characters. ``facade`` does not (a hashed name always has a part before the hash)."""
    return bool(_LOOKS_HASHED.search(name))


def feature_name(text: str) -> str:
    """A stable feature name (DNS-1123 label, at most 30 characters, no ``--``) for any text.

    Kept names never look hashed and hashed names always do, so the two sets never meet.
    """
    if is_feature_name(text) and not looks_hashed(text):
        return text
    return _hashed(text, _digest(text))


def legacy_feature_name(text: str) -> str:
    """The name devstack gave ``text`` before hashed-looking names were hashed too (a valid name was
    kept as it is). A PR whose stack has this name keeps it, so an upgrade renames no preview."""
    return text if is_feature_name(text) else feature_name(text)


def pr_feature_name(feature: str, *, pr_key: str, number: int) -> str:
    """The feature of a PR that cannot share ``feature`` (another open PR of its repository builds the
    same services there): ``<feature>-<number>-<hash6>``, the hash over the PR's identity and the
    feature. It looks hashed, so no branch kept as it is can take it."""
    _checked_feature(feature)
    digest = _digest(f"pr\x00{pr_key}\x00{feature}")
    suffix = f"-{number}-{digest}" if 0 <= number < 10**12 else f"-{digest}"
    base = feature[: FEATURE_MAX - len(suffix)].rstrip("-")
    return _checked_feature(f"{base or 'f'}{suffix}")


def _hashed(text: str, digest: str) -> str:
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
    """The Argo CD Application name of a new element, ``<feature>---<service>`` (injective, at most 63)."""
    problem = service_name_problem(service)
    if problem:
        raise InvalidName(f"service {service[:40]!r} {problem}")
    return _checked(f"{_checked_feature(feature)}{APP_SEPARATOR}{service}")


def legacy_app_name(feature: str, service: str) -> str:
    """The Application name of elements created before :func:`app_name` was injective,
    ``<feature>-<service>``: an existing element keeps it (renaming deletes the Application)."""
    name = f"{_checked_feature(feature)}-{service}"
    if len(name) > DNS_LABEL_MAX:
        name = f"{name[: DNS_LABEL_MAX - HASH_LEN - 1].rstrip('-')}-{_digest(name)}"
    return _checked(name)


def app_names(feature: str, service: str) -> tuple[str, str]:
    """The names an element of ``service`` in ``feature`` may have: the current one, then the old one."""
    return app_name(feature, service), legacy_app_name(feature, service)


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


def host_template_problem(template: str) -> str | None:
    """Why ``routing.host`` could give two (feature, service) pairs one host, or None.

    Features and services contain neither ``.`` nor ``--`` and neither ends in ``-``, so when the text
    between ``{feature}`` and ``{service}`` (in either order) holds a ``.`` or a ``--``, the first of
    those in a host ends the first name: the template is injective. ``{feature}-{service}`` is not
    (``foo-payments`` + ``api`` and ``foo`` + ``payments-api`` meet)."""
    first, second = sorted(("{feature}", "{service}"), key=template.find)
    start, end = template.find(first), template.find(second)
    if start < 0 or end < 0:
        return "must contain {feature} and {service}"
    between = template[start + len(first) : end].replace("{domain}", "")
    if "." not in between and "--" not in between:
        return (f"{first} and {second} must be separated by '--' or '.' (e.g. {{feature}}--{{service}}), "
                "or two previews can get one host")
    return None


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

"""Reading untrusted webhook payloads: every failure is a :class:`BadPayload` naming the field.

Shared by the GitHub and GitLab translators, which only differ in *which* fields they read.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from devstack.errors import BadPayload

_UNSAFE = re.compile(r"[^\w.:/-]", re.ASCII)
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
MAX_BRANCH = 255  # what entries.schema.json lets a branch name be


def short(value: str) -> str:
    """Sender-controlled text, quoted for a log line or a reply: short and printable."""
    text = _UNSAFE.sub("?", value[:40]) + ("..." if len(value) > 40 else "")
    return f"'{text}'"


def object_at(value: object, path: str) -> Mapping[str, object]:
    if not isinstance(value, Mapping):
        raise BadPayload(f"{path}: not an object")
    return value


def field(obj: Mapping[str, object], key: str, path: str) -> object:
    if key not in obj or obj[key] is None:
        raise BadPayload(f"{path}: missing")
    return obj[key]


def string(obj: Mapping[str, object], key: str, path: str, *, allow_empty: bool = False) -> str:
    value = field(obj, key, path)
    if not isinstance(value, str):
        raise BadPayload(f"{path}: not a string")
    if not value and not allow_empty:
        raise BadPayload(f"{path}: empty")
    return value


def optional_bool(obj: Mapping[str, object], key: str, path: str) -> bool:
    """A boolean that older payloads may lack (False then)."""
    value = obj.get(key)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise BadPayload(f"{path}: not a boolean")
    return value


def branch(obj: Mapping[str, object], key: str, path: str) -> str:
    """A branch name: kept as data, so bounded and without control characters."""
    value = string(obj, key, path)
    if len(value) > MAX_BRANCH or _CONTROL.search(value):
        raise BadPayload(f"{path}: not a branch name")
    return value

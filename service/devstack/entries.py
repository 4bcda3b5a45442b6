"""The entry format: the contract between devstack and ``argocd/applicationset.yaml``.

One file per feature stack, ``<gitops.path>/<feature>.json``: a JSON list whose elements are the
parameter sets of one Argo CD Application each (see ``entries.schema.json`` and DESIGN §3).

One invalid entry freezes every preview (a template error aborts the whole ApplicationSet
reconcile), so :func:`validate` runs on every file before every commit.
"""

from __future__ import annotations

import json
import sys
from functools import cache
from importlib import resources
from typing import Any

import jsonschema
import jsonschema_rs

from devstack.errors import InvalidEntry
from devstack.naming import app_name, app_names, entry_filename, namespace

Element = dict[str, Any]


@cache
def schema() -> dict[str, Any]:
    text = resources.files("devstack").joinpath("entries.schema.json").read_text(encoding="utf-8")
    loaded: dict[str, Any] = json.loads(text)
    return loaded


@cache
def _validator() -> jsonschema.Draft202012Validator:
    jsonschema.Draft202012Validator.check_schema(schema())
    return jsonschema.Draft202012Validator(schema())


@cache
def _fast_validator() -> jsonschema_rs.Draft202012Validator:
    return jsonschema_rs.Draft202012Validator(schema())


def validate(feature: str, elements: list[Element], *, fast: bool = False) -> None:
    """Raise :class:`InvalidEntry` unless ``elements`` is a valid entry file for ``feature``.

    ``fast``: check the schema with jsonschema-rs first (about a hundred times faster); jsonschema runs
    only when that fails, for the message (and decides: a file either accepts is valid). The worker
    checks what it is about to commit this way, the same check that reading the repo applies, so what
    devstack writes it can always read back. Without it jsonschema alone decides."""
    if fast and _fast_validator().is_valid(elements):
        errors = []
    else:
        errors = sorted(_validator().iter_errors(elements), key=lambda e: list(e.absolute_path))
    if errors:
        first = errors[0]
        where = "/".join(str(p) for p in first.absolute_path) or "(file)"
        raise InvalidEntry(f"{entry_filename(feature)}: {where}: {first.message[:300]}")
    services: set[str] = set()
    for index, element in enumerate(elements):
        service = element["service"]
        problems = []
        if element["feature"] != feature or element["values"]["feature"] != feature:
            problems.append(f"feature is not {feature!r}")
        if service in services:
            problems.append(f"service {service!r} appears twice")
        if element["app"] not in app_names(feature, service):
            problems.append(f"app is not {app_name(feature, service)!r}")
        if element["namespace"] != namespace(feature) or element["values"]["namespace"] != namespace(feature):
            problems.append(f"namespace is not {namespace(feature)!r}")
        if element["values"]["service"] != service:
            problems.append("values.service differs from service")
        asleep = bool(element.get("sleep"))
        if asleep != (element["values"].get("sleep") is True) or asleep != ("wake" in element["values"]):
            problems.append("sleep, values.sleep and values.wake disagree (all three are set while asleep, "
                            "none while awake)")
        if bool(element.get("dev")) != ("dev" in element["values"]):
            problems.append("dev and values.dev disagree (both are set in dev mode, neither otherwise)")
        if problems:
            raise InvalidEntry(f"{entry_filename(feature)}: {index}: {'; '.join(problems)}")
        services.add(service)
    owners = [e["service"] for e in elements if e["values"].get("namespaceOwner") == "true"]
    if len(owners) != 1:
        raise InvalidEntry(
            f"{entry_filename(feature)}: exactly one element must own the namespace (values.namespaceOwner), "
            f"found {len(owners)}"
        )


def encode(elements: list[Element]) -> bytes:
    """Canonical bytes (sorted keys, ASCII only, trailing newline): equal entries, equal files."""
    ordered = sorted(elements, key=lambda e: str(e.get("service", "")))
    return (json.dumps(ordered, indent=2, sort_keys=True, ensure_ascii=True) + "\n").encode("ascii")


def decode(feature: str, data: bytes) -> list[Element]:
    """Parse an entry file; raise :class:`InvalidEntry` when it is not a JSON list of objects."""
    try:
        loaded = _shared_keys(json.loads(data))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InvalidEntry(f"{entry_filename(feature)}: not JSON: {exc}") from None
    except RecursionError:
        raise InvalidEntry(f"{entry_filename(feature)}: nested too deeply") from None
    if not isinstance(loaded, list) or not all(isinstance(e, dict) for e in loaded):
        raise InvalidEntry(f"{entry_filename(feature)}: not a JSON list of objects")
    return loaded


def _shared_keys(value: Any) -> Any:
    """``value`` with every object key interned: the worker holds every entry decoded, and each file's
    ~35 keys were strings of their own (10,000 entries: 52 -> 36 MB)."""
    if isinstance(value, dict):
        return {sys.intern(key): _shared_keys(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_shared_keys(item) for item in value]
    return value

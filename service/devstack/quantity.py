"""Kubernetes resource quantities (``250m``, ``128Mi``) parsed by the Kubernetes client's own parser.

``kubernetes.utils.parse_quantity`` is a small module of the official client that needs only
``decimal``; importing it the usual way runs the package's ``__init__``, which loads the whole API
client: 36 MB of resident memory and 0.4 s per process, paid by ``devstack intake`` and a local
``devstack serve`` that never talk to a cluster. The module is loaded from the installed package's file
on its own instead; should a future client move it, the usual import is used.
"""

from __future__ import annotations

import functools
import importlib.util
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path


@functools.cache
def _parser() -> Callable[[object], Decimal]:
    spec = importlib.util.find_spec("kubernetes")  # finds the package without running its __init__
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    source = Path(locations[0], "utils", "quantity.py") if locations else None
    if source is not None and source.is_file():
        module_spec = importlib.util.spec_from_file_location("devstack._kubernetes_quantity", source)
        if module_spec is not None and module_spec.loader is not None:
            module = importlib.util.module_from_spec(module_spec)
            module_spec.loader.exec_module(module)
            parse: Callable[[object], Decimal] = module.parse_quantity
            return parse
    from kubernetes.utils import parse_quantity  # pragma: no cover - the file moved: the whole client

    return parse_quantity  # type: ignore[no-any-return]


def parse_quantity(quantity: object) -> Decimal:
    """The value of a Kubernetes quantity (``"250m"`` -> ``0.250``); ``ValueError`` when it is not one."""
    return _parser()(quantity)

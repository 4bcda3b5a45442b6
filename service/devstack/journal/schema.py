"""The journal's tables: the first migration of the SQLite journal (``migrations/sqlite``), as text.

The tables are created and changed only by the versioned migrations (:mod:`devstack.journal.backend`);
this constant is for readers and tests."""

from __future__ import annotations

from importlib import resources

SCHEMA = resources.files("devstack.journal").joinpath("migrations", "sqlite", "0001.initial.sql").read_text(
    encoding="utf-8")

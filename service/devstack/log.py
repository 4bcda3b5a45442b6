"""Logging: stdlib ``logging`` with the delivery id, provider, repo and PR bound on every record.

``with bind(delivery="…", repo="…", pr="42"):`` puts those fields in a context variable; a filter
copies them onto every record emitted inside, from any module. ``--log-format json`` prints one JSON
object per line; the text format appends the bound fields as ``key=value``. Both formats pass every
line through :func:`devstack.redact.scrub`: no registered secret reaches a log line, from any logger
(uvicorn's, PyGithub's and git's included), in the message or in a traceback.
"""

from __future__ import annotations

import contextvars
import json
import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from devstack import redact

FIELDS = ("delivery", "provider", "repo", "pr", "feature", "batch")
_context: contextvars.ContextVar[dict[str, str] | None] = contextvars.ContextVar("devstack_log_context", default=None)


@contextmanager
def bind(**fields: object) -> Iterator[None]:
    token = _context.set({**(_context.get() or {}), **{k: str(v) for k, v in fields.items() if v not in (None, "")}})
    try:
        yield
    finally:
        _context.reset(token)


class ContextFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        for key, value in (_context.get() or {}).items():
            setattr(record, key, value)
        return True


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        extra = " ".join(f"{k}={getattr(record, k)}" for k in FIELDS if hasattr(record, k))
        return redact.scrub(f"{text} [{extra}]" if extra else text)


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        data: dict[str, Any] = {
            "time": self.formatTime(record),
            "level": record.levelname,
            "logger": record.name,
            "message": redact.scrub(record.getMessage()),
        }
        data.update({k: redact.scrub(str(getattr(record, k))) for k in FIELDS if hasattr(record, k)})
        if record.exc_info:
            data["exception"] = redact.scrub(self.formatException(record.exc_info))
        return json.dumps(data, ensure_ascii=False)


def setup(*, level: str = "INFO", fmt: str = "text") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(ContextFilter())
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())

"""Logs: one JSON object per line with --log-format json, the delivery's fields bound on every record."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import yaml

from devstack import log
from tests.conftest import make_bare_remote, pr_payload
from tests.test_cli import Serve, post


def test_serve_logs_json_lines_with_delivery_provider_repo_and_pr(tmp_path: Path) -> None:
    remote = make_bare_remote(tmp_path / "gitops.git")
    config = tmp_path / "devstack.yaml"
    config.write_text(yaml.safe_dump({
        "state_dir": str(tmp_path / "state"), "gitops": {"url": remote},
        "providers": {"github": {"webhook_secrets": ["s3cret"]}, "gitlab": {"webhook_secrets": ["other"]}},
        "services": {"payments-api": {"repo": "acme/payments", "image": "ghcr.io/acme/payments-api"}},
    }))
    server = Serve(cwd=tmp_path, args=["--config", str(config)], log_args=["--log-format", "json"])
    try:
        assert post(server.url, pr_payload(), "delivery-123") == 202
        server.wait_idle()
    finally:
        server.stop()
    records = [json.loads(line) for line in server.output().splitlines() if line.strip()]  # every line is JSON
    mine = [r for r in records if r.get("delivery") == "delivery-123"]
    assert {r["logger"] for r in mine} >= {"devstack.app", "devstack.worker"}  # the edge and the worker
    queued = next(r for r in mine if r["message"].startswith("queued"))
    assert (queued["provider"], queued["repo"], queued["pr"]) == ("github", "acme/payments", "42")
    applied = next(r for r in mine if r["logger"] == "devstack.worker")
    assert applied["pr"] == "github:acme/payments#42" and applied["repo"] == "acme/payments"
    assert all({"time", "level", "logger", "message"} <= set(r) for r in records)


def test_bind_nests_and_restores(caplog: object) -> None:
    handler = logging.Handler()
    seen: list[logging.LogRecord] = []
    handler.emit = seen.append  # type: ignore[method-assign]
    handler.addFilter(log.ContextFilter())
    logger = logging.getLogger("devstack.test.bind")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        with log.bind(delivery="d1", provider="github"):
            with log.bind(repo="acme/payments", pr=42):
                logger.info("inner")
            logger.info("outer")
        logger.info("none")
    finally:
        logger.removeHandler(handler)
    inner, outer, none = seen
    assert (inner.delivery, inner.repo, inner.pr) == ("d1", "acme/payments", "42")  # type: ignore[attr-defined]
    assert outer.delivery == "d1" and not hasattr(outer, "repo")  # type: ignore[attr-defined]
    assert not hasattr(none, "delivery")
    assert json.loads(log.JsonFormatter().format(inner))["pr"] == "42"

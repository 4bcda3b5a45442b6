"""The postgres hook against a real PostgreSQL server started for this module (see hook_helpers)."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql

from devstack.errors import ConfigError, PermanentError, TemporaryError
from devstack.hooks import names, postgres
from devstack.hooks.cli import EXIT_OK, EXIT_PERMANENT, EXIT_TEMPORARY
from devstack.hooks.kube import decode
from devstack.hooks.retry import RetryPolicy
from devstack.hooks.settings import PostgresAdmin
from devstack.naming import InvalidName
from tests.hook_helpers import FakeKube, MemoryStore, PostgresServer, free_port, run_cli, running_postgres

NS = "preview-login-fix"
FAST = RetryPolicy(attempts=3, delay=0.01, max_delay=0.05)


@pytest.fixture(scope="module")
def pg(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PostgresServer]:
    with running_postgres(tmp_path_factory.mktemp("pg")) as server:
        yield server


@pytest.fixture
def admin(pg: PostgresServer) -> PostgresAdmin:
    return PostgresAdmin(
        host=pg.host, port=pg.port, user=pg.admin_user, password=pg.admin_password, sslmode="disable"
    )


def roles_and_databases(pg: PostgresServer) -> tuple[set[str], set[str]]:
    with pg.superconnect() as conn:
        roles = {r[0] for r in conn.execute("SELECT rolname FROM pg_roles WHERE rolname NOT LIKE 'pg\\_%'")}
        dbs = {r[0] for r in conn.execute("SELECT datname FROM pg_database")}
    return roles, dbs


def login(pg: PostgresServer, data: dict[str, str]) -> Any:
    return pg.connect(user=data["PGUSER"], password=data["PGPASSWORD"], dbname=data["PGDATABASE"])


# ----------------------------------------------------------------------------------------- names


def test_identifier_is_derived_from_feature_and_service() -> None:
    assert names.pg_identifier("login-fix") == "preview_login_fix"
    assert names.pg_identifier("login-fix", "payments-api") == "preview_login_fix__payments_api"
    # '__' keeps feature and service apart: these differ although their '_' forms would collide.
    assert names.pg_identifier("a-b", "c") != names.pg_identifier("a", "b-c")
    long_feature, long_service = "f" * 30, "s" * 30
    name = names.pg_identifier(long_feature, long_service)
    assert len(name) == 63
    assert names.is_pg_identifier(name)
    assert name != names.pg_identifier(long_feature, "s" * 29 + "t")


@pytest.mark.parametrize(
    "feature",
    ['x"; DROP ROLE devstack_admin; --', "Login-Fix", "a--b", "", "x" * 31, "über", "a b", "a_b"],
)
def test_identifier_refuses_anything_but_a_feature_name(feature: str) -> None:
    with pytest.raises(InvalidName):
        names.pg_identifier(feature)


# ------------------------------------------------------------------------------------- the hook


def test_ensure_twice_is_idempotent_and_the_role_can_use_its_database(
    pg: PostgresServer, admin: PostgresAdmin
) -> None:
    store = MemoryStore()
    first = postgres.ensure(admin=admin, store=store, feature="login-fix", namespace=NS, service="payments")
    data = store.secrets[(NS, "devstack-postgres-payments")]
    second = postgres.ensure(admin=admin, store=store, feature="login-fix", namespace=NS, service="payments")

    name = "preview_login_fix__payments"
    assert (first.name, first.role_created, first.database_created) == (name, True, True)
    assert (second.role_created, second.database_created) == (False, False)
    assert store.secrets[(NS, "devstack-postgres-payments")] == data  # same password, nothing rewritten
    assert store.writes == 1
    assert data["PGUSER"] == data["PGDATABASE"] == name
    assert (data["PGHOST"], data["PGPORT"], data["PGSSLMODE"]) == (pg.host, str(pg.port), "disable")
    assert data["DATABASE_URL"] == (
        f"postgresql://{name}:{data['PGPASSWORD']}@{pg.host}:{pg.port}/{name}?sslmode=disable"
    )
    assert len(data["PGPASSWORD"]) >= 32
    with pg.superconnect() as conn:
        rows = conn.execute(
            "SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = %s", [name]
        ).fetchall()
        role = conn.execute(
            "SELECT rolcanlogin, rolsuper, rolcreatedb, rolcreaterole FROM pg_roles WHERE rolname = %s",
            [name],
        ).fetchall()
    assert rows == [(name,)]  # exists once, owned by the role
    assert role == [(True, False, False, False)]
    with login(pg, data) as conn:
        conn.execute("CREATE TABLE orders (id int PRIMARY KEY)")
        conn.execute("INSERT INTO orders VALUES (1)")
        conn.commit()
        assert conn.execute("SELECT count(*) FROM orders").fetchone() == (1,)
    # The DATABASE_URL works as it is.
    with psycopg.connect(data["DATABASE_URL"]) as conn:
        assert conn.execute("SELECT current_user, current_database()").fetchone() == (name, name)
    postgres.cleanup(admin=admin, feature="login-fix", service="payments")


def test_cleanup_drops_everything_even_with_a_client_connected_and_twice(
    pg: PostgresServer, admin: PostgresAdmin
) -> None:
    store = MemoryStore()
    result = postgres.ensure(admin=admin, store=store, feature="drop-me", namespace=NS)
    data = store.secrets[(NS, "devstack-postgres")]
    client = login(pg, data)
    client.execute("CREATE TABLE t (x int)")
    client.commit()
    # A session of another role (the admin itself, say a console left open) on the database.
    onlooker = pg.connect(user=pg.admin_user, password=pg.admin_password, dbname=result.name)

    assert postgres.cleanup(admin=admin, feature="drop-me") is True
    roles, dbs = roles_and_databases(pg)
    assert result.name not in roles | dbs
    for session in (client, onlooker):
        with pytest.raises(psycopg.OperationalError):  # the session was terminated
            session.execute("SELECT 1")
        session.close()
    assert postgres.cleanup(admin=admin, feature="drop-me") is False  # again: nothing left, no error
    with pytest.raises(psycopg.OperationalError):
        login(pg, data)


def test_two_features_do_not_interfere(pg: PostgresServer, admin: PostgresAdmin) -> None:
    store = MemoryStore()
    postgres.ensure(admin=admin, store=store, feature="feat-a", namespace="preview-feat-a")
    postgres.ensure(admin=admin, store=store, feature="feat-b", namespace="preview-feat-b")
    a = store.secrets[("preview-feat-a", "devstack-postgres")]
    b = store.secrets[("preview-feat-b", "devstack-postgres")]
    assert a["PGPASSWORD"] != b["PGPASSWORD"]
    # B's role cannot reach A's database (CONNECT revoked from PUBLIC).
    with pytest.raises(psycopg.OperationalError, match="permission denied"):
        pg.connect(user=b["PGUSER"], password=b["PGPASSWORD"], dbname=a["PGDATABASE"])

    postgres.cleanup(admin=admin, feature="feat-a")
    roles, dbs = roles_and_databases(pg)
    assert "preview_feat_b" in roles & dbs
    assert "preview_feat_a" not in roles | dbs
    with login(pg, b) as conn:
        assert conn.execute("SELECT current_database()").fetchone() == ("preview_feat_b",)
    postgres.cleanup(admin=admin, feature="feat-b")


def test_a_superuser_admin_works_too(pg: PostgresServer) -> None:
    admin = PostgresAdmin(
        host=pg.host, port=pg.port, user=pg.superuser, password=pg.superpassword, sslmode="disable"
    )
    store = MemoryStore()
    postgres.ensure(admin=admin, store=store, feature="super-admin", namespace=NS)
    postgres.ensure(admin=admin, store=store, feature="super-admin", namespace=NS)
    with login(pg, store.secrets[(NS, "devstack-postgres")]) as conn:
        assert conn.execute("SELECT current_user").fetchone() == ("preview_super_admin",)
    with pg.superconnect() as conn:  # no membership grant was needed
        assert conn.execute(
            "SELECT count(*) FROM pg_auth_members WHERE roleid = 'preview_super_admin'::regrole"
        ).fetchone() == (0,)
    assert postgres.cleanup(admin=admin, feature="super-admin") is True
    assert "preview_super_admin" not in set.union(*roles_and_databases(pg))


def test_kept_password_is_reused_and_an_existing_role_is_reset_to_it(
    pg: PostgresServer, admin: PostgresAdmin
) -> None:
    name = "preview_keep_pw"
    with pg.superconnect() as conn:
        conn.execute(sql.SQL("CREATE ROLE {} LOGIN PASSWORD 'old-password'").format(sql.Identifier(name)))
    # A password with quotes and SQL in it (someone edited the Secret) is still only a value.
    hostile = "it's'; DROP ROLE devstack_admin; --"
    store = MemoryStore()
    store.secrets[(NS, "devstack-postgres")] = {"PGUSER": name, "PGPASSWORD": hostile}

    postgres.ensure(admin=admin, store=store, feature="keep-pw", namespace=NS)

    data = store.secrets[(NS, "devstack-postgres")]
    assert data["PGPASSWORD"] == hostile
    with login(pg, data) as conn:
        assert conn.execute("SELECT current_user").fetchone() == (name,)
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        pg.connect(user=name, password="old-password", dbname=name)
    assert "devstack_admin" in roles_and_databases(pg)[0]
    # A Secret that belongs to another role does not lend it its password.
    other = MemoryStore()
    other.secrets[(NS, "devstack-postgres")] = {"PGUSER": "someone_else", "PGPASSWORD": "not-reused"}
    postgres.ensure(admin=admin, store=other, feature="keep-pw", namespace=NS)
    assert other.secrets[(NS, "devstack-postgres")]["PGPASSWORD"] not in ("not-reused", hostile)
    postgres.cleanup(admin=admin, feature="keep-pw")


def test_a_hostile_feature_name_never_reaches_sql(pg: PostgresServer, admin: PostgresAdmin) -> None:
    before = roles_and_databases(pg)
    for feature in ['x"; DROP ROLE devstack_admin; --', "x'; DROP DATABASE postgres; --", "a\x00b"]:
        with pytest.raises(InvalidName):
            postgres.ensure(admin=admin, store=MemoryStore(), feature=feature, namespace=NS)
        with pytest.raises(InvalidName):
            postgres.cleanup(admin=admin, feature=feature)
    assert roles_and_databases(pg) == before


def test_unreachable_server_is_retried_a_bounded_number_of_times(caplog: pytest.LogCaptureFixture) -> None:
    waits: list[float] = []
    policy = RetryPolicy(attempts=3, delay=0.5, max_delay=0.75, sleep=waits.append)
    admin = PostgresAdmin(host="127.0.0.1", port=free_port(), user="admin", password="s3cr3t-admin-pw")
    caplog.set_level(logging.INFO)
    with pytest.raises(TemporaryError, match="giving up after 3 attempt") as info:
        postgres.ensure(admin=admin, store=MemoryStore(), feature="login-fix", namespace=NS, retry=policy)
    assert waits == [0.5, 0.75]  # exponential, capped
    assert "s3cr3t-admin-pw" not in str(info.value)
    assert "s3cr3t-admin-pw" not in caplog.text


def test_wrong_admin_password_fails_at_once(pg: PostgresServer) -> None:
    waits: list[float] = []
    admin = PostgresAdmin(host=pg.host, port=pg.port, user=pg.admin_user, password="wrong", sslmode="disable")
    with pytest.raises(PermanentError, match="password authentication failed"):
        postgres.cleanup(admin=admin, feature="login-fix", retry=RetryPolicy(attempts=5, sleep=waits.append))
    assert waits == []


# ----------------------------------------------------------------------------------------- CLI


def hook_env(pg: PostgresServer, kubeconfig: Path, **extra: str) -> dict[str, str]:
    return {
        "KUBECONFIG": str(kubeconfig),
        "DEVSTACK_HOOK_FEATURE": "cli-feature",
        "DEVSTACK_HOOK_SERVICE": "orders",
        "DEVSTACK_HOOK_PG_HOST": pg.host,
        "DEVSTACK_HOOK_PG_PORT": str(pg.port),
        "DEVSTACK_HOOK_PG_USER": pg.admin_user,
        "DEVSTACK_HOOK_PG_PASSWORD": pg.admin_password,
        "DEVSTACK_HOOK_PG_SSLMODE": "disable",
        "DEVSTACK_HOOK_ATTEMPTS": "2",
        "DEVSTACK_HOOK_BACKOFF_SECONDS": "0.01",
        **extra,
    }


def test_cli_ensure_twice_then_cleanup(
    pg: PostgresServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    with FakeKube().running() as kube:
        env = hook_env(pg, kube.write_kubeconfig(tmp_path / "kubeconfig"))
        assert run_cli(monkeypatch, "postgres", "ensure", env) == EXIT_OK
        secret = kube.get("secrets", "preview-cli-feature", "devstack-postgres-orders")
        assert secret is not None
        data = decode(secret["data"])
        assert secret["type"] == "Opaque"
        assert secret["metadata"]["labels"] == {
            "app.kubernetes.io/managed-by": "devstack", "devstack/feature": "cli-feature",
        }
        assert run_cli(monkeypatch, "postgres", "ensure", env) == EXIT_OK
        again = kube.get("secrets", "preview-cli-feature", "devstack-postgres-orders")
        assert again is not None
        assert decode(again["data"]) == data
        # The second run wrote nothing.
        assert kube.writes() == [("POST", "preview-cli-feature", "secrets", None)]
        with login(pg, data) as conn:
            assert conn.execute("SELECT current_database()").fetchone() == ("preview_cli_feature__orders",)

        assert run_cli(monkeypatch, "postgres", "cleanup", env) == EXIT_OK
        assert run_cli(monkeypatch, "postgres", "cleanup", env) == EXIT_OK
        roles, dbs = roles_and_databases(pg)
        assert "preview_cli_feature__orders" not in roles | dbs
    assert data["PGPASSWORD"] not in caplog.text
    assert pg.admin_password not in caplog.text


def test_cli_reports_configuration_and_connection_problems(
    pg: PostgresServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    env = hook_env(pg, tmp_path / "missing-kubeconfig")
    del env["DEVSTACK_HOOK_PG_HOST"]
    assert run_cli(monkeypatch, "postgres", "cleanup", env) == EXIT_PERMANENT
    assert "DEVSTACK_HOOK_PG_HOST is required" in caplog.text
    bad = hook_env(pg, tmp_path / "kubeconfig", DEVSTACK_HOOK_FEATURE="Not A Feature")
    assert run_cli(monkeypatch, "postgres", "cleanup", bad) == EXIT_PERMANENT
    assert "DEVSTACK_HOOK_FEATURE" in caplog.text
    closed = hook_env(pg, tmp_path / "kubeconfig", DEVSTACK_HOOK_PG_PORT=str(free_port()))
    assert run_cli(monkeypatch, "postgres", "cleanup", closed) == EXIT_TEMPORARY
    assert pg.admin_password not in caplog.text


def test_settings_name_the_variable_and_hide_the_password() -> None:
    from devstack.hooks.settings import Env

    with pytest.raises(ConfigError, match="DEVSTACK_HOOK_PG_PORT must be between"):
        PostgresAdmin.from_env(Env({
            "DEVSTACK_HOOK_PG_HOST": "db", "DEVSTACK_HOOK_PG_USER": "u",
            "DEVSTACK_HOOK_PG_PASSWORD": "hunter2", "DEVSTACK_HOOK_PG_PORT": "70000",
        }))
    admin = PostgresAdmin.from_env(Env({
        "DEVSTACK_HOOK_PG_HOST": "db", "DEVSTACK_HOOK_PG_USER": "u", "DEVSTACK_HOOK_PG_PASSWORD": "hunter2",
    }))
    assert (admin.port, admin.dbname, admin.sslmode) == (5432, "postgres", "prefer")
    assert "hunter2" not in repr(admin)

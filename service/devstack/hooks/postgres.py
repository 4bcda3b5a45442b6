"""The ``postgres`` hook: a database and a role per preview on a shared PostgreSQL server.

``ensure`` (idempotent):

1. the role ``preview_<feature>[__<service>]`` with LOGIN and a random password. The password is
   kept across runs: when the preview Secret already holds one (for this role) it is used again,
   and an existing role gets its password reset to it. The password is sent as a SCRAM verifier
   computed by libpq, so the clear text never reaches the server's logs;
2. the database of the same name, owned by the role, with CONNECT revoked from PUBLIC (other
   previews' roles cannot connect to it);
3. the Secret ``devstack-postgres[-<service>]`` in the preview namespace with ``PGHOST``,
   ``PGPORT``, ``PGDATABASE``, ``PGUSER``, ``PGPASSWORD``, ``PGSSLMODE`` and ``DATABASE_URL``.

``cleanup`` (idempotent): terminates the role's sessions, drops the database ``WITH (FORCE)``
(which also ends sessions of other roles on it), then drops the role; both ``IF EXISTS``.

The admin connection needs CREATEDB and CREATEROLE (a superuser works too). A non-superuser admin
grants itself membership in the preview role, as managed services (RDS, Cloud SQL) require, to
create a database owned by it and to drop it later. Needs PostgreSQL 13 or newer.

Every name goes through :func:`devstack.hooks.names.pg_identifier` and reaches SQL only as
``psycopg.sql.Identifier``; values as parameters or ``psycopg.sql.Literal``.
"""

from __future__ import annotations

import contextlib
import logging
import secrets
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from devstack.errors import PermanentError, TemporaryError
from devstack.hooks import names
from devstack.hooks.kube import ObjectStore, hook_labels
from devstack.hooks.retry import RetryPolicy
from devstack.hooks.settings import PostgresAdmin

logger = logging.getLogger(__name__)

APPLICATION_NAME = "devstack-hook"
PASSWORD_KEY = "PGPASSWORD"  # noqa: S105 - a key name
# Connection failures that will not pass by waiting (psycopg gives no SQLSTATE for these).
_PERMANENT_CONNECT_ERRORS = (
    "password authentication failed",
    "does not exist",
    "no pg_hba.conf entry",
    "certificate",
    "SSL is not enabled",
    "permission denied",
)
# SQLSTATE classes that may pass: connection, resources, operator intervention, lock/serialization.
_TEMPORARY_SQLSTATES = ("08", "53", "57", "40", "55P03", "55006")


def new_password() -> str:
    return secrets.token_urlsafe(32)


@dataclass(frozen=True)
class Provisioned:
    """What ``ensure`` made sure of (never the password: it is only in the Secret)."""

    name: str
    secret_name: str
    role_created: bool
    database_created: bool


def _error(what: str, exc: Exception) -> PermanentError | TemporaryError:
    import psycopg

    sqlstate = getattr(exc, "sqlstate", None)
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    message = f"{what}: {text}"
    if sqlstate:
        if sqlstate.startswith(_TEMPORARY_SQLSTATES):
            return TemporaryError(message)
        return PermanentError(message)
    if isinstance(exc, psycopg.OperationalError):
        if any(marker in str(exc) for marker in _PERMANENT_CONNECT_ERRORS):
            return PermanentError(message)
        return TemporaryError(message)
    return PermanentError(message)


@contextlib.contextmanager
def admin_connection(admin: PostgresAdmin) -> Iterator[Any]:
    """An autocommit connection to the admin database (CREATE DATABASE needs autocommit)."""
    import psycopg

    try:
        conn = psycopg.connect(
            host=admin.host,
            port=admin.port,
            user=admin.user,
            password=admin.password,
            dbname=admin.dbname,
            sslmode=admin.sslmode,
            connect_timeout=admin.connect_timeout,
            application_name=APPLICATION_NAME,
            autocommit=True,
        )
    except psycopg.Error as exc:
        raise _error(f"connect to PostgreSQL at {admin.host}:{admin.port} as {admin.user}", exc) from None
    try:
        yield conn
    except psycopg.Error as exc:
        raise _error("PostgreSQL", exc) from None
    finally:
        conn.close()


def database_url(*, host: str, port: int, dbname: str, user: str, password: str, sslmode: str) -> str:
    netloc_host = f"[{host}]" if ":" in host else host
    return (
        f"postgresql://{quote(user, safe='')}:{quote(password, safe='')}@{netloc_host}:{port}/"
        f"{quote(dbname, safe='')}?sslmode={quote(sslmode, safe='')}"
    )


def ensure(
    *,
    admin: PostgresAdmin,
    store: ObjectStore,
    feature: str,
    namespace: str,
    service: str | None = None,
    secret_name: str | None = None,
    retry: RetryPolicy | None = None,
    make_password: Callable[[], str] = new_password,
) -> Provisioned:
    """Create or update the preview's role, database and Secret; safe to run any number of times."""
    name = names.pg_identifier(feature, service)
    names.checked_namespace(namespace)
    secret_name = names.checked_secret_name(secret_name or names.output_name("postgres", service))
    policy = retry or RetryPolicy()

    def attempt() -> Provisioned:
        current = store.read_secret(namespace=namespace, name=secret_name) or {}
        password = current.get(PASSWORD_KEY) if current.get("PGUSER") == name else None
        if password:
            logger.info("using the password kept in secret %s/%s", namespace, secret_name)
        else:
            password = make_password()
        role_created, database_created = _ensure_in_database(admin, name=name, password=password)
        data = {
            "PGHOST": admin.host,
            "PGPORT": str(admin.port),
            "PGDATABASE": name,
            "PGUSER": name,
            PASSWORD_KEY: password,
            "PGSSLMODE": admin.sslmode,
            "DATABASE_URL": database_url(
                host=admin.host, port=admin.port, dbname=name, user=name, password=password,
                sslmode=admin.sslmode,
            ),
        }
        store.apply_secret(namespace=namespace, name=secret_name, data=data, labels=hook_labels(feature))
        return Provisioned(
            name=name, secret_name=secret_name, role_created=role_created, database_created=database_created
        )

    result = policy.run(attempt, what=f"postgres ensure {name}")
    logger.info(
        "postgres: role %s (%s), database %s (%s), secret %s/%s",
        name, "created" if result.role_created else "kept",
        name, "created" if result.database_created else "kept",
        namespace, secret_name,
    )
    return result


def _is_superuser(conn: Any) -> bool:
    return bool(conn.execute("SELECT rolsuper FROM pg_roles WHERE rolname = current_user").fetchone()[0])


def _exists(conn: Any, query: str, value: str) -> bool:
    return conn.execute(query, [value]).fetchone() is not None


def _ensure_in_database(admin: PostgresAdmin, *, name: str, password: str) -> tuple[bool, bool]:
    import psycopg
    from psycopg import sql

    ident = sql.Identifier(name)
    with admin_connection(admin) as conn:
        superuser = _is_superuser(conn)
        verifier = conn.pgconn.encrypt_password(password.encode(), name.encode(), None).decode("ascii")
        role_created = False
        if not _exists(conn, "SELECT 1 FROM pg_roles WHERE rolname = %s", name):
            try:
                conn.execute(
                    sql.SQL(
                        "CREATE ROLE {} WITH LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION"
                        " PASSWORD {}"
                    ).format(ident, sql.Literal(verifier))
                )
                role_created = True
            except psycopg.errors.DuplicateObject:
                logger.info("role %s was created concurrently", name)
        if not role_created:
            conn.execute(sql.SQL("ALTER ROLE {} WITH LOGIN PASSWORD {}").format(ident, sql.Literal(verifier)))
        if not superuser:
            # Membership lets a CREATEROLE admin create a database owned by the role, and drop it later.
            conn.execute(sql.SQL("GRANT {} TO CURRENT_USER").format(ident))
        database_created = False
        row = conn.execute(
            "SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = %s", [name]
        ).fetchone()
        if row is None:
            try:
                conn.execute(sql.SQL("CREATE DATABASE {} OWNER {}").format(ident, ident))
                database_created = True
            except psycopg.errors.DuplicateDatabase:
                logger.info("database %s was created concurrently", name)
        elif row[0] != name:
            conn.execute(sql.SQL("ALTER DATABASE {} OWNER TO {}").format(ident, ident))
        conn.execute(sql.SQL("REVOKE ALL ON DATABASE {} FROM PUBLIC").format(ident))
        conn.execute(sql.SQL("GRANT ALL ON DATABASE {} TO {}").format(ident, ident))
    return role_created, database_created


def cleanup(
    *,
    admin: PostgresAdmin,
    feature: str,
    service: str | None = None,
    retry: RetryPolicy | None = None,
) -> bool:
    """Drop the preview's database and role (if they exist); True when something was dropped."""
    name = names.pg_identifier(feature, service)
    policy = retry or RetryPolicy()
    dropped = policy.run(lambda: _cleanup_in_database(admin, name=name), what=f"postgres cleanup {name}")
    logger.info("postgres: %s %s", "dropped database and role" if dropped else "nothing left of", name)
    return dropped


def _cleanup_in_database(admin: PostgresAdmin, *, name: str) -> bool:
    from psycopg import sql

    ident = sql.Identifier(name)
    with admin_connection(admin) as conn:
        superuser = _is_superuser(conn)
        role_exists = _exists(conn, "SELECT 1 FROM pg_roles WHERE rolname = %s", name)
        db_exists = _exists(conn, "SELECT 1 FROM pg_database WHERE datname = %s", name)
        if role_exists and not superuser:
            conn.execute(sql.SQL("GRANT {} TO CURRENT_USER").format(ident))
        if role_exists:
            # Sessions of the role anywhere (not only in its database) end before the role goes.
            conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE usename = %s AND pid <> pg_backend_pid()",
                [name],
            )
        if db_exists:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(ident))
        if role_exists:
            conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(ident))
    return role_exists or db_exists

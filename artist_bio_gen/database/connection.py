"""Database URLs and the connection pool.

Passwords never leave this module in text form: ``describe_database`` names only user, host,
port and database, and ``redact`` scrubs a password out of any driver message before it is
logged or shown.
"""

from __future__ import annotations

import logging
import time
import weakref
from collections.abc import Callable
from typing import Any

import psycopg
from psycopg.conninfo import conninfo_to_dict
from psycopg.rows import Row
from psycopg_pool import ConnectionPool

from ..errors import ConfigError
from ..models import DatabaseConfig

logger = logging.getLogger(__name__)

_SCHEMES = ("postgresql://", "postgres://")


def is_database_url(url: str | None) -> bool:
    """Whether ``url`` is a usable ``postgresql://`` URL."""
    if not url or not url.startswith(_SCHEMES):
        return False
    try:
        conninfo_to_dict(url)
    except psycopg.ProgrammingError:
        return False
    return True


def require_database_url(url: str | None) -> str:
    """Return ``url`` or raise ``ConfigError`` explaining the expected form."""
    if not url:
        raise ConfigError(
            "No database URL is configured; set DATABASE_URL or pass --db-url "
            "(or --no-db to write the JSONL only)."
        )
    if not is_database_url(url):
        raise ConfigError(
            "The database URL is not valid; it should look like "
            "postgresql://user:password@host:5432/dbname."
        )
    return url


def describe_database(url: str) -> str:
    """``user@host:port/dbname`` for logs and messages, never the password."""
    params = conninfo_to_dict(url)
    host = params.get("host") or "localhost"
    port = params.get("port") or "5432"
    user = params.get("user")
    where = f"{host}:{port}/{params.get('dbname') or user or ''}"
    return f"{user}@{where}" if user else where


def redact(text: str, url: str | None) -> str:
    """``text`` with the URL's password (and the URL itself) replaced by ``***``."""
    if not url:
        return text
    text = text.replace(url, describe_database(url))
    password = conninfo_to_dict(url).get("password")
    return text.replace(str(password), "***") if password else text


def first_line(exc: BaseException) -> str:
    """The first line of a driver error (psycopg adds multi-line detail and context)."""
    message = str(exc).strip() or type(exc).__name__
    return message.splitlines()[0]


def one_row(cursor: psycopg.Cursor[Row]) -> Row:
    """The row of a query that always returns exactly one (an aggregate, a function call).

    ``fetchone`` is typed as maybe returning None; for such a query None would mean the server
    broke its contract, which is said here rather than as a ``None[0]`` somewhere else.
    """
    row = cursor.fetchone()
    if row is None:
        raise RuntimeError("a query that always returns one row returned none")
    return row


#: A connection handed out again within this many seconds of its last checkout is not
#: pinged first (see ``CheckIfIdle``).
RECENT_CHECKOUT_SECONDS = 1.0


class CheckIfIdle:
    """The pool's ``check``: ping a connection only when it has not been handed out for
    ``recent`` seconds (or is known broken).

    A ping is a round trip per checkout: at many commits per second it cost about a third
    of the CPU a commit takes, and a wait for the GIL on the way back. A connection handed
    out moments ago answered then; if the server went away since, the statement fails with
    a connection error, the pool discards that connection and ``BioStore`` retries on
    another (a commit looks its row up first, so it is never written twice). After a quiet
    spell, such as the start of a run or a database restart longer than ``recent``, every
    connection is pinged as before, so a restart still costs a reconnect, not an artist.
    """

    def __init__(
        self, recent: float = RECENT_CHECKOUT_SECONDS, clock: Callable[[], float] = time.monotonic
    ) -> None:
        """Ping connections not handed out within the last ``recent`` seconds of ``clock``."""
        self._recent = recent
        self._clock = clock
        # Weak keys: a connection the pool closes is forgotten with it.
        self._handed_out: weakref.WeakKeyDictionary[psycopg.Connection[Any], float] = (
            weakref.WeakKeyDictionary()
        )

    def __call__(self, conn: psycopg.Connection[Any]) -> None:
        """Raise if ``conn`` needs a ping and fails it (the pool then replaces it)."""
        now = self._clock()
        last = self._handed_out.get(conn)
        if conn.broken or last is None or now - last > self._recent:
            ConnectionPool.check_connection(conn)
        self._handed_out[conn] = now


def create_db_connection_pool(config: DatabaseConfig) -> ConnectionPool:
    """Open a pool that checks a connection before handing it out (``CheckIfIdle``).

    The check (a trivial round trip on a connection idle for a second or more) means a
    database restart costs a reconnect, not an artist. Connections are autocommit: every
    write is one statement, hence one transaction. Raises ``ConfigError`` when no connection
    can be made within ``connect_timeout``.
    """
    # One direct attempt first: a refused connection or a wrong password fails at once with
    # the server's reason, where the pool would keep retrying until its timeout.
    _probe(config)
    pool = ConnectionPool(
        config.url,
        min_size=1,
        max_size=max(1, config.pool_size),
        kwargs={"autocommit": True, "connect_timeout": max(1, int(config.connect_timeout))},
        check=CheckIfIdle(),
        timeout=config.connect_timeout,
        name="artist-bio-gen",
        open=False,
    )
    try:
        pool.open(wait=True, timeout=config.connect_timeout)
    except Exception as exc:
        pool.close(timeout=0)
        raise _cannot_connect(config, "timed out") from exc
    return pool


def _probe(config: DatabaseConfig) -> None:
    try:
        psycopg.connect(config.url, connect_timeout=max(1, int(config.connect_timeout))).close()
    except psycopg.Error as exc:
        raise _cannot_connect(config, _short_reason(first_line(exc))) from None


def _cannot_connect(config: DatabaseConfig, reason: str) -> ConfigError:
    return ConfigError(
        f"Cannot connect to PostgreSQL at {describe_database(config.url)} "
        f"({redact(reason, config.url)}); check DATABASE_URL or --db-url and that the server "
        "is running."
    )


def _short_reason(message: str) -> str:
    # libpq prefixes 'connection to server at "h" (ip), port p failed: '; the part after the
    # last 'failed: ' is what the user needs.
    marker = "failed: "
    return message.rsplit(marker, 1)[-1] if marker in message else message

"""Writing many rows at once, in one round trip where the database allows it.

The posting path writes a whole batch of exchanges, entries and account changes per transaction.
On PostgreSQL, one `INSERT ... SELECT` or `UPDATE ... FROM json_to_recordset(rows)` carries all
rows of a table in a single statement (a row-by-row `executemany` would pay a
statement per row), and `Writes` sends every table's statement in one round trip; on SQLite,
`executemany` is already a loop inside the database library, so it is used as is. Either way
the same constraints, foreign keys and triggers apply to every row.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from contextlib import nullcontext
from typing import Any, cast

import orjson
from sqlalchemy import Table, any_, bindparam, insert, text
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.engine import Connection
from sqlalchemy.exc import DBAPIError
from sqlalchemy.sql.expression import ClauseElement, Executable

from protocoop.db.engine import CURRENT_XID_SQL, lost_connection
from protocoop.db.watchdog import INFO_KEY as WATCHDOG
from protocoop.db.watchdog import mark_cut


class Writes:
    """Row writes collected for one round trip: `send()` gives them to PostgreSQL together, in
    order, in psycopg's pipeline mode (the server runs them one after another as usual, and the
    first failure fails the transaction); SQLite runs them one by one, each an `executemany`.

    On PostgreSQL each table's rows travel as one JSON parameter of one `INSERT ... SELECT` or
    `UPDATE ... FROM json_to_recordset(...)`, so a group of any size costs one statement per
    table."""

    def __init__(self, connection: Connection) -> None:
        self.connection = connection
        self.postgres = connection.dialect.name == "postgresql"
        self._statements: list[tuple[str, Any]] = []

    def insert(self, table: Table, rows: Sequence[Mapping[str, Any]]) -> None:
        """Insert `rows` (dicts keyed by column name; every row has the same keys)."""
        if not rows:
            return
        if not self.postgres:
            self.connection.execute(insert(table), list(rows))
            return
        columns = list(rows[0])
        source, params = self._recordset(table, rows, columns)
        names = ", ".join(columns)
        self._statements.append(
            (f"INSERT INTO {table.name} ({names}) SELECT {names} FROM {source}", params)  # noqa: S608 (our names)
        )

    def update(
        self,
        table: Table,
        rows: Sequence[Mapping[str, Any]],
        *,
        keys: Sequence[str],
        add: Sequence[str] = (),
        assign: Sequence[str] = (),
        unless_null: Sequence[str] = (),
    ) -> None:
        """For each row (one per key), update the table row found by `keys`: add the row's
        value to the `add` columns (`column = column + value`), set the `assign` columns, and
        set the `unless_null` columns when the row's value is not null."""
        if not rows:
            return
        if not self.postgres:
            sets = [f"{name} = {name} + :{name}" for name in add]
            sets += [f"{name} = :{name}" for name in assign]
            sets += [f"{name} = COALESCE(:{name}, {name})" for name in unless_null]
            where = " AND ".join(f"{name} = :{name}" for name in keys)
            # Values go through their column types (kept figures are text on SQLite).
            typed = [bindparam(name, type_=table.c[name].type) for name in (*keys, *add, *assign)]
            sqlite_update = text(f"UPDATE {table.name} SET {', '.join(sets)} WHERE {where}")  # noqa: S608
            self.connection.execute(sqlite_update.bindparams(*typed), list(rows))
            return
        columns = [*keys, *add, *assign, *unless_null]
        source, params = self._recordset(table, rows, columns)
        sets = [f"{name} = t.{name} + v.{name}" for name in add]
        sets += [f"{name} = v.{name}" for name in assign]
        sets += [f"{name} = COALESCE(v.{name}, t.{name})" for name in unless_null]
        where = " AND ".join(f"t.{name} = v.{name}" for name in keys)
        self._statements.append(
            (
                f"UPDATE {table.name} AS t SET {', '.join(sets)} "  # noqa: S608 (our names)
                f"FROM {source} WHERE {where}",
                params,
            )
        )

    def _recordset(
        self, table: Table, rows: Sequence[Mapping[str, Any]], columns: Sequence[str]
    ) -> tuple[str, list[str]]:
        """The rows as one JSON parameter and the `json_to_recordset(...)` that reads them back
        as typed columns: one value to send however many rows and columns, encoded in C."""
        dialect = self.connection.dialect
        typed = ", ".join(
            f"{name} {table.c[name].type.compile(dialect=dialect)}" for name in columns
        )
        return f"json_to_recordset(%s::json) AS v({typed})", [
            _json([{n: row[n] for n in columns} for row in rows])
        ]

    def send(self, *, transaction_id: bool = False) -> str | None:
        """Run what was collected (on SQLite it already ran). With `transaction_id`, PostgreSQL
        also returns the transaction's id from the same round trip (see
        `engine.note_transaction_id`); None on SQLite or when nothing was collected."""
        statements, self._statements = self._statements, []
        if not statements:
            return None
        if transaction_id:
            statements.append((CURRENT_XID_SQL, None))
        results = _pipelined(self.connection, statements)
        return str(results[-1][0][0]) if transaction_id else None


def _json(value: Any) -> str:
    try:
        return orjson.dumps(value).decode()
    except TypeError:  # a figure beyond 64 bits (orjson's integers stop there)
        return json.dumps(value, default=lambda v: v.isoformat())


def insert_rows(connection: Connection, table: Table, rows: Sequence[Mapping[str, Any]]) -> None:
    """Insert `rows` (dicts keyed by column name; every row has the same keys) now."""
    writes = Writes(connection)
    writes.insert(table, rows)
    writes.send()


def update_rows(
    connection: Connection,
    table: Table,
    rows: Sequence[Mapping[str, Any]],
    *,
    keys: Sequence[str],
    add: Sequence[str] = (),
    assign: Sequence[str] = (),
    unless_null: Sequence[str] = (),
) -> None:
    """`Writes.update` now."""
    writes = Writes(connection)
    writes.update(table, rows, keys=keys, add=add, assign=assign, unless_null=unless_null)
    writes.send()


class Reads:
    """SELECTs collected for one round trip, like `Writes`: `add` returns the list that holds a
    statement's rows once `send()` has run. PostgreSQL gets every statement at once (pipeline
    mode; the server still runs them in order, so a statement sees the locks of the ones before
    it), compiled once per statement and run by the driver; SQLite runs each at `add`.

    Statements must be built once and kept (the compiled text is cached per statement object),
    with their values as named parameters: `one_of` and `pairs_among` for lists."""

    def __init__(self, connection: Connection) -> None:
        self.connection = connection
        self.postgres = connection.dialect.name == "postgresql"
        self._queued: list[tuple[str, dict[str, Any], list[Any]]] = []

    def add(self, statement: Executable, params: Mapping[str, Any]) -> list[Any]:
        rows: list[Any] = []
        if not self.postgres:
            rows.extend(self.connection.execute(statement, dict(params)))
            return rows
        sql, defaults = _compiled(statement, self.connection.dialect)
        self._queued.append((sql, {**defaults, **params}, rows))
        return rows

    def send(self) -> None:
        queued, self._queued = self._queued, []
        results = _pipelined(self.connection, [(sql, params) for sql, params, _ in queued])
        for (_, _, rows), found in zip(queued, results, strict=True):
            rows.extend(found)


def _pipelined(connection: Connection, statements: Sequence[tuple[str, Any]]) -> list[list[Any]]:
    """Run `statements` (driver SQL, parameters) on PostgreSQL in one round trip (pipeline
    mode), watched by the connection's watchdog (SQLAlchemy does not see them); each one's rows
    (empty for statements that return none). A driver error is raised as SQLAlchemy's, like any
    other statement's."""
    if not statements:
        return []
    import psycopg
    from psycopg.rows import namedtuple_row

    driver: Any = connection.connection.driver_connection
    watchdog = connection.info.get(WATCHDOG)
    watched = watchdog.watching(driver) if watchdog else nullcontext()
    sql = statements[0][0]
    try:
        with watched:
            cursors = []
            with driver.pipeline():
                for sql, params in statements:
                    cursor = driver.cursor(row_factory=namedtuple_row)
                    cursor.execute(sql, params)
                    cursors.append(cursor)
            results = []
            for cursor in cursors:
                results.append(cursor.fetchall() if cursor.description is not None else [])
                cursor.close()
            return results
    except psycopg.Error as error:
        # Leaving a pipeline whose connection the server closed raises "cannot exit pipeline
        # mode while busy" over the real reason (e.g. admin_shutdown): report the reason, and
        # invalidate a dead connection as SQLAlchemy does for its own statements, so that the
        # transaction's rollback sends nothing. A connection the server closed is lost (the
        # work runs again on a new one); one the watchdog cut is a hung server (it does not).
        reason = _first_driver_error(error)
        failure = cast(DBAPIError, DBAPIError.instance(sql, None, reason, psycopg.Error))
        if watchdog is not None and watchdog.cut(driver):
            mark_cut(failure)
        if driver.broken or driver.closed or lost_connection(failure):
            if not connection.invalidated:
                connection.invalidate(reason)
            failure.connection_invalidated = True
        raise failure from error


def _first_driver_error(error: BaseException) -> BaseException:
    """The driver error that began the chain `error` ends (each raised while handling the one
    before)."""
    import psycopg

    first = error
    while isinstance(first.__context__, psycopg.Error):
        first = first.__context__
    return first


_COMPILED: dict[int, tuple[Executable, str, dict[str, Any]]] = {}


def _compiled(statement: Executable, dialect: Any) -> tuple[str, dict[str, Any]]:
    """The driver's SQL for `statement` and its parameters' default values (compiled once)."""
    found = _COMPILED.get(id(statement))
    if found is None or found[0] is not statement:
        compiled = cast(ClauseElement, statement).compile(dialect=dialect)
        found = (statement, compiled.string, dict(compiled.params))
        _COMPILED[id(statement)] = found
    return found[1], found[2]


def one_of(column: Any, name: str, dialect_name: str) -> Any:
    """`column IN :name` for a list parameter `name`: on PostgreSQL `column = ANY(:name)`, one
    array parameter however many values (and one statement text for every length)."""
    if dialect_name == "postgresql":
        return column == any_(bindparam(name, type_=ARRAY(column.type)))
    return column.in_(bindparam(name, expanding=True))


def pairs_among(table: Table, columns: tuple[str, str], dialect_name: str) -> Executable:
    """The rows of `table` in community `:community` whose `columns` equal one of the pairs
    given by `pair_params`: one index lookup per pair, however large the table.

    The pairs are the outer loop on both databases. On SQLite a row-value `(a, b) IN (VALUES
    ...)` is planned as a scan of the community's rows filtered by the list, which grows with the
    table; `CROSS JOIN` makes SQLite keep the pairs (`json_each` of one JSON parameter) on the
    left and look each one up in the primary key."""
    first, second = columns
    if dialect_name == "postgresql":
        return text(
            f"SELECT t.* FROM {table.name} AS t "  # noqa: S608 (names from our models)
            "JOIN unnest(CAST(:firsts AS text[]), CAST(:seconds AS text[])) AS v(x, y) "
            f"ON t.{first} = v.x AND t.{second} = v.y WHERE t.community_id = :community"
        )
    # The columns by name, in the order `.columns()` maps them to the result (by position): `t.*`
    # would follow the order the migrations left them in, which need not be the model's.
    selected = ", ".join(f't."{column.name}"' for column in table.columns)
    return text(
        f"SELECT {selected} FROM json_each(:pairs) AS v CROSS JOIN {table.name} AS t "  # noqa: S608
        f"ON t.community_id = :community AND t.{first} = json_extract(v.value, '$[0]') "
        f"AND t.{second} = json_extract(v.value, '$[1]')"
    ).columns(*table.columns)


def pair_params(pairs: Sequence[tuple[str, str]], dialect_name: str) -> dict[str, Any]:
    """The parameters of `pairs_among` for `pairs`."""
    if dialect_name == "postgresql":
        return {"firsts": [a for a, _ in pairs], "seconds": [b for _, b in pairs]}
    return {"pairs": json.dumps(list(pairs))}  # each pair a JSON array


def among(column: Any, values: Sequence[Any], dialect_name: str) -> Any:
    """`column IN (values)`; on PostgreSQL `column = ANY(:array)`, one parameter however many
    values (an IN list costs a placeholder per value to send and to parse)."""
    if dialect_name == "postgresql":
        return column == any_(bindparam(None, list(values), type_=ARRAY(column.type)))
    return column.in_(list(values))


def rows_matching_pairs(
    connection: Connection,
    table: Table,
    community_id: str,
    columns: tuple[str, str],
    pairs: Sequence[tuple[str, str]],
) -> list[Any]:
    """The community's rows of `table` whose `columns` equal one of `pairs`, read now."""
    dialect = connection.dialect.name
    return list(
        connection.execute(
            pairs_among(table, columns, dialect),
            {"community": community_id, **pair_params(pairs, dialect)},
        )
    )

"""Writing many rows at once, in one round trip where the database allows it.

The posting path writes a whole batch of exchanges, entries and account changes per transaction.
On PostgreSQL, one `INSERT ... SELECT FROM unnest(arrays)` or `UPDATE ... FROM unnest(arrays)`
carries all rows in a single statement (a row-by-row `executemany` would pay a statement per row);
on SQLite, `executemany` is already a loop inside the database library, so it is used as is.
Either way the same constraints, foreign keys and triggers apply to every row.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from contextlib import nullcontext
from typing import Any

from sqlalchemy import Table, any_, bindparam, insert, select, text, tuple_
from sqlalchemy.dialects.postgresql import ARRAY, JSONB
from sqlalchemy.engine import Connection
from sqlalchemy.exc import DBAPIError
from sqlalchemy.types import TypeEngine

from protocoop.db.watchdog import INFO_KEY as WATCHDOG


def _pg_array_type(column_type: TypeEngine[Any], dialect: Any) -> str:
    if isinstance(column_type.dialect_impl(dialect), JSONB):
        return "jsonb[]"
    return f"{column_type.compile(dialect=dialect)}[]"


def _pg_value(value: Any, array_type: str) -> Any:
    if array_type == "jsonb[]" and value is not None:
        from psycopg.types.json import Jsonb

        return Jsonb(value)
    return value


def insert_rows(connection: Connection, table: Table, rows: Sequence[Mapping[str, Any]]) -> None:
    """Insert `rows` (dicts keyed by column name; every row has the same keys)."""
    if not rows:
        return
    if connection.dialect.name != "postgresql":
        connection.execute(insert(table), list(rows))
        return
    columns = list(rows[0])
    json_columns = {
        name
        for name in columns
        if isinstance(table.c[name].type.dialect_impl(connection.dialect), JSONB)
    }
    import psycopg

    statement = f"COPY {table.name} ({', '.join(columns)}) FROM STDIN"
    cursor = connection.connection.cursor()  # the driver's own cursor: COPY is psycopg's
    watchdog = connection.info.get(WATCHDOG)  # SQLAlchemy does not see COPY: watch it here
    watched = (
        watchdog.watching(connection.connection.dbapi_connection) if watchdog else nullcontext()
    )
    try:
        with watched, cursor.copy(statement) as copy:
            for row in rows:
                copy.write_row(
                    [
                        _pg_value(row[name], "jsonb[]" if name in json_columns else "")
                        for name in columns
                    ]
                )
    except psycopg.Error as error:  # seen by callers like any other statement's failure
        raise DBAPIError.instance(statement, None, error, psycopg.Error) from error
    finally:
        cursor.close()


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
    """For each row (one per key), update the table row found by `keys`: add the row's value to
    the `add` columns (`column = column + value`), set the `assign` columns, and set the
    `unless_null` columns when the row's value is not null."""
    if not rows:
        return
    if connection.dialect.name != "postgresql":
        sets = [f"{name} = {name} + :{name}" for name in add]
        sets += [f"{name} = :{name}" for name in assign]
        sets += [f"{name} = COALESCE(:{name}, {name})" for name in unless_null]
        where = " AND ".join(f"{name} = :{name}" for name in keys)
        # Values go through their column types (kept figures are text on SQLite).
        typed = [bindparam(name, type_=table.c[name].type) for name in (*keys, *add, *assign)]
        sqlite_update = text(f"UPDATE {table.name} SET {', '.join(sets)} WHERE {where}")  # noqa: S608
        connection.execute(sqlite_update.bindparams(*typed), list(rows))
        return
    columns = [*keys, *add, *assign, *unless_null]
    types = [_pg_array_type(table.c[name].type, connection.dialect) for name in columns]
    arrays = {f"a{i}": [row[name] for row in rows] for i, name in enumerate(columns)}
    unnest = ", ".join(f"CAST(:a{i} AS {types[i]})" for i in range(len(columns)))
    sets = [f"{name} = t.{name} + v.{name}" for name in add]
    sets += [f"{name} = v.{name}" for name in assign]
    sets += [f"{name} = COALESCE(v.{name}, t.{name})" for name in unless_null]
    where = " AND ".join(f"t.{name} = v.{name}" for name in keys)
    statement = (
        f"UPDATE {table.name} AS t SET {', '.join(sets)} "  # noqa: S608 (names from our models)
        f"FROM unnest({unnest}) AS v({', '.join(columns)}) WHERE {where}"
    )
    connection.execute(text(statement), arrays)


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
    """The community's rows of `table` whose `columns` equal one of `pairs`."""
    first, second = columns
    if connection.dialect.name == "postgresql":
        statement = (
            f"SELECT t.* FROM {table.name} AS t "  # noqa: S608 (names from our models)
            f"JOIN unnest(CAST(:firsts AS text[]), CAST(:seconds AS text[])) AS v(x, y) "
            f"ON t.{first} = v.x AND t.{second} = v.y WHERE t.community_id = :community"
        )
        return list(
            connection.execute(
                text(statement),
                {
                    "firsts": [pair[0] for pair in pairs],
                    "seconds": [pair[1] for pair in pairs],
                    "community": community_id,
                },
            )
        )
    return list(
        connection.execute(
            select(table).where(
                table.c.community_id == community_id,
                tuple_(table.c[first], table.c[second]).in_(list(pairs)),
            )
        )
    )

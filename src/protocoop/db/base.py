"""The declarative base, its constraint naming convention and the column types all models share."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import JSON, DateTime, MetaData, Numeric, String, TypeDecorator
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase
from sqlalchemy.types import TypeEngine

NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_N_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class UTCDateTime(TypeDecorator[datetime]):
    """A timestamp stored in UTC with microseconds and always read back timezone-aware.

    SQLite has no timezone type, so naive values read from it are UTC by construction.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


FIGURE_DIGITS = 38
"""Digits of a kept figure: a sum of up to 2^63 amounts of at most 10^15 stays below 10^34."""


class Figure(TypeDecorator[int]):
    """A kept running total of amounts (>= 0, minor units) that cannot overflow.

    NUMERIC(38, 0) on PostgreSQL. SQLite has only 64-bit integers (and `col + x` past them turns
    into a lossy REAL), so there the figure is stored as 38 zero-padded decimal digits: text that
    sorts, compares and indexes like the number. Either way the arithmetic is done in Python on
    exact `int`s, never in SQL.
    """

    impl = Numeric(FIGURE_DIGITS, 0)
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> TypeEngine[Any]:
        if dialect.name == "sqlite":
            return dialect.type_descriptor(String(FIGURE_DIGITS))
        return dialect.type_descriptor(Numeric(FIGURE_DIGITS, 0))

    def process_bind_param(self, value: int | None, dialect: Dialect) -> Any:
        if value is None:
            return None
        if not 0 <= value < 10**FIGURE_DIGITS:
            raise ValueError(f"a kept figure must be in [0, 10^{FIGURE_DIGITS}): {value}")
        return f"{value:0{FIGURE_DIGITS}d}" if dialect.name == "sqlite" else int(value)

    def process_result_value(self, value: Any, dialect: Dialect) -> int | None:
        return None if value is None else int(value)


JSONDocument = JSON().with_variant(JSONB(), "postgresql")
"""A JSON object column: JSONB on PostgreSQL, JSON text on SQLite."""


class Base(DeclarativeBase):
    """The one declarative base of protocoop's models."""

    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map: dict[Any, Any] = {datetime: UTCDateTime()}

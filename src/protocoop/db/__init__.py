"""Database access: engines and transactions (`engine`), models (`models`) and migrations
(`migrate`)."""

from protocoop.db.engine import Database

__all__ = ["Database"]

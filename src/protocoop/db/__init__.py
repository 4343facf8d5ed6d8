"""Database access: engines and transactions (`engine`), models (`models`), migrations (`migrate`)."""

from protocoop.db.engine import Database

__all__ = ["Database"]

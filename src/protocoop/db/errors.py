"""What storage raises when the database, not the request, failed.

`db/` knows nothing of HTTP: the layers above turn these into the `503 unavailable` problem
(`protocoop.problems`), the command line into a one-line message.
"""

from __future__ import annotations

from typing import ClassVar


class DatabaseUnavailable(Exception):
    """The database could not do the work now: unreachable, the connection lost, busy, or a
    lock or statement timed out. Nothing was recorded; the same request may be retried."""

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class SchemaMissing(DatabaseUnavailable):
    """The database holds no protocoop schema (never migrated): retrying cannot help until an
    operator runs `protocoop db upgrade`."""

    advice: ClassVar[str] = "the database schema is not migrated: run protocoop db upgrade"

    def __init__(self) -> None:
        super().__init__("The database schema is not migrated: run `protocoop db upgrade`.")

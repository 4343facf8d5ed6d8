"""The one place that decides which problem document an error becomes.

Services and the domain raise `ProblemError`s (their own refusals); storage raises
`DatabaseUnavailable` and lets SQLAlchemy's errors through. The HTTP error handlers and the
group-commit writer both ask `problem_for`, so a failure reads the same whichever way it came.
"""

from __future__ import annotations

import logging

from sqlalchemy.exc import DBAPIError

from protocoop.db.engine import schema_missing
from protocoop.db.errors import DatabaseUnavailable, SchemaMissing
from protocoop.errors import InternalError, ProblemError, SchemaNotMigrated, Unavailable

log = logging.getLogger(__name__)


def problem_for(error: BaseException, *, sql_detail: str | None = None) -> ProblemError:
    """The problem a client is shown for `error`: its own when it is a refusal, `503
    unavailable` (or `schema_not_migrated`) when the database failed, else `500`.
    `sql_detail` says what failed when the database refused a statement."""
    if isinstance(error, ProblemError):
        return error
    if isinstance(error, SchemaMissing):
        return SchemaNotMigrated()
    if isinstance(error, DatabaseUnavailable):
        return Unavailable(error.detail)
    if isinstance(error, DBAPIError):
        if schema_missing(error):
            log.warning("%s", SchemaMissing.advice)
            return SchemaNotMigrated()
        log.warning("database error: %s", error.orig)
        return Unavailable(
            sql_detail or "The database could not complete the request; retry with the same key."
        )
    log.exception("unexpected error", exc_info=error)
    return InternalError("An unexpected error occurred; it has been logged.")

"""Domain errors and their one rendering: RFC 9457 problem details with a stable machine `code`.

Services raise these; the handlers in `protocoop.http` render them. Routers never build error JSON.
"""

from __future__ import annotations

from typing import Any, ClassVar

PROBLEM_CONTENT_TYPE = "application/problem+json"
PROBLEM_TYPE_BASE = "https://protocoop.dev/problems/"


class ProblemError(Exception):
    """An error a client can act on: HTTP `status`, machine `code`, human `title` and `detail`,
    and any extra members (e.g. `member`, `limit`) that the spec gives the code."""

    status: ClassVar[int] = 400
    code: ClassVar[str] = "bad_request"
    title: ClassVar[str] = "Bad request"

    def __init__(self, detail: str | None = None, **extra: Any) -> None:
        super().__init__(detail or self.title)
        self.detail = detail or self.title
        self.extra = extra

    def body(self) -> dict[str, Any]:
        """The problem document (extra members never replace the standard ones)."""
        return {
            **self.extra,
            "type": PROBLEM_TYPE_BASE + self.code,
            "title": self.title,
            "status": self.status,
            "detail": self.detail,
            "code": self.code,
        }

    def headers(self) -> dict[str, str]:
        return {}


class Unauthorized(ProblemError):
    status, code, title = 401, "unauthorized", "Missing, unknown or revoked API key"

    def headers(self) -> dict[str, str]:
        return {"WWW-Authenticate": 'Bearer realm="protocoop"'}


class Forbidden(ProblemError):
    status, code, title = 403, "forbidden", "This key's role may not do that"


class NotFound(ProblemError):
    status, code, title = 404, "not_found", "Not found"


class MethodNotAllowed(ProblemError):
    status, code, title = 405, "method_not_allowed", "Method not allowed"


class ValidationFailed(ProblemError):
    status, code, title = 422, "validation_error", "The request is not valid"

    def __init__(self, errors: list[dict[str, Any]], detail: str | None = None) -> None:
        super().__init__(detail or _summarize(errors), errors=errors)


class SameMember(ProblemError):
    status, code, title = 422, "same_member", "Provider and receiver must differ"


class LimitExceeded(ProblemError):
    status, code, title = 409, "limit_exceeded", "The exchange would take a balance past its limit"


class MemberInactive(ProblemError):
    status, code, title = 409, "member_inactive", "The member cannot take part in new exchanges"


class LimitBelowBalance(ProblemError):
    status, code = 409, "limit_below_balance"
    title = "The new limit would leave the balance outside"


class BalanceNotZero(ProblemError):
    status, code, title = 409, "balance_not_zero", "Only a member with balance 0 can be closed"


class InvalidState(ProblemError):
    status, code, title = 409, "invalid_state", "Not possible in the current state"


class AlreadyExists(ProblemError):
    status, code, title = 409, "already_exists", "A resource with this id already exists"


class DuplicateExternalId(ProblemError):
    status, code, title = 409, "duplicate_external_id", "An exchange with this external_id exists"


class IdempotencyKeyReused(ProblemError):
    status, code = 422, "idempotency_key_reused"
    title = "Idempotency-Key reused with another request"


class RequestInProgress(ProblemError):
    status, code = 409, "request_in_progress"
    title = "A request with this Idempotency-Key is running"


class PayloadTooLarge(ProblemError):
    status, code, title = 413, "payload_too_large", "The request body is too large"


class RequestTimeout(ProblemError):
    status, code, title = 408, "request_timeout", "The request did not arrive in time"


class HeadersTooLarge(ProblemError):
    status, code, title = 431, "headers_too_large", "The request's header fields are too large"


class UnsupportedMediaType(ProblemError):
    status, code, title = 415, "unsupported_media_type", "The request body must be JSON"


class CorsRefused(ProblemError):
    """A browser's CORS preflight asked for an origin, method or header not allowed."""

    status, code, title = 400, "cors_refused", "The cross-origin request is not allowed"


class RateLimited(ProblemError):
    status, code, title = 429, "rate_limited", "Too many requests for this API key"

    def __init__(self, detail: str | None = None, *, retry_after: int) -> None:
        super().__init__(detail, retry_after=retry_after)
        self.retry_after = retry_after

    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(self.retry_after)}


class Unavailable(ProblemError):
    status, code, title = 503, "unavailable", "Service temporarily unavailable"

    def headers(self) -> dict[str, str]:
        return {"Retry-After": "1"}


class SchemaNotMigrated(Unavailable):
    """The database holds no protocoop schema (never migrated): retrying cannot help until an
    operator runs `protocoop db upgrade`, so no `Retry-After`."""

    advice: ClassVar[str] = "the database schema is not migrated: run protocoop db upgrade"

    def __init__(self) -> None:
        super().__init__("The database schema is not migrated: run `protocoop db upgrade`.")

    def headers(self) -> dict[str, str]:
        return {}


class InternalError(ProblemError):
    status, code, title = 500, "internal_error", "Internal error"


def _summarize(errors: list[dict[str, Any]]) -> str:
    if not errors:
        return "The request is not valid."
    first = errors[0]
    where = ".".join(str(part) for part in first.get("loc", ()))
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    return f"{where}: {first.get('msg', 'invalid')}{more}"

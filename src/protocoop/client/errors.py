"""The exceptions a client call raises: one class per problem `code` of docs/design.md §2, each
carrying the problem document and, as typed attributes, the fields the design gives its code.

`except LimitExceeded as refused: refused.balance` reads what the server said; every class
derives from `ProblemError` (`.status`, `.code`, `.detail`, `.problem`), and that from
`ClientError`, which `Unreachable` (the server could not be reached in time) shares.
"""

from __future__ import annotations

from typing import Any, ClassVar


class ClientError(Exception):
    """Anything a protocoop client call raises on purpose."""


class Unreachable(ClientError):
    """No final answer came within the retry budget: the server was down, restarting or busy.

    For a POST the outcome is unknown, and `idempotency_key` is the key it was sent with: the same
    call with `idempotency_key=` that key, later, is safe; it either records the request or answers
    what was recorded."""

    def __init__(self, message: str, *, idempotency_key: str | None) -> None:
        super().__init__(message)
        self.idempotency_key = idempotency_key


class ProblemError(ClientError):
    """The server refused the request with an RFC 9457 problem document."""

    code: ClassVar[str] = ""

    def __init__(self, status: int, problem: dict[str, Any]) -> None:
        self.status = status
        self.problem = problem
        self.detail = str(problem.get("detail") or problem.get("title") or f"HTTP {status}")
        super().__init__(f"{status} {self.problem_code}: {self.detail}")

    @property
    def problem_code(self) -> str:
        """The document's `code` (for an unknown code, the class's own is empty)."""
        return str(self.problem.get("code") or self.code or "unknown")

    def _field(self, name: str) -> Any:
        return self.problem.get(name)


class Unauthorized(ProblemError):
    code = "unauthorized"


class Forbidden(ProblemError):
    code = "forbidden"


class NotFound(ProblemError):
    code = "not_found"


class MethodNotAllowed(ProblemError):
    code = "method_not_allowed"


class ValidationFailed(ProblemError):
    code = "validation_error"

    @property
    def errors(self) -> list[dict[str, Any]]:
        """`[{loc, msg}]`: where the request was malformed."""
        return list(self._field("errors") or [])


class SameMember(ProblemError):
    code = "same_member"


class IdempotencyKeyReused(ProblemError):
    code = "idempotency_key_reused"


class LimitExceeded(ProblemError):
    code = "limit_exceeded"

    @property
    def member(self) -> str:
        return str(self._field("member"))

    @property
    def limit(self) -> str:
        """`lower` or `upper`: which limit the exchange would pass."""
        return str(self._field("limit"))

    @property
    def limit_value(self) -> int:
        return int(self._field("limit_value"))

    @property
    def balance(self) -> int:
        return int(self._field("balance"))

    @property
    def attempted(self) -> int:
        return int(self._field("attempted"))

    @property
    def reserved(self) -> int:
        """What pending proposals already hold on that side."""
        return int(self._field("reserved") or 0)

    @property
    def index(self) -> int | None:
        """In a batch: which item was refused."""
        value = self._field("index")
        return None if value is None else int(value)


class MemberInactive(ProblemError):
    code = "member_inactive"

    @property
    def member(self) -> str | None:
        value = self._field("member")
        return None if value is None else str(value)


class LimitBelowBalance(ProblemError):
    code = "limit_below_balance"

    @property
    def member(self) -> str:
        return str(self._field("member"))

    @property
    def balance(self) -> int:
        return int(self._field("balance"))


class BalanceNotZero(ProblemError):
    code = "balance_not_zero"


class InvalidState(ProblemError):
    code = "invalid_state"

    @property
    def current_status(self) -> str | None:
        value = self._field("current_status")
        return None if value is None else str(value)


class AlreadyExists(ProblemError):
    code = "already_exists"


class DuplicateExternalId(ProblemError):
    code = "duplicate_external_id"

    @property
    def exchange_id(self) -> str:
        """The exchange first recorded with this `external_id`."""
        return str(self._field("exchange_id"))


class RequestInProgress(ProblemError):
    code = "request_in_progress"


class PayloadTooLarge(ProblemError):
    code = "payload_too_large"


class RequestTimeout(ProblemError):
    code = "request_timeout"


class HeadersTooLarge(ProblemError):
    code = "headers_too_large"


class UnsupportedMediaType(ProblemError):
    code = "unsupported_media_type"


class CorsRefused(ProblemError):
    code = "cors_refused"


class RateLimited(ProblemError):
    code = "rate_limited"

    @property
    def retry_after(self) -> int | None:
        value = self._field("retry_after")
        return None if value is None else int(value)


class Unavailable(ProblemError):
    code = "unavailable"


class InternalError(ProblemError):
    code = "internal_error"


BY_CODE: dict[str, type[ProblemError]] = {
    cls.code: cls
    for cls in (
        Unauthorized,
        Forbidden,
        NotFound,
        MethodNotAllowed,
        ValidationFailed,
        SameMember,
        IdempotencyKeyReused,
        LimitExceeded,
        MemberInactive,
        LimitBelowBalance,
        BalanceNotZero,
        InvalidState,
        AlreadyExists,
        DuplicateExternalId,
        RequestInProgress,
        PayloadTooLarge,
        RequestTimeout,
        HeadersTooLarge,
        UnsupportedMediaType,
        CorsRefused,
        RateLimited,
        Unavailable,
        InternalError,
    )
}
"""Every problem code the server writes, and the class a refusal with it raises."""


def problem_error(status: int, problem: dict[str, Any]) -> ProblemError:
    """The exception for one refusal: the class of its `code`, or `ProblemError` for a code this
    client does not know (a newer server)."""
    cls = BY_CODE.get(str(problem.get("code")), ProblemError)
    return cls(status, problem)

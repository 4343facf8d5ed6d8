"""A typed client for apps that use protocoop: `Client` (sync) and `AsyncClient`, on httpx.

    from protocoop.client import Client, LimitExceeded

    with Client("http://127.0.0.1:8000", token) as ledger:
        exchange = ledger.exchanges.post(
            "riverside", provider="alice", receiver="bob", amount=150, description="Gardening"
        )

It imports neither FastAPI nor SQLAlchemy (only httpx, pydantic and the API's own response
documents), so an app needs none of the server's dependencies at run time. docs/client.md is
its guide.
"""

from protocoop.client._async.client import AsyncClient
from protocoop.client._sync.client import Client
from protocoop.client.errors import (
    AlreadyExists,
    BalanceNotZero,
    ClientError,
    CorsRefused,
    DuplicateExternalId,
    Forbidden,
    HeadersTooLarge,
    IdempotencyKeyReused,
    InternalError,
    InvalidState,
    LimitBelowBalance,
    LimitExceeded,
    MemberInactive,
    MethodNotAllowed,
    NotFound,
    PayloadTooLarge,
    ProblemError,
    RateLimited,
    RequestInProgress,
    RequestTimeout,
    SameMember,
    Unauthorized,
    Unavailable,
    Unreachable,
    UnsupportedMediaType,
    ValidationFailed,
)
from protocoop.client.protocol import NO_RETRIES, UNSET, Call, RetryPolicy

__all__ = [
    "NO_RETRIES",
    "UNSET",
    "AlreadyExists",
    "AsyncClient",
    "BalanceNotZero",
    "Call",
    "Client",
    "ClientError",
    "CorsRefused",
    "DuplicateExternalId",
    "Forbidden",
    "HeadersTooLarge",
    "IdempotencyKeyReused",
    "InternalError",
    "InvalidState",
    "LimitBelowBalance",
    "LimitExceeded",
    "MemberInactive",
    "MethodNotAllowed",
    "NotFound",
    "PayloadTooLarge",
    "ProblemError",
    "RateLimited",
    "RequestInProgress",
    "RequestTimeout",
    "RetryPolicy",
    "SameMember",
    "Unauthorized",
    "Unavailable",
    "Unreachable",
    "UnsupportedMediaType",
    "ValidationFailed",
]

"""Bearer tokens: random, shown once, stored only as their SHA-256."""

import hashlib
import hmac
import secrets

TOKEN_PREFIX = "pcp_"  # noqa: S105 - a public marker that says "this is a token", not a secret
PREFIX_SHOWN = 12


def new_token() -> str:
    """A fresh bearer token: `pcp_` and 43 URL-safe characters (256 bits of randomness)."""
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def new_key_id() -> str:
    """A public key identifier, unrelated to the token."""
    return "key_" + secrets.token_hex(8)


def token_hash(token: str) -> str:
    """Hex SHA-256 of a token: the only form in which tokens are stored."""
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


def shown_prefix(token: str) -> str:
    """The part of a token safe to show in listings."""
    return token[:PREFIX_SHOWN]


def hashes_match(a: str, b: str) -> bool:
    """Constant-time comparison of two token hashes."""
    return hmac.compare_digest(a.encode(), b.encode())

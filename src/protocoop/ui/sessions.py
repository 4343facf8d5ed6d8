"""Dashboard sign-in: a signed, expiring session cookie, and CSRF tokens for its two forms.

The cookie holds the API key's id and a random session number, signed with the server's
secret (`PROTOCOOP_UI_SECRET`) and dated: never the key's token, and nothing a browser could
alter or keep using past `ui_session_minutes`. Each page checks again that the key is live, so
revoking a key ends its dashboard sessions at once. Cookies are HttpOnly and SameSite=Strict
(Secure when the page came over HTTPS).

CSRF: the sign-in form carries a token signed for the random value of a `pcp_csrf` cookie set
with the form; the sign-out form one signed for the session's number. Another site can make a
browser send the form but cannot read either value, so it cannot forge the token.
"""

from __future__ import annotations

import hmac
import secrets
from dataclasses import dataclass

from itsdangerous import BadSignature, URLSafeTimedSerializer

SESSION_COOKIE = "pcp_session"
CSRF_COOKIE = "pcp_csrf"
CSRF_MAX_AGE_S = 3600
"""A sign-in form must be sent within an hour of being shown."""


@dataclass(frozen=True, slots=True)
class UiSession:
    key_id: str
    number: str
    """Random, per sign-in: what the sign-out form's CSRF token is signed for."""


class Signer:
    def __init__(self, secret: str, session_minutes: int) -> None:
        self._sessions = URLSafeTimedSerializer(secret, salt="protocoop.ui.session")
        self._csrf = URLSafeTimedSerializer(secret, salt="protocoop.ui.csrf")
        self.session_max_age_s = session_minutes * 60

    def new_session(self, key_id: str) -> str:
        return self._sessions.dumps({"k": key_id, "n": secrets.token_urlsafe(16)})

    def session(self, cookie: str | None) -> UiSession | None:
        """The session the cookie holds; None when absent, forged or expired."""
        if not cookie:
            return None
        try:
            data = self._sessions.loads(cookie, max_age=self.session_max_age_s)
        except BadSignature:  # also SignatureExpired
            return None
        if not isinstance(data, dict) or not all(isinstance(data.get(k), str) for k in "kn"):
            return None
        return UiSession(key_id=data["k"], number=data["n"])

    def csrf_token(self, value: str) -> str:
        return self._csrf.dumps(value)

    def csrf_valid(self, token: str | None, value: str | None) -> bool:
        """Whether `token` was signed, within the hour, for `value`."""
        if not token or not value:
            return False
        try:
            signed = self._csrf.loads(token, max_age=CSRF_MAX_AGE_S)
        except BadSignature:
            return False
        return isinstance(signed, str) and hmac.compare_digest(signed, value)


def new_csrf_value() -> str:
    return secrets.token_urlsafe(16)

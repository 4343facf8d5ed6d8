"""Roles and the principal a request acts as."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class Role(StrEnum):
    """What a key may do (docs/design.md §2's role table)."""

    ADMIN = "admin"
    """The whole instance: everything, including communities and keys."""
    TREASURER = "treasurer"
    """One community: members and limits, reversals, reads and reports, its app/auditor keys."""
    APP = "app"
    """One community: post and settle exchanges; read members, balances and statements."""
    AUDITOR = "auditor"
    """One community: read everything, change nothing."""


READERS = frozenset(Role)
"""Every role may read its own community's basic resources."""
OVERSEERS = frozenset({Role.ADMIN, Role.TREASURER, Role.AUDITOR})
"""Roles that may read community-wide reports (balances, trial balance, mutuality, audit)."""
POSTERS = frozenset({Role.ADMIN, Role.TREASURER, Role.APP})
"""Roles that may post and settle exchanges."""
MANAGERS = frozenset({Role.ADMIN, Role.TREASURER})
"""Roles that may manage members, limits, reversals and community settings."""
ADMINS = frozenset({Role.ADMIN})


@dataclass(frozen=True, slots=True)
class Principal:
    """The API key a request authenticated with."""

    key_id: str
    role: Role
    community_id: str | None
    """The one community the key may see; None for admin keys, which see all."""

    def sees(self, community_id: str) -> bool:
        """Whether the key may know that `community_id` exists."""
        return self.community_id is None or self.community_id == community_id

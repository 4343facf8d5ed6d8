"""API key management: `/v1/keys` (create, list, revoke)."""

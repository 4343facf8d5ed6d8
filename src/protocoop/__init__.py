"""protocoop: a mutual-credit exchange ledger service."""

__version__ = "0.1.0"

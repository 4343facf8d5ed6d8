"""The double-entry ledger: exchanges posted as balanced, append-only, hash-chained entries."""

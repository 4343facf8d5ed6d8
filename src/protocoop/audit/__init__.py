"""The audit: invariants 1-5 recomputed from the entries, independently of the posting code."""

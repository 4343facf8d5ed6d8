"""Members of a community and their accounts' limits."""

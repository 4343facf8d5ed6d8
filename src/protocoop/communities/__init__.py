"""Communities: the isolated mutual-credit ledgers protocoop hosts."""

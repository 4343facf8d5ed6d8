"""Balances now and as of any past point, statements and the trial balance."""

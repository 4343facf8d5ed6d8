"""Networks of communities: links with an exchange rate and balance-of-trade caps, and
intertrades — one exchange recorded in each of two communities in one transaction."""

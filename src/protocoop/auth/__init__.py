"""Who is calling and what they may do: tokens, roles, the key cache, the rate limit, and the
permission dependencies routes are declared with."""

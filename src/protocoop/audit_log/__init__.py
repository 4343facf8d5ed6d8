"""The admin audit log: every change that is not an exchange, with who made it and when."""

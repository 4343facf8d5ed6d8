"""API keys, roles and the permission dependencies routes are declared with."""

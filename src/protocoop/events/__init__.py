"""The event feed: an outbox of state changes that apps read in commit order."""

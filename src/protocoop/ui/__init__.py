"""The treasurer's dashboard: server-rendered pages under `/ui` that only read."""

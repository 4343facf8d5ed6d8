"""Does mutuality hold? The balance module: a pure report (`report`) fed by SQL aggregates
(`figures`), served over HTTP (`router`) and by `protocoop check`."""

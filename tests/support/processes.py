"""The machine's processes, as Linux's /proc lists them (for waiting on servers' processes)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path


def process_table() -> Iterator[tuple[int, str, int, int]]:
    """(pid, state, parent pid, process group) of every process in /proc; one that ends while
    the table is read is left out."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            # "pid (comm) state ppid pgrp ...": comm may hold spaces, so split after its ")".
            state, ppid, pgrp = stat.read_text().rsplit(")", 1)[1].split()[:3]
            row = (int(stat.parent.name), state, int(ppid), int(pgrp))
        except (OSError, ValueError, IndexError):
            continue
        yield row

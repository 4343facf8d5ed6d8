"""A timebank's bookkeeping app on protocoop: the complete example of docs/client.md.

    python examples/timebank.py http://127.0.0.1:8000 "$APP_TOKEN" riverside

It records sessions of work that the timebank's own site has logged (each exactly once, however
often the script is re-run or the connection drops), then follows the community's event feed and
keeps a local notebook of what happened: each event is written exactly once, because the feed's
position is stored in the same SQLite transaction as the note it produced.
"""

from __future__ import annotations

import argparse
import sqlite3
from dataclasses import dataclass
from pathlib import Path

from protocoop.client import Client, LimitExceeded, MemberInactive
from protocoop.events.schemas import EventPublic


@dataclass(frozen=True)
class Session:
    """One session of work, as the timebank's site logged it."""

    job: str
    """The site's own id for it: the exchange's `external_id`, and its Idempotency-Key."""
    helper: str
    helped: str
    minutes: int
    what: str


def record(ledger: Client, community: str, session: Session) -> str:
    """Record one session; returns what happened, in words. The job id is both the key (a retry
    after a lost answer is answered, not recorded again) and the `external_id` (a re-run days
    later is refused with `duplicate_external_id`, for good)."""
    try:
        exchange = ledger.exchanges.post(
            community,
            provider=session.helper,
            receiver=session.helped,
            amount=session.minutes,
            description=session.what,
            external_id=session.job,
            idempotency_key=f"job-{session.job}",
        )
    except LimitExceeded as refused:
        return (
            f"{session.job}: not recorded, {refused.member} would pass the {refused.limit} "
            f"limit {refused.limit_value} (balance {refused.balance})"
        )
    except MemberInactive as refused:
        return f"{session.job}: not recorded, {refused.detail}"
    return f"{session.job}: recorded as #{exchange.seq}"


class Notebook:
    """The app's own database: its notes, and how far into the feed it has read."""

    def __init__(self, path: Path) -> None:
        self.db = sqlite3.connect(path)
        with self.db:
            self.db.execute("CREATE TABLE IF NOT EXISTS notes (event INTEGER PRIMARY KEY, text)")
            self.db.execute("CREATE TABLE IF NOT EXISTS feed (one INTEGER PRIMARY KEY, after)")

    def position(self) -> int:
        row = self.db.execute("SELECT after FROM feed").fetchone()
        return int(row[0]) if row else 0

    def write(self, event: EventPublic) -> None:
        """The note and the new position in one transaction: both or neither."""
        data = event.data
        text = f"{event.type}: {data.get('description') or data.get('id')}"
        with self.db:
            self.db.execute("INSERT INTO notes VALUES (?, ?)", (event.id, text))
            self.db.execute("INSERT OR REPLACE INTO feed VALUES (1, ?)", (event.id,))

    def notes(self) -> list[str]:
        return [row[0] for row in self.db.execute("SELECT text FROM notes ORDER BY event")]

    def close(self) -> None:
        self.db.close()


def catch_up(ledger: Client, community: str, notebook: Notebook) -> int:
    """Note every event since the stored position; returns how many were new."""
    count = 0
    for event in ledger.events.follow(community, after=notebook.position(), until_caught_up=True):
        notebook.write(event)
        count += 1
    return count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("server")
    parser.add_argument("token")
    parser.add_argument("community")
    parser.add_argument("--notebook", type=Path, default=Path("timebank-notes.db"))
    arguments = parser.parse_args()
    sessions = [
        Session("2026-0001", "alice", "bob", 120, "Gardening"),
        Session("2026-0002", "bob", "carol", 45, "Bike repair"),
    ]
    notebook = Notebook(arguments.notebook)
    with Client(arguments.server, arguments.token) as ledger:
        for session in sessions:
            print(record(ledger, arguments.community, session))
        print(f"{catch_up(ledger, arguments.community, notebook)} new events noted")
        balance = ledger.balances.get(arguments.community, "alice")
        print(
            f"alice: {balance.balance} {balance.unit.code}, {balance.available_to_spend} to spend"
        )
    notebook.close()


if __name__ == "__main__":
    main()

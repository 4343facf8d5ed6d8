"""Generate the synchronous client from the asynchronous one: `make client` runs this.

    python scripts/unasync_client.py [--check]

unasync rewrites `src/protocoop/client/_async/client.py` token by token into
`_sync/client.py`: `async` and `await` go, names lose their `Async` prefix (`AsyncClient` →
`Client`, `AsyncIterator` → `Iterator`), `aclose` becomes `close` and `asyncio.sleep`
`time.sleep`; ruff then formats the result. `--check` writes nothing and fails when the
committed file is not what the generator makes (the test suite runs it).
"""

from __future__ import annotations

import re
import subprocess
import sys
import tempfile
from pathlib import Path

import unasync

ROOT = Path(__file__).resolve().parent.parent
ASYNC_SOURCE = ROOT / "src" / "protocoop" / "client" / "_async" / "client.py"
SYNC_TARGET = ROOT / "src" / "protocoop" / "client" / "_sync" / "client.py"


def generated() -> str:
    """The synchronous client's source, as the generator makes it."""
    source = ASYNC_SOURCE.read_text()
    replacements = {name: name[len("Async") :] for name in re.findall(r"\bAsync[A-Z]\w*", source)}
    replacements |= {"asyncio": "time", "aclose": "close"}
    with tempfile.TemporaryDirectory() as scratch:
        async_dir = Path(scratch) / "_async"
        async_dir.mkdir()
        (async_dir / "client.py").write_text(source)
        rule = unasync.Rule("/_async/", "/_sync/", additional_replacements=replacements)
        unasync.unasync_files([str(async_dir / "client.py")], rules=[rule])
        target = Path(scratch) / "_sync" / "client.py"
        subprocess.run(
            [sys.executable, "-m", "ruff", "format", "--quiet", str(target)],
            check=True,
            cwd=ROOT,
        )
        return target.read_text()


def main() -> int:
    text = generated()
    if "--check" in sys.argv[1:]:
        if SYNC_TARGET.read_text() != text:
            print(f"{SYNC_TARGET} is out of date: run `make client`", file=sys.stderr)
            return 1
        return 0
    SYNC_TARGET.write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""The documents in the repository hold together: every relative Markdown link in README.md,
CONTRIBUTING.md and docs/*.md names a file inside the repository that exists, none points
outside it (the contract once lived at `../shared/spec/DESIGN.md`, a dead link in any clone),
and every setting is documented in docs/operations.md."""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import unquote

import pytest

from protocoop.config import Settings

ROOT = Path(__file__).resolve().parents[2]
DOCUMENTS = sorted([ROOT / "README.md", ROOT / "CONTRIBUTING.md", *(ROOT / "docs").glob("*.md")])

LINK = re.compile(r"(?<!!)\[(?P<text>[^\]]*)\]\((?P<target>[^)\s]+)(?:\s+\"[^\"]*\")?\)")
"""An inline link `[text](target)` or `[text](target "title")` (images too: `!` is left out of the
match but the target is the same kind of path)."""
FENCE = re.compile(r"^(```|~~~).*?^\1", flags=re.M | re.S)
EXTERNAL = ("http://", "https://", "mailto:")


def links(document: Path) -> list[str]:
    """The link targets in `document`, outside fenced code blocks (code is not a link)."""
    text = FENCE.sub("", document.read_text(encoding="utf-8"))
    return [match["target"] for match in LINK.finditer(text)]


def dead_links(document: Path, root: Path = ROOT) -> list[str]:
    """Why each relative link of `document` does not resolve inside `root` (empty: all do)."""
    problems = []
    for target in links(document):
        if target.startswith(EXTERNAL) or target.startswith("#"):
            continue
        path = unquote(target.split("#", 1)[0])
        resolved = (document.parent / path).resolve()
        if not resolved.is_relative_to(root):
            problems.append(f"{target}: outside the repository")
        elif not resolved.exists():
            problems.append(f"{target}: no such file")
    return problems


def name(document: Path) -> str:
    return str(document.relative_to(ROOT))


def test_the_documents_are_there() -> None:
    expected = {"README.md", "CONTRIBUTING.md", "docs/design.md", "docs/operations.md"}
    assert expected | {"docs/architecture.md", "docs/performance.md"} <= {
        name(document) for document in DOCUMENTS
    }


@pytest.mark.parametrize("document", DOCUMENTS, ids=name)
def test_every_relative_link_resolves_inside_the_repository(document: Path) -> None:
    assert dead_links(document) == []


@pytest.mark.parametrize("document", DOCUMENTS, ids=name)
def test_no_document_points_at_the_shared_folder_outside_the_repository(document: Path) -> None:
    assert "../shared" not in document.read_text(encoding="utf-8")


def test_the_readme_links_every_document() -> None:
    readme = set(links(ROOT / "README.md"))
    wanted = {
        "docs/design.md",
        "docs/architecture.md",
        "docs/operations.md",
        "docs/performance.md",
        "CONTRIBUTING.md",
    }
    assert wanted <= readme


def test_a_dead_link_is_found(tmp_path: Path) -> None:
    """The check itself, on a repository of its own: a missing file, a path out of the repository
    and a missing file behind a fragment are dead; a file that exists (with or without a fragment)
    is not; external links, anchors and links inside code blocks are not checked."""
    root = tmp_path / "repository"
    (root / "docs").mkdir(parents=True)
    (root / "docs" / "design.md").write_text("# design\n", encoding="utf-8")
    probe = root / "README.md"
    probe.write_text(
        "[gone](docs/no-such-file.md) [out](../shared/spec/DESIGN.md) [frag](nowhere.md#x)\n"
        "[ok](docs/design.md) [ok too](docs/design.md#design)\n"
        "[web](https://example.org/x.md) [mail](mailto:a@example.org) [here](#layers)\n"
        "```sh\n[code](not-a-link.md)\n```\n",
        encoding="utf-8",
    )
    assert "not-a-link.md" not in links(probe)
    assert dead_links(probe, root) == [
        "docs/no-such-file.md: no such file",
        "../shared/spec/DESIGN.md: outside the repository",
        "nowhere.md#x: no such file",
    ]


def test_every_setting_is_in_the_operations_table() -> None:
    operations = (ROOT / "docs" / "operations.md").read_text(encoding="utf-8")
    rows = set(re.findall(r"^\| `(PROTOCOOP_[A-Z0-9_]+)` \|", operations, flags=re.M))
    settings = {f"PROTOCOOP_{field.upper()}" for field in Settings.model_fields}
    assert settings - rows == set(), "settings missing from docs/operations.md's table"
    assert rows - settings == set(), "docs/operations.md documents settings that do not exist"

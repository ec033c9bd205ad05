"""docs/architecture.md's module map matches the tree: one row per module of rtbus/."""

from __future__ import annotations

import pathlib
import re

ROOT = pathlib.Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "rtbus"
ROW = re.compile(r"^\| `([^`]+)` \| .+ \|$")


def map_rows() -> list[str]:
    text = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")
    section = text.split("\n## Modules\n", 1)[1].split("\n## ", 1)[0]
    return [match.group(1) for match in map(ROW.match, section.splitlines()) if match]


def modules() -> set[str]:
    """Every module of rtbus/, and the package files that hold more than a docstring."""
    found = set()
    for path in PACKAGE.rglob("*.py"):
        if path.name == "__init__.py" and _only_a_docstring(path):
            continue
        found.add(path.relative_to(ROOT).as_posix())
    return found


def _only_a_docstring(path: pathlib.Path) -> bool:
    import ast

    body = ast.parse(path.read_text(encoding="utf-8")).body
    return all(isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant) for node in body)


def test_every_module_has_one_row():
    rows = map_rows()
    listed = [row for row in rows if row.endswith(".py")]
    assert sorted(set(modules()) - set(listed)) == []
    assert sorted(row for row in set(listed) if listed.count(row) > 1) == []


def test_every_row_names_something_that_exists():
    assert [row for row in map_rows() if not (ROOT / row).exists()] == []

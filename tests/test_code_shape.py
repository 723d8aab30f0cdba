"""The code stays readable in pieces: no module of nstd/ over 600 lines, no function over 60.

A module that grows past the limit holds more than one job and is split along them; a
function that does is cut into named steps. The tests name every offender, so the fix
starts from the message.
"""

from __future__ import annotations

import ast
from pathlib import Path

import nstd

MAX_MODULE_LINES = 600
MAX_FUNCTION_LINES = 60

PACKAGE = Path(nstd.__file__).resolve().parent


def modules() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def name(path: Path) -> str:
    return path.relative_to(PACKAGE.parent).as_posix()


def test_the_package_is_where_the_tests_look() -> None:
    assert len(modules()) > 50, f"only {len(modules())} modules found under {PACKAGE}"


def test_no_module_is_over_600_lines() -> None:
    long = {name(p): n for p in modules()
            if (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_MODULE_LINES}
    report = "\n".join(f"  {path}: {n} lines" for path, n in sorted(long.items()))
    assert not long, f"modules over {MAX_MODULE_LINES} lines:\n{report}"


def test_no_function_is_over_60_lines() -> None:
    long = []
    for path in modules():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    long.append(f"  {name(path)}:{node.lineno} {node.name}: {lines} lines")
    report = "\n".join(long)
    assert not long, f"functions over {MAX_FUNCTION_LINES} lines:\n{report}"

"""The README's install and test commands are the ones CI runs: a user install in "Install and
start" (with the way to the offline weights), the test install and command in "Run the tests",
and `.ci/run` running exactly those."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
TEST_INSTALL = "pip install -e '.[test]'"
TEST_COMMAND = "python -m pytest -q"


def section(title: str) -> str:
    text = (REPO / "README.md").read_text()
    match = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## )", text, re.M | re.S)
    assert match, f"README has no section {title!r}"
    return match.group(1)


def test_the_install_section_is_a_user_install_with_a_way_to_the_offline_weights() -> None:
    install = section("Install and start")
    assert "pip install .\n" in install or "pip install .`" in install
    assert TEST_INSTALL not in install  # the test install lives in "Run the tests"
    assert "download.pytorch.org/whl/cpu" in install  # CPU-only PyTorch
    assert "(#weights-online-and-offline)" in install
    assert "## Weights: online and offline" in (REPO / "README.md").read_text()


def test_ci_runs_the_install_and_test_commands_of_run_the_tests() -> None:
    tests = section("Run the tests")
    ci = (REPO / ".ci" / "run").read_text()
    assert TEST_INSTALL in tests and TEST_INSTALL in ci
    assert TEST_COMMAND in tests and TEST_COMMAND in ci
    commands = [line.strip() for line in ci.splitlines()
                if line.strip().startswith(("pip install", "python -m pytest"))]
    assert commands == [TEST_INSTALL, TEST_COMMAND], commands

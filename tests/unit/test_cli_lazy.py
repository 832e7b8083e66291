"""The CLI root loads commands lazily: fast --help, and one-line helps that match the commands."""

from __future__ import annotations

import subprocess
import sys

import pytest

from cli.main import COMMANDS, load

HEAVY = ("sqlalchemy", "pydantic", "kubernetes", "matplotlib", "alembic", "psycopg")


def test_help_imports_no_heavy_library() -> None:
    code = f"import sys, cli.main; print(','.join(m for m in {HEAVY!r} if m in sys.modules))"
    found = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert found == "", f"`jobtree --help` would import {found}"


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_the_root_lists_each_command_with_its_own_help(name: str) -> None:
    command = load(name)
    own = (command.help or "").strip().splitlines()[0]
    assert own == COMMANDS[name].help, f"{name}: the root says {COMMANDS[name].help!r}, the command {own!r}"

"""The bad-input corpus (data for tests/e2e/test_bad_input_corpus.py) and a small CLI helper."""

from __future__ import annotations

from cli.main import run


def exit_code(args: list[str]) -> int:
    """Run the CLI in this process; its exit code (0 when it returns normally)."""
    try:
        run(args)
    except SystemExit as exc:
        return int(exc.code or 0)
    return 0

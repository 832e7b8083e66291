"""The CLI's error tree. Each error knows its exit code and prints one clear line."""

from __future__ import annotations


class CommandError(Exception):
    exit_code = 1


class BadInput(CommandError):
    """Bad input of any kind: names the field and the rule. Nothing is written."""

    exit_code = 2

    def __init__(self, field: str, rule: str) -> None:
        self.field = field
        self.rule = rule
        super().__init__(f"{field}: {rule}")


class NotFound(CommandError):
    exit_code = 1


class Forbidden(BadInput):
    """The caller may not act for this owner or on this object (exit 2, nothing written)."""

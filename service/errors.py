"""The application layer's error tree. No exit codes here: the CLI maps them (cli/errors.py)."""

from __future__ import annotations


class ServiceError(Exception):
    """Base of every error a service call raises on purpose."""


class BadInput(ServiceError):
    """Bad input of any kind: names the field and the rule. Nothing is written."""

    def __init__(self, field: str, rule: str) -> None:
        self.field = field
        self.rule = rule
        super().__init__(f"{field}: {rule}")


class Forbidden(BadInput):
    """The caller may not act for this owner or on this object (nothing is written)."""


class NotFound(ServiceError):
    """The named run, node or budget does not exist."""


class PlannerUnavailable(ServiceError):
    """The input was recorded, but no planner answered in time."""

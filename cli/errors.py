"""The CLI's view of errors: the service's error tree, and the exit code of each.

Exit codes (README): 0 success; 1 not found or another failure; 2 bad input of any
kind (``BadInput``, ``Forbidden``), nothing written.
"""

from __future__ import annotations

from service.errors import BadInput, Forbidden, NotFound, PlannerUnavailable, ServiceError

__all__ = ["BadInput", "CommandError", "Forbidden", "NotFound", "NotSettled", "PlannerUnavailable", "exit_code"]


class CommandError(ServiceError):
    """A failure of the CLI itself (exit 1 unless a subclass says otherwise)."""

    exit_code = 1


class NotSettled(CommandError):
    """`watch --timeout`: the run was still moving when the time was up (exit 1)."""


def exit_code(exc: ServiceError) -> int:
    if isinstance(exc, BadInput):
        return 2
    return int(getattr(exc, "exit_code", 1))

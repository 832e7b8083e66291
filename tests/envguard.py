"""Serialise environment writes with libpq connects while tests run planner threads.

libpq reads the environment (``getenv``) while it connects, without the GIL, in
whichever thread connects; a test that sets a variable in the main thread
(``monkeypatch.setenv``) meanwhile may reallocate glibc's ``environ`` under the
reader. That crashed CI once with a segmentation fault inside ``psycopg.connect``
of a background planner thread. The product never writes its own environment, so
only the tests need this: every ``putenv``/``unsetenv`` and every ``psycopg.connect``
of the test process takes the same lock.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import psycopg
import pytest

_LOCK = threading.RLock()
_F = TypeVar("_F", bound=Callable[..., Any])


def _locked(function: _F) -> _F:
    def call(*args: Any, **kwargs: Any) -> Any:
        with _LOCK:
            return function(*args, **kwargs)

    return call  # type: ignore[return-value]


@contextmanager
def environment_writes_serialised() -> Iterator[None]:
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(os, "putenv", _locked(os.putenv))
        patch.setattr(os, "unsetenv", _locked(os.unsetenv))
        patch.setattr(psycopg, "connect", _locked(psycopg.connect))
        yield

"""Retry with exponential back-off for the transient answers: 429 and 5xx, or no answer.

An attempt that raises ``KubeUnavailable`` (``KubeTooManyRequests``, ``KubeServerError``,
``KubeConnectionError``) is tried again after ``base · 2^(n-1)`` seconds, at most ``cap``;
a 429 with ``Retry-After`` waits what the server asked instead. Bounded twice: at most
``attempts`` tries, and no wait that would end past ``deadline`` seconds after the first
try. Then the last error is raised, and the worker loop retries on its next pass. Every
other error (401, 403, 404, 409, 410, 422, …) is raised at once: retrying cannot change it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from binder.kube.errors import KubeTooManyRequests, KubeUnavailable

log = logging.getLogger("jobtree.kube")
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    attempts: int = 5
    base: float = 0.2
    cap: float = 5.0
    deadline: float = 30.0
    sleep: Callable[[float], None] = time.sleep
    clock: Callable[[], float] = time.monotonic

    def delay(self, attempt: int, exc: KubeUnavailable) -> float:
        """The wait before try ``attempt + 1``."""
        if isinstance(exc, KubeTooManyRequests) and exc.retry_after is not None:
            return exc.retry_after
        return float(min(self.cap, self.base * 2 ** (attempt - 1)))

    def run(self, fn: Callable[[], T], what: str = "request") -> T:
        start = self.clock()
        attempt = 1
        while True:
            try:
                return fn()
            except KubeUnavailable as exc:
                wait = self.delay(attempt, exc)
                if attempt >= self.attempts or self.clock() - start + wait > self.deadline:
                    raise
                log.info("%s: %s (HTTP %s); retry %d in %.1fs", what, exc, exc.status or "-", attempt, wait)
                self.sleep(wait)
                attempt += 1


NO_RETRY = RetryPolicy(attempts=1)

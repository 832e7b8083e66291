"""Planner snapshots, the pure part: code fingerprint, encode and decode (ARCHITECTURE §4).

A snapshot is a folded ``ClusterState`` at a ledger position, so a restart reads
the snapshot plus the tail instead of the whole history. Restoring is only valid
for the code that wrote it, so every snapshot carries a **fingerprint** of the
planner's sources, ``ledger/events.py`` (with ``event_codec.py``), ``ledger/model.py``
(with ``fields.py``, ``parsing.py`` and ``rules.py``), ``ledger/vocabulary.py`` and the runtime
(Python and pydantic versions); a snapshot with another fingerprint is ignored.

Encoding is pickle (protocol 5), on purpose and with care (docs/workers.md):

- ``ClusterState`` and its parts (run specs, funding meters, reservations) change
  often; a hand-written JSON codec would have to follow every field, and a field
  it forgot would silently restore wrong. Pickle copies exactly what ``copy()``
  (``deepcopy``) copies, and the fingerprint rejects any snapshot whose classes
  may have changed shape.
- Unpickling runs code named by the data. Snapshots live in the ledger database,
  which is already trusted as the source of truth, but write access to one table
  must not become code execution in the planner, so ``decode`` resolves only
  *classes defined in* ``planner.*``, ``ledger.events``, ``ledger.model``,
  ``ledger.vocabulary`` and ``datetime``, plus pydantic's ``TzInfo`` (no functions, no builtins, no dotted
  names). Anything else is
  ``SnapshotUnreadable``, and the caller folds from scratch instead.

No I/O here: the caller reads the sources and the rows (ledger/snapshots.py,
planner/worker.py).
"""

from __future__ import annotations

import hashlib
import io
import pickle
import sys
from collections.abc import Mapping

from planner.state import ClusterState

FORMAT = "pickle-5"
PROTOCOL = 5
#: Source paths (relative to the directory holding the ``planner`` package) whose
#: content defines the snapshot layout; a directory means every ``*.py`` in it.
SOURCES = (
    "planner",
    "ledger/events.py",
    "ledger/event_codec.py",
    "ledger/model.py",
    "ledger/fields.py",
    "ledger/parsing.py",
    "ledger/rules.py",
    "ledger/vocabulary.py",
)
_ALLOWED_MODULES = ("ledger.events", "ledger.model", "ledger.vocabulary", "datetime")
#: Outside classes a state may hold: pydantic's own tzinfo on datetimes it parsed.
_ALLOWED_CLASSES = frozenset({("pydantic_core._pydantic_core", "TzInfo")})


class SnapshotUnreadable(ValueError):
    """A snapshot that cannot be restored (corrupt, foreign classes, wrong shape)."""


def runtime_tag() -> str:
    """The runtime parts of the fingerprint: pickled classes depend on them too."""
    import pydantic

    return f"{FORMAT} python{sys.version_info.major}.{sys.version_info.minor} pydantic{pydantic.VERSION}"


def fingerprint(sources: Mapping[str, bytes], runtime: str) -> str:
    """sha256 over the runtime tag and every (path, content) pair, in path order."""
    digest = hashlib.sha256(runtime.encode())
    for path in sorted(sources):
        content = sources[path]
        digest.update(f"\0{path}\0{len(content)}\0".encode())
        digest.update(content)
    return digest.hexdigest()


def checksum(blob: bytes) -> str:
    return hashlib.sha256(blob).hexdigest()


def encode(state: ClusterState) -> bytes:
    """The state as bytes (the state is not changed)."""
    return pickle.dumps(state, protocol=PROTOCOL)


class _Restricted(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> type:
        allowed = module.startswith("planner.") or module in _ALLOWED_MODULES or (module, name) in _ALLOWED_CLASSES
        if not allowed or "." in name:
            raise SnapshotUnreadable(f"snapshot refers to {module}.{name}, which snapshots may not contain")
        try:
            found = super().find_class(module, name)
        except AttributeError:
            found = None
        if not isinstance(found, type) or found.__module__ != module:
            raise SnapshotUnreadable(f"snapshot refers to {module}.{name}, which is not a class defined there")
        return found


def decode(blob: bytes, position: int) -> ClusterState:
    """The state encoded in ``blob``, which must cover exactly the ledger up to ``position``."""
    try:
        state = _Restricted(io.BytesIO(blob)).load()
    except SnapshotUnreadable:
        raise
    except Exception as exc:  # a corrupt pickle can raise almost anything
        raise SnapshotUnreadable(f"snapshot at position {position} does not unpickle: {exc!r}") from None
    if not isinstance(state, ClusterState):
        raise SnapshotUnreadable(f"snapshot at position {position} holds a {type(state).__name__}")
    if state.last_position != position:
        raise SnapshotUnreadable(
            f"snapshot at position {position} covers the ledger up to {state.last_position} instead"
        )
    return state

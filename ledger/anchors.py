"""Anchors (SPEC §12): the chain's head signed with an Ed25519 key the database never sees.

A checkpoint is a small JSON file: the ledger's identity (database name, the server's
system identifier, the hash of event 1), the head (position, hash), *witnesses* (the
hashes of the 64 positions up to the head, of 64 positions evenly spread before those,
of ``head - 2^k`` and of 1), the time, the signer's public key, and an Ed25519 signature
over the canonical JSON of all of that. ``verify`` proves the log still extends a
checkpoint: every witness must still carry its hash. An edit, deletion, insertion or truncation before the head, even
with every later hash recomputed (a superuser can), changes the hash at its position
and at every later one; the witnesses bracket the first changed position — exactly
within the 64 positions before the head, within about 1/65 of the log further back.

This module is the only one that imports ``cryptography``.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import stat
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from ledger.embedded import atomic_write, default_home
from ledger.errors import translate
from ledger.store import Ledger

KIND = "jobtree-checkpoint"
VERSION = 1
DENSE = 64
SPREAD = 64
_DOMAIN = b"jobtree-checkpoint/1\n"


class AnchorError(ValueError):
    """A key or checkpoint file that cannot be used: ``field`` names it, ``rule`` says why."""

    def __init__(self, field: str, rule: str) -> None:
        self.field, self.rule = field, rule
        super().__init__(f"{field}: {rule}")


# ---------------------------------------------------------------- keys


def default_key_path() -> Path:
    return default_home() / "audit" / "checkpoint.key"


def generate_key(path: Path) -> Ed25519PrivateKey:
    """A new Ed25519 key in ``path`` (PKCS#8 PEM, mode 0600); an existing file is never replaced."""
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())  # fmt: skip
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise AnchorError(str(path), "exists; a signing key is never overwritten (choose another --out)") from None
    with os.fdopen(fd, "wb") as handle:
        handle.write(pem)
    return key


def load_key(path: Path) -> Ed25519PrivateKey:
    """The private key in ``path``; refused when others may read it or it is not an Ed25519 key."""
    try:
        mode = path.stat().st_mode
        data = path.read_bytes()
    except OSError as exc:
        raise AnchorError(str(path), f"cannot read the key: {exc.strerror}") from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise AnchorError(str(path), f"others may read this key (mode {stat.S_IMODE(mode):04o}); chmod 600 it")
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise AnchorError(str(path), f"not an unencrypted PEM private key ({exc})") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise AnchorError(str(path), "not an Ed25519 key")
    return key


def load_or_create_key(path: Path | None) -> tuple[Ed25519PrivateKey, Path, bool]:
    """The key at ``path`` (default: ``$JOBTREE_HOME/audit/checkpoint.key``, created on first use)."""
    if path is not None:
        return load_key(path), path, False
    default = default_key_path()
    if default.exists():
        return load_key(default), default, False
    return generate_key(default), default, True


def public_key_text(key: Ed25519PublicKey) -> str:
    return base64.b64encode(key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)).decode()


def key_id(public: str) -> str:
    return hashlib.sha256(base64.b64decode(public)).hexdigest()[:16]


def pinned_public_key(path: Path) -> str:
    """The public key (base64, raw) of a PEM public *or* private key file, to pin with ``--public-key``."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise AnchorError(str(path), f"cannot read the key: {exc.strerror}") from None
    try:
        public: Any = serialization.load_pem_public_key(data)
    except ValueError:
        try:
            public = serialization.load_pem_private_key(data, password=None).public_key()
        except (ValueError, TypeError):
            raise AnchorError(str(path), "not a PEM Ed25519 public or private key") from None
    if not isinstance(public, Ed25519PublicKey):
        raise AnchorError(str(path), "not an Ed25519 key")
    return public_key_text(public)


def public_key_pem(key: Ed25519PrivateKey) -> str:
    pem = key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    return pem.decode()


# ---------------------------------------------------------------- checkpoints


def witness_positions(head: int) -> list[int]:
    """The head and the ``DENSE - 1`` positions before it, ``SPREAD`` positions evenly spaced
    before those, ``head - 2^k`` (k >= 6), and 1 (ascending)."""
    if head <= 0:
        return []
    found = set(range(max(1, head - DENSE + 1), head + 1))
    older = head - DENSE
    found.update(1 + (older * i) // (SPREAD + 1) for i in range(1, SPREAD + 1) if older > SPREAD)
    step = DENSE
    while head - step >= 1:
        found.add(head - step)
        step *= 2
    found.add(1)
    return sorted(found)


def ledger_identity(ledger: Ledger) -> dict[str, Any]:
    """Which ledger: the database's name, the server's system identifier (None where the role
    may not read it, e.g. some managed services) and the hash of event 1 (the chain's identity)."""
    try:
        with ledger.engine.connect() as conn:
            database = conn.execute(text("SELECT current_database()")).scalar_one()
            try:
                with conn.begin_nested():
                    system = conn.execute(text("SELECT system_identifier::text FROM pg_control_system()")).scalar()
            except DBAPIError:
                system = None
    except DBAPIError as exc:
        raise translate(exc) from exc
    first = ledger.hashes_at([1]).get(1)
    return {"database": str(database), "systemIdentifier": system, "firstHash": first}


def _signed_bytes(body: dict[str, Any]) -> bytes:
    unsigned = {k: v for k, v in body.items() if k != "signature"}
    return _DOMAIN + json.dumps(unsigned, sort_keys=True, separators=(",", ":")).encode("ascii")


def make_checkpoint(ledger: Ledger, key: Ed25519PrivateKey, now: datetime | None = None) -> dict[str, Any]:
    """Sign the ledger's current head and witnesses."""
    position, head_hash = ledger.tip()
    positions = witness_positions(position)
    hashes = ledger.hashes_at(positions)
    public = public_key_text(key.public_key())
    body: dict[str, Any] = {
        "kind": KIND,
        "version": VERSION,
        "ledger": ledger_identity(ledger),
        "position": position,
        "hash": head_hash,
        "witnesses": [[p, hashes[p]] for p in positions if p in hashes],
        "createdAt": (now or datetime.now(UTC)).astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z"),
        "publicKey": public,
        "keyId": key_id(public),
    }
    body["signature"] = base64.b64encode(key.sign(_signed_bytes(body))).decode()
    return body


def write_checkpoint(path: Path, checkpoint: dict[str, Any]) -> None:
    atomic_write(path, json.dumps(checkpoint, indent=2, sort_keys=True) + "\n")


def default_checkpoint_path(directory: Path, checkpoint: dict[str, Any]) -> Path:
    stamp = str(checkpoint["createdAt"]).replace(":", "").replace("-", "")
    return directory / f"checkpoint-{stamp}-{checkpoint['position']}.json"


def read_checkpoint(path: Path) -> dict[str, Any]:
    """A checkpoint file's JSON, with its shape checked (not its signature: ``verify`` does that)."""
    field = f"--checkpoint {path}"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise AnchorError(field, f"cannot read the file: {exc.strerror}") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise AnchorError(field, f"not a JSON checkpoint ({exc})") from None
    return checked_checkpoint(data, field)


def checked_checkpoint(data: Any, field: str) -> dict[str, Any]:
    """``data`` if it has a checkpoint's shape (a file's, or a record's from the stream)."""
    if not isinstance(data, dict) or data.get("kind") != KIND or data.get("version") != VERSION:
        raise AnchorError(field, f"not a {KIND} version {VERSION} file")
    for name, kind in (("position", int), ("hash", str), ("witnesses", list), ("publicKey", str),
                       ("signature", str), ("ledger", dict)):  # fmt: skip
        if not isinstance(data.get(name), kind) or isinstance(data.get(name), bool):
            raise AnchorError(f"{field}: {name}", f"must be a {kind.__name__}")
    for item in data["witnesses"]:
        if not (isinstance(item, list) and len(item) == 2 and type(item[0]) is int and isinstance(item[1], str)):
            raise AnchorError(f"{field}: witnesses", "each witness must be [position, hash]")
    return data


# ---------------------------------------------------------------- verification


@dataclass(frozen=True, slots=True)
class CheckpointResult:
    """One checkpoint against the ledger. ``first_bad``..``last_bad`` bracket the first changed position."""

    source: str
    position: int
    ok: bool
    message: str
    first_bad: int | None = None
    last_bad: int | None = None


def signature_problem(checkpoint: dict[str, Any], pinned: str | None) -> str | None:
    """Why the checkpoint's signature cannot be trusted, or None."""
    if pinned is not None and checkpoint["publicKey"] != pinned:
        return f"signed by key {key_id_of(checkpoint)}, not by the pinned key {key_id(pinned)}"
    try:
        public = Ed25519PublicKey.from_public_bytes(base64.b64decode(checkpoint["publicKey"], validate=True))
        public.verify(base64.b64decode(checkpoint["signature"], validate=True), _signed_bytes(checkpoint))
    except (InvalidSignature, ValueError):
        return "the signature does not verify: the checkpoint was altered, or not signed by its key"
    return None


def key_id_of(checkpoint: dict[str, Any]) -> str:
    try:
        return key_id(checkpoint["publicKey"])
    except ValueError:
        return "(unreadable)"


def verify_checkpoint(ledger: Ledger, checkpoint: dict[str, Any], source: str, pinned: str | None = None
                      ) -> CheckpointResult:  # fmt: skip
    """Does the ledger still extend ``checkpoint``? The first witness that changed brackets where."""
    position = int(checkpoint["position"])
    problem = signature_problem(checkpoint, pinned)
    if problem:
        return CheckpointResult(source, position, False, f"checkpoint {source}: {problem}")
    witnesses = sorted((int(p), str(h)) for p, h in checkpoint["witnesses"])
    tip, _ = ledger.tip()
    stored = ledger.hashes_at([p for p, _ in witnesses])
    good = 0
    for at, expected in witnesses:
        now = stored.get(at)
        if now == expected:
            good = at
            continue
        return _changed(source, position, good, at, tip, now is None)
    if position > 0 and not any(p == position for p, _ in witnesses):
        return CheckpointResult(source, position, False, f"checkpoint {source}: its head is not among its witnesses")
    extended = f"checkpoint {source} (position {position}) is extended by the ledger (now at {tip})"
    return CheckpointResult(source, position, True, extended)


def _changed(source: str, position: int, good: int, at: int, tip: int, missing: bool) -> CheckpointResult:
    if missing and tip < at:
        first, last = good + 1, tip + 1
        what = f"the ledger ends at position {tip}: events after it up to {position} are gone (truncated)"
    else:
        first, last = good + 1, at
        what = f"event {at} is {'missing' if missing else 'not the event that was checkpointed'}"
    where = f"position {first}" if first >= last else f"a position in {first}..{last}"
    message = (
        f"checkpoint {source} (position {position}) is not extended by the ledger: {what}; "
        f"the history was changed from {where} on (edited, deleted, inserted or re-hashed)"
    )
    return CheckpointResult(source, position, False, message, first, last)

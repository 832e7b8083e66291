"""Who is calling (SPEC §10): authenticated, never self-declared.

- A shared ledger (``--db URL``): the Postgres role the connection logged in as
  (``session_user``), with the roles it is a member of as its groups (``ledger.roles``).
- The embedded default: the operating-system user (the data dir is that user's).

``--as USER`` and ``$JOBTREE_USER``/``$JOBTREE_GROUPS`` then name someone else to act
for (the same rule for both; ``--as`` wins when both are given). They are honoured only
when the authenticated caller **may impersonate**: it is listed in the policy's
``impersonators`` or ``admins`` (an admin could list itself as an impersonator anyway),
or its database session could rewrite the log regardless (a superuser or the owner of
``events``) or record for anyone (a member of ``jobtree_service``). Anyone else who
names another identity is refused (exit 2, nothing written): a spoof gains nothing, and
says so instead of being silently ignored. On a fresh embedded data dir (no policy yet)
the OS user is about to become its admin, so it may name whom it acts as (tests, the demo).
"""

from __future__ import annotations

import getpass
import os
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime

from pydantic import ValidationError

from ledger import queries
from ledger.errors import ConcurrencyError
from ledger.events import POLICY_STREAM, NewEvent, PolicyChanged
from ledger.model import PolicySpec
from ledger.roles import session_role
from ledger.store import Ledger
from service.errors import BadInput, Forbidden

USER_ENV = "JOBTREE_USER"
GROUPS_ENV = "JOBTREE_GROUPS"


@dataclass(frozen=True, slots=True)
class Identity:
    user: str
    groups: frozenset[str]

    def principals(self) -> set[str]:
        return {self.user} | {f"group:{g}" for g in self.groups}

    def listed_in(self, names: list[str]) -> bool:
        return bool(self.principals() & set(names))


@dataclass(frozen=True, slots=True)
class Authenticated:
    """The caller as the database (shared ledger) or the operating system (embedded) knows it."""

    identity: Identity
    embedded: bool
    #: the session could rewrite the log anyway (superuser, owner of ``events``)
    trusted: bool = False

    @property
    def source(self) -> str:
        return "the operating system" if self.embedded else "the database (session_user)"


def os_user() -> str:
    return getpass.getuser()


def authenticate(ledger: Ledger, embedded: bool) -> Authenticated:
    """The authenticated caller of this invocation (one query on a shared ledger)."""
    if embedded:
        return Authenticated(Identity(os_user(), frozenset()), embedded=True)
    role = session_role(ledger.engine)
    return Authenticated(Identity(role.name, role.groups), embedded=False, trusted=role.trusted)


def may_impersonate(who: Identity, policy: Mapping[str, object] | None) -> bool:
    """Listed in the policy's ``impersonators`` or ``admins``."""
    if policy is None:
        return False
    names = [*_names(policy.get("impersonators")), *_names(policy.get("admins"))]
    return who.listed_in(names)


def _names(value: object) -> list[str]:
    return [str(v) for v in value] if isinstance(value, list) else []


def _groups(raw: str) -> frozenset[str]:
    return frozenset(g.strip() for g in raw.split(",") if g.strip())


def resolve_caller(
    ledger: Ledger, auth: Authenticated, env: Mapping[str, str] | None = None, as_user: str | None = None
) -> Identity:
    """The caller this invocation acts as: ``auth``'s identity, or the one ``--as`` (``as_user``, first) or
    ``$JOBTREE_USER``/``$JOBTREE_GROUPS`` name when ``auth`` may impersonate (else ``Forbidden``).

    In a trusted session with ``$JOBTREE_USER`` set, that user is the caller, and ``--as`` naming
    someone else is that user impersonating: only the policy's impersonators and admins may."""
    env = os.environ if env is None else env
    user = as_user or env.get(USER_ENV) or None
    raw_groups = env.get(GROUPS_ENV)
    groups = _groups(raw_groups) if raw_groups is not None else None
    me = auth.identity
    if (user is None or user == me.user) and (groups is None or groups == me.groups):
        return me
    policy = queries.current_policy(ledger.engine)
    declared = env.get(USER_ENV) or None
    if auth.trusted and as_user and declared and as_user != declared:
        _may_act_for_others(Identity(declared, groups or frozenset()), policy, as_user)
    allowed = auth.trusted or may_impersonate(me, policy) or (auth.embedded and policy is None)
    if not allowed:
        named = "--as" if as_user else f"${USER_ENV}"
        field = named if user not in (None, me.user) else f"${GROUPS_ENV}"
        raise Forbidden(
            field,
            f"{auth.source} authenticated you as {me.user}; acting as another user or group is honoured only for "
            "the policy's impersonators and admins (docs/identity.md). Leave it out to act as yourself",
        )
    acting = user or me.user
    if groups is None:
        groups = me.groups if acting == me.user else frozenset()
    return Identity(acting, groups)


def _may_act_for_others(who: Identity, policy: Mapping[str, object] | None, as_user: str) -> None:
    """In a trusted session ``$JOBTREE_USER`` is who calls; ``--as`` on top of it is that user impersonating."""
    if not may_impersonate(who, policy):
        raise Forbidden(
            "--as",
            f"you are {who.user} (${USER_ENV}); acting as {as_user} is honoured only for the policy's impersonators "
            "and admins (docs/identity.md). Leave --as out to act as yourself",
        )


def require_impersonator(ledger: Ledger, acting_as: str) -> None:
    """A worker that acts for others (the Kubernetes intake) must be allowed to: its session role is listed
    in the policy's ``impersonators`` or ``admins``, or could rewrite the log anyway."""
    auth = authenticate(ledger, embedded=False)
    policy = queries.current_policy(ledger.engine)
    if not (auth.trusted or may_impersonate(auth.identity, policy)):
        raise Forbidden(
            "--db",
            f"this worker acts as {acting_as}, but its database role {auth.identity.user} is not in the policy's "
            "impersonators or admins (docs/identity.md)",
        )


def bootstrap_admins(auth: Authenticated, caller: Identity) -> list[str]:
    """Whom a ledger without a policy makes its first admins when this caller writes first.

    The embedded data dir's OS user (and whom it chose to act as); on a shared ledger,
    only a session that could rewrite the log anyway (the owner who migrated it, or a
    superuser) — a researcher's role never bootstraps itself into an admin.
    """
    if auth.embedded:
        return list(dict.fromkeys([auth.identity.user, caller.user]))
    if auth.trusted:
        return [caller.user]
    return []


def record_first_admins(ledger: Ledger, admins: list[str], actor: str | None = None) -> bool:
    """A ledger without a policy gets one naming ``admins``; False (nothing written) when it has one."""
    try:
        checked = PolicySpec(admins=admins)  # the same rules as a Policy manifest's admins
    except ValidationError as exc:
        raise BadInput("--admin", exc.errors()[0]["msg"]) from None
    if queries.current_policy(ledger.engine) is not None:
        return False
    event = NewEvent(POLICY_STREAM, PolicyChanged(checked.dump()))
    now = datetime.now(UTC).replace(microsecond=0)
    try:
        ledger.append([event], actor=actor or session_role(ledger.engine).name, at=now, expected={POLICY_STREAM: 0})
    except ConcurrencyError:  # a racing first admin won
        return False
    return True


def record_creator(ledger: Ledger, env: Mapping[str, str] | None = None) -> None:
    """At an embedded data dir's creation: its OS user becomes its first admin (SPEC §10).

    With ``$JOBTREE_USER`` set at that moment (tests, the demo), the name it acts as is
    an admin too: the creator granted it, and could grant it later anyway. A racing
    creator's policy wins; this one is then dropped.
    """
    env = os.environ if env is None else env
    creator = os_user()
    record_first_admins(ledger, list(dict.fromkeys([creator, env.get(USER_ENV) or creator])), actor=creator)

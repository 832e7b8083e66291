"""Database commands: migrate, url, stop."""

from __future__ import annotations

from typing import Annotated

import typer

from cli import context
from cli.render import console
from ledger.embedded import (
    default_home,
    migrate,
    resolve_database_url,
    runtime_url,
    stop_embedded,
)
from service import daemon

app = typer.Typer(help="The ledger's database.", no_args_is_help=True)


@app.command("migrate")
def migrate_command(
    admin: Annotated[
        list[str] | None,
        typer.Option("--admin", help="On a ledger without a policy: its first admin (user or group:NAME; repeatable)"),
    ] = None,
    owner_url: Annotated[
        str | None, typer.Option("--owner-url", help="Migrate as this (owner) role instead of --db's")
    ] = None,
) -> None:
    """Create or upgrade the ledger schema (idempotent), as the database's owner role.

    Commands never migrate a shared ledger: they check its revision and refuse until this ran.
    """
    url, embedded = resolve_database_url(owner_url or context.options().db)
    if embedded:
        context.open_ledger()  # migrates as the embedded superuser; a new data dir records its creator
    else:
        migrate(url)
    console.print(f"migrated {'embedded ' if embedded else ''}database")
    if admin:
        recorded = _first_admins(owner_url, admin)
        console.print(f"first admins: {', '.join(admin)}" if recorded else "the ledger has a policy already: unchanged")


def _first_admins(owner_url: str | None, admin: list[str]) -> bool:
    """Record the first admins as ``--owner-url``'s role if given (its own engine, disposed here), else as --db's."""
    from service.identity import record_first_admins

    if not owner_url:
        return record_first_admins(context.open_ledger(), admin)
    from ledger.store import Ledger

    owner = Ledger.from_url(resolve_database_url(owner_url)[0])
    try:
        return record_first_admins(owner, admin)
    finally:
        owner.dispose()


@app.command("url")
def url() -> None:
    """Print the database URL in use (starting the embedded server if needed; there, its runtime role's)."""
    found, embedded = resolve_database_url(context.options().db)
    if embedded:
        context.open_ledger()  # the runtime role exists once the embedded database is migrated
        found = runtime_url(found)
    print(found)


@app.command("stop")
def stop() -> None:
    """Stop the embedded planner service and PostgreSQL server under $JOBTREE_HOME (alias: `jobtree down`)."""
    home = default_home()
    if daemon.stop(home):
        console.print("planner service stopped")
    stop_embedded(home)
    console.print("embedded database stopped")

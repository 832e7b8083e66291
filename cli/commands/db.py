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
    from service.identity import record_first_admins

    url, embedded = resolve_database_url(owner_url or context.GLOBALS.db)
    if embedded:
        context.open_ledger()  # migrates as the embedded superuser; a new data dir records its creator
    else:
        migrate(url)
    console.print(f"migrated {'embedded ' if embedded else ''}database")
    if admin:
        ledger = context.open_ledger(owner_url) if owner_url else context.open_ledger()
        recorded = record_first_admins(ledger, admin)
        console.print(f"first admins: {', '.join(admin)}" if recorded else "the ledger has a policy already: unchanged")


@app.command("url")
def url() -> None:
    """Print the database URL in use (starting the embedded server if needed; there, its runtime role's)."""
    found, embedded = resolve_database_url(context.GLOBALS.db)
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

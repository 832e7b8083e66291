"""Database commands: migrate, url, stop."""

from __future__ import annotations

import typer

from cli import context
from cli.render import console
from ledger.embedded import default_home, migrate, resolve_database_url, stop_embedded
from service import daemon

app = typer.Typer(help="The ledger's database.", no_args_is_help=True)


@app.command("migrate")
def migrate_command() -> None:
    """Create or upgrade the ledger schema (idempotent)."""
    url, embedded = resolve_database_url(context.GLOBALS.db)
    migrate(url)
    console.print(f"migrated {'embedded ' if embedded else ''}database")


@app.command("url")
def url() -> None:
    """Print the database URL in use (starting the embedded server if needed)."""
    found, _ = resolve_database_url(context.GLOBALS.db)
    print(found)


@app.command("stop")
def stop() -> None:
    """Stop the embedded planner service and PostgreSQL server under $JOBTREE_HOME (alias: `jobtree down`)."""
    home = default_home()
    if daemon.stop(home):
        console.print("planner service stopped")
    stop_embedded(home)
    console.print("embedded database stopped")

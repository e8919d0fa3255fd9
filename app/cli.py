"""The `record` command: the local stack, the database, the worker, uploads, infra plans."""

from __future__ import annotations

import typer

from app.client_cli import ask as ask_command
from app.client_cli import recordings_app
from app.client_cli import search as search_command
from app.client_cli import upload as upload_command
from app.ops.cli import backup_command, restore_command
from app.smoke import smoke as smoke_command

app = typer.Typer(
    name="record",
    help="Record: record, transcribe, search and chat with your meetings.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
)
db_app = typer.Typer(help="Database migrations, backups and restores.", no_args_is_help=True)
app.add_typer(db_app, name="db")
db_app.command("backup")(backup_command)
db_app.command("restore")(restore_command)
# The API client: these talk to a running server over HTTP, like any other client.
app.command("upload")(upload_command)
app.command("search")(search_command)
app.command("ask")(ask_command)
app.add_typer(recordings_app, name="recordings")
app.command("smoke")(smoke_command)


@app.command()
def up() -> None:
    """Run the whole local stack in the foreground, supervised (Ctrl-C stops it)."""
    from app.devstack.supervisor import run_stack

    raise typer.Exit(run_stack())


@app.command()
def worker(
    concurrency: int = typer.Option(None, help="Jobs run at once (default: WORKER_CONCURRENCY)"),
) -> None:
    """Run background jobs (the recording pipeline) until SIGTERM."""
    import asyncio

    from worker.main import run_worker

    asyncio.run(run_worker(concurrency=concurrency))


@app.command()
def reindex(
    adopt: bool = typer.Option(
        False, help="Record EMBEDDING_MODEL as the model of the vectors search uses now."
    ),
    force: bool = typer.Option(False, help="Re-embed even into the model search uses now."),
    abandon: bool = typer.Option(False, help="Stop the re-embed in progress; drop its table."),
    wait: bool = typer.Option(True, help="Follow the re-embed and switch when it is done."),
) -> None:
    """Re-embed every chunk into EMBEDDING_MODEL / EMBEDDING_DIMENSIONS in the background
    (worker jobs); search answers from the old vectors until the new ones are complete. Runs
    as the migrations' role (it creates and drops tables); run it again to resume."""
    import asyncio

    from app.settings import get_settings
    from worker.reindex_cli import run

    code = asyncio.run(run(get_settings(), adopt=adopt, force=force, abandon=abandon, wait=wait))
    raise typer.Exit(code)


@db_app.command("upgrade")
def db_upgrade(revision: str = "head") -> None:
    """Apply migrations up to REVISION (default: head); then record the embedding model of the
    vectors search uses, if it was never recorded (app/search/spaces.py)."""
    from app.kit.migrate import upgrade
    from app.search.spaces import record_model_if_unset
    from app.settings import get_settings

    settings = get_settings()
    upgrade(settings.database_url, revision)
    if revision == "head" and (model := record_model_if_unset(settings.database_url, settings)):
        typer.echo(f"recorded {model} as the model of the vectors search uses")


@db_app.command("downgrade")
def db_downgrade(revision: str) -> None:
    """Revert migrations down to REVISION ('base' reverts everything)."""
    from app.kit.migrate import downgrade
    from app.settings import get_settings

    downgrade(get_settings().database_url, revision)


@db_app.command("sql")
def db_sql(revision: str = "head") -> None:
    """Print the SQL the migrations run (for review and `squawk`)."""
    from app.kit.migrate import upgrade_sql

    typer.echo(upgrade_sql(revision))


SUBCOMMANDS = {"models": "app.ai.cli", "infra": "infra.cli"}


def _register_subcommands() -> None:
    # Each block registers its own sub-commands; their heavy imports happen inside commands.
    import importlib

    for name, module_name in SUBCOMMANDS.items():
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name != module_name:
                raise
            continue  # that block is not part of this install
        app.add_typer(module.app, name=name)


_register_subcommands()


def main() -> None:
    app()

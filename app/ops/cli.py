"""`record db backup --to DIR` and `record db restore --from DIR` (app/ops/backup.py does the work).

Both use the DATABASE_URL and the object store (STORAGE_BACKEND, S3_BUCKET, S3_PREFIX or
STATE_DIR/objects) of the environment they run in: run them where the migration Job runs, with
the owner's DATABASE_URL.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

_TO = typer.Option(..., "--to", help="A new (or empty) directory to write the backup into.")
_FROM = typer.Option(..., "--from", help="A directory `record db backup` wrote.")
_FORCE = typer.Option(
    False,
    "--force",
    help="Restore into a database that already has tables: those the backup holds are "
    "dropped and restored, any others stay.",
)


class RichSteps:
    """The backup's steps as rich progress bars, one per step, kept on screen when done."""

    def __init__(self, progress: Any) -> None:
        self.progress = progress
        self.task: Any = None

    def start(self, description: str, total: float | None = None) -> None:
        self.task = self.progress.add_task(description, total=total)

    def advance(self, amount: float = 1, description: str | None = None) -> None:
        if self.task is not None:
            self.progress.update(self.task, advance=amount, description=description)

    def done(self) -> None:
        if self.task is not None:
            total = self.progress.tasks[self.task].total
            self.progress.update(
                self.task, completed=total if total is not None else 1, total=total or 1
            )
            self.task = None


def _progress() -> Any:
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        SpinnerColumn,
        TextColumn,
        TimeElapsedColumn,
    )

    return Progress(
        SpinnerColumn(),
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
    )


def _fail(message: str) -> typer.Exit:
    from rich.console import Console

    Console(stderr=True).print(f"[bold red]Error:[/] {message}", highlight=False)
    return typer.Exit(1)


def backup_command(to: Path = _TO) -> None:
    """Back up the database (pg_dump, custom format) and the object store into DIR."""
    import anyio

    from app.kit.sentry import release
    from app.kit.storage import create_store
    from app.ops.backup import BackupError, backup
    from app.settings import get_settings

    settings = get_settings()
    try:
        with _progress() as progress:
            manifest = anyio.run(
                lambda: backup(
                    settings.database_url,
                    create_store(settings),
                    to,
                    release=release(settings),
                    steps=RichSteps(progress),
                )
            )
    except BackupError as exc:
        raise _fail(str(exc)) from None
    rows = sum(manifest.rows.values())
    typer.echo(
        f"Backed up {manifest.database} ({len(manifest.rows)} tables, {rows} rows, migration "
        f"{', '.join(manifest.migration)}) and {len(manifest.objects)} objects "
        f"({manifest.object_bytes} bytes) into {to}."
    )
    if manifest.objects_missing:
        typer.echo(
            f"{len(manifest.objects_missing)} recordings name an object the store does not have "
            f"(listed in {to / 'manifest.json'}, objects_missing)."
        )


def restore_command(source: Path = _FROM, force: bool = _FORCE) -> None:
    """Restore a backup into an empty database (made by the provisioner) and the object store."""
    import anyio

    from app.kit.storage import create_store
    from app.ops.backup import BackupError, restore
    from app.settings import get_settings

    settings = get_settings()
    try:
        with _progress() as progress:
            restored = anyio.run(
                lambda: restore(
                    settings.database_url,
                    create_store(settings),
                    source,
                    force=force,
                    steps=RichSteps(progress),
                )
            )
    except BackupError as exc:
        raise _fail(str(exc)) from None
    manifest = restored.manifest
    typer.echo(
        f"Restored the backup of {manifest.database} taken {manifest.started_at}: "
        f"{restored.tables} tables with the row counts it recorded, {restored.objects} objects."
    )
    if restored.upgrade_needed:
        typer.echo(
            f"The backup is at migration {', '.join(manifest.migration)}, this code at another: "
            "run `record db upgrade` before starting the API and the worker."
        )

"""``record reindex``: start or resume a re-embed, follow it with a progress bar, switch.

Interrupted (Ctrl-C, a lost terminal), the worker's jobs go on; running the command again
follows them from where they are and finishes (``worker/reindex.py``)."""

from __future__ import annotations

import asyncio

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from app.ai.clients import ModelClients
from app.kit.db import Conn
from app.search.spaces import Space
from app.settings import Settings
from worker import reindex


async def run(
    settings: Settings,
    *,
    adopt: bool = False,
    force: bool = False,
    abandon: bool = False,
    wait: bool = True,
    poll_seconds: float = 1.0,
    console: Console | None = None,
    models: ModelClients | None = None,
) -> int:
    """The command; returns its exit code. ``models``: the clients to embed the last chunks
    with (default: the settings', closed at the end)."""
    console = console or Console()
    own = models is None
    models = models or ModelClients.from_settings(settings)
    try:
        async with reindex.owner_connection(settings) as conn:
            return await _run(
                conn,
                settings,
                models,
                console,
                adopt=adopt,
                force=force,
                abandon=abandon,
                wait=wait,
                poll_seconds=poll_seconds,
            )
    except reindex.ReindexError as exc:
        console.print(f"[red]{exc}[/red]")
        return 1
    finally:
        if own:
            await models.aclose()


async def _run(
    conn: Conn,
    settings: Settings,
    models: ModelClients,
    console: Console,
    *,
    adopt: bool,
    force: bool,
    abandon: bool,
    wait: bool,
    poll_seconds: float,
) -> int:
    if abandon:
        gone = await reindex.abandon(conn)
        console.print(f"Abandoned; dropped {gone}." if gone else "No re-embed in progress.")
        return 0
    if adopt:
        adopted = await reindex.adopt(conn, settings)
        console.print(
            f"Generation {adopted.generation} recorded as {adopted.model}:{adopted.dimensions}."
        )
        return 0
    space = await reindex.begin(conn, settings, force=force, models=models)
    if space is None:
        dropped = await reindex.drop_retired(conn)
        console.print(
            f"Search already uses {settings.embedding_model}:{settings.embedding_dimensions}."
            + (f" Dropped {', '.join(dropped)}." if dropped else "")
        )
        return 0
    queued = await reindex.defer_batches(conn, space)
    console.print(
        f"Re-embedding into {space.model}:{space.dimensions} (generation {space.generation}, "
        f"table {space.relation}); {queued} jobs queued for the workers."
    )
    if not wait:
        console.print("Run `record reindex` again to follow it and switch when it is done.")
        return 0
    await follow(conn, space, console, poll_seconds=poll_seconds)
    console.print("Every batch embedded: catching up, building the index, switching...")
    dropped = await reindex.finish(conn, space, models, settings)
    console.print(
        f"Search now uses generation {space.generation}."
        + (f" Dropped {', '.join(dropped)}." if dropped else "")
    )
    return 0


async def follow(conn: Conn, space: Space, console: Console, *, poll_seconds: float) -> None:
    """A progress bar over the batches' chunks until every batch is done."""
    columns = (
        TextColumn("[bold]re-embedding"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("chunks"),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=console, transient=False) as bar:
        task = bar.add_task("re-embed", total=None)
        while True:
            progress = await reindex.progress(conn, space)
            bar.update(task, total=progress.chunks, completed=progress.done)
            if progress.remaining <= 0:
                return
            await asyncio.sleep(poll_seconds)

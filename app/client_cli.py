"""The HTTP API from a terminal: ``record upload``, ``record recordings list``, ``record search``
and ``record ask``.

These commands are a client like any other: they talk to a running server (``make up``, or
any deployment) with an API key and never touch the database or storage themselves. Which
server and which key: ``RECORD_API_URL`` / ``RECORD_API_KEY``, else the ``.record/dev.env``
that ``make up`` writes.

Uploads stream from disk: the multipart body is generated chunk by chunk, so a 2 GiB
recording costs a megabyte of memory, and the progress bar counts the bytes as they are sent.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

if TYPE_CHECKING:
    import httpx
    from rich.console import Console

DEFAULT_API_URL = "http://127.0.0.1:8000"
# The pipeline's steps, in order (DESIGN.md: uploaded -> transcribing -> embedding -> ready).
STEPS = ("uploaded", "transcribing", "embedding", "ready")
JOB_GAVE_UP = {"failed", "cancelled", "aborted"}
MAX_PAGE = 100  # the API's largest page

recordings_app = typer.Typer(help="Recordings on a Record server.", no_args_is_help=True)


class ClientSettings(BaseSettings):
    """Where the client finds its server. Not the server's ``Settings``: a laptop running
    ``record upload`` against production has no DATABASE_URL, and needs none."""

    model_config = SettingsConfigDict(env_prefix="RECORD_", extra="ignore", populate_by_name=True)

    api_url: str | None = None
    api_key: SecretStr | None = None
    # The same variable the server's settings use, so `make up` and the client agree.
    state_dir: Path = Field(default=Path(".record"), validation_alias="STATE_DIR")


class CliError(Exception):
    """A failure the user can act on: printed as one line, exit status 1, no traceback."""


@dataclass(frozen=True)
class ApiConfig:
    url: str
    key: str


def load_config() -> ApiConfig:
    from app.devstack.supervisor import read_env_file

    env = ClientSettings()
    dev_env = env.state_dir / "dev.env"
    from_file = read_env_file(dev_env)
    url = env.api_url or from_file.get("RECORD_API_URL") or DEFAULT_API_URL
    key = (env.api_key.get_secret_value() if env.api_key else "") or from_file.get(
        "RECORD_API_KEY", ""
    )
    if not key:
        raise CliError(
            f"no API key: run `make up` (it writes {dev_env}) or set RECORD_API_KEY "
            "(create one with POST /api/orgs/{org_id}/api-keys)"
        )
    return ApiConfig(url=url.rstrip("/"), key=key)


def problem_message(response: httpx.Response) -> str:
    """One line from an RFC 9457 problem (or whatever the server sent instead)."""
    try:
        body = response.json()
    except ValueError:
        body = None
    if not isinstance(body, dict):
        return f"HTTP {response.status_code}: {response.text[:200] or response.reason_phrase}"
    detail = str(body.get("detail") or body.get("title") or response.reason_phrase)
    fields = [
        f"{'.'.join(str(p) for p in e.get('loc', []))}: {e.get('msg')}"
        for e in body.get("errors") or []
        if isinstance(e, dict)
    ]
    if fields:
        detail = f"{detail} ({'; '.join(fields)})"
    if response.status_code == 401:
        return (
            f"the server refused the API key: {detail} Set RECORD_API_KEY to a valid key "
            "(or run `make up` for the demo org's key)."
        )
    return f"HTTP {response.status_code}: {detail}"


class Api:
    """A thin httpx client that turns transport errors and problems into ``CliError``."""

    def __init__(self, config: ApiConfig) -> None:
        import httpx

        self.config = config
        self.http = httpx.Client(
            base_url=config.url,
            headers={"Authorization": f"Bearer {config.key}", "User-Agent": "record-cli"},
            # No overall limit: a large upload takes as long as it takes; each read or write
            # that stalls for a minute fails.
            timeout=httpx.Timeout(60.0, connect=10.0),
        )

    def __enter__(self) -> Api:
        return self

    def __exit__(self, *exc: object) -> None:
        self.http.close()

    def call(self, method: str, path: str, *, retry_limited: bool = True, **kwargs: Any) -> Any:
        import httpx

        while True:
            try:
                response = self.http.request(method, path, **kwargs)
            except httpx.TransportError as exc:
                raise CliError(
                    f"cannot reach {self.config.url} ({exc.__class__.__name__}: {exc}); is the "
                    "server running? Start it with `make up`, or set RECORD_API_URL."
                ) from exc
            if response.status_code == 429 and retry_limited:
                # Polling shares the caller's API rate limit: wait as told, then go on.
                time.sleep(min(float(response.headers.get("retry-after", "1")), 60.0))
                continue
            if response.is_error:
                raise CliError(problem_message(response))
            return response.json()


# --- upload ------------------------------------------------------------------------------------


def _check_local_file(path: Path) -> None:
    """Refuse locally what the server would refuse after the whole upload."""
    from app.kit.security.files import ACCEPTED, extension_of

    if extension_of(path.name) is None:
        raise CliError(f"{path.name}: not an accepted recording; upload one of: {ACCEPTED}.")
    if path.stat().st_size == 0:
        raise CliError(f"{path.name}: the file is empty.")


def _console() -> Console:
    from rich.console import Console

    return Console(stderr=True, highlight=False)


def _upload_one(api: Api, path: Path, title: str | None, console: Console) -> dict[str, Any]:
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    size = path.stat().st_size
    fields = {"title": title} if title is not None else {}
    with (
        Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            DownloadColumn(),
            TransferSpeedColumn(),
            TimeRemainingColumn(),
            console=console,
            transient=False,
        ) as progress,
        path.open("rb") as handle,
    ):
        task = progress.add_task(path.name, total=size)
        # httpx streams the file and sends its length (not chunked): the server refuses an
        # oversized upload before reading it, and proxies that need a length get one.
        reader = progress.wrap_file(handle, total=size, task_id=task)
        result: dict[str, Any] = api.call(
            "POST",
            "/api/recordings",
            files={"file": (path.name, reader, "application/octet-stream")},
            data=fields,
            # Never resent by itself: the file has been read once.
            retry_limited=False,
        )
    return result


def upload(
    files: Annotated[
        list[Path],
        typer.Argument(
            exists=True, dir_okay=False, readable=True, help="Recordings to upload (audio/video)."
        ),
    ],
    title: Annotated[
        str | None, typer.Option("--title", "-t", help="Title (default: the file's name).")
    ] = None,
    wait: Annotated[
        bool, typer.Option("--wait", "-w", help="Follow processing until ready or failed.")
    ] = False,
    timeout: Annotated[
        float, typer.Option(help="With --wait: give up after this many seconds.")
    ] = 3600.0,
    poll_interval: Annotated[float, typer.Option(hidden=True)] = 2.0,
) -> None:
    """Upload recordings to the server; with --wait, follow them until they are ready."""
    console = _console()
    try:
        if title is not None and len(files) > 1:
            raise CliError("--title names one recording: give a single FILE with it.")
        for path in files:
            _check_local_file(path)
        config = load_config()
        accepted: list[dict[str, Any]] = []
        with Api(config) as api:
            for path in files:
                result = _upload_one(api, path, title, console)
                recording = result["recording"]
                accepted.append(result)
                typer.echo(
                    f"{path.name}: recording {recording['id']} (job {result['job_id']}), "
                    f"{recording['status']}"
                )
            if wait:
                failures = follow_jobs(api, accepted, console, timeout, poll_interval)
                if failures:
                    for line in failures:
                        console.print(f"[red]✗[/red] {line}")
                    raise typer.Exit(1)
    except CliError as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(1) from None


def follow_jobs(
    api: Api,
    accepted: list[dict[str, Any]],
    console: Console,
    timeout: float,
    poll_interval: float,
) -> list[str]:
    """Poll each job until its recording is ready or failed; returns the failures."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    failures: list[str] = []
    # Polling counts against the caller's API rate limit (100/min by default): many
    # recordings are polled less often each.
    interval = max(poll_interval, 0.7 * len(accepted))
    deadline = time.monotonic() + timeout
    with Progress(
        TextColumn("[bold]{task.fields[name]}"),
        BarColumn(),
        TextColumn("{task.description}"),
        TimeElapsedColumn(),
        console=console,
    ) as progress:
        tasks = {
            item["job_id"]: progress.add_task(
                "uploaded", total=len(STEPS) - 1, name=item["recording"]["title"]
            )
            for item in accepted
        }
        pending = {item["job_id"]: item["recording"] for item in accepted}
        while pending:
            for job_id, recording in list(pending.items()):
                job = api.call("GET", f"/api/jobs/{job_id}")
                status = job["recording_status"]
                task = tasks[job_id]
                if status == "ready":
                    progress.update(task, completed=len(STEPS) - 1, description="[green]ready")
                    del pending[job_id]
                elif status == "failed" or job["status"] in JOB_GAVE_UP:
                    reason = job.get("error") or f"job {job['status']}"
                    progress.update(task, description=f"[red]failed: {reason}")
                    failures.append(f"{recording['title']} ({recording['id']}): failed: {reason}")
                    del pending[job_id]
                else:
                    step = STEPS.index(status) if status in STEPS else 0
                    retry = f" (attempt {job['attempts'] + 1})" if job["attempts"] else ""
                    progress.update(task, completed=step, description=f"{status}{retry}")
            if pending and time.monotonic() > deadline:
                for recording in pending.values():
                    failures.append(
                        f"{recording['title']} ({recording['id']}): not ready after "
                        f"{timeout:g} s; follow it with `record recordings list`."
                    )
                break
            if pending:
                time.sleep(interval)
    return failures


# --- recordings list ---------------------------------------------------------------------------


def _size(value: int | None) -> str:
    if value is None:
        return "-"
    size = float(value)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return "-"  # pragma: no cover - the loop always returns


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    minutes, secs = divmod(round(seconds), 60)
    return f"{minutes}:{secs:02d}"


@recordings_app.command("list")
def list_recordings(
    status: Annotated[
        str | None,
        typer.Option(help="Only this status: uploaded, transcribing, embedding, ready, failed."),
    ] = None,
    limit: Annotated[int, typer.Option(min=1, help="Show at most this many.")] = 20,
    page_size: Annotated[int, typer.Option(hidden=True, min=1, max=MAX_PAGE)] = MAX_PAGE,
) -> None:
    """The org's recordings, newest first."""
    from rich.table import Table

    console = _console()
    try:
        if status is not None and status not in {*STEPS, "failed"}:
            raise CliError(f"--status must be one of: {', '.join((*STEPS, 'failed'))}.")
        items: list[dict[str, Any]] = []
        cursor: str | None = None
        with Api(load_config()) as api:
            # Follow the cursor until enough rows are in (or there are no more).
            while len(items) < limit:
                params: dict[str, Any] = {"limit": min(page_size, limit - len(items))}
                if status:
                    params["status"] = status
                if cursor:
                    params["cursor"] = cursor
                page = api.call("GET", "/api/recordings", params=params)
                items.extend(page["items"])
                cursor = page["next_cursor"]
                if not cursor:
                    break
    except CliError as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(1) from None
    if not items:
        typer.echo("No recordings." if status is None else f"No {status} recordings.")
        return
    table = Table(show_edge=False)
    table.add_column("ID", no_wrap=True)  # whole, to copy into the next command
    table.add_column("Title", min_width=12, overflow="fold")
    for column in ("Status", "Size", "Duration", "Created"):
        table.add_column(column, no_wrap=True)
    colours = {"ready": "green", "failed": "red"}
    for item in items:
        state = item["status"]
        if item.get("error"):
            state = f"{state}: {item['error']}"
        colour = colours.get(item["status"])
        table.add_row(
            item["id"],
            item["title"],
            f"[{colour}]{state}[/{colour}]" if colour else state,
            _size(item.get("size_bytes")),
            _duration(item.get("duration_seconds")),
            item["created_at"][:16].replace("T", " "),
        )
    from rich.console import Console

    out = Console(highlight=False)
    if not out.is_terminal:
        # Piped or redirected: whole rows for grep and awk, not a table squeezed to 80 columns.
        out.width = 200
    out.print(table)
    if cursor:
        console.print(f"(more: show them with --limit {limit + MAX_PAGE})")


# --- search and ask ----------------------------------------------------------------------------


def _moment(start: float, end: float) -> str:
    return f"{_duration(start)}-{_duration(end)}"


def search(
    query: Annotated[str, typer.Argument(help="What to look for, in your words.")],
    mode: Annotated[
        str, typer.Option(help="hybrid (meaning and words), vector (meaning) or keyword.")
    ] = "hybrid",
    limit: Annotated[int, typer.Option(min=1, max=50, help="Show at most this many.")] = 10,
    recording: Annotated[
        list[str] | None, typer.Option(help="Search only this recording (repeatable).")
    ] = None,
) -> None:
    """Search the org's recordings: the passages that match, and when they were said."""
    from rich.table import Table

    console = _console()
    body: dict[str, Any] = {"query": query, "mode": mode, "limit": limit}
    if recording:
        body["recording_ids"] = recording
    try:
        with Api(load_config()) as api:
            results = api.call("POST", "/api/search", json=body)["results"]
    except CliError as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(1) from None
    if not results:
        typer.echo("Nothing found.")
        return
    table = Table(show_edge=False)
    table.add_column("Recording", overflow="fold")
    table.add_column("At", no_wrap=True)
    table.add_column("Passage", overflow="fold")
    table.add_column("Score", no_wrap=True, justify="right")
    for hit in results:
        table.add_row(
            hit["recording_title"],
            _moment(hit["start"], hit["end"]),
            hit["text"],
            f"{hit['score']:.3f}",
        )
    console.print(table)


def ask(
    question: Annotated[str, typer.Argument(help="A question about the org's recordings.")],
    conversation: Annotated[
        str | None,
        typer.Option(help="Continue this conversation (its id, printed after each answer)."),
    ] = None,
    recording: Annotated[
        list[str] | None, typer.Option(help="Answer from this recording only (repeatable).")
    ] = None,
) -> None:
    """Ask the org's recordings a question: the answer streams as it is written, then the
    moments it cites."""
    import httpx
    from httpx_sse import connect_sse

    console = _console()
    body: dict[str, Any] = {"message": question}
    if conversation:
        body["conversation_id"] = conversation
    if recording:
        body["recording_ids"] = recording
    citations: list[dict[str, Any]] = []
    conversation_id = ""
    try:
        with (
            Api(load_config()) as api,
            connect_sse(api.http, "POST", "/api/chat/stream", json=body) as source,
        ):
            response = source.response
            if response.is_error:
                response.read()
                raise CliError(problem_message(response))
            for event in source.iter_sse():
                name, data = event.event, event.json()
                if name == "conversation":
                    conversation_id = data["conversation_id"]
                elif name == "token":
                    console.print(data["text"], end="", markup=False, highlight=False)
                elif name == "citations":
                    citations = data["citations"]
                elif name == "error":
                    raise CliError(f"HTTP {data['status']}: {data['detail']}")
    except httpx.TransportError as exc:
        console.print(f"[red]error:[/red] cannot reach the server ({exc}); is it running?")
        raise typer.Exit(1) from None
    except CliError as exc:
        console.print()
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(1) from None
    console.print()
    for citation in citations:
        console.print(
            f"[bold][{citation['number']}][/bold] {citation['recording_title']} "
            f"{_moment(citation['start'], citation['end'])}: {citation['text']}",
            markup=True,
            highlight=False,
        )
    if conversation_id:
        console.print(f"[dim]follow up: record ask --conversation {conversation_id} ...[/dim]")

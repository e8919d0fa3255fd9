"""`record models ...`: run the local OpenAI-compatible model server.

Imports nothing heavy at module level: `record --help` must not pay for torch.
"""

from __future__ import annotations

import ipaddress
import os

import typer

app = typer.Typer(
    help="The local OpenAI-compatible model server (embeddings, transcription, extractive chat).",
    no_args_is_help=True,
)


@app.callback()
def models() -> None:
    """The local OpenAI-compatible model server."""
    # A callback keeps `serve` a sub-command even while it is the only one.


@app.command()
def serve(
    host: str = typer.Option("127.0.0.1", help="Interface to listen on."),
    port: int = typer.Option(8100, help="Port to listen on."),
    workers: int = typer.Option(
        1, min=1, help="Processes; each loads its own copy of the models (~400 MB)."
    ),
    log_level: str = typer.Option("info", help="uvicorn log level."),
) -> None:
    """Serve /v1/embeddings, /v1/audio/transcriptions and /v1/chat/completions."""
    if not _is_loopback(host) and not os.environ.get("MODEL_SERVER_API_KEY"):
        typer.echo(
            f"Refusing to listen on {host} without MODEL_SERVER_API_KEY: anyone who can reach "
            "that address could run the models. Set MODEL_SERVER_API_KEY to a long random "
            "secret (clients send it as their OPENAI_API_KEY), or listen on 127.0.0.1.",
            err=True,
        )
        raise typer.Exit(2)
    import uvicorn

    # Set, not read: worker processes inherit these, so no model library reaches for a hub.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    uvicorn.run(
        "app.ai.server:create_model_app",
        factory=True,
        host=host,
        port=port,
        workers=workers,
        log_level=log_level,
        # Each request holds a model for seconds; a short keep-alive frees sockets sooner.
        timeout_keep_alive=5,
    )


def _is_loopback(host: str) -> bool:
    """Whether ``host`` is reachable from this machine only (127.0.0.0/8, ::1, localhost)."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # any other name may resolve to a public interface

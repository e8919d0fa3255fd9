"""``record infra ...``: offline work on the Pulumi program (no cloud, no Pulumi CLI)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(help="Infrastructure (Pulumi): offline plans of a stack.", no_args_is_help=True)


@app.callback()
def infra() -> None:
    """Infrastructure (Pulumi): offline plans of a stack."""


@app.command()
def plan(
    stack: Annotated[str, typer.Option(help="Stack name: dev, staging, prod or preview.")],
    out: Annotated[Path, typer.Option(help="Directory for resources.json and manifests/.")],
) -> None:
    """Render STACK offline under Pulumi mocks into OUT."""
    from infra.config import ConfigError
    from infra.plan import OFFLINE_NOTE, PlanError, render, write

    try:
        result = render(stack)
    except (ConfigError, PlanError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    resources, manifests = write(result, out)
    typer.echo(OFFLINE_NOTE)
    typer.echo(f"{len(result.resources)} resources -> {resources}")
    typer.echo(f"{len(result.manifests)} Kubernetes objects -> {manifests}/")

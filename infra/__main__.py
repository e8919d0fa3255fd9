"""Pulumi entry point (``pulumi up`` runs this): read the stack's config, declare the blocks."""

from infra import config
from infra.stack import build

build(config.load())

"""The URNs a stack's resources would have under the Pulumi engine, and the old URNs their
aliases claim, from a render under mocks.

The mock monitor names a resource after its immediate parent's type only, and its root-stack
children after ``pulumi:pulumi:Stack``; the engine qualifies a type by the parent's whole chain
and leaves the root stack out. What decides whether ``pulumi up`` moves a resource or replaces
it is the engine's URN, so that is what is computed here, from what each resource registered:
its type, name, parent and alias specs.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from pulumi.runtime import mocks

ROOT_TYPE = "pulumi:pulumi:Stack"


@dataclass(frozen=True)
class AliasSpec:
    name: str
    type: str
    parent_urn: str
    no_parent: bool


@dataclass(frozen=True)
class Registration:
    type: str
    name: str
    # The mock monitor's URNs (this resource's and its parent's): keys, not the engine's.
    mock_urn: str
    parent: str
    aliases: tuple[AliasSpec, ...]


@contextmanager
def recording(into: list[Registration]) -> Iterator[None]:
    """Appends every resource registered while inside to ``into``."""
    original = mocks.MockMonitor.RegisterResource

    def record(self: mocks.MockMonitor, request: Any) -> Any:
        response = original(self, request)
        into.append(
            Registration(
                type=request.type,
                name=request.name,
                mock_urn=response.urn,
                parent=request.parent,
                aliases=tuple(
                    AliasSpec(a.spec.name, a.spec.type, a.spec.parentUrn, a.spec.noParent)
                    for a in request.aliases
                    if a.HasField("spec")
                ),
            )
        )
        return response

    mocks.MockMonitor.RegisterResource = record  # type: ignore[method-assign]  # test-only spy
    try:
        yield
    finally:
        mocks.MockMonitor.RegisterResource = original  # type: ignore[method-assign]


class EngineUrns:
    def __init__(self, stack: str, project: str, registrations: list[Registration]) -> None:
        self.stack, self.project = stack, project
        self.by_mock_urn = {r.mock_urn: r for r in registrations}
        self.registrations = registrations

    def qualified_type(self, registration: Registration) -> str:
        parent = self.by_mock_urn.get(registration.parent)
        if parent is None or parent.type == ROOT_TYPE:
            return registration.type
        return f"{self.qualified_type(parent)}${registration.type}"

    def urn(self, registration: Registration) -> str:
        return self._urn(self.qualified_type(registration), registration.name)

    def _urn(self, qualified_type: str, name: str) -> str:
        return f"urn:pulumi:{self.stack}::{self.project}::{qualified_type}::{name}"

    def _parent_type(self, parent_urn: str) -> str | None:
        """The qualified type of the resource at ``parent_urn`` (a mock URN of a resource of
        this render, or an engine URN written by hand, such as pulumi.create_urn's)."""
        parent = self.by_mock_urn.get(parent_urn)
        if parent is not None:
            return None if parent.type == ROOT_TYPE else self.qualified_type(parent)
        return parent_urn.split("::")[2]

    def alias_urns(self, registration: Registration) -> list[str]:
        out = []
        for alias in registration.aliases:
            name = alias.name or registration.name
            typ = alias.type or registration.type
            if alias.no_parent:
                parent_type = None
            elif alias.parent_urn:
                parent_type = self._parent_type(alias.parent_urn)
            else:
                parent = self.by_mock_urn.get(registration.parent)
                parent_type = (
                    None
                    if parent is None or parent.type == ROOT_TYPE
                    else self.qualified_type(parent)
                )
            out.append(self._urn(f"{parent_type}${typ}" if parent_type else typ, name))
        return out

    def claimed(self) -> set[str]:
        """Every URN a resource of this render answers to: its own and its aliases'."""
        urns = set()
        for registration in self.registrations:
            if registration.type == ROOT_TYPE:
                continue
            urns.add(self.urn(registration))
            urns.update(self.alias_urns(registration))
        return urns

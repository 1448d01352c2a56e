"""MLflow tracking against a real `mlflow server` on loopback with an SQLite backend: a site run's
parameters, metrics and files are logged and its registry version is mirrored with aliases."""

from __future__ import annotations

import gc
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from fhir_mappings import sepsis_feature_spec
from models import Calibration, ModelRegistry, register_version, train_booster
from models.tracking import flat_metrics, log_site_run, mirror_active, registered_name

mlflow = pytest.importorskip("mlflow")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    root = tmp_path_factory.mktemp("mlflow")
    port = _free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port)]
        + [
            "--backend-store-uri",
            f"sqlite:///{root / 'mlflow.db'}",
            "--artifacts-destination",
            str(root / "art"),
        ]
        + ["--workers", "1"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "MLFLOW_HOST_ALLOW_ALL": "1"},
    )
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(600):  # wait for it to answer (start-up is slow on a busy machine)
            if server.poll() is not None:
                pytest.fail("mlflow server exited at start")
            try:
                if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        else:
            pytest.fail("mlflow server did not answer")
        yield url
    finally:
        server.terminate()
        server.wait(timeout=30)


# mlflow reads the git commit through GitPython, which leaves a `git cat-file` child to the garbage
# collector (a ResourceWarning of GitPython's, not ours): collected inside the test, where it is ignored.
@pytest.mark.filterwarnings("ignore::ResourceWarning")
def test_a_site_run_is_logged_and_its_version_mirrored(mlflow_server: str, tmp_path: Path) -> None:
    spec = sepsis_feature_spec()
    rng = np.random.default_rng(0)
    x = rng.normal(size=(400, len(spec.names))).astype(np.float32)
    y = (x[:, 0] > 0.5).astype(np.int8)
    trained = train_booster(x, y, params={"objective": "binary:logistic"}, num_boost_round=3, progress=False)
    registry = ModelRegistry(tmp_path / "registry")
    manifest, folder = register_version(
        registry,
        name="sepsis",
        title="t",
        outcome="o",
        horizon_hours=6.0,
        spec=spec,
        model_bytes=trained.model_bytes(),
        data_path="site",
        data_label="site",
        data_sha256="0" * 64,
        rows=400,
        patients=40,
        split="s",
        params=trained.params,
        num_boost_round=3,
        threshold=0.5,
        risk_bands={},
        calibration=Calibration(),
        metrics={},
        device="cpu",
        seed=1,
        activate=False,
        parent_version="7",
        created_by="cds site adapt",
    )
    comparison = {
        "models": {
            "base": {"auroc": {"estimate": 0.7, "ci95_low": 0.6, "ci95_high": 0.8}, "auprc": 0.1},
            "adapted": {"auroc": {"estimate": 0.75, "ci95_low": 0.65, "ci95_high": 0.85}},
        }
    }
    report = tmp_path / "report"
    report.mkdir()
    (report / "comparison.md").write_text("| model |\n")
    run_id, mlflow_version = log_site_run(
        mlflow_server, manifest, folder, comparison=comparison, params={"seed": 1}, report_dir=report
    )
    client = mlflow.tracking.MlflowClient(mlflow_server)
    run = client.get_run(run_id)
    assert run.data.params["seed"] == "1"
    assert run.data.metrics == flat_metrics(comparison) and run.data.metrics["adapted.auroc.estimate"] == 0.75
    assert run.data.tags["cds.parent_version"] == "7"
    files = {f.path for f in client.list_artifacts(run_id, "model")} | {
        f.path for f in client.list_artifacts(run_id, "report")
    }
    assert {"model/manifest.json", "model/model.ubj", "report/comparison.md"} <= files
    name = registered_name("sepsis")
    assert client.get_model_version_by_alias(name, "candidate").version == mlflow_version
    assert client.get_model_version(name, mlflow_version).tags["cds.version"] == manifest.version
    assert mirror_active(mlflow_server, "sepsis", manifest.version) == mlflow_version
    assert client.get_model_version_by_alias(name, "active").version == mlflow_version
    assert mirror_active(mlflow_server, "sepsis", "999") is None
    gc.collect()

"""MLflow tracking for site runs, when a tracking URI is configured (`CDS_MLFLOW_TRACKING_URI`):
each recalibration, adaptation or retraining logs its parameters, held-out metrics and report
files, and its registry version is mirrored in MLflow's model registry with the alias `candidate`
(the served version gets `active` through `mirror_active`). Our registry stays the source of
truth; MLflow is a view of it. Needs the optional extra `cds-ml[mlflow]`."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .errors import ModelError
from .manifest import ModelManifest

__all__ = ["flat_metrics", "log_site_run", "mirror_active", "registered_name"]


def _mlflow() -> Any:
    try:
        import mlflow
    except ImportError as exc:
        raise ModelError(
            "CDS_MLFLOW_TRACKING_URI is set but mlflow is not installed: pip install 'cds-ml[mlflow]'"
        ) from exc
    return mlflow


def flat_metrics(comparison: Mapping[str, Any]) -> dict[str, float]:
    """`<model>.<metric>` for each model in a held-out comparison (estimates and interval ends)."""
    out: dict[str, float] = {}
    for name, m in comparison.get("models", {}).items():
        for metric in ("auroc", "utility"):
            value = m.get(metric)
            if isinstance(value, Mapping):
                for key in ("estimate", "ci95_low", "ci95_high"):
                    if value.get(key) is not None:
                        out[f"{name}.{metric}.{key}"] = float(value[key])
        if m.get("auprc") is not None:
            out[f"{name}.auprc"] = float(m["auprc"])
    return out


def registered_name(model: str) -> str:
    return f"cds-{model}"


def log_site_run(
    tracking_uri: str,
    manifest: ModelManifest,
    version_dir: Path,
    *,
    comparison: Mapping[str, Any],
    params: Mapping[str, Any],
    report_dir: Path | None = None,
    experiment: str = "cds-site",
) -> tuple[str, str]:
    """Log one run and mirror `manifest`'s version; returns (run id, MLflow model version)."""
    mlflow = _mlflow()
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_experiment(experiment)
    with mlflow.start_run(run_name=f"{manifest.created_by} -> {manifest.name} v{manifest.version}") as run:
        mlflow.log_params({k: str(v)[:500] for k, v in params.items()})
        mlflow.log_metrics(flat_metrics(comparison))
        mlflow.set_tags(
            {
                "cds.model": manifest.name,
                "cds.version": manifest.version,
                "cds.parent_version": manifest.parent_version or "",
                "cds.created_by": manifest.created_by,
            }
        )
        if report_dir is not None and report_dir.is_dir():
            mlflow.log_artifacts(str(report_dir), artifact_path="report")
        mlflow.log_artifacts(str(version_dir), artifact_path="model")
        run_id = str(run.info.run_id)
        source = f"{run.info.artifact_uri}/model"
    client = MlflowClient(tracking_uri)
    name = registered_name(manifest.name)
    try:
        client.create_registered_model(name)
    except MlflowException:
        pass  # already there
    mv = client.create_model_version(
        name, source, run_id=run_id, tags={"cds.version": manifest.version, "cds.status": "candidate"}
    )
    client.set_registered_model_alias(name, "candidate", mv.version)
    return run_id, str(mv.version)


def mirror_active(tracking_uri: str, model: str, version: str) -> str | None:
    """Point the `active` alias at the MLflow version mirroring our `version`; None if not mirrored."""
    _mlflow()
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri)
    name = registered_name(model)
    for mv in client.search_model_versions(f"name = '{name}'"):
        if mv.tags.get("cds.version") == version:
            client.set_registered_model_alias(name, "active", mv.version)
            return str(mv.version)
    return None

"""deploy/: the Grafana dashboard, the alert rules, the Kubernetes manifests and the compose file
parse, and every expression names a metric the server exports (with labels it has)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from cds import Settings
from cds.metrics import EXPORTED, Metrics

DEPLOY = Path(__file__).resolve().parents[1] / "deploy"
METRIC = re.compile(r"\bcds_[a-z0-9_]+\b")
SELECTOR = re.compile(r"\b(cds_[a-z0-9_]+)\{([^}]*)\}")
GROUPING = re.compile(r"\b(?:by|without)\s*\(([^)]*)\)")


def _exported() -> dict[str, set[str]]:
    """Sample names the server's registry exposes -> their label names."""
    metrics = Metrics()
    labelled = {m._name: set(m._labelnames) for m in vars(metrics).values() if hasattr(m, "_labelnames")}
    names: dict[str, set[str]] = {}
    for family in metrics.registry.collect():
        labels = labelled[family.name]
        suffixes = {
            "counter": ("_total",),
            "histogram": ("_bucket", "_count", "_sum"),
            "gauge": ("",),
        }[family.type]
        for suffix in suffixes:
            names[family.name + suffix] = labels | ({"le"} if suffix == "_bucket" else set())
    return names


def _expressions() -> list[tuple[str, str]]:
    found = []
    dashboard = json.loads((DEPLOY / "grafana" / "dashboards" / "cds.json").read_text())
    for panel in dashboard["panels"]:
        for target in panel["targets"]:
            found.append((f"dashboard: {panel['title']}", target["expr"]))
    rules = yaml.safe_load((DEPLOY / "prometheus" / "alerts.yml").read_text())
    for group in rules["groups"]:
        for rule in group["rules"]:
            found.append((f"alert: {rule['alert']}", rule["expr"]))
    return found


def test_every_exported_family_is_documented_and_registered() -> None:
    registered = {n for n in _exported() if not n.endswith(("_bucket", "_count", "_sum"))} | {
        "cds_hook_seconds"
    }
    assert registered == set(EXPORTED)


@pytest.mark.parametrize(("where", "expr"), _expressions())
def test_each_expression_names_only_exported_metrics_and_their_labels(where: str, expr: str) -> None:
    exported = _exported()
    names = set(METRIC.findall(expr))
    assert names, f"{where}: no cds_ metric in {expr!r}"
    assert names <= set(exported), f"{where}: {names - set(exported)} not exported"
    for name, inner in SELECTOR.findall(expr):
        used = {part.split("=")[0].strip().rstrip("!~") for part in inner.split(",") if part.strip()}
        assert used <= exported[name], f"{where}: {name} has no label {used - exported[name]}"
    allowed = set().union(*(exported[n] for n in names))
    for group in GROUPING.findall(expr):
        used = {label.strip() for label in group.split(",") if label.strip()}
        assert used <= allowed, f"{where}: grouping by {used - allowed}"


def test_the_dashboard_and_rules_cover_the_issue_s_metrics() -> None:
    everything = " ".join(expr for _, expr in _expressions())
    for family in (
        "cds_hook_calls_total",
        "cds_hook_seconds_bucket",
        "cds_fhir_errors_total",
        "cds_auth_failures_total",
        "cds_feedback_outcomes_total",
        "cds_model_serving",
        "cds_shadow_agreement_total",
        "cds_drift_psi",
        "cds_drift_warning",
        "cds_store_errors_total",
    ):
        assert family in everything, family
    rules = yaml.safe_load((DEPLOY / "prometheus" / "alerts.yml").read_text())
    for group in rules["groups"]:
        for rule in group["rules"]:
            assert rule["labels"]["severity"] in {"info", "warning", "critical"}
            assert rule["annotations"]["summary"]


def _k8s() -> dict[str, dict[str, Any]]:
    found = {}
    for path in sorted((DEPLOY / "kubernetes").glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            assert doc["apiVersion"] and doc["metadata"]["name"], path
            found[doc["kind"]] = doc
    return found


def test_the_kubernetes_manifests_have_the_expected_kinds_probes_and_limits() -> None:
    docs = _k8s()
    assert set(docs) == {"ConfigMap", "Secret", "Deployment", "Service", "HorizontalPodAutoscaler"}
    pod = docs["Deployment"]["spec"]["template"]["spec"]
    [container] = pod["containers"]
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["startupProbe"]["httpGet"]["path"] == "/healthz"
    assert {"cpu", "memory"} <= container["resources"]["limits"].keys()
    assert {"cpu", "memory"} <= container["resources"]["requests"].keys()
    refs = {next(iter(ref.values()))["name"] for ref in container["envFrom"]}
    assert refs == {docs["ConfigMap"]["metadata"]["name"], docs["Secret"]["metadata"]["name"]}
    assert "CDS_PSEUDONYM_KEY" in docs["Secret"]["stringData"]
    assert "CDS_PSEUDONYM_KEY" not in docs["ConfigMap"]["data"]
    selector = docs["Deployment"]["spec"]["selector"]["matchLabels"]
    assert docs["Service"]["spec"]["selector"] == selector
    assert docs["Deployment"]["spec"]["template"]["metadata"]["labels"] == selector
    hpa = docs["HorizontalPodAutoscaler"]["spec"]
    assert hpa["scaleTargetRef"]["name"] == docs["Deployment"]["metadata"]["name"]
    assert hpa["metrics"][0]["resource"]["name"] == "cpu"
    port = int(docs["ConfigMap"]["data"]["CDS_PORT"])
    assert container["ports"][0]["containerPort"] == port


def test_the_configmap_and_secret_hold_only_settings_the_server_reads(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    docs = _k8s()
    values = {**docs["ConfigMap"]["data"], **docs["Secret"]["stringData"]}
    fields = {f"CDS_{name.upper()}" for name in Settings.model_fields}
    assert set(values) <= fields, set(values) - fields
    for name, value in values.items():
        monkeypatch.setenv(name, value)
    settings = Settings()  # the values themselves validate, read as the server reads them
    assert settings.auth_issuers and settings.redis_url and settings.pseudonym_key


def test_the_compose_file_runs_the_server_redis_prometheus_and_grafana() -> None:
    compose = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())
    services = compose["services"]
    assert set(services) == {"cds", "redis", "prometheus", "grafana"}
    assert services["cds"]["environment"]["CDS_REDIS_URL"].startswith("redis://redis:")
    assert "--workers" in services["cds"]["command"]
    for mount in services["prometheus"]["volumes"] + services["grafana"]["volumes"]:
        source = mount.split(":")[0]
        assert (DEPLOY / source).exists(), source
    prometheus = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    assert prometheus["scrape_configs"][0]["static_configs"][0]["targets"] == ["cds:8000"]
    assert (DEPLOY / "grafana" / "provisioning" / "datasources" / "prometheus.yml").is_file()

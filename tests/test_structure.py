"""The public surface of each package, and the import direction between them."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ["fhir_mappings", "models", "hooks", "cds", "demo_ehr"]
# Each package may import only those listed (besides itself).
ALLOWED = {
    "fhir_mappings": set(),
    "models": {"fhir_mappings"},
    "hooks": {"fhir_mappings", "models"},
    "cds": {"fhir_mappings", "models", "hooks"},
    "demo_ehr": {"fhir_mappings"},
}
PURE = {"fhir_mappings", "hooks"}  # no network, Redis or web framework
IO_MODULES = {"httpx", "redis", "fastapi", "starlette", "uvicorn", "requests", "socket"}


@pytest.mark.parametrize("package", PACKAGES)
def test_all_is_sorted_complete_and_importable(package: str) -> None:
    module = importlib.import_module(package)
    exported = list(module.__all__)
    assert exported == sorted(exported, key=str)
    for name in exported:
        assert hasattr(module, name), f"{package}.{name}"


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.split(".")[0])
    return found


@pytest.mark.parametrize("package", PACKAGES)
def test_layers_import_only_downwards(package: str) -> None:
    for path in (ROOT / package).rglob("*.py"):
        ours = _imports(path) & set(PACKAGES)
        assert ours <= ALLOWED[package] | {package}, (
            f"{path.relative_to(ROOT)} imports {ours - ALLOWED[package] - {package}}"
        )
        if package in PURE:
            assert not _imports(path) & IO_MODULES, f"{path.relative_to(ROOT)} does I/O"


def test_the_cli_starts_without_the_app_and_settings_defaults_match_the_models() -> None:
    """`cds --help` must not load the web app, the models or XGBoost; the settings' defaults that
    avoid importing the models are the models' own."""
    import subprocess
    import sys

    probe = (
        "import sys, cds.cli; "
        "print(sorted(m for m in ('xgboost', 'models', 'fastapi', 'cds.app') if m in sys.modules))"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True
    )
    assert done.stdout.strip() == "[]"
    import models
    from cds import settings

    assert (
        settings.DEFAULT_REGISTRY == models.DEFAULT_REGISTRY
        and settings.DEFAULT_DATA_DIR == models.DEFAULT_DATA_DIR
    )


@pytest.mark.parametrize("folder", ["benchmarks", "testkit", "experiments", "scripts"])
def test_support_code_imports_no_tests(folder: str) -> None:
    """Benchmarks, the shared test kit, experiments and scripts never import `tests`."""
    for path in (ROOT / folder).rglob("*.py"):
        assert "tests" not in _imports(path), f"{path.relative_to(ROOT)} imports tests"


@pytest.mark.parametrize("package", ["fhir_mappings", "models", "hooks", "cds"])
def test_the_product_imports_no_support_code(package: str) -> None:
    """What ships (the wheel, the image) never needs the demo EHR, the kit, benchmarks or tests."""
    for path in (ROOT / package).rglob("*.py"):
        support = _imports(path) & {"demo_ehr", "testkit", "benchmarks", "tests", "experiments"}
        assert not support, f"{path.relative_to(ROOT)} imports {support}"


def test_reading_settings_does_no_io(tmp_path: Path) -> None:
    """Settings describe where things are; the pseudonym key file is created at the edge (cds.keys)."""
    from cds import Settings
    from cds.keys import pseudonym_key

    var = tmp_path / "var"
    settings = Settings(_env_file=None, var_dir=var)
    assert not var.exists()  # validated, nothing written
    key = pseudonym_key(settings)
    assert len(key) == 64 and (var / "pseudonym.key").read_bytes().strip() == key
    assert pseudonym_key(settings) == key  # the same key on the next start

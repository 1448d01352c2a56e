"""Synthea R4 transaction bundles -> a FHIR Bulk Data export directory (one NDJSON file per
resource type, as `$export` writes them), for the tests of reading a site's export.

A bundle's references are `urn:uuid:<id>` (its entries' fullUrls); an export's are `Type/id`, so
they are rewritten on the way.
"""

from __future__ import annotations

import copy
import gzip
import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

__all__ = ["bundle_resources", "synthea_export", "write_export"]


def _rewrite(value: Any, targets: Mapping[str, str]) -> Any:
    if isinstance(value, dict):
        out = {k: _rewrite(v, targets) for k, v in value.items()}
        ref = out.get("reference")
        if isinstance(ref, str) and ref in targets:
            out["reference"] = targets[ref]
        return out
    if isinstance(value, list):
        return [_rewrite(v, targets) for v in value]
    return value


def bundle_resources(bundle: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The bundle's resources, with its `urn:uuid:` references written as `Type/id`."""
    entries = [e for e in bundle.get("entry", []) if isinstance(e.get("resource"), dict)]
    targets = {
        e["fullUrl"]: f"{e['resource']['resourceType']}/{e['resource']['id']}"
        for e in entries
        if isinstance(e.get("fullUrl"), str) and "id" in e["resource"]
    }
    return [_rewrite(copy.deepcopy(e["resource"]), targets) for e in entries]


def write_export(resources: Iterable[Mapping[str, Any]], out: Path, *, compress: bool = False) -> Path:
    """`out/<Type>.ndjson` (or `.ndjson.gz`) for each resource type, resources in the order given."""
    out.mkdir(parents=True, exist_ok=True)
    lines: dict[str, list[str]] = {}
    for r in resources:
        lines.setdefault(str(r["resourceType"]), []).append(json.dumps(r, separators=(",", ":")))
    for kind, rows in lines.items():
        text = ("\n".join(rows) + "\n").encode()
        if compress:
            (out / f"{kind}.ndjson.gz").write_bytes(gzip.compress(text, mtime=0))
        else:
            (out / f"{kind}.ndjson").write_bytes(text)
    return out


def synthea_export(
    bundles: Iterable[Path], out: Path, *, compress: bool = False, extra: Iterable[Mapping[str, Any]] = ()
) -> Path:
    """An export of the patients of `bundles` (files of Synthea JSON Bundles), plus `extra` resources."""
    resources: list[dict[str, Any]] = []
    for path in bundles:
        resources += bundle_resources(json.loads(Path(path).read_text(encoding="utf-8")))
    return write_export([*resources, *extra], out, compress=compress)

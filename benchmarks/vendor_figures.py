#!/usr/bin/env python
"""Per-vendor figures of the mapping on the hand-written Epic, Oracle Health and MEDITECH payloads
(testkit/vendor_payloads.py): values read right, impossible values refused, wrong
mappings, local codes overruled by LOINC, and what `cds map` and the sepsis hook say about each
stay. `--write DIR` also writes each fixture as a Bundle file for `cds map --bundle`.

Usage: .venv/bin/python benchmarks/vendor_figures.py [--write /tmp/vendor-bundles]
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path

from fhir_mappings import PROFILES, Pseudonymizer, map_bundle
from models import TRAINED_MAX_ICU_HOURS
from testkit.vendor_payloads import Refused, all_fixtures, check_value

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", type=Path, help="write each fixture as <name>.json here")
    args = parser.parse_args()
    totals: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    stays = []
    for fixture in all_fixtures():
        t = totals[fixture.vendor]
        for i, case in enumerate(fixture.cases):
            result = check_value(fixture, i)
            kind = "refusals" if isinstance(case.expected, Refused) else "values"
            n = 1 if isinstance(case.expected, Refused) else len(case.expected)  # a BP panel holds two
            t[kind] += n
            t[f"{kind} right"] += n if result in ("right", "refused-right") else 0
            t["wrong"] += 0 if result in ("right", "refused-right") else 1
        mapped = map_bundle(
            fixture.bundle(),
            pseudonymizer=Pseudonymizer(b"f" * 32),
            profile=PROFILES[fixture.profile],
            max_icu_hours=TRAINED_MAX_ICU_HOURS,
        )
        t["code conflicts"] += sum(mapped.report.code_conflicts.values())
        got = f"table:{mapped.stay.current_hour}" if mapped.stay is not None else mapped.stay_reason
        t["stays"] += 1
        t["stays right"] += got == fixture.stay
        stays.append((fixture.name, fixture.stay, got, fixture.hook, mapped.patient_from))
        if args.write:
            args.write.mkdir(parents=True, exist_ok=True)
            (args.write / f"{fixture.name}.json").write_text(json.dumps(fixture.bundle(), indent=1))
    print(
        "| vendor | values read right | impossible values refused | wrong | LOINC over local code | stays "
        "as expected |"
    )
    print("| --- | --- | --- | --- | --- | --- |")
    for vendor, t in totals.items():
        print(
            f"| {vendor} | {t['values right']}/{t['values']} | {t['refusals right']}/{t['refusals']} | "
            f"{t['wrong']} | "
            f"{t['code conflicts']} | {t['stays right']}/{t['stays']} |"
        )
    print()
    print("| fixture | stay expected | cds map says | sepsis hook | patient id from |")
    print("| --- | --- | --- | --- | --- |")
    for name, want, got, hook, source in stays:
        print(f"| {name} | {want} | {got} | {hook} | {source} |")


if __name__ == "__main__":
    main()

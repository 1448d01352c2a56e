"""The sweep's pure part: NDJSON parsing, grouping the census by patient, and batch features,
scores and SHAP that give each patient the bits one hook call gives it."""

from __future__ import annotations

import numpy as np
import pytest

from fhir_mappings import CANONICAL_COLUMNS, CanonicalTable, MappingError, build_features
from hooks.consent import ConsentDecision
from hooks.sweep import SweepStay, census_patients, parse_ndjson, sweep_rows
from models import ModelRegistry, RiskModel, last_rows, model_task, predict_rows, shap_rows


@pytest.fixture(scope="module")
def model() -> RiskModel:
    spec = model_task("sepsis").feature_spec()
    return RiskModel(ModelRegistry().load("sepsis", spec), spec, nthread=1)


def random_stays(n: int, seed: int = 7) -> list[CanonicalTable]:
    """Stays of 1 to 90 hours with sparse, plausible-ish values (labs rarer than vitals)."""
    rng = np.random.default_rng(seed)
    tables = []
    for i in range(n):
        hours = int(rng.integers(1, 91))
        values = rng.normal(80.0, 20.0, size=(hours, len(CANONICAL_COLUMNS)))
        density = np.where(np.arange(len(CANONICAL_COLUMNS)) < 8, 0.7, 0.08)
        values[rng.random(values.shape) > density] = np.nan
        for name, value in (("Age", 60.0 + i % 30), ("Gender", float(i % 2)), ("Unit1", 1.0), ("Unit2", 0.0)):
            values[:, CanonicalTable.column_index(name)] = value
        tables.append(
            CanonicalTable(
                np.full(hours, f"p{i}", dtype=object), np.arange(1, hours + 1, dtype=np.int32), values
            )
        )
    return tables


def test_batch_features_scores_and_shap_equal_one_patient_at_a_time(model: RiskModel) -> None:
    tables = random_stays(150)
    batch = last_rows(tables, model.spec, chunk=16)
    assert np.array_equal(batch, last_rows(tables, model.spec, chunk=64, workers=2), equal_nan=True)
    probabilities = predict_rows(model, batch)
    contributions = shap_rows(model, batch)
    for i, table in enumerate(tables):
        row = build_features(table, model.spec)[-1:]  # the hook's serving row
        assert np.array_equal(batch[i], row[0], equal_nan=True)
        assert probabilities[i] == float(model.predict(row)[0])
        explained = model.explain(row[0])
        assert contributions[i, -1] == np.float32(explained.base_value)
        assert [float(x) for x in contributions[i, :-1]] == [c.shap for c in explained.contributions]


def test_sweep_rows_rank_drivers_by_size_and_band_like_the_model(model: RiskModel) -> None:
    tables = random_stays(40, seed=11)
    stays = [SweepStay(str(t.patient[0]), t, len(t), "medical", ConsentDecision()) for t in tables]
    features = last_rows(tables, model.spec)
    contributions = shap_rows(model, features)
    rows = sweep_rows(model, stays, features, predict_rows(model, features), contributions, drivers=4)
    for row, contrib in zip(rows, contributions, strict=True):
        expected = sorted(range(len(model.spec)), key=lambda j: (-abs(contrib[j]), j))[:4]
        assert [abs(contrib[j]) for j in row.drivers] == [abs(contrib[j]) for j in expected]
        assert row.band == model.band(row.probability)


def test_parse_ndjson_reads_resources_and_names_bad_lines_by_number_only() -> None:
    text = '{"resourceType":"Patient","id":"a"}\n\n{"resourceType":"Observation","id":"o"}\n'
    assert [r["id"] for r in parse_ndjson(text.encode())] == ["a", "o"]
    with pytest.raises(MappingError, match="line 2 is not JSON") as caught:
        parse_ndjson('{"resourceType":"Patient","id":"a"}\n{"name": "Jane Secret"\n')
    assert "Jane" not in str(caught.value)
    with pytest.raises(MappingError, match="line 1 is not a FHIR resource"):
        parse_ndjson('["not", "a", "resource"]\n')


def test_census_patients_groups_by_subject_and_keeps_one_observation_per_id() -> None:
    obs = {"resourceType": "Observation", "id": "o1", "subject": {"reference": "Patient/a"}}
    resources = [
        {"resourceType": "Patient", "id": "a"},
        {"resourceType": "Encounter", "id": "e", "subject": {"reference": "Patient/a"}},
        obs,
        dict(obs),  # the same Observation twice (e.g. from two files)
        {"resourceType": "Observation", "subject": {"reference": "Patient/a"}},  # no id: kept apart
        {"resourceType": "Patient", "id": "b"},  # no Encounter: not in the census
        {"resourceType": "Consent", "id": "c", "patient": {"reference": "Patient/a"}},
        {"resourceType": "Location", "id": "icu"},
    ]
    patients, locations = census_patients(resources)
    assert [p.patient_id for p in patients] == ["a"]
    assert len(patients[0].observations) == 2 and len(patients[0].consents) == 1
    assert list(locations) == ["icu"]


def _hook_fetched(request: dict) -> dict:
    return {
        k: v if k == "patient" else [e["resource"] for e in v.get("entry", [])]
        for k, v in request["prefetch"].items()
    }


@pytest.mark.parametrize("site_bands", [False, True])
def test_the_sweep_records_the_risk_assessment_the_hook_records(model: RiskModel, site_bands: bool) -> None:
    """The same patients' resources through a `sepsis-risk` call and through the census sweep
    (grouped, mapped, scored and explained in one batch): the same RiskAssessment (contributions,
    SHAP context, band, ICU hour, pseudonym) but for its id and the sweep's tag."""
    import uuid
    from dataclasses import replace
    from datetime import UTC, datetime

    from demo_ehr import patient_view_request
    from fhir_mappings import GENERIC, Pseudonymizer
    from hooks import SEPSIS, ScoredCard, ScoringInput
    from hooks.sweep import SWEEP_TAG, sepsis_stays, sweep_risk_assessment
    from testkit.helpers import synthetic_stay

    if site_bands:  # a site's own bands (its go-live report) move the band of some of these patients
        bands = model.bands
        model = RiskModel(ModelRegistry().load("sepsis", model.spec), model.spec, nthread=1)
        model.with_site_bands(replace(bands, bands=tuple(replace(b, lower=b.lower / 3) for b in bands.bands)))
    stays = [
        synthetic_stay(hours=h, patient=6000 + i, septic_like=i % 2 == 0)
        for i, h in enumerate((5, 9, 17, 30, 47, 70))
    ]
    now = datetime.now(UTC).replace(microsecond=0)
    pseudonymizer = Pseudonymizer(b"sweep-equals-hook-key-0123456789")
    source = "https://ehr.example/fhir"
    patients, locations = census_patients([r for s in stays for r in s.all()])
    swept, skipped = sepsis_stays(
        patients, locations, now=now, pseudonymizer=pseudonymizer, source=source, profile=GENERIC
    )
    assert not skipped and len(swept) == len(stays)
    features = last_rows([s.table for s in swept], model.spec)
    rows = sweep_rows(model, swept, features, predict_rows(model, features), shap_rows(model, features))
    by_pseudonym = {r.stay.pseudonym: r for r in rows}
    contexts = 0
    for stay in stays:
        request = patient_view_request(stay)
        card_uuid = str(uuid.uuid4())
        scored = SEPSIS.score(
            ScoringInput(
                request["context"], _hook_fetched(request), model, now, pseudonymizer, card_uuid, source
            )
        )
        assert isinstance(scored, ScoredCard)
        hook = scored.risk_assessment
        row = by_pseudonym[hook["subject"]["identifier"]["value"]]
        assessment_id, risk, digest = sweep_risk_assessment(model, row, now=now)
        assert risk["meta"] == {"tag": [SWEEP_TAG]} and risk["id"] == assessment_id != card_uuid
        assert {k: v for k, v in risk.items() if k not in ("id", "meta")} == {
            k: v for k, v in hook.items() if k != "id"
        }
        assert digest == scored.features_sha256 and row.band == scored.band
        contexts += any(e["url"].endswith("/shap-context") for e in risk["extension"])
    assert contexts > 0  # the SHAP context the hook keeps is there, and the same


def test_ndjson_read_in_any_chunks_is_the_whole_file_read_at_once() -> None:
    """A download's chunks split lines, "\\r\\n" pairs and multi-byte characters anywhere: the
    resources, and the line number of the first bad line, are those of the whole file."""
    import random

    from hooks.sweep import NdjsonStream

    lines = [
        '{"resourceType":"Patient","id":"a","name":[{"text":"Zoë Ångström 北"}]}',
        "",
        '{"resourceType":"Observation","id":"o1"}',
        "   ",
        '{"resourceType":"Observation","id":"o2","valueString":"x\\u2028y"}',
    ]
    text = (
        "\r\n".join(lines[:3]) + "\n" + "\r".join(lines[3:]) + "\n\n" + '{"resourceType":"Consent","id":"c"}'
    )
    data = text.encode()
    whole = parse_ndjson(data)
    assert [r["id"] for r in whole] == ["a", "o1", "o2", "c"] and whole == parse_ndjson(text)
    rng = random.Random(5)

    def chunked(blob: bytes) -> list[bytes]:
        cuts = sorted(rng.sample(range(1, len(blob)), rng.randint(1, 12)))
        return [blob[a:b] for a, b in zip([0, *cuts], [*cuts, len(blob)], strict=True)]

    for _ in range(200):
        stream = NdjsonStream()
        got = [r for chunk in chunked(data) for r in stream.feed(chunk)] + stream.end()
        assert got == whole
    bad = data.replace(b'{"resourceType":"Consent"', b'{"resourceType" "Consent"')
    with pytest.raises(MappingError) as at_once:
        parse_ndjson(bad)
    for _ in range(50):
        stream = NdjsonStream()
        with pytest.raises(MappingError) as streamed:
            for chunk in chunked(bad):
                stream.feed(chunk)
            stream.end()
        assert streamed.value.message == at_once.value.message
    assert "line 7" in at_once.value.message
    with pytest.raises(MappingError, match="not UTF-8"):
        parse_ndjson(b'{"resourceType":"Patient","id":"\xff"}\n')

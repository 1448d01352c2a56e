"""The outcome join of `cds shadow report` / `cds canary report`: AUROC of each version on the
same cards, labelled as PhysioNet 2019 labels hours (positive from 6 h before the onset on)."""

from __future__ import annotations

from cds.lifecycle_report import HORIZON_S, outcome_auroc
from cds.stores import ModelScore

T0 = 1_800_000_000.0


def score(card: int, patient: str, p: float, *, version: str, at: float) -> ModelScore:
    role = "shadow" if version == "3" else "champion"
    return ModelScore(f"c{card}", "sepsis", version, "sepsis-risk", role, p, "low", patient, at)


def test_each_version_is_judged_on_the_same_cards_and_their_difference_is_paired() -> None:
    # Patients 0-9 septic (onset 2 h after their card: inside the 6 h horizon), 10-19 never; the
    # answer ranks them perfectly, the shadow backwards; patient 99 has no known outcome.
    outcomes: dict[str, float | None] = {f"p{i}": (T0 + 7200 if i < 10 else None) for i in range(20)}
    pairs = []
    for i in range(20):
        septic = i < 10
        pairs.append(
            (
                score(i, f"p{i}", 0.9 if septic else 0.1, version="2", at=T0),
                score(i, f"p{i}", 0.1 if septic else 0.9, version="3", at=T0),
            )
        )
    pairs.append((score(99, "p99", 0.5, version="2", at=T0), score(99, "p99", 0.5, version="3", at=T0)))
    found = outcome_auroc(pairs, outcomes, replicates=50)
    assert found["cards"] == 20 and found["patients"] == 20 and found["positive_cards"] == 10
    answer, shadow = found["auroc"]
    assert answer["estimate"] == 1.0 and shadow["estimate"] == 0.0
    assert found["auroc_difference"]["estimate"] == -1.0
    assert answer["replicates"] == 50


def test_a_card_before_the_horizon_is_negative_and_one_class_gives_no_auroc() -> None:
    onset = T0 + HORIZON_S + 3600  # the card is 7 h before the onset: not yet labelled septic
    found = outcome_auroc([(score(1, "p1", 0.8, version="2", at=T0),)], {"p1": onset})
    assert found["positive_cards"] == 0 and isinstance(found["auroc"], str)
    assert outcome_auroc([(score(1, "p1", 0.8, version="2", at=T0),)], {}) == {
        "label": found["label"],
        "cards": 0,
        "patients": 0,
    }

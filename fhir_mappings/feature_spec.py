"""What a model's features are, independent of how any one feature set computes them.

A `FeatureSpec` is a declarative list of `Feature`s with the version of the code that computes
them; its `spec_hash` (names, ops, variables, windows and that version) is stored in every model
manifest and checked when a model is loaded, so a model never scores features computed by other
code. Each feature set lives beside this module with its builder: the hourly ICU set
(`features.py`, one row per ICU hour, sepsis) and the discharge set (`readmission_features.py`,
one row per discharge). A spec also knows the ops its builder accepts (checked when it is made)
and how its features group into families (value, measurement, clock, demographic), so analyses
can ask how much a model leans on measurement habits or on the ICU clock; neither is hashed.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

__all__ = ["Feature", "FeatureSpec"]


@dataclass(frozen=True, slots=True)
class Feature:
    name: str
    op: str  # what the builder computes (hourly: last, mean, slope ...; discharge: static)
    variable: str | None = None  # the canonical column (or derivation) it reads
    window: int | None = None  # in rows (hours for the hourly set)
    label: str = ""
    unit: str = ""

    def describe(self) -> dict[str, object]:
        return {"name": self.name, "op": self.op, "variable": self.variable, "window": self.window}


def _value_family(feature: Feature) -> str:
    return "value"


@dataclass(frozen=True)
class FeatureSpec:
    name: str
    features: tuple[Feature, ...]
    # Bumped when the code that computes this spec's features changes; each feature set has its own,
    # so changing the hourly feature code does not invalidate the readmission model.
    code_version: str
    ops: frozenset[str] | None = None  # the ops the spec's builder knows (None: not checked)
    classify: Callable[[Feature], str] = _value_family  # a feature's family
    names: tuple[str, ...] = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "names", tuple(f.name for f in self.features))
        if len(set(self.names)) != len(self.names):
            raise ValueError("feature names must be unique")
        if self.ops is not None:
            unknown = {f.op for f in self.features} - self.ops
            if unknown:
                raise ValueError(f"unknown feature ops: {sorted(unknown)}")

    def __len__(self) -> int:
        return len(self.features)

    @property
    def spec_hash(self) -> str:
        payload = json.dumps(
            {"version": self.code_version, "features": [f.describe() for f in self.features]},
            sort_keys=True,
        )
        return hashlib.sha256(payload.encode()).hexdigest()

    def feature(self, name: str) -> Feature:
        return self.features[self.names.index(name)]

    def family(self, feature: Feature | str) -> str:
        """clock | measurement (when and how often something was measured) | demographic | value."""
        return self.classify(self.feature(feature) if isinstance(feature, str) else feature)

    def columns(self, *, exclude_families: Sequence[str] = ()) -> list[int]:
        """Column indices of the features outside the given families."""
        return [j for j, f in enumerate(self.features) if self.classify(f) not in exclude_families]

"""Canonical table -> model features: the one feature code for training and serving.

Every feature at ICU hour h is computed from rows up to h only (causal), and from the patient's
own rows only: each number is produced by the same sequence of floating-point operations
whether the table holds one patient (a hook call) or twenty thousand (training), so the two
paths agree bit for bit. Windows are in hours; the table's rows are consecutive hours.

Besides the canonical columns, a feature may read a bedside score (`clinical_scores`) as if it
were a measured series: the score of the latest values carried forward, NaN until one of its
inputs has been measured (so leading empty hours change nothing).

The spec itself (`Feature`, `FeatureSpec`, the hash every manifest carries) is generic and lives in
`feature_spec.py`; `hourly_spec` makes one of this set's ops, versioned by FEATURE_CODE_VERSION,
with each feature in a family (value, measurement, clock, demographic: `hourly_family`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from . import clinical_scores
from .feature_spec import Feature, FeatureSpec
from .table import CanonicalTable
from .variables import CLINICAL_VARIABLES, LAB_VARIABLES, VITAL_VARIABLES, variable

__all__ = [
    "CLOCK_FEATURES",
    "FEATURE_CODE_VERSION",
    "SCORE_SERIES",
    "build_features",
    "hourly_family",
    "hourly_spec",
    "sepsis_feature_spec",
]

# Bump when the arithmetic behind an existing op changes, so old models refuse to load.
FEATURE_CODE_VERSION = "2"

# Bedside scores usable as series: name -> (function, canonical inputs, label).
SCORE_SERIES: dict[str, tuple[Callable[..., np.ndarray], tuple[str, ...], str]] = {
    "qsofa": (clinical_scores.qsofa, clinical_scores.SCORE_INPUTS["qsofa"], "qSOFA (partial, no mentation)"),
    "sirs": (clinical_scores.sirs, clinical_scores.SCORE_INPUTS["sirs"], "SIRS criteria met (no bands)"),
    "news2": (
        clinical_scores.news2,
        clinical_scores.SCORE_INPUTS["news2"],
        "NEWS2 (partial, no consciousness)",
    ),
    "mews": (clinical_scores.mews, clinical_scores.SCORE_INPUTS["mews"], "MEWS (partial, no AVPU)"),
    "sofa_partial": (
        clinical_scores.sofa_partial,
        clinical_scores.SCORE_INPUTS["sofa_partial"],
        "SOFA (partial)",
    ),
    "shock_index": (
        clinical_scores.shock_index,
        clinical_scores.SCORE_INPUTS["shock_index"],
        "Shock index (HR/SBP)",
    ),
}
# Features that read the ICU clock or the time before ICU admission.
CLOCK_FEATURES = ("HospAdmTime", "ICULOS")

_MEASUREMENT_OPS = ("hours_since", "count")


def hourly_family(feature: Feature) -> str:
    """clock | measurement (when and how often something was measured) | demographic | value."""
    if feature.name in CLOCK_FEATURES or feature.op == "iculos":
        return "clock"
    if feature.op in _MEASUREMENT_OPS:
        return "measurement"
    if feature.op == "static":
        return "demographic"
    return "value"


def hourly_spec(name: str, features: Sequence[Feature]) -> FeatureSpec:
    """A spec of hourly features: computed by `build_features`, versioned by FEATURE_CODE_VERSION."""
    return FeatureSpec(
        name, tuple(features), FEATURE_CODE_VERSION, ops=frozenset(_OPS), classify=hourly_family
    )


# --- primitives on (n rows x k variables) blocks, group-aware -------------------------------


class _Context:
    """Shared intermediates for one table, computed once and reused by every op.

    Ops answer for the rows `at` selects (all rows, or the given row indices): carried-forward
    indices and score series are computed over the whole table (cheap), window statistics only at
    those rows. Every number comes from the same elementwise operations either way."""

    def __init__(self, table: CanonicalTable, at: np.ndarray | None = None) -> None:
        self.table = table
        self.n = len(table)
        self.row = np.arange(self.n)
        self.start = table.group_start_index()
        self.iculos = table.iculos.astype(np.float64)
        self.all_rows = at is None
        self.at: np.ndarray | slice = slice(None) if at is None else np.asarray(at, dtype=np.intp)
        self.m = self.n if at is None else len(self.at)  # type: ignore[arg-type]
        self._last_idx: dict[str, np.ndarray] = {}
        self._series: dict[str, np.ndarray] = {}
        self._windows: dict[int, tuple[list[str], dict[str, np.ndarray]]] = {}

    def series(self, name: str) -> np.ndarray:
        if name not in self._series:
            if name in SCORE_SERIES:
                fn, inputs, _ = SCORE_SERIES[name]
                last = _last_all(self, inputs)
                value = fn(*last.T)
                value[np.isnan(last).all(axis=1)] = np.nan
                self._series[name] = value
            else:
                self._series[name] = self.table.values[:, self.table.column_index(name)]
        return self._series[name]

    def block(self, names: Sequence[str]) -> np.ndarray:
        if all(v not in SCORE_SERIES for v in names):
            return self.table.values[:, [self.table.column_index(v) for v in names]]
        return np.stack([self.series(v) for v in names], axis=1) if names else np.empty((self.n, 0))

    def last_index(self, names: Sequence[str]) -> np.ndarray:
        """Row index of the latest measurement at or before each row, -1 if none yet."""
        missing = [v for v in dict.fromkeys(names) if v not in self._last_idx]
        if missing:
            values = self.block(missing)
            idx = np.where(~np.isnan(values), self.row[:, None], -1)
            idx = np.maximum.accumulate(idx, axis=0) if self.n else idx
            idx[idx < self.start[:, None]] = -1
            for j, v in enumerate(missing):
                self._last_idx[v] = idx[:, j]
        return np.stack([self._last_idx[v] for v in names], axis=1)

    def take(self, values: np.ndarray, idx: np.ndarray) -> np.ndarray:
        out = np.take_along_axis(values, np.maximum(idx, 0), axis=0)
        out[idx < 0] = np.nan
        return out

    def shifted(self, values: np.ndarray, k: int) -> np.ndarray:
        """values[i - k] (values: every row) within the same patient at the rows `at` selects, NaN
        before the patient's first row."""
        if not self.all_rows:
            before = self.row[self.at] - k
            picked: np.ndarray = values[np.maximum(before, 0)]
            picked[before < self.start[self.at]] = np.nan
            return picked
        out = np.full_like(values, np.nan)
        if k < self.n:
            out[k:] = values[: self.n - k]
        out[self.row - k < self.start] = np.nan
        return out

    def plan_windows(self, windows: dict[int, list[str]]) -> None:
        """Which variables each window length needs, so one pass per window serves all ops."""
        for w, names in windows.items():
            self._windows[w] = (list(names), {})

    def window(self, w: int, names: Sequence[str], stat: str) -> np.ndarray:
        planned, stats = self._windows.setdefault(w, (list(dict.fromkeys(names)), {}))
        if any(v not in planned for v in names):
            planned.extend(v for v in dict.fromkeys(names) if v not in planned)
            stats.clear()
        if not stats:
            stats.update(_window_stats(self, planned, w))
        cols = [planned.index(v) for v in names]
        return stats[stat][:, cols]


def _window_stats(ctx: _Context, names: Sequence[str], w: int) -> dict[str, np.ndarray]:
    """count, mean, min, max, std and OLS slope (per hour) over the last `w` hours, one pass
    over the shifted copies, newest first; NaN where fewer than 1 (2 for std, slope) values.
    Only at the rows `ctx.at` selects: each cell's arithmetic is the same whichever rows are asked."""
    values = ctx.block(names)
    n = ctx.n
    shape = (ctx.m, values.shape[1])
    padded = np.full((n + w, shape[1]), np.nan)
    padded[w:] = values
    position = (ctx.row - ctx.start)[ctx.at]  # hours since the patient's first row
    at = ctx.row[ctx.at]
    count = np.zeros(shape)
    total = np.zeros(shape)
    lo = np.full(shape, np.inf)
    hi = np.full(shape, -np.inf)
    s_t = np.zeros(shape)
    s_tt = np.zeros(shape)
    s_tv = np.zeros(shape)

    def term_at(k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        term = padded[w - k : w - k + n] if ctx.all_rows else padded[w - k + at]  # values[i - k]
        ok = ~np.isnan(term)
        ok &= (position >= k)[:, None]  # not another patient's row
        return term, ok, np.where(ok, term, 0.0)

    for k in range(w):
        term, ok, filled = term_at(k)
        t = -float(k)
        count += ok
        total += filled
        np.fmin(lo, np.where(ok, term, np.nan), out=lo)
        np.fmax(hi, np.where(ok, term, np.nan), out=hi)
        if k:
            s_t += ok * t
            s_tt += ok * (t * t)
            s_tv += filled * t
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = total / count
        dev = np.zeros(shape)
        for k in range(w):
            _, ok, filled = term_at(k)
            dev = dev + np.where(ok, (filled - mean) ** 2, 0.0)
        std = np.sqrt(dev / count)
        slope = (count * s_tv - s_t * total) / (count * s_tt - s_t * s_t)
    none = count == 0
    for a in (mean, lo, hi):
        a[none] = np.nan
    std[count < 2] = np.nan
    slope[count < 2] = np.nan
    return {"count": count, "mean": mean, "min": lo, "max": hi, "std": std, "slope": slope}


def _last_all(ctx: _Context, names: Sequence[str]) -> np.ndarray:
    """The latest value at or before every row of the table."""
    return ctx.take(ctx.block(names), ctx.last_index(names))


def _last(ctx: _Context, names: Sequence[str], _w: int | None) -> np.ndarray:
    return ctx.take(ctx.block(names), ctx.last_index(names)[ctx.at])


def _hours_since(ctx: _Context, names: Sequence[str], _w: int | None) -> np.ndarray:
    idx = ctx.last_index(names)[ctx.at]
    out = ctx.iculos[ctx.at][:, None] - ctx.iculos[np.maximum(idx, 0)]
    out[idx < 0] = np.nan
    return out


def _delta_prev(ctx: _Context, names: Sequence[str], _w: int | None) -> np.ndarray:
    """Latest measurement minus the one before it."""
    values = ctx.block(names)
    every = ctx.last_index(names)
    idx = every[ctx.at]
    before = idx - 1
    ok = (idx >= 0) & (before >= ctx.start[ctx.at][:, None])
    prev_idx = np.take_along_axis(every, np.maximum(before, 0), axis=0)
    prev_idx[~ok] = -1
    delta: np.ndarray = ctx.take(values, idx) - ctx.take(values, prev_idx)
    return delta


def _delta(ctx: _Context, names: Sequence[str], w: int | None) -> np.ndarray:
    """Latest value minus the value carried forward to w hours ago."""
    assert w is not None
    last = _last_all(ctx, names)
    change: np.ndarray = last[ctx.at] - ctx.shifted(last, w)
    return change


def _static(ctx: _Context, names: Sequence[str], _w: int | None) -> np.ndarray:
    return ctx.block(names)[ctx.at]


def _iculos(ctx: _Context, names: Sequence[str], _w: int | None) -> np.ndarray:
    return np.repeat(ctx.iculos[ctx.at][:, None], len(names), axis=1)


def _windowed(stat: str) -> Callable[[_Context, Sequence[str], int | None], np.ndarray]:
    def op(ctx: _Context, names: Sequence[str], w: int | None) -> np.ndarray:
        assert w is not None
        return ctx.window(w, names, stat)

    return op


_WINDOW_OPS = ("count", "mean", "min", "max", "std", "slope")
_Op = Callable[[_Context, Sequence[str], int | None], np.ndarray]
_OPS: dict[str, _Op] = {
    "last": _last,
    "hours_since": _hours_since,
    "delta_prev": _delta_prev,
    "delta": _delta,
    "static": _static,
    "iculos": _iculos,
    **{stat: _windowed(stat) for stat in _WINDOW_OPS},
}


_CHUNK_ROWS = 50_000


def build_features(
    table: CanonicalTable, spec: FeatureSpec, *, rows: Sequence[int] | np.ndarray | None = None
) -> np.ndarray:
    """(rows x features) float32 matrix in `spec` order; NaN where a feature is undefined.

    `rows`: only these row indices (a hook scores the last hour of one stay: about 4x less work
    than every hour of 72), bit for bit the rows of the whole matrix. Large tables are processed
    in chunks of whole patients to bound memory; rows never see each other across patients, so
    chunking changes no bit."""
    if rows is not None:
        picked = np.asarray(rows, dtype=np.intp).reshape(-1)
        if len(picked) and (picked.min() < 0 or picked.max() >= len(table)):
            raise IndexError("rows outside the table")
        return _build(table, spec, picked)
    if len(table) > _CHUNK_ROWS:
        starts = np.flatnonzero(table.group_starts_mask())
        cuts: Sequence[int] | np.ndarray = (
            starts[np.searchsorted(starts, np.arange(_CHUNK_ROWS, len(table), _CHUNK_ROWS))[:-1]]
            if len(starts)
            else []
        )
        bounds = [0, *sorted(set(int(c) for c in cuts) - {0}), len(table)]
        return np.concatenate(
            [
                _build(CanonicalTable(table.patient[a:b], table.iculos[a:b], table.values[a:b]), spec)
                for a, b in zip(bounds[:-1], bounds[1:], strict=True)
            ]
        )
    return _build(table, spec)


@dataclass(frozen=True)
class _Plan:
    """What `_build` derives from a spec alone: the ops' groups, and the variables of each window."""

    windows: dict[int, list[str]]
    groups: list[tuple[str, int | None, list[int], list[str]]]


_PLANS: dict[int, tuple[FeatureSpec, _Plan]] = {}  # id(spec) -> (spec, plan); the spec pins the id


def _plan(spec: FeatureSpec) -> _Plan:
    cached = _PLANS.get(id(spec))
    if cached is not None and cached[0] is spec:
        return cached[1]
    windows: dict[int, list[str]] = {}
    for f in spec.features:
        if f.op in _WINDOW_OPS and f.window is not None:
            names = windows.setdefault(f.window, [])
            if f.variable not in names:
                names.append(f.variable or "")
    grouped: dict[tuple[str, int | None], list[tuple[int, str]]] = {}
    for j, f in enumerate(spec.features):
        grouped.setdefault((f.op, f.window), []).append((j, f.variable or ""))
    plan = _Plan(
        windows,
        [(op, w, [j for j, _ in members], [v for _, v in members]) for (op, w), members in grouped.items()],
    )
    if len(_PLANS) > 64:  # specs are few and long-lived; never grow without bound
        _PLANS.clear()
    _PLANS[id(spec)] = (spec, plan)
    return plan


def _build(table: CanonicalTable, spec: FeatureSpec, at: np.ndarray | None = None) -> np.ndarray:
    plan = _plan(spec)
    ctx = _Context(table, at)
    ctx.plan_windows(plan.windows)
    out = np.full((ctx.m, len(spec)), np.nan, dtype=np.float32)
    for op, window, cols, names in plan.groups:
        out[:, cols] = _OPS[op](ctx, names, window)
    return out


# --- the sepsis feature set ------------------------------------------------------------------

# Labs whose trend over a day carries the organ-dysfunction signal of Sepsis-3.
_TRENDED_LABS = ("Lactate", "Creatinine", "Platelets", "WBC", "Bilirubin_total", "BUN", "HCO3", "pH")


def _label(var: str) -> tuple[str, str]:
    if var in SCORE_SERIES:
        return SCORE_SERIES[var][2], "1"
    v = variable(var)
    return v.label, v.unit


def sepsis_feature_spec(*, include_clock: bool = False) -> FeatureSpec:
    """The served sepsis features. `include_clock` adds ICULOS and HospAdmTime, kept out of the
    served model because they encode one hospital's admission and charting routines (measured
    in docs/sepsis-model.md), and exists for that comparison."""
    features: list[Feature] = []
    measured = [v for v in CLINICAL_VARIABLES if v != "EtCO2"]  # never recorded in set A
    vitals = [v for v in VITAL_VARIABLES if v in measured]
    labs = [v for v in LAB_VARIABLES if v in measured]

    def add(var: str, op: str, window: int | None, words: str, unit: str | None = None) -> None:
        label, var_unit = _label(var)
        suffix = f"{op}_{window}h" if window else op
        features.append(
            Feature(
                f"{var}__{suffix}", op, var, window, f"{label}{words}", var_unit if unit is None else unit
            )
        )

    for var in measured:
        add(var, "last", None, "")
        add(var, "hours_since", None, ": hours since measured", "h")
        add(var, "delta_prev", None, ", change since previous")
    for var in vitals:
        for w in (6, 24):
            add(var, "mean", w, f", mean over {w} h")
            add(var, "min", w, f", lowest over {w} h")
            add(var, "max", w, f", highest over {w} h")
            add(var, "slope", w, f", trend per hour over {w} h")
        add(var, "std", 6, ", variability over 6 h")
        add(var, "delta", 6, ", change over 6 h")
        add(var, "count", 24, ": measurements in 24 h", "1")
    for var in labs:
        add(var, "count", 24, ": measurements in 24 h", "1")
    for var in _TRENDED_LABS:
        add(var, "min", 24, ", lowest over 24 h")
        add(var, "max", 24, ", highest over 24 h")
    for var in SCORE_SERIES:
        add(var, "last", None, "")
        add(var, "mean", 6, ", mean over 6 h")
        add(var, "min", 24, ", lowest over 24 h")
        add(var, "max", 24, ", highest over 24 h")
        add(var, "slope", 6, ", trend per hour over 6 h")
    for var in ("Age", "Gender", "Unit1", "Unit2"):
        label, unit = _label(var)
        features.append(Feature(var, "static", var, None, label, unit))
    if include_clock:
        label, unit = _label("HospAdmTime")
        features.append(Feature("HospAdmTime", "static", "HospAdmTime", None, label, unit))
        features.append(Feature("ICULOS", "iculos", "ICULOS", None, "Hours in ICU", "h"))
    return hourly_spec("sepsis-clock" if include_clock else "sepsis", features)

"""Canonical table -> model features: the one feature code for training and serving.

Every feature at ICU hour h is computed from rows up to h only (causal), and from the patient's
own rows only: each number is produced by the same sequence of floating-point operations
whether the table holds one patient (a hook call) or twenty thousand (training), so the two
paths agree bit for bit. Windows are in hours; the table's rows are consecutive hours.

A `FeatureSpec` is a declarative list of `Feature`s; its `spec_hash` (names, ops, windows and
FEATURE_CODE_VERSION) is stored in every model manifest and checked when a model is loaded.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from .table import CanonicalTable
from .variables import CLINICAL_VARIABLES, VITAL_VARIABLES, variable

__all__ = ["FEATURE_CODE_VERSION", "Feature", "FeatureSpec", "build_features", "sepsis_feature_spec"]

# Bump when the arithmetic behind an existing op changes, so old models refuse to load.
FEATURE_CODE_VERSION = "1"


@dataclass(frozen=True, slots=True)
class Feature:
    name: str
    op: str
    variable: str | None = None
    window: int | None = None
    label: str = ""
    unit: str = ""

    def describe(self) -> dict[str, object]:
        return {"name": self.name, "op": self.op, "variable": self.variable, "window": self.window}


@dataclass(frozen=True)
class FeatureSpec:
    name: str
    features: tuple[Feature, ...]
    names: tuple[str, ...] = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "names", tuple(f.name for f in self.features))
        if len(set(self.names)) != len(self.names):
            raise ValueError("feature names must be unique")
        unknown = {f.op for f in self.features} - set(_OPS) - set(_DERIVED)
        if unknown:
            raise ValueError(f"unknown feature ops: {sorted(unknown)}")

    def __len__(self) -> int:
        return len(self.features)

    @property
    def spec_hash(self) -> str:
        payload = json.dumps(
            {"version": FEATURE_CODE_VERSION, "features": [f.describe() for f in self.features]},
            sort_keys=True,
        )
        return hashlib.sha256(payload.encode()).hexdigest()

    def feature(self, name: str) -> Feature:
        return self.features[self.names.index(name)]


# --- primitives on (n rows x k variables) blocks, group-aware -------------------------------


class _Context:
    """Shared intermediates for one table, computed once and reused by every op."""

    def __init__(self, table: CanonicalTable) -> None:
        self.table = table
        self.n = len(table)
        self.row = np.arange(self.n)
        self.start = table.group_start_index()
        self.iculos = table.iculos.astype(np.float64)
        self._last_idx: dict[str, np.ndarray] = {}

    def block(self, names: Sequence[str]) -> np.ndarray:
        return self.table.values[:, [self.table.column_index(v) for v in names]]

    def last_index(self, names: Sequence[str]) -> np.ndarray:
        """Row index of the latest measurement at or before each row, -1 if none yet."""
        missing = [v for v in names if v not in self._last_idx]
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
        """values[i - k] within the same patient, NaN before the patient's first row."""
        out = np.full_like(values, np.nan)
        if k < self.n:
            out[k:] = values[: self.n - k]
        out[self.row - k < self.start] = np.nan
        return out


def _last(ctx: _Context, names: Sequence[str], _w: int | None) -> np.ndarray:
    return ctx.take(ctx.block(names), ctx.last_index(names))


def _hours_since(ctx: _Context, names: Sequence[str], _w: int | None) -> np.ndarray:
    idx = ctx.last_index(names)
    at = np.take_along_axis(np.broadcast_to(ctx.iculos[:, None], idx.shape), np.maximum(idx, 0), axis=0)
    out = ctx.iculos[:, None] - at
    out[idx < 0] = np.nan
    return out


def _delta_prev(ctx: _Context, names: Sequence[str], _w: int | None) -> np.ndarray:
    """Latest measurement minus the one before it."""
    values = ctx.block(names)
    idx = ctx.last_index(names)
    before = idx - 1
    ok = (idx >= 0) & (before >= ctx.start[:, None])
    prev_idx = np.take_along_axis(idx, np.maximum(before, 0), axis=0)
    prev_idx[~ok] = -1
    return ctx.take(values, idx) - ctx.take(values, prev_idx)


def _window_terms(ctx: _Context, names: Sequence[str], w: int) -> list[np.ndarray]:
    values = ctx.block(names)
    return [ctx.shifted(values, k) for k in range(w)]


def _window_reduce(ctx: _Context, names: Sequence[str], w: int | None, how: str) -> np.ndarray:
    assert w is not None
    terms = _window_terms(ctx, names, w)
    stack = np.stack(terms)  # (w, n, k), fixed order: newest first
    with np.errstate(invalid="ignore", divide="ignore"):
        present = ~np.isnan(stack)
        count = present.sum(axis=0).astype(np.float64)
        if how == "count":
            return count
        filled = np.where(present, stack, 0.0)
        if how == "mean":
            total = np.zeros(stack.shape[1:])
            for term in filled:
                total = total + term
            out = total / count
        elif how == "min":
            out = np.where(present, stack, np.inf).min(axis=0)
        elif how == "max":
            out = np.where(present, stack, -np.inf).max(axis=0)
        elif how == "std":
            total = np.zeros(stack.shape[1:])
            for term in filled:
                total = total + term
            mean = total / count
            dev = np.zeros(stack.shape[1:])
            for term, ok in zip(filled, present, strict=True):
                dev = dev + np.where(ok, (term - mean) ** 2, 0.0)
            out = np.sqrt(dev / count)
            out[count < 2] = np.nan
        elif how == "slope":
            # OLS slope per hour; time runs 0, -1, ..., -(w-1) hours back from now.
            s_t = np.zeros(stack.shape[1:])
            s_tt = np.zeros(stack.shape[1:])
            s_v = np.zeros(stack.shape[1:])
            s_tv = np.zeros(stack.shape[1:])
            for k, (term, ok) in enumerate(zip(filled, present, strict=True)):
                t = -float(k)
                s_t = s_t + np.where(ok, t, 0.0)
                s_tt = s_tt + np.where(ok, t * t, 0.0)
                s_v = s_v + term
                s_tv = s_tv + term * t
            denom = count * s_tt - s_t * s_t
            out = (count * s_tv - s_t * s_v) / denom
            out[count < 2] = np.nan
        else:  # pragma: no cover - guarded by FeatureSpec
            raise ValueError(how)
    out[count == 0] = np.nan
    return out


def _delta(ctx: _Context, names: Sequence[str], w: int | None) -> np.ndarray:
    """Latest value minus the value carried forward to w hours ago."""
    assert w is not None
    last = _last(ctx, names, None)
    return last - ctx.shifted(last, w)


def _static(ctx: _Context, names: Sequence[str], _w: int | None) -> np.ndarray:
    return ctx.block(names)


def _iculos(ctx: _Context, names: Sequence[str], _w: int | None) -> np.ndarray:
    return np.repeat(ctx.iculos[:, None], len(names), axis=1)


_Op = Callable[[_Context, Sequence[str], int | None], np.ndarray]
_OPS: dict[str, _Op] = {
    "last": _last,
    "hours_since": _hours_since,
    "delta_prev": _delta_prev,
    "delta": _delta,
    "static": _static,
    "iculos": _iculos,
    "count": lambda c, n, w: _window_reduce(c, n, w, "count"),
    "mean": lambda c, n, w: _window_reduce(c, n, w, "mean"),
    "min": lambda c, n, w: _window_reduce(c, n, w, "min"),
    "max": lambda c, n, w: _window_reduce(c, n, w, "max"),
    "std": lambda c, n, w: _window_reduce(c, n, w, "std"),
    "slope": lambda c, n, w: _window_reduce(c, n, w, "slope"),
}


def _shock_index(ctx: _Context) -> np.ndarray:
    hr, sbp = _last(ctx, ("HR", "SBP"), None).T
    with np.errstate(invalid="ignore", divide="ignore"):
        out = hr / sbp
    out[~np.isfinite(out)] = np.nan
    return out


_DERIVED: dict[str, Callable[[_Context], np.ndarray]] = {"shock_index": _shock_index}


def build_features(table: CanonicalTable, spec: FeatureSpec) -> np.ndarray:
    """(rows x features) float32 matrix in `spec` order; NaN where a feature is undefined."""
    ctx = _Context(table)
    out = np.full((len(table), len(spec)), np.nan, dtype=np.float32)
    groups: dict[tuple[str, int | None], list[tuple[int, str]]] = {}
    for j, f in enumerate(spec.features):
        if f.op in _DERIVED:
            out[:, j] = _DERIVED[f.op](ctx)
        else:
            groups.setdefault((f.op, f.window), []).append((j, f.variable or ""))
    for (op, window), members in groups.items():
        cols = [j for j, _ in members]
        block = _OPS[op](ctx, [v for _, v in members], window)
        out[:, cols] = block
    return out


# --- the sepsis feature set ------------------------------------------------------------------


def _label(var: str) -> tuple[str, str]:
    v = variable(var)
    return v.label, v.unit


def sepsis_feature_spec() -> FeatureSpec:
    features: list[Feature] = []
    measured = [v for v in CLINICAL_VARIABLES if v != "EtCO2"]  # never recorded in set A
    for var in measured:
        label, unit = _label(var)
        features.append(Feature(f"{var}__last", "last", var, None, f"{label}", unit))
        features.append(Feature(f"{var}__hours_since", "hours_since", var, None, f"Hours since {label} measured", "h"))
    for var in (v for v in VITAL_VARIABLES if v in measured):
        label, unit = _label(var)
        for op, words in (("mean", "mean"), ("min", "lowest"), ("max", "highest"), ("std", "variability")):
            features.append(Feature(f"{var}__{op}_6h", op, var, 6, f"{label}, {words} over 6 h", unit))
        features.append(Feature(f"{var}__delta_6h", "delta", var, 6, f"{label}, change over 6 h", unit))
    for var in (v for v in measured if v not in VITAL_VARIABLES):
        label, unit = _label(var)
        features.append(Feature(f"{var}__delta_prev", "delta_prev", var, None, f"{label}, change since previous", unit))
    features.append(Feature("shock_index", "shock_index", None, None, "Shock index (HR/SBP)", "1"))
    for var in ("Age", "Gender", "Unit1", "Unit2", "HospAdmTime"):
        label, unit = _label(var)
        features.append(Feature(var, "static", var, None, label, unit))
    features.append(Feature("ICULOS", "iculos", "ICULOS", None, "Hours in ICU", "h"))
    return FeatureSpec("sepsis", tuple(features))

"""The models the product serves, by name. The CLI and the server look a model up here instead of
branching on it; each entry is the `RiskTask` value its own module defines (models/sepsis.py,
models/readmission.py), so adding a model is one module and one line here."""

from __future__ import annotations

from collections.abc import Mapping

from .errors import ModelError
from .readmission import READMISSION_TASK
from .sepsis import SEPSIS_TASK
from .task import RiskTask

__all__ = ["MODELS", "model_task"]

MODELS: Mapping[str, RiskTask] = {task.name: task for task in (SEPSIS_TASK, READMISSION_TASK)}


def model_task(name: str) -> RiskTask:
    try:
        return MODELS[name]
    except KeyError:
        raise ModelError(f"unknown model {name!r}; known: {', '.join(sorted(MODELS))}") from None

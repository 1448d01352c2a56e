"""The models site go-live is implemented for, by name: the CLI looks a model's `SiteTask` up here
instead of branching on it (the sepsis value lives in models/site.py, the readmission one in
models/site_readmission.py)."""

from __future__ import annotations

from collections.abc import Mapping

from .errors import ModelError
from .site import SEPSIS_SITE, SiteTask
from .site_readmission import READMISSION_SITE

__all__ = ["SITE_TASKS", "site_task"]

SITE_TASKS: Mapping[str, SiteTask] = {task.name: task for task in (SEPSIS_SITE, READMISSION_SITE)}


def site_task(name: str) -> SiteTask:
    try:
        return SITE_TASKS[name]
    except KeyError:
        raise ModelError(
            f"site go-live is implemented for {', '.join(sorted(SITE_TASKS))} only, not {name}"
        ) from None

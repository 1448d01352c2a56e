"""Where XGBoost runs: `cuda` when a GPU is present, `cpu` otherwise. Decided here and only here.

The preference comes from settings (`CDS_DEVICE`: auto | cpu | cuda, read by `cds.settings`, never
from the environment here): `auto` detects. Single-row scoring in the hook path stays on
the CPU whatever the device: a GPU adds transfer latency to one-row predictions and wins only on
batches (training, batch scoring, batch SHAP).
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess

import xgboost as xgb

__all__ = ["DEVICE_PREFERENCES", "choose_device", "serving_device"]


@functools.cache
def _gpu_present() -> bool:
    if not xgb.build_info().get("USE_CUDA"):
        return False
    if shutil.which("nvidia-smi") is None:
        return os.path.exists("/dev/nvidia0")
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return False
    return out.returncode == 0 and "GPU" in out.stdout


DEVICE_PREFERENCES = ("auto", "cpu", "cuda")


def choose_device(preference: str = "auto") -> str:
    """The device for training and batch work: `preference` unless it is `auto`, then detected."""
    wanted = preference.strip().lower()
    if wanted not in DEVICE_PREFERENCES:
        raise ValueError(f"device {preference!r} is not one of {', '.join(DEVICE_PREFERENCES)}")
    if wanted != "auto":
        return wanted
    return "cuda" if _gpu_present() else "cpu"


def serving_device() -> str:
    """The device for one-patient scoring inside a hook call."""
    return "cpu"

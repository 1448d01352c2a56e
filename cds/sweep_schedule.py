"""`cds sweep sepsis --every 15m`: the census sweep again and again, as Epic's model scores its
census every 15 minutes, until SIGINT or SIGTERM (or `--max-sweeps`).

Ticks are fixed-rate (start + k x interval): a sweep that overruns its tick skips the ticks it
missed instead of starting late ones back to back. A failing sweep (the EHR down, the store
refusing a batch) is logged and the loop waits for the next tick; it never ends the loop. A signal
stops the loop after the sweep under way has recorded and reported (a second one aborts). Logs
name the sweep's number and the error's type and code, never an identifier.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import re
import signal
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass

from fhir_mappings import CDSError

from .sweep import SweepOutcome

__all__ = ["SweepTick", "parse_interval", "stop_on_signals", "sweep_every"]

log = logging.getLogger("cds.sweep")
_UNITS = {"": 1.0, "s": 1.0, "m": 60.0, "h": 3600.0}
_INTERVAL = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smh]?)\s*$")


def parse_interval(text: str) -> float:
    """Seconds in `90`, `30s`, `15m` or `1h`; ValueError for anything else or for zero."""
    found = _INTERVAL.match(text.lower())
    if found is None:
        raise ValueError(f"not an interval: {text!r} (e.g. 30s, 15m, 1h)")
    seconds = float(found.group(1)) * _UNITS[found.group(2)]
    if seconds <= 0:
        raise ValueError("the interval must be longer than 0 s")
    return seconds


@dataclass(frozen=True)
class SweepTick:
    """One sweep of the loop: its outcome, or why it failed (the error's type and message)."""

    number: int
    outcome: SweepOutcome | None
    error: str | None = None


async def sweep_every(
    sweep: Callable[[], Awaitable[SweepOutcome]],
    *,
    every_s: float,
    stop: asyncio.Event,
    max_sweeps: int | None = None,
    on_tick: Callable[[SweepTick], None] = lambda tick: None,
    clock: Callable[[], float] = time.monotonic,
) -> list[SweepTick]:
    """Run `sweep` now and at every tick after until `stop` is set or `max_sweeps` have run;
    each tick to `on_tick` as it ends. A sweep under way when `stop` is set runs to its end."""
    ticks: list[SweepTick] = []
    due = clock()
    while not stop.is_set() and (max_sweeps is None or len(ticks) < max_sweeps):
        number = len(ticks) + 1
        try:
            tick = SweepTick(number, await sweep())
        except CDSError as exc:  # the EHR down or refusing, the store refusing: ours, safe to word
            log.error(
                "census sweep failed; retried at the next tick",
                extra={"sweep": {"number": number, "error": type(exc).__name__, "code": exc.code}},
            )
            tick = SweepTick(number, None, f"{type(exc).__name__}: {exc}")
        except Exception as exc:  # noqa: BLE001 - a bug must not end the loop either; its text may hold data
            log.exception(
                "census sweep failed unexpectedly; retried at the next tick",
                extra={"sweep": {"number": number, "error": type(exc).__name__}},
            )
            tick = SweepTick(number, None, type(exc).__name__)
        ticks.append(tick)
        on_tick(tick)
        if stop.is_set() or (max_sweeps is not None and len(ticks) >= max_sweeps):
            break
        due += every_s
        now = clock()
        if due <= now:  # overran: the next tick still to come, not the ones missed
            missed = math.floor((now - due) / every_s) + 1
            log.warning("census sweep overran its interval", extra={"sweep": {"skipped_ticks": missed}})
            due += missed * every_s
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), due - now)
    return ticks


@contextlib.contextmanager
def stop_on_signals(stop: asyncio.Event) -> Iterator[None]:
    """SIGINT and SIGTERM set `stop` (the sweep under way ends first); after the first, the
    handlers are the defaults again, so a second signal aborts. Restored on exit."""
    loop = asyncio.get_running_loop()
    signals = (signal.SIGINT, signal.SIGTERM)

    def asked(sig: signal.Signals) -> None:
        log.warning("stopping after the current sweep", extra={"sweep": {"signal": sig.name}})
        stop.set()
        for s in signals:
            loop.remove_signal_handler(s)

    for s in signals:
        loop.add_signal_handler(s, asked, s)
    try:
        yield
    finally:
        for s in signals:
            loop.remove_signal_handler(s)

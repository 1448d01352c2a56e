"""The sweep loop's own rules, on sweeps that take a known time: fixed-rate ticks, a failing
sweep retried at the next tick, a signal that stops the loop after the sweep under way."""

from __future__ import annotations

import asyncio
import os
import signal
from collections import Counter

import pytest

from cds.errors import FHIRUnavailable
from cds.sweep import SweepOutcome
from cds.sweep_schedule import parse_interval, stop_on_signals, sweep_every


def _outcome() -> SweepOutcome:
    return SweepOutcome("sepsis", [], [], Counter(), None, "cpu", "1")


def test_parse_interval_reads_seconds_minutes_and_hours() -> None:
    assert [parse_interval(t) for t in ("90", "30s", "15m", "1h", "0.5s", " 2M ")] == [
        90.0,
        30.0,
        900.0,
        3600.0,
        0.5,
        120.0,
    ]
    for bad in ("", "0s", "15 minutes", "-1m", "1d", "m"):
        with pytest.raises(ValueError):
            parse_interval(bad)


def test_failing_sweeps_are_retried_at_the_next_tick_and_the_loop_keeps_its_rate() -> None:
    """Sweep 1: the EHR is down; sweep 2: a bug; sweep 3 works; sweep 4 overruns two ticks. The
    ticks are start + k x interval, the overrun skips the ticks it missed."""
    every = 0.5  # wide enough for a busy machine's scheduling jitter
    started: list[float] = []

    async def scenario() -> list[object]:
        loop = asyncio.get_running_loop()

        async def sweep() -> SweepOutcome:
            started.append(loop.time())
            n = len(started)
            if n == 1:
                raise FHIRUnavailable("the EHR could not be reached", kind="unreachable")
            if n == 2:
                raise KeyError("a patient id the message must not carry")
            if n == 4:
                await asyncio.sleep(2.2 * every)
            return _outcome()

        seen: list[object] = []
        ticks = await sweep_every(
            sweep, every_s=every, stop=asyncio.Event(), max_sweeps=5, on_tick=seen.append, clock=loop.time
        )
        assert seen == ticks
        return list(ticks)

    ticks = asyncio.run(scenario())
    assert [t.number for t in ticks] == [1, 2, 3, 4, 5]  # type: ignore[attr-defined]
    errors = [t.error for t in ticks]  # type: ignore[attr-defined]
    assert errors[0] is not None and errors[0].startswith("FHIRUnavailable: the EHR could not be reached")
    assert errors[1] == "KeyError" and errors[2:] == [None, None, None]  # the bug's text is not kept
    offsets = [round((t - started[0]) / every) for t in started]
    assert offsets == [0, 1, 2, 3, 6]  # sweep 4 ran from tick 3 into tick 5: the next one is tick 6


def test_a_signal_stops_the_loop_after_the_sweep_under_way() -> None:
    """SIGTERM during sweep 2: sweep 2 completes, no sweep 3 starts, the loop ends at once (not at
    the next tick), and the default handlers are back afterwards."""
    before = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    finished: list[int] = []

    async def scenario() -> int:
        stop = asyncio.Event()

        async def sweep() -> SweepOutcome:
            n = len(finished) + 1
            if n == 2:
                os.kill(os.getpid(), signal.SIGTERM)
                await asyncio.sleep(0.2)  # the handler runs meanwhile; this sweep still ends
            finished.append(n)
            return _outcome()

        with stop_on_signals(stop):
            ticks = await sweep_every(sweep, every_s=0.1, stop=stop, max_sweeps=5)
        assert stop.is_set()
        return len(ticks)

    assert asyncio.run(scenario()) == 2
    assert finished == [1, 2]
    assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)) == before

"""Admission control: a hook call either gets its answer within its budget or a fast "no
guidance", and the work of a call nobody waits for any more is dropped.

Two bounds, both settings:
- `Gate`: calls in flight per endpoint family, and the bytes their bodies may hold together (by
  `Content-Length`; a chunked body counts as the largest allowed). Beyond either, a call is
  answered at once, before its body is read: `{"cards": []}` for a hook (an EHR treats that as no
  guidance), 503 with `Retry-After` for feedback. This bounds memory whatever the offered load.
- `Lane`: the CPU-heavy steps of a hook (parsing the body, mapping + features + score + SHAP)
  run in a few worker threads, so the event loop keeps accepting, timing out and answering
  `/healthz`. Callers wait in a bounded FIFO; a caller gives up (`Overloaded`) when the wait it
  can expect, or has had, exceeds `max_wait_s` or its own deadline. A step is never started for
  a caller whose deadline has passed, and a cancelled caller's step is not started either.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

from .errors import BudgetSpent, Overloaded

__all__ = ["Deadline", "Gate", "Lane"]

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Deadline:
    """An absolute time on the monotonic clock by which an answer must be sent."""

    at: float

    @classmethod
    def after(cls, seconds: float, *, start: float | None = None) -> Deadline:
        return cls((time.monotonic() if start is None else start) + seconds)

    def remaining(self) -> float:
        return self.at - time.monotonic()

    def expired(self) -> bool:
        return time.monotonic() >= self.at

    def check(self) -> None:
        """Raise BudgetSpent when the deadline has passed (called between steps)."""
        if self.expired():
            raise BudgetSpent("the hook's time budget was spent")


class Gate:
    """At most `limit` calls and `max_bytes` of bodies in flight; `try_enter` never waits."""

    def __init__(self, limit: int, *, max_bytes: int | None = None) -> None:
        self.limit = limit
        self.max_bytes = max_bytes
        self.in_flight = 0
        self.bytes = 0

    def try_enter(self, body_bytes: int = 0) -> bool:
        over_bytes = (
            self.max_bytes is not None and self.in_flight and self.bytes + body_bytes > self.max_bytes
        )
        if self.in_flight >= self.limit or over_bytes:
            return False
        self.in_flight += 1
        self.bytes += body_bytes
        return True

    def leave(self, body_bytes: int = 0) -> None:
        self.in_flight -= 1
        self.bytes -= body_bytes


class Lane:
    """`concurrency` worker threads for CPU-heavy steps, with a bounded, deadline-aware queue.

    A step's `stage` orders the queue: a call that has already been parsed (stage 1) is served
    before calls that have not (stage 0), so work already invested is not thrown away at the
    next step, and an admitted call waits in the queue about once, not once per step."""

    def __init__(self, concurrency: int = 2, *, max_waiting: int = 16, max_wait_s: float = 0.5) -> None:
        self.concurrency = max(1, concurrency)
        self.max_waiting = max_waiting
        self.max_wait_s = max_wait_s
        self._executor = ThreadPoolExecutor(self.concurrency, thread_name_prefix="cds-cpu")
        self._free = self.concurrency
        self._heap: list[tuple[int, int, asyncio.Future[None]]] = []  # (-stage, arrival, waiter)
        self._arrivals = itertools.count()
        self._waiting: Counter[int] = Counter()  # live waiters by stage
        self.step_s = 0.02  # moving average of a step's duration: predicts the wait

    @property
    def waiting(self) -> int:
        return sum(self._waiting.values())

    def expected_wait(self, stage: int = 0) -> float:
        """Seconds a caller at `stage` can expect to wait: the steps queued at its stage or later, and
        those running."""
        busy = self.concurrency - self._free
        ahead = sum(n for s, n in self._waiting.items() if s >= stage)
        return (ahead + busy) * self.step_s / self.concurrency

    def saturated(self) -> bool:
        """A new caller would be refused: checked at the door, before a body is read or a token
        verified, so that at 10x capacity a refusal costs next to nothing."""
        return self.waiting >= self.max_waiting or self.expected_wait() > self.max_wait_s

    def _release(self) -> None:
        while self._heap:
            _, _, waiter = heapq.heappop(self._heap)
            if not waiter.done():
                waiter.set_result(None)
                return
        self._free += 1

    async def _acquire(self, deadline: Deadline, stage: int) -> None:
        if self._free > 0 and not self.waiting:
            self._free -= 1
            return
        patience = min(self.max_wait_s, deadline.remaining())
        refused = self.saturated() if stage == 0 else False
        if refused or self.expected_wait(stage) > patience:
            raise Overloaded("the service is at capacity")
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._heap, (-stage, next(self._arrivals), waiter))
        self._waiting[stage] += 1
        try:
            await asyncio.wait_for(asyncio.shield(waiter), timeout=max(0.0, patience))
        except (TimeoutError, asyncio.CancelledError) as exc:
            if waiter.done() and not waiter.cancelled():
                self._release()  # we were handed the slot just as we gave up: pass it on
            else:
                waiter.cancel()  # left in the heap, skipped when its turn comes
            if isinstance(exc, asyncio.CancelledError):
                raise
            raise Overloaded("the service is at capacity") from exc
        finally:
            self._waiting[stage] -= 1

    async def run(self, deadline: Deadline, fn: Callable[..., T], *args: Any, stage: int = 0) -> T:
        """Run `fn(*args)` in a worker thread once a slot is free, unless the deadline passes first."""
        await self._acquire(deadline, stage)
        loop = asyncio.get_running_loop()

        def step() -> T:
            deadline.check()  # the caller may have waited past its budget
            started = time.perf_counter()
            try:
                return fn(*args)
            finally:
                self.step_s = 0.8 * self.step_s + 0.2 * (time.perf_counter() - started)

        try:
            future = self._executor.submit(step)
        except BaseException:
            self._release()
            raise
        # The slot is held until the thread is done, even when the caller is cancelled meanwhile.
        future.add_done_callback(lambda _: loop.call_soon_threadsafe(self._release))
        return await asyncio.wrap_future(future)

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)

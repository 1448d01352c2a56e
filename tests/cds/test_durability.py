"""kill -9 durability, per store: every card and every feedback the server acknowledged (200) is in
the store after the server was killed mid-stream and restarted, twice. The longer run with figures
is benchmarks/durability.py."""

from __future__ import annotations

from pathlib import Path

import pytest

from testkit.durability import run_kill_cycles


@pytest.mark.slow
@pytest.mark.parametrize("store", ["sqlite", "postgres"])
def test_every_acknowledged_record_survives_kill_9(
    store: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    database_url = request.getfixturevalue("postgres_url") if store == "postgres" else None
    run = run_kill_cycles(tmp_path / "var", store=store, database_url=database_url, cycles=2, segment_s=1.5)
    assert all(n > 0 for n in run.acked_per_cycle), run.figures()  # each kill hit a server that was answering
    assert run.cut > 0 and run.feedback_acked, run.figures()  # calls were in flight when it was killed
    assert run.lost_cards == [] and run.lost_feedback == [], run.figures()
    assert run.cards_found == len(run.cards_acked) and run.feedback_found == len(run.feedback_acked)
    assert run.unchanged_after_restart == len(run.feedback_acked), run.figures()

"""Shadow, canary, guardrail rollback, promotion and rollback end to end over HTTP: two app instances
(as two machines would be) sharing one record store and the real Redis, real hook calls, the
`cds` commands as an operator runs them. Registry versions are copies of the committed sepsis
version 2 (same booster): 3 identical, 6 alerting on every score (threshold ~0), 7 failing at
scoring (a calibration map of mismatched lengths)."""

from __future__ import annotations

import asyncio
import itertools
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from cds import Settings
from cds.stores import SQLiteStore
from demo_ehr import LoopbackServer
from testkit.helpers import feedback, serve_cds
from testkit.lifecycle import (
    HookHammer,
    call_sepsis,
    card_version,
    copy_version,
    golden_stays,
    serving,
    tmp_registry,
    wait_for,
)
from testkit.metrics import metric as samples_of

KEY = "lifecycle-test-key-0123456789"


@dataclass
class Fleet:
    registry: Path
    store_path: Path
    var: Path
    servers: list[LoopbackServer]
    clients: list[httpx.Client]
    redis_url: str
    redis_prefix: str

    @property
    def env(self) -> dict[str, str]:
        return {
            "CDS_MODEL_DIR": str(self.registry),
            "CDS_STORE_PATH": str(self.store_path),
            "CDS_VAR_DIR": str(self.var),
            "CDS_PSEUDONYM_KEY": KEY,
            "CDS_REDIS_URL": self.redis_url,
            "CDS_REDIS_PREFIX": self.redis_prefix,
        }

    def cds(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "cds.cli", *args],
            capture_output=True,
            text=True,
            timeout=300,
            env={**os.environ, **self.env},
        )

    def store_call(self, fn: Any) -> Any:
        async def run() -> Any:
            store = SQLiteStore(self.store_path)
            try:
                return await fn(store)
            finally:
                await store.close()

        return asyncio.run(run())

    def all_serve(self, wanted: dict[str, str]) -> bool:
        return all(serving(s.url) == wanted for s in self.servers)


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory, redis_url: str) -> Iterator[Fleet]:
    import redis

    base = tmp_path_factory.mktemp("lifecycle")
    registry = tmp_registry(base / "models")
    copy_version(registry, "sepsis", "2", "3")
    copy_version(
        registry, "sepsis", "2", "6", threshold=1e-6, risk_bands={"low": 0.0, "moderate": 5e-7, "high": 1e-6}
    )
    copy_version(
        registry, "sepsis", "2", "7", calibration={"method": "isotonic", "x": [0, 1], "y": [0, 0.5, 1]}
    )
    prefix = f"cds-test:lifecycle-{os.getpid()}:"
    servers, clients = [], []
    for i in range(2):
        settings = Settings(
            _env_file=None,
            model_dir=registry,
            var_dir=base / f"var{i}",
            store_path=base / "shared.sqlite3",
            pseudonym_key=KEY,
            auth_disabled_for_local_demo=True,
            redis_url=redis_url,
            redis_prefix=prefix,
            model_poll_s=0.2,
            canary_min_calls=8,
            canary_max_latency_ratio=1000.0,  # latency is not what these tests are about
            hook_timeout_s=5.0,
        )
        servers.append(serve_cds(settings).__enter__())
        clients.append(httpx.Client(base_url=servers[-1].url, timeout=20))
    try:
        yield Fleet(registry, base / "shared.sqlite3", base / "cli-var", servers, clients, redis_url, prefix)
    finally:
        for client in clients:
            client.close()
        for server in servers:
            server.stop()
        client = redis.Redis.from_url(redis_url)
        keys = list(client.scan_iter(match=prefix + "*"))
        if keys:
            client.delete(*keys)


def test_shadow_scores_every_call_beside_the_champion_never_shown(fleet: Fleet) -> None:
    assert fleet.all_serve({"champion": "2"})
    with HookHammer([s.url for s in fleet.servers]) as hammer:
        done = fleet.cds(
            "models", "promote", "sepsis", "3", "--to", "shadow", "--reason", "try v3", "--actor", "alice"
        )
        assert done.returncode == 0, done.stderr
        assert "golden set" in done.stdout and "gate PASSED" in done.stdout
        wait_for(
            lambda: fleet.all_serve({"champion": "2", "shadow": "3"}), what="both servers to load the shadow"
        )
        wait_for(lambda: len(hammer.answers) > 20, what="calls during the switch")
    assert hammer.failures == [] and {s for s, _ in hammer.answers} == {200}
    assert {v for _, v in hammer.answers} == {"2"}  # the shadow is never shown

    cards = []
    for client, stay in zip(itertools.cycle(fleet.clients), golden_stays("shock", 8), strict=False):
        body = call_sepsis(client, stay)
        assert card_version(body) == ("2", None)
        cards.append(body["cards"][0]["uuid"])

    def scores() -> dict[str, dict[str, Any]] | None:
        rows = fleet.store_call(lambda store: store.model_scores("sepsis"))
        by_card: dict[str, dict[str, Any]] = {}
        for r in rows:
            by_card.setdefault(r.card_uuid, {})[r.role] = r
        mine = {c: by_card.get(c, {}) for c in cards}
        return mine if all({"champion", "shadow"} <= set(v) for v in mine.values()) else None

    found = wait_for(scores, what="the shadow's scores beside the champion's")
    for rows in found.values():
        champion, shadow = rows["champion"], rows["shadow"]
        assert (champion.version, shadow.version) == ("2", "3")
        assert shadow.probability == pytest.approx(champion.probability) and shadow.band == champion.band
    report = fleet.cds("shadow", "report", "sepsis")
    assert report.returncode == 0, report.stderr
    import json

    shadow = json.loads(report.stdout)["shadows"]["3"]
    assert shadow["pairs"] >= len(cards) and shadow["band_agreement"] == 1.0
    assert shadow["score_distribution"]["mean_absolute_difference"] == pytest.approx(0.0, abs=1e-9)
    # Outcomes joined by pseudonym (as a site exports them): every other patient septic from the
    # time of its card on, the others never.
    patients = sorted({rows["champion"].patient for rows in found.values()})
    outcomes = fleet.store_path.parent / "outcomes.csv"
    lines = ["pseudonym,onset"]
    for i, patient in enumerate(patients):
        first = min(r["champion"].created for r in found.values() if r["champion"].patient == patient)
        onset = datetime.fromtimestamp(first, UTC).isoformat() if i % 2 == 0 else ""
        lines.append(f"{patient},{onset}")
    outcomes.write_text("\n".join(lines) + "\n")
    joined = fleet.cds("shadow", "report", "sepsis", "--outcomes", str(outcomes))
    assert joined.returncode == 0, joined.stderr
    figures = json.loads(joined.stdout)["shadows"]["3"]["outcomes"]
    assert figures["patients"] == len(patients) and figures["cards"] >= len(cards)
    assert 0 < figures["positive_cards"] < figures["cards"]
    answer, challenger = figures["auroc"]["answer"], figures["auroc"]["shadow"]
    assert answer == challenger  # the same scores on the same cards
    assert figures["auroc_difference"]["shadow_minus_answer"]["estimate"] == 0.0
    assert all(p not in joined.stdout for p in patients)  # aggregates only: no pseudonym printed
    texts = [httpx.get(f"{s.url}/metrics").text for s in fleet.servers]
    agreed = sum(
        samples_of(t, "cds_shadow_agreement_total", challenger="3", agreement="agree") for t in texts
    )
    assert agreed >= len(cards) and not any(
        samples_of(t, "cds_shadow_agreement_total", agreement="disagree") for t in texts
    )
    assert all(samples_of(t, "cds_model_serving", role="shadow", version="3") == 1 for t in texts)


def test_canary_answers_for_a_sticky_share_of_patients_on_every_instance(fleet: Fleet) -> None:
    done = fleet.cds(
        "models",
        "promote",
        "sepsis",
        "3",
        "--to",
        "canary",
        "--share",
        "0.5",
        "--reason",
        "half",
        "--data",
        str(fleet.registry / "no-such-data"),
    )
    assert done.returncode == 3 and "no held-out data" in done.stdout  # the gate needs its data
    # What the gate would have allowed with data (tested in test_lifecycle_gate.py), set directly.
    fleet.store_call(
        lambda store: store.set_version_status("sepsis", "3", "canary", share=0.5, audit={"actor": "test"})
    )
    wait_for(
        lambda: fleet.all_serve({"champion": "2", "canary": "3"}), what="both servers to load the canary"
    )
    answered: dict[str, set[tuple[str, str | None]]] = {}
    cards: dict[str, list[dict[str, Any]]] = {"2": [], "3": []}
    for stay in golden_stays("normal", 24, first_patient=700_000):
        for client in fleet.clients:
            body = call_sepsis(client, stay)
            answered.setdefault(stay.patient_id, set()).add(card_version(body))
            assert body["cards"][0]["source"]["label"].endswith(f"v{card_version(body)[0]}")
            cards[card_version(body)[0]].append(body["cards"][0])
    # Clinicians override every canary card and none of the champion's.
    for i, card in enumerate(cards["3"]):
        reason = card["overrideReasons"][0]
        sent = fleet.clients[i % 2].post(
            "/cds-services/sepsis-risk/feedback",
            json={"feedback": [feedback(card["uuid"], "overridden", reason=reason)]},
        )
        assert sent.status_code == 200, sent.text
    assert all(len(v) == 1 for v in answered.values())  # one patient, one version, on both instances
    versions = {next(iter(v)) for v in answered.values()}
    assert versions == {("2", "champion"), ("3", "canary")}
    report = fleet.cds("canary", "report", "sepsis")
    import json

    figures = json.loads(report.stdout)["versions"]
    assert figures["3"]["role"] == ["canary"] and figures["3"]["counters"]["calls"] >= len(cards["3"])
    overrides = figures["3"]["overrides"]
    assert overrides["overridden"] == overrides["feedback"] == len(cards["3"])
    assert overrides["by_reason"] == {cards["3"][0]["overrideReasons"][0]["code"]: len(cards["3"])}
    assert figures["3"]["counters"]["feedback"] == figures["3"]["counters"]["overrides"] == len(cards["3"])
    assert figures["2"]["overrides"]["feedback"] == 0
    texts = [httpx.get(f"{s.url}/metrics").text for s in fleet.servers]
    rows = [r for r in fleet.store_call(lambda store: store.model_scores("sepsis")) if r.role != "shadow"]
    patients = sorted({r.patient for r in rows})
    outcomes = fleet.store_path.parent / "canary-outcomes.csv"
    first = {p: min(r.created for r in rows if r.patient == p) for p in patients}
    outcomes.write_text(
        "pseudonym,onset\n"
        + "".join(
            f"{p},{datetime.fromtimestamp(first[p], UTC).isoformat() if i % 3 == 0 else ''}\n"
            for i, p in enumerate(patients)
        )
    )
    joined = fleet.cds("canary", "report", "sepsis", "--outcomes", str(outcomes))
    assert joined.returncode == 0, joined.stderr
    by_version = json.loads(joined.stdout)["versions"]
    for version in ("2", "3"):
        mine = [r for r in rows if r.version == version]
        assert by_version[version]["outcomes"]["cards"] == len(mine)
        assert by_version[version]["outcomes"]["patients"] == len({r.patient for r in mine})
    canary_calls = sum(
        samples_of(t, "cds_canary_calls_total", service="sepsis-risk", version="3") for t in texts
    )
    assert canary_calls == len(cards["3"])


def test_a_canary_alerting_far_more_than_the_champion_is_rolled_back(fleet: Fleet) -> None:
    fleet.store_call(
        lambda store: store.set_version_status("sepsis", "6", "canary", share=0.5, audit={"actor": "test"})
    )
    wait_for(lambda: fleet.all_serve({"champion": "2", "canary": "6"}), what="the alerting canary")
    stays = iter(golden_stays("normal", 200, first_patient=600_000))

    def rolled_back() -> bool:
        call_sepsis(fleet.clients[0], next(stays))
        call_sepsis(fleet.clients[1], next(stays))
        return any(
            s.version == "6" and s.status == "retired"
            for s in fleet.store_call(lambda st: st.version_states())
        )

    wait_for(rolled_back, what="the guardrail rollback")
    wait_for(lambda: fleet.all_serve({"champion": "2"}), what="both servers to drop the canary")
    audit = fleet.store_call(lambda store: _audit(store))
    rollback = [e for e in audit if e["status"] == "retired" and e["version"] == "6"]
    assert len(rollback) == 1  # one worker wrote it, the other found it done
    assert rollback[0]["actor"] == "guardrail" and rollback[0]["reason"].startswith("alert-rate")
    events = [httpx.get(f"{s.url}/metrics").text for s in fleet.servers]
    rolled = [samples_of(t, "cds_model_events_total", model="sepsis", event="rollback") for t in events]
    assert sorted(rolled) == [0.0, 1.0]  # counted by the worker that wrote it, once
    for client, stay in zip(fleet.clients, golden_stays("normal", 2, first_patient=500_000), strict=True):
        assert card_version(call_sepsis(client, stay)) == ("2", None)


def test_a_failing_canary_never_fails_a_call_and_is_rolled_back_on_its_error_rate(fleet: Fleet) -> None:
    fleet.store_call(
        lambda store: store.set_version_status("sepsis", "7", "canary", share=0.5, audit={"actor": "test"})
    )
    wait_for(lambda: fleet.all_serve({"champion": "2", "canary": "7"}), what="the failing canary")
    stays = iter(golden_stays("normal", 200, first_patient=400_000))
    answers = []

    def rolled_back() -> bool:
        for client in fleet.clients:
            answers.append(card_version(call_sepsis(client, next(stays))))
        return any(
            s.version == "7" and s.status == "retired"
            for s in fleet.store_call(lambda st: st.version_states())
        )

    wait_for(rolled_back, what="the error-rate rollback")
    assert {v for v, _ in answers} == {"2"}  # the champion answered for the canary's patients
    rollback = [e for e in fleet.store_call(_audit) if e["version"] == "7" and e["status"] == "retired"]
    assert rollback[0]["reason"].startswith("error-rate")


def test_activation_and_rollback_switch_running_servers_without_a_failed_call(fleet: Fleet) -> None:
    with HookHammer([s.url for s in fleet.servers]) as hammer:
        done = fleet.cds("models", "activate", "sepsis", "3")
        assert done.returncode == 0, done.stderr
        wait_for(lambda: all(serving(s.url).get("champion") == "3" for s in fleet.servers), what="v3 active")
        done = fleet.cds("models", "rollback", "sepsis", "--reason", "back to 2", "--actor", "bob")
        assert done.returncode == 0, done.stderr
        wait_for(lambda: all(serving(s.url).get("champion") == "2" for s in fleet.servers), what="v2 back")
        wait_for(lambda: len(hammer.answers) > 30, what="calls during the switches")
    assert hammer.failures == [] and {s for s, _ in hammer.answers} == {200}
    assert {v for _, v in hammer.answers} <= {"2", "3"} and "none" not in {v for _, v in hammer.answers}
    last = fleet.store_call(_audit)[-1]
    assert (last["version"], last["status"], last["actor"], last["action"]) == (
        "2",
        "active",
        "bob",
        "rollback",
    )
    shown = fleet.cds("models", "list", "sepsis")
    assert any(line.split()[1:3] == ["3", "retired"] for line in shown.stdout.splitlines()[2:])


async def _audit(store: SQLiteStore) -> list[dict[str, Any]]:
    return [e.details async for e in store.iter_audit() if e.kind == "model-status"]

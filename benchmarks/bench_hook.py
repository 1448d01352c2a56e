#!/usr/bin/env python
"""Benchmark: the sepsis-risk hook, 72-hour stays, one worker, JWT verification, SHAP and the
durable record write included: p50/p99 over HTTP against a naive FastAPI peer in the same run,
and where the time goes (a stage breakdown measured in this process with the server's code).

- Workload: the 30 held-out set-A stays of 72 hours with the most values (400-850 Observations,
  ~320-570 kB per request; benchmarks/load_hook.py picks them), cycled; a synthetic stay when set
  A is absent.
- HTTP: `cds serve` (one worker, secure mode: every call carries its own ES384 JWT, verified
  against the loopback test EHR's JWKS; SQLite record store and replay store in a temporary
  directory) and the naive peer (benchmarks/naive_peer.py) run side by side; calls alternate
  between them on one keep-alive connection each, sequentially, so machine noise hits both alike.
- Stages, in this process, each timed alone over the same bodies: parse (depth check, orjson,
  HookRequest), auth (CallerVerifier.verify with the SQLite replay store), mapping (prefetch ->
  canonical table), features (the scored hour), score, SHAP, card, RiskAssessment, record write
  (SQLiteStore.put_card: WAL, synchronous=FULL, with its audit entry), response (orjson); and the
  whole `SEPSIS.score` as one, to check the sum.

Prints the machine, its load, both servers' figures, the ratio and the stages as one JSON
object. Loopback only; stops by itself. Usage:
    .venv/bin/python -m benchmarks.bench_hook [--calls 300] [--peer-every 3] [--json-out FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import http.client
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]

HOURS = 72


def stay_frame(data_dir: Path) -> tuple[pd.DataFrame, str]:
    """The set-A patient with the most values in 72 hours, else a dense synthetic stay."""
    path = data_dir / "physionet2019" / "setA.parquet"
    if path.exists():
        df = pd.read_parquet(path)
        df = df[df["ICULOS"] <= HOURS]
        pid = values_per_patient(df).idxmax()
        return df[df["patient"] == pid].reset_index(drop=True), f"set A patient {pid}"
    rng = np.random.default_rng(0)
    rows = []
    for h in range(1, HOURS + 1):
        row = {
            "patient": 1,
            "ICULOS": h,
            "Age": 64.2,
            "Gender": 1,
            "Unit1": 1,
            "Unit2": 0,
            "HospAdmTime": -3.0,
        }
        for v, mu in (
            ("HR", 92),
            ("O2Sat", 96),
            ("SBP", 118),
            ("DBP", 64),
            ("MAP", 80),
            ("Resp", 20),
            ("Temp", 37.4),
        ):
            row[v] = float(rng.normal(mu, mu * 0.05))
        for v, mu in (
            ("Lactate", 2.0),
            ("WBC", 11),
            ("Creatinine", 1.1),
            ("Glucose", 130),
            ("Potassium", 4.1),
            ("Hgb", 10.5),
            ("Platelets", 210),
            ("BUN", 22),
            ("FiO2", 0.4),
        ):
            if h % 3 == 0:
                row[v] = float(rng.normal(mu, mu * 0.1))
        rows.append(row)
    return pd.DataFrame(rows), "synthetic dense stay"


def values_per_patient(df: pd.DataFrame) -> pd.Series:
    """Non-missing values per set-A patient in the first 72 ICU hours (shared with load_hook.py)."""
    df = df[df["ICULOS"] <= HOURS]
    values = df.drop(columns=["patient", "hour", "SepsisLabel"]).notna().sum(axis=1)
    return values.groupby(df["patient"]).sum()


def percentiles(
    samples: list[float], digits: int = 2, points: tuple[float, ...] = (50, 99), with_max: bool = False
) -> dict[str, float]:
    """p50/p99 (or the given percentiles, and the max) in milliseconds of durations in seconds
    (shared with bench_mapping.py and load_hook.py)."""
    ms = np.array(samples) * 1000
    found = {f"p{p:g}_ms": round(float(np.percentile(ms, p)), digits) for p in points}
    if with_max:
        found["max_ms"] = round(float(ms.max()), digits)
    return {**found, "n": len(ms)}


STAGES = (
    "parse",
    "auth",
    "mapping",
    "features",
    "score",
    "shap",
    "card",
    "risk_assessment",
    "record_write",
    "response",
)


async def stage_breakdown(
    bodies: list[bytes], identity: Any, aud: str, calls: int, var: Path
) -> dict[str, Any]:
    """Each stage of a hook call timed alone, with the server's own code and settings."""
    import httpx

    from cds.app import make_verifier
    from cds.audit import card_audit
    from cds.bodies import parse_model
    from cds.metrics import Metrics
    from cds.schemas import HookRequest
    from cds.settings import Settings, TrustedIssuer
    from cds.stores import CardRecord, SQLiteStore
    from fhir_mappings import (
        PatientRecord,
        Pseudonymizer,
        build_risk_assessment,
        select_encounter,
        to_canonical,
    )
    from hooks import SEPSIS, ScoringInput, group_contributions, sepsis_card, split_drivers
    from hooks.sepsis import TOP_DRIVERS, TOP_GAPS
    from hooks.service import feature_hash
    from models import TRAINED_MAX_ICU_HOURS, ModelRegistry, RiskModel, model_task

    settings = Settings(
        var_dir=var,
        pseudonym_key="bench-key-0123456789abcdef",
        auth_issuers=(TrustedIssuer(iss=identity.issuer, jwks_url=identity.jwks_url),),
    )
    task = model_task("sepsis")
    spec = task.feature_spec()
    model = RiskModel(ModelRegistry().load("sepsis", spec), spec, nthread=1)  # as cds.app.load_models
    pseudo = Pseudonymizer(b"bench-key-0123456789abcdef")
    store = SQLiteStore(var / "stages.sqlite3")
    times: dict[str, list[float]] = {name: [] for name in (*STAGES, "sepsis_score_whole")}
    cpu_times: dict[str, list[float]] = {name: [] for name in times}
    warm = 10
    tokens = [identity.token(aud) for _ in range(calls + warm)]
    gc.collect()
    gc.freeze()  # as the server does once started (cds.app._freeze_startup_heap)
    clock, cpu = time.perf_counter, time.process_time  # wall, and CPU of every thread of this process
    async with httpx.AsyncClient() as http:
        verifier = make_verifier(settings, http, Metrics())
        try:
            for i in range(calls + warm):
                keep = i >= warm
                lap: dict[str, tuple[float, float]] = {}
                raw = bodies[i % len(bodies)]
                t, c = clock(), cpu()
                request = parse_model(raw, HookRequest, max_depth=settings.max_json_depth)
                lap["parse"] = (clock() - t, cpu() - c)
                t, c = clock(), cpu()
                await verifier.verify(tokens[i], aud)
                lap["auth"] = (clock() - t, cpu() - c)
                now = datetime.now(UTC)
                fetched = {
                    k: [e["resource"] for e in v.get("entry", ())] if v.get("resourceType") == "Bundle" else v
                    for k, v in (request.prefetch or {}).items()
                }
                context = request.context
                inp = ScoringInput(context, fetched, model, now, pseudo, str(uuid.uuid4()), "")
                t, c = clock(), cpu()
                SEPSIS.score(inp)
                lap["sepsis_score_whole"] = (clock() - t, cpu() - c)
                t, c = clock(), cpu()
                patient_id = context["patientId"]
                encounter = select_encounter(fetched["encounters"], context.get("encounterId"), patient_id)
                observations = {}
                for key in ("vitals", "labs"):
                    for r in fetched.get(key) or ():
                        observations[r.get("id") or (key, len(observations))] = r
                record = PatientRecord(
                    patient_id, fetched.get("patient"), encounter, list(observations.values()), {}
                )
                stay = to_canonical(
                    record, as_of=now, pseudonymizer=pseudo, source="", max_hours=TRAINED_MAX_ICU_HOURS
                )
                lap["mapping"] = (clock() - t, cpu() - c)
                t, c = clock(), cpu()
                row = task.serving_row(stay.table, spec)
                lap["features"] = (clock() - t, cpu() - c)
                t, c = clock(), cpu()
                probability = float(model.predict(row)[0])
                band = model.band(probability)
                lap["score"] = (clock() - t, cpu() - c)
                t, c = clock(), cpu()
                explanation = model.explain(row[0])
                lap["shap"] = (clock() - t, cpu() - c)
                card_uuid = str(uuid.uuid4())
                t, c = clock(), cpu()
                drivers, gaps = split_drivers(
                    group_contributions(explanation.contributions), TOP_DRIVERS, min_abs=0.01
                )
                card = sepsis_card(
                    card_uuid=card_uuid,
                    probability=probability,
                    band=band,
                    level=model.band_level(band),
                    threshold=model.threshold,
                    icu_hour=stay.current_hour,
                    model_label=model.manifest.title,
                    model_version=model.version,
                    drivers=drivers,
                    gaps=gaps[:TOP_GAPS],
                    all_contributions=explanation.contributions,
                    base_value=explanation.base_value,
                    patient_id=patient_id,
                    encounter_id=encounter["id"],
                )
                lap["card"] = (clock() - t, cpu() - c)
                t, c = clock(), cpu()
                risk = build_risk_assessment(
                    card_uuid=card_uuid,
                    service_id="sepsis-risk",
                    pseudonym=stay.pseudonym or "",
                    occurrence=now,
                    icu_hour=stay.current_hour,
                    model_name=model.name,
                    model_version=model.version,
                    probability=probability,
                    band=band,
                    outcome_code=task.outcome,
                    horizon_hours=model.manifest.horizon_hours,
                    base_value=explanation.base_value,
                    contributions=[c for c in explanation.contributions if c.shap != 0.0],
                )
                lap["risk_assessment"] = (clock() - t, cpu() - c)
                audit = card_audit(
                    service_id="sepsis-risk",
                    card_uuid=card_uuid,
                    model_name=model.name,
                    model_version=model.version,
                    model_sha256=model.manifest.model_sha256,
                    features_sha256=feature_hash(row),
                    probability=probability,
                    band=band,
                    issuer=identity.issuer,
                    user_pseudonym=None,
                )
                t, c = clock(), cpu()
                await store.put_card(
                    CardRecord(card_uuid, "sepsis-risk", None, risk, time.time(), (), (), audit)
                )
                lap["record_write"] = (clock() - t, cpu() - c)
                t, c = clock(), cpu()
                orjson.dumps({"cards": [card]})
                lap["response"] = (clock() - t, cpu() - c)
                if keep:
                    for name, (took, used) in lap.items():
                        times[name].append(took)
                        cpu_times[name].append(used)
        finally:
            await verifier.close()
            await store.close()
    out: dict[str, Any] = {
        name: {
            **percentiles(times[name], digits=3),
            "cpu_mean_ms": round(1000 * statistics.mean(cpu_times[name]), 3),
        }
        for name in times
    }
    out["sum_of_stage_p50_ms"] = round(sum(out[name]["p50_ms"] for name in STAGES), 2)
    # CPU time is what contention from other processes inflates least: the stages' shares by it.
    total_cpu = sum(out[name]["cpu_mean_ms"] for name in STAGES)
    out["sum_of_stage_cpu_mean_ms"] = round(total_cpu, 2)
    out["cpu_share"] = {name: round(out[name]["cpu_mean_ms"] / total_cpu, 3) for name in STAGES}
    return out


class Keepalive:
    """One keep-alive HTTP/1.1 connection, timed per call (the request is sent whole)."""

    def __init__(self, port: int) -> None:
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)

    def call(self, path: str, token: str, body: bytes) -> tuple[float, int, bytes]:
        headers = {"Content-Type": "application/json", "Authorization": f"Bearer {token}"}
        started = time.perf_counter()
        self.conn.request("POST", path, body=body, headers=headers)
        response = self.conn.getresponse()
        payload = response.read()
        return time.perf_counter() - started, response.status, payload


def fsync_probe(directory: Path, n: int = 50) -> dict[str, float]:
    """What a durable commit waits for on this disk now (other processes' I/O shows here)."""
    path = directory / "fsync-probe"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    took = []
    try:
        for _ in range(n):
            os.write(fd, b"x" * 4096)
            t = time.perf_counter()
            os.fsync(fd)
            took.append(time.perf_counter() - t)
    finally:
        os.close(fd)
        path.unlink()
    return percentiles(took, digits=3, points=(50, 90), with_max=True)


def wait_http(port: int, proc: subprocess.Popen[bytes], what: str, timeout_s: float = 90.0) -> None:
    started = time.monotonic()
    while time.monotonic() - started < timeout_s:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited before it answered /healthz")
        with contextlib.suppress(OSError, http.client.HTTPException):
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
            conn.request("GET", "/healthz")
            if conn.getresponse().status == 200:
                conn.close()
                return
            conn.close()
        time.sleep(0.1)
    raise RuntimeError(f"{what} did not answer /healthz in {timeout_s:.0f} s")


def main() -> None:
    from benchmarks.load_hook import (
        SERVICE,
        CdsServer,
        cpu_s,
        default_data_dir,
        git_commit,
        held_out_stays,
        machine,
        stop_all_servers,
    )
    from demo_ehr import EhrIdentity, free_port, serve_in_thread

    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[1], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--calls", type=int, default=300, help="timed calls to our server (default 300)")
    parser.add_argument(
        "--peer-every",
        type=int,
        default=3,
        help="one call to the naive peer after every N of ours (default 3; 0: no peer)",
    )
    parser.add_argument(
        "--stage-calls", type=int, default=300, help="in-process stage breakdown calls (default 300)"
    )
    parser.add_argument(
        "--stays", type=int, default=30, help="distinct held-out stays to cycle through (default 30)"
    )
    parser.add_argument("--data-dir", type=Path, default=default_data_dir())
    parser.add_argument(
        "--env", action="append", default=[], metavar="KEY=VALUE", help="extra server setting"
    )
    parser.add_argument("--json-out", type=Path, help="also write the JSON report here")
    args = parser.parse_args()
    extra_env = dict(item.split("=", 1) for item in args.env)

    workload = held_out_stays(args.data_dir, args.stays)
    bodies, observations = workload.bodies()
    report: dict[str, Any] = {
        "benchmark": "benchmarks/bench_hook.py",
        "started_utc": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "server": {**git_commit(), "workers": 1, "extra_env": extra_env},
        "workload": {
            "source": workload.source,
            "stays": len(bodies),
            "hours": HOURS,
            "observations": {"min": min(observations), "max": max(observations)},
            "request_bytes": {
                "min": min(map(len, bodies)),
                "mean": round(statistics.mean(map(len, bodies))),
                "max": max(map(len, bodies)),
            },
        },
    }
    identity = EhrIdentity(issuer="https://ehr.hook-bench.example.org/fhir")
    try:
        with serve_in_thread(identity.app()) as jwks, tempfile.TemporaryDirectory(prefix="cds-bench-") as tmp:
            identity.jwks_url = f"{jwks.url}/.well-known/jwks.json"
            var = Path(tmp)
            print(f"stages: {args.stage_calls} calls in this process ...", file=sys.stderr, flush=True)
            report["fsync_ms"] = fsync_probe(var)
            report["stages_ms"] = asyncio.run(
                stage_breakdown(
                    bodies, identity, "http://127.0.0.1/cds-services/sepsis-risk", args.stage_calls, var
                )
            )
            (var / "ours").mkdir()
            ours = CdsServer(identity, var / "ours", 1, extra_env)
            peer_port = free_port()
            peer_aud = f"http://127.0.0.1:{peer_port}{SERVICE}"
            peer = None
            ours.start()
            if args.peer_every:
                peer = subprocess.Popen(
                    [
                        sys.executable,
                        "-m",
                        "benchmarks.naive_peer",
                        "--port",
                        str(peer_port),
                        "--jwks-url",
                        identity.jwks_url,
                        "--issuer",
                        identity.issuer,
                        "--aud",
                        peer_aud,
                    ],
                    cwd=ROOT,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                    start_new_session=True,
                )
            try:
                ours.wait_ready()
                if peer is not None:
                    wait_http(peer_port, peer, "the naive peer")
                n_peer = args.calls // args.peer_every if args.peer_every else 0
                warm = 10
                our_tokens = [identity.token(ours.aud) for _ in range(args.calls + warm)]
                peer_tokens = [identity.token(peer_aud) for _ in range(n_peer + warm)]
                print(
                    f"http: {args.calls} calls to ours, {n_peer} to the peer, alternating ...",
                    file=sys.stderr,
                    flush=True,
                )
                ours_c, peer_c = Keepalive(ours.port), Keepalive(peer_port)
                cpu_used = {"ours": 0.0, "naive_peer": 0.0}
                our_ms: list[float] = []
                peer_ms: list[float] = []
                outcomes: dict[str, int] = {}
                j = 0
                for i in range(args.calls + warm):
                    before = cpu_s(ours.pid)
                    took, status, payload = ours_c.call(SERVICE, our_tokens[i], bodies[i % len(bodies)])
                    if i >= warm:
                        cpu_used["ours"] += cpu_s(ours.pid) - before
                    cards = json.loads(payload).get("cards") if status == 200 else None
                    if status != 200 or not cards:
                        raise RuntimeError(
                            f"our server answered {status} {payload[:200]!r}\n{ours.log_tail()}"
                        )
                    if i >= warm:
                        our_ms.append(took)
                    if peer is not None and (i < warm or (i - warm) % args.peer_every == args.peer_every - 1):
                        before = cpu_s(peer.pid)
                        took, status, payload = peer_c.call(SERVICE, peer_tokens[j], bodies[j % len(bodies)])
                        if i >= warm:
                            cpu_used["naive_peer"] += cpu_s(peer.pid) - before
                        if status != 200 or not json.loads(payload).get("cards"):
                            raise RuntimeError(f"the peer answered {status} {payload[:200]!r}")
                        if i >= warm:
                            peer_ms.append(took)
                        j += 1
                report["server_cpu_ms_per_call"] = {
                    who: round(1000 * used / n, 2)
                    for who, used, n in (
                        ("ours", cpu_used["ours"], len(our_ms)),
                        ("naive_peer", cpu_used["naive_peer"], len(peer_ms)),
                    )
                    if n
                }
                outcomes["ours_cards"] = len(our_ms)
                outcomes["peer_cards"] = len(peer_ms)
            finally:
                ours.stop()
                if peer is not None:
                    peer.terminate()
                    peer.wait(timeout=10)
    finally:
        stop_all_servers()
    report["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    report["hook_http_ms"] = {
        "ours": percentiles(our_ms),
        **({"naive_peer": percentiles(peer_ms)} if peer_ms else {}),
    }
    if peer_ms:
        o, p = report["hook_http_ms"]["ours"], report["hook_http_ms"]["naive_peer"]
        used = report["server_cpu_ms_per_call"]
        report["peer_ratio"] = {
            "p50": round(p["p50_ms"] / o["p50_ms"], 1),
            "p99": round(p["p99_ms"] / o["p99_ms"], 1),
            "mean": round(statistics.mean(peer_ms) / statistics.mean(our_ms), 1),
            "server_cpu_per_call": round(used["naive_peer"] / used["ours"], 1) if used.get("ours") else None,
        }
    report["goal"] = {
        "p50_ms_at_most": 10,
        "p99_ms_at_most": 30,
        "peer_ratio_at_least": 10,
        "met": bool(
            report["hook_http_ms"]["ours"]["p50_ms"] <= 10
            and report["hook_http_ms"]["ours"]["p99_ms"] <= 30
            and report.get("peer_ratio", {}).get("p50", 0) >= 10
        ),
    }
    stages = report["stages_ms"]
    print(f"\n{'stage':<22}{'p50 ms':>9}{'p99 ms':>9}{'CPU ms':>9}{'CPU %':>7}", file=sys.stderr)
    for name in (*STAGES, "sepsis_score_whole"):
        st = stages[name]
        share = f"{stages['cpu_share'][name]:>7.1%}" if name in STAGES else ""
        print(
            f"{name:<22}{st['p50_ms']:>9.3f}{st['p99_ms']:>9.3f}{st['cpu_mean_ms']:>9.3f}{share}",
            file=sys.stderr,
        )
    print(
        f"{'sum':<22}{stages['sum_of_stage_p50_ms']:>9.2f}{'':>9}{stages['sum_of_stage_cpu_mean_ms']:>9.2f}",
        file=sys.stderr,
    )
    print(f"fsync of 4 kB in the temporary directory: {report['fsync_ms']}", file=sys.stderr)
    for who, used in report["server_cpu_ms_per_call"].items():
        print(f"server CPU per call, {who}: {used} ms", file=sys.stderr)
    for who, fig in report["hook_http_ms"].items():
        print(f"HTTP {who}: p50 {fig['p50_ms']} ms, p99 {fig['p99_ms']} ms (n {fig['n']})", file=sys.stderr)
    if "peer_ratio" in report:
        print(f"peer / ours: {report['peer_ratio']}", file=sys.stderr)
    text = json.dumps(report, indent=2)
    if args.json_out:
        args.json_out.write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()

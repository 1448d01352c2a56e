"""The `cds` command: serve, train, score, evaluate, map, site map-report/import, sweep, drift,
feedback export, models (list, show, promote, rollback, retire, activate), golden build,
shadow/canary report, audit verify/export, forget, purge. Model-specific work is looked up in
`models.MODELS`; nothing here branches on a model's name."""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
from collections.abc import AsyncIterator, Callable
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer

from .settings import Settings, get_settings

if TYPE_CHECKING:
    from fhir_mappings import BundleMapping
    from models import RiskModel
    from models.site import SiteData, SiteTask

    from .stores import RecordStore
    from .sweep import SweepOutcome

_T = TypeVar("_T")

app = typer.Typer(
    help="FHIR-native clinical decision support: sepsis and readmission risk over CDS Hooks.",
    no_args_is_help=True,
)
feedback_app = typer.Typer(help="Clinician feedback records.", no_args_is_help=True)
app.add_typer(feedback_app, name="feedback")
models_app = typer.Typer(help="Which model versions the servers serve.", no_args_is_help=True)
app.add_typer(models_app, name="models")
audit_app = typer.Typer(help="The hash-chained audit trail of scores and decisions.", no_args_is_help=True)
app.add_typer(audit_app, name="audit")
drift_app = typer.Typer(
    help="Live traffic against the training data: drift and data quality.", no_args_is_help=True
)
app.add_typer(drift_app, name="drift")


site_app = typer.Typer(
    help="Site go-live: map a hospital's FHIR Bulk Data export, then validate, recalibrate, adapt and "
    "retrain a model on its own data.",
    no_args_is_help=True,
)
app.add_typer(site_app, name="site")


golden_app = typer.Typer(
    help="The frozen golden sets every promoted version must pass.", no_args_is_help=True
)
app.add_typer(golden_app, name="golden")
shadow_app = typer.Typer(help="Shadow versions: scored on live calls, never shown.", no_args_is_help=True)
app.add_typer(shadow_app, name="shadow")
canary_app = typer.Typer(help="Canary versions: answering for a share of patients.", no_args_is_help=True)
app.add_typer(canary_app, name="canary")


class ModelName(StrEnum):
    sepsis = "sepsis"
    readmission = "readmission"


DataOption = Annotated[
    Path | None,
    typer.Option(
        "--data",
        help="sepsis: PhysioNet 2019 parquet, .psv directory or a FHIR Bulk export directory; "
        "readmission: Diabetes 130-US csv(.gz) or a FHIR Bulk export directory",
    ),
]
VersionOption = Annotated[str | None, typer.Option(help="registry version (default: the active one)")]
ModelVersionOption = Annotated[
    str | None, typer.Option("--model", "--version", help="registry version (default: the active one)")
]


def _settings() -> Settings:
    """The validated settings, or one clear message per bad value and exit 2 (values are never
    echoed: a setting can be a secret)."""
    from pydantic import ValidationError

    try:
        return get_settings()
    except ValidationError as exc:
        typer.echo("error: invalid settings; nothing was started", err=True)
        for error in exc.errors(include_input=False, include_url=False):
            name = (
                "CDS_" + "_".join(str(part) for part in error["loc"]).upper() if error["loc"] else "settings"
            )
            typer.echo(f"  {name}: {error['msg']}", err=True)
        raise typer.Exit(2) from None


@contextlib.asynccontextmanager
async def _store(settings: Settings) -> AsyncIterator[RecordStore]:
    """The configured record store, opened for one command and closed after it."""
    from .stores import AnchorLog, open_store

    url = settings.database_url.get_secret_value() if settings.database_url else None
    store = await open_store(
        database_url=url,
        sqlite_path=settings.sqlite_path,
        spool_path=settings.spool_path,
        timeout_s=settings.database_timeout_s,
        anchors=AnchorLog(settings.anchor_path, every=settings.audit_anchor_every),
    )
    try:
        yield store
    finally:
        await store.close()


def _data_path(model: ModelName, data: Path | None) -> Path:
    from models import model_task

    return data or model_task(model.value).default_data(_settings().data_dir)


def _load_model(model: ModelName, version: str | None) -> RiskModel:
    from models import ModelRegistry, RiskModel, choose_device, model_task

    spec = model_task(model.value).feature_spec()
    artifact = ModelRegistry(_settings().model_dir).load(model.value, spec, version)
    return RiskModel(artifact, spec, device=choose_device(_settings().device))


@app.command()
def serve(
    host: Annotated[str | None, typer.Option(help="default: CDS_HOST or 127.0.0.1")] = None,
    port: Annotated[int | None, typer.Option(help="default: CDS_PORT or 8000")] = None,
    workers: Annotated[
        int,
        typer.Option(
            help="uvicorn worker processes "
            "(share records through CDS_DATABASE_URL, caches through CDS_REDIS_URL)"
        ),
    ] = 1,
) -> None:
    """Run the CDS Hooks server."""
    import uvicorn

    from .logs import configure_logging, logging_config
    from .server import prepare_multiprocess_metrics, raise_open_file_limit, uvicorn_options

    settings = _settings()
    configure_logging(settings.log_level)
    raise_open_file_limit(settings)
    if workers > 1:
        prepare_multiprocess_metrics(settings)
    uvicorn.run(
        "cds.app:create_app",
        factory=True,
        host=host or settings.host,
        port=port or settings.port,
        workers=workers,
        **{**uvicorn_options(settings), "log_config": logging_config(settings.log_level)},
    )


@app.command()
def train(
    model: ModelName,
    data: DataOption = None,
    seed: Annotated[int, typer.Option(help="random seed (same data + seed = same model file)")] = 2019,
    patients: Annotated[
        int | None, typer.Option(help="sepsis: train on the first N patients only (for quick runs)")
    ] = None,
    rounds: Annotated[int | None, typer.Option(help="boosting rounds (default: the tuned number)")] = None,
    activate: Annotated[bool, typer.Option(help="make the new version the served one")] = True,
) -> None:
    """Train a model, evaluate it on held-out patients and register it."""
    from models import ModelRegistry, TrainOptions, model_task

    options = TrainOptions(
        seed=seed, activate=activate, patients=patients, rounds=rounds, device=_settings().device
    )
    manifest = model_task(model.value).train(
        _data_path(model, data), ModelRegistry(_settings().model_dir), options
    )
    typer.echo(
        json.dumps({"model": manifest.name, "version": manifest.version, **manifest.metrics}, indent=2)
    )


@app.command()
def score(model: ModelName, data: DataOption = None, version: VersionOption = None) -> None:
    """Print one JSON line per row: {patient, hour, probability} (sepsis), {patient, encounter,
    probability} (readmission)."""
    from models import model_task

    lines = model_task(model.value).score_lines(_load_model(model, version), _data_path(model, data))
    sys.stdout.writelines(line + "\n" for line in lines)


@app.command()
def evaluate(
    model: ModelName,
    data: DataOption = None,
    version: ModelVersionOption = None,
    report: Annotated[
        Path | None, typer.Option("--report", help="directory for metrics.json, model_card.md and plots")
    ] = None,
    holdout: Annotated[
        bool, typer.Option(help="only the patients the model held out for testing (same data and seed)")
    ] = False,
    replicates: Annotated[
        int | None,
        typer.Option(
            help="bootstrap replicates (by patient) for the 95 % intervals "
            "(default: sepsis 200, readmission 500)"
        ),
    ] = None,
) -> None:
    """Print the clinical evaluation as one JSON object (sepsis: official utility, AUROC/AUPRC, operating
    point, calibration, subgroups, baselines, bootstrap intervals; readmission: AUROC/AUPRC with
    intervals, calibration, subgroups, LACE-style baseline); --report also writes files."""
    from models import EvaluateOptions, model_task

    options = EvaluateOptions(report=report, replicates=replicates, holdout=holdout)
    typer.echo(
        json.dumps(
            model_task(model.value).evaluate(_load_model(model, version), _data_path(model, data), options)
        )
    )


class SweepModel(StrEnum):
    sepsis = "sepsis"
    readmission = "readmission"


@app.command()
def sweep(
    model: SweepModel,
    write: Annotated[
        bool, typer.Option(help="record a RiskAssessment per patient and the report (--no-write: print only)")
    ] = True,
    limit: Annotated[int, typer.Option(help="rows of the printed report")] = 20,
    jwks: Annotated[
        bool, typer.Option("--jwks", help="print the public JWKS to register with the EHR, and stop")
    ] = False,
    every: Annotated[
        str | None,
        typer.Option(
            "--every",
            help="sweep again at this interval (30s, 15m, 1h) until SIGINT/SIGTERM, which stop the loop "
            "after the sweep under way; a failing sweep is logged and retried at the next tick",
        ),
    ] = None,
    max_sweeps: Annotated[
        int | None, typer.Option("--max-sweeps", min=1, help="with --every: stop after this many sweeps")
    ] = None,
) -> None:
    """sepsis: score every current inpatient of the EHR in CDS_SWEEP_EHR (SMART Backend Services;
    Bulk Data $export, else paged searches) on the device CDS_DEVICE picks; readmission: today's
    expected discharges. Record one RiskAssessment per patient, write the report (ranked by unit,
    top drivers, change since the last sweep) to <var>/sweeps/ and print it (pseudonyms only),
    then one JSON summary line; with --every, the same for each sweep (exit status 1 when the last
    one failed)."""
    from .errors import CDSError
    from .sweep import format_report, run_sweep

    settings = _settings()
    if settings.sweep_ehr is None:
        typer.echo(
            "error: set CDS_SWEEP_EHR (the EHR to sweep, as JSON; see cds.settings.SweepEhr)", err=True
        )
        raise typer.Exit(2)
    if jwks:
        from .backend_services import load_signing_key, public_jwks

        ehr = settings.sweep_ehr
        key = load_signing_key(ehr.private_key_file, ehr.key_id, ehr.signing_alg)
        typer.echo(json.dumps(public_jwks(key, ehr.key_id, ehr.signing_alg)))
        return
    if every is None and max_sweeps is not None:
        typer.echo("error: --max-sweeps needs --every", err=True)
        raise typer.Exit(2)

    def show(outcome: SweepOutcome) -> None:
        typer.echo(format_report(outcome, limit=limit))
        typer.echo(json.dumps(outcome.summary()))

    if every is not None:
        _sweep_loop(settings, model.value, write, every, max_sweeps, show)
        return

    async def run() -> SweepOutcome:
        async with _store(settings) as store:
            return await run_sweep(settings, store, model_name=model.value, write=write)

    try:
        outcome = asyncio.run(run())
    except CDSError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    show(outcome)


def _sweep_loop(
    settings: Settings,
    model: str,
    write: bool,
    every: str,
    max_sweeps: int | None,
    show: Callable[[SweepOutcome], None],
) -> None:
    from .sweep import run_sweep
    from .sweep_schedule import SweepTick, parse_interval, stop_on_signals, sweep_every

    try:
        every_s = parse_interval(every)
    except ValueError as exc:
        typer.echo(f"error: --every: {exc}", err=True)
        raise typer.Exit(2) from None

    def tick(t: SweepTick) -> None:
        if t.outcome is not None:
            show(t.outcome)
        else:
            typer.echo(f"error: sweep {t.number} failed, retried at the next tick: {t.error}", err=True)

    async def run() -> list[SweepTick]:
        stop = asyncio.Event()
        async with _store(settings) as store:
            with stop_on_signals(stop):
                return await sweep_every(
                    lambda: run_sweep(settings, store, model_name=model, write=write),
                    every_s=every_s,
                    stop=stop,
                    max_sweeps=max_sweeps,
                    on_tick=tick,
                )

    ticks = asyncio.run(run())
    if ticks and ticks[-1].outcome is None:
        raise typer.Exit(1)


@feedback_app.command("export")
def feedback_export(
    out: Annotated[
        Path, typer.Option("--out", help="directory for RiskAssessment.ndjson and Provenance.ndjson")
    ] = Path("export"),
) -> None:
    """Write the recorded RiskAssessments and feedback Provenances as FHIR NDJSON for retraining and
    monitoring (with PostgreSQL, cards still in this machine's spool are included; `spooled` says how
    many were). Cards of patients who refused training use, and their feedback, are withheld
    (`withheld` counts them)."""
    from .privacy import training_use_refused

    settings = _settings()

    async def run() -> dict[str, int]:
        counts = {}
        withheld_refs: set[str] = set()  # "RiskAssessment/<card uuid>" of refused cards
        withheld = 0
        async with _store(settings) as store:
            out.mkdir(parents=True, exist_ok=True)
            for resource_type in ("RiskAssessment", "Provenance"):
                n = 0
                with open(out / f"{resource_type}.ndjson", "w", encoding="utf-8") as f:
                    async for resource in store.iter_resources(resource_type):
                        if resource_type == "RiskAssessment" and training_use_refused(resource):
                            withheld_refs.add(f"RiskAssessment/{resource.get('id')}")
                            withheld += 1
                            continue
                        targets = {t.get("reference", "") for t in resource.get("target", ())}
                        if resource_type == "Provenance" and withheld_refs & targets:
                            withheld += 1
                            continue
                        f.write(json.dumps(resource, separators=(",", ":")) + "\n")
                        n += 1
                counts[resource_type] = n
            counts["spooled"] = store.health().spooled
            counts["withheld"] = withheld
        return counts

    typer.echo(json.dumps({"out": str(out), **asyncio.run(run())}))


@models_app.command("bands")
def models_bands(
    model: ModelName,
    version: VersionOption = None,
    data: DataOption = None,
    write: Annotated[bool, typer.Option(help="write them into the version's manifest.json")] = False,
) -> None:
    """Measure a version's risk bands (PPV and sensitivity per band, and a very-high band where PPV
    reaches the interrupt target) from its data; --write records them in its manifest, leaving the
    model file byte for byte."""
    from models import ModelRegistry, model_task

    loaded = _load_model(model, version)
    bands, report = model_task(model.value).measure_bands(loaded, _data_path(model, data))
    typer.echo(json.dumps({"risk_bands": bands, "band_report": report.model_dump()}, indent=2))
    if write:
        path = ModelRegistry(_settings().model_dir).record_bands(model.value, loaded.version, bands, report)
        typer.echo(f"written: {path}", err=True)


@models_app.command("activate")
def models_activate(model: ModelName, version: str) -> None:
    """Serve VERSION of MODEL (it must be in the model registry) from the next server start on;
    recorded in the record store, with an audit event, for every worker and machine."""
    from models import ModelError, ModelRegistry

    from .errors import StoreError
    from .model_versions import activate_model

    settings = _settings()

    async def run() -> str | None:
        async with _store(settings) as store:
            return await activate_model(store, ModelRegistry(settings.model_dir), model.value, version)

    try:
        previous = asyncio.run(run())
    except (ModelError, StoreError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    typer.echo(json.dumps({"model": model.value, "version": version, "previous": previous}))


ActorOption = Annotated[
    str,
    typer.Option(
        "--actor", envvar="USER", help="who does this (an account name; recorded in the audit trail)"
    ),
]
ReasonOption = Annotated[str, typer.Option("--reason", help="why (recorded in the audit trail, scrubbed)")]


def _models_fail(exc: Exception) -> typer.Exit:
    typer.echo(f"error: {exc}", err=True)
    return typer.Exit(2)


@models_app.command("list")
def models_list(
    model: Annotated[ModelName | None, typer.Argument()] = None,
    as_json: Annotated[bool, typer.Option("--json", help="one JSON object instead of the table")] = False,
) -> None:
    """Every registry version with its status (shared by all servers), canary share, parent and
    held-out test figures from its manifest."""
    from models import ModelRegistry

    settings = _settings()
    registry = ModelRegistry(settings.model_dir)

    async def run() -> tuple[dict[str, str], list[object]]:
        async with _store(settings) as store:
            return await store.active_versions(), list(await store.version_states())

    active, states = asyncio.run(run())
    status = {(s.model, s.version): s for s in states}  # type: ignore[attr-defined]
    rows = []
    for name in [model.value] if model else [m.value for m in ModelName]:
        champion = active.get(name) or _registry_active(registry, name)
        for version in registry.versions(name):
            manifest = registry.manifest(name, version)
            state = status.get((name, version))
            test = {
                k: v.get("estimate") if isinstance(v, dict) else v
                for k, v in manifest.metrics.get("test", {}).items()
            }
            rows.append(
                {
                    "model": name,
                    "version": version,
                    "status": "active" if version == champion else (state.status if state else "candidate"),
                    "share": state.share if state and state.status == "canary" else None,
                    "parent": manifest.parent_version,
                    "auroc": test.get("auroc"),
                    "utility": test.get("utility"),
                    "created_by": manifest.created_by,
                }
            )
    if as_json:
        typer.echo(json.dumps({"versions": rows}))
        return
    head = f"{'model':<12} {'version':>7}  {'status':<9} {'share':>5}  {'parent':>6}  {'AUROC':>6}  utility"
    typer.echo(head)
    typer.echo("-" * len(head))
    for r in rows:
        share = f"{r['share']:.0%}" if r["share"] else ""
        auroc = "-" if r["auroc"] is None else r["auroc"]
        utility = "-" if r["utility"] is None else r["utility"]
        typer.echo(
            f"{r['model']:<12} {r['version']:>7}  {r['status']:<9} {share:>5}  {r['parent'] or '-':>6}"
            f"  {auroc:>6}  {utility:>7}"
        )


def _registry_active(registry: object, name: str) -> str | None:
    from models import ModelNotFound

    try:
        return registry.active_version(name)  # type: ignore[attr-defined, no-any-return]
    except ModelNotFound:
        return None


@models_app.command("show")
def models_show(model: ModelName, version: str) -> None:
    """One version: its manifest (lineage, data fingerprint, metrics), its status and every status
    change recorded for it in the audit trail (actor, reason)."""
    from models import ModelError, ModelRegistry

    settings = _settings()
    try:
        manifest = ModelRegistry(settings.model_dir).manifest(model.value, version)
    except ModelError as exc:
        raise _models_fail(exc) from None

    async def run() -> tuple[str, list[dict[str, object]]]:
        async with _store(settings) as store:
            active = (await store.active_versions()).get(model.value)
            states = {s.version: s for s in await store.version_states() if s.model == model.value}
            history = [
                {"seq": e.seq, "at": e.at, "kind": e.kind, **e.details}
                async for e in store.iter_audit()
                if e.kind in ("model-status", "model-activated")
                and e.details.get("model") == model.value
                and version
                in (e.details.get("version"), e.details.get("previous"), *e.details.get("displaced", ()))
            ]
        status = (
            "active" if active == version else (states[version].status if version in states else "candidate")
        )
        return status, history

    status, history = asyncio.run(run())
    summary = manifest.model_dump(
        include={
            "name",
            "version",
            "title",
            "parent_version",
            "training_data",
            "seed",
            "threshold",
            "risk_bands",
            "metrics",
            "created_by",
            "feature_spec_hash",
            "model_sha256",
        }
    )
    typer.echo(json.dumps({**summary, "status": status, "history": history}, indent=2, default=str))


def _gate_data(settings: Any, model: str, version: str) -> Path:
    """The gate's default data: a site version is judged on the site table it was fitted on (its
    held-out half, models/site.py `site_holdout`), any other on the training data's held-out split."""
    from models import ModelError, ModelRegistry, model_task
    from models.site import site_table_seed

    try:
        manifest = ModelRegistry(settings.model_dir).manifest(model, version)
    except ModelError:
        manifest = None  # promote says what is missing
    if manifest is not None and site_table_seed(manifest) is not None:
        recorded = Path(str(manifest.training_data.get("path", "")))
        if recorded != Path("") and recorded.exists():
            return recorded
    return Path(model_task(model).default_data(settings.data_dir))


@models_app.command("promote")
def models_promote(
    model: ModelName,
    version: str,
    to: Annotated[str, typer.Option("--to", help="shadow | canary | active")],
    reason: ReasonOption,
    actor: ActorOption = "unknown",
    share: Annotated[float, typer.Option(help="canary: share of patients it answers for")] = 0.1,
    data: DataOption = None,
    patients: Annotated[
        int | None, typer.Option(help="gate on the first N held-out patients only (quicker)")
    ] = None,
) -> None:
    """Run the promotion gate (printed as a table) and, if it passes, set VERSION's status; every
    server switches within CDS_MODEL_POLL_S. Canary and active are compared with the active version
    on the same held-out patients (--data: PhysioNet psv directory, parquet or Bulk export;
    default: for a site version the site table it was fitted on, judged on its held-out half;
    otherwise the training data's, split by the candidate's seed). Exit 3 when the gate refuses."""
    from models import ModelError, ModelRegistry, PromotionRefused

    from .errors import BadRequest, StoreError
    from .model_versions import promote

    settings = _settings()
    path = data or _gate_data(settings, model.value, version)

    async def run() -> object:
        async with _store(settings) as store:
            return await promote(
                store,
                ModelRegistry(settings.model_dir),
                model.value,
                version,
                to,
                actor=actor,
                reason=reason,
                share=share,
                data=path,
                patients=patients,
            )

    try:
        done = asyncio.run(run())
    except PromotionRefused as exc:
        typer.echo(exc.report.table())  # type: ignore[attr-defined]
        typer.echo(f"refused: {exc}", err=True)
        raise typer.Exit(3) from None
    except (ModelError, StoreError, BadRequest) as exc:
        raise _models_fail(exc) from None
    typer.echo(done.report.table())  # type: ignore[attr-defined]
    change = done.change  # type: ignore[attr-defined]
    typer.echo(
        json.dumps(
            {
                "model": model.value,
                "version": version,
                "status": to,
                "previous_status": change.previous_status if change else None,
                "displaced": list(change.displaced) if change else [],
                **({"share": share} if to == "canary" else {}),
            }
        )
    )


@models_app.command("rollback")
def models_rollback(
    model: ModelName,
    reason: ReasonOption,
    actor: ActorOption = "unknown",
    to: Annotated[str | None, typer.Option("--to", help="version (default: the one active before)")] = None,
) -> None:
    """Make the previous champion (or --to) active again and retire the current one; servers switch
    within CDS_MODEL_POLL_S. No gate: it served before (it must still load)."""
    from models import ModelError, ModelRegistry

    from .errors import BadRequest, StoreError
    from .model_versions import rollback

    settings = _settings()

    async def run() -> tuple[str, object]:
        async with _store(settings) as store:
            return await rollback(
                store, ModelRegistry(settings.model_dir), model.value, actor=actor, reason=reason, to=to
            )

    try:
        target, change = asyncio.run(run())
    except (ModelError, StoreError, BadRequest) as exc:
        raise _models_fail(exc) from None
    displaced = list(change.displaced) if change else []  # type: ignore[attr-defined]
    typer.echo(json.dumps({"model": model.value, "active": target, "retired": displaced}))


@models_app.command("retire")
def models_retire(
    model: ModelName, version: str, reason: ReasonOption, actor: ActorOption = "unknown"
) -> None:
    """End VERSION's shadow or canary (or retire a candidate)."""
    from models import ModelError

    from .errors import BadRequest, StoreError
    from .model_versions import retire

    settings = _settings()

    async def run() -> object:
        async with _store(settings) as store:
            return await retire(store, model.value, version, actor=actor, reason=reason)

    try:
        change = asyncio.run(run())
    except (ModelError, StoreError, BadRequest) as exc:
        raise _models_fail(exc) from None
    previous = change.previous_status if change else None  # type: ignore[attr-defined]
    typer.echo(
        json.dumps(
            {"model": model.value, "version": version, "status": "retired", "previous_status": previous}
        )
    )


@golden_app.command("build")
def golden_build(
    model: Annotated[ModelName, typer.Argument()] = ModelName.sepsis,
    out: Annotated[
        Path | None, typer.Option("--out", help="directory (default: models/golden in the package)")
    ] = None,
) -> None:
    """Write the golden set of MODEL from its seeded generator (the committed file is this output)."""
    from models import GOLDEN_DIR, ModelError, write_golden

    try:
        path = write_golden(model.value, out or GOLDEN_DIR)
    except ModelError as exc:
        raise _models_fail(exc) from None
    cases = json.loads(path.read_text())["cases"]
    typer.echo(json.dumps({"path": str(path), "cases": len(cases)}))


def _since(hours: float | None) -> float:
    import time

    return time.time() - 3600 * hours if hours else 0.0


SinceOption = Annotated[float | None, typer.Option("--since-hours", help="only the last N hours")]
OutcomesOption = Annotated[
    Path | None,
    typer.Option(
        "--outcomes",
        help="CSV of outcomes: columns pseudonym, onset (ISO time of Sepsis-3 onset; empty: none); "
        "adds each version's AUROC on these patients",
    ),
]


def _read_outcomes(path: Path | None) -> dict[str, float | None] | None:
    """pseudonym -> onset (epoch seconds) or None (no sepsis); one line on stderr and exit 2 for a
    file that is not such a CSV."""
    if path is None:
        return None
    import pandas as pd

    try:
        frame = pd.read_csv(path, dtype={"pseudonym": str})
        onset = pd.to_datetime(frame["onset"], utc=True, errors="coerce")
    except (OSError, KeyError, ValueError) as exc:
        typer.echo(f"error: {path}: not a CSV with columns pseudonym, onset ({type(exc).__name__})", err=True)
        raise typer.Exit(2) from None
    return {
        str(p): (None if pd.isna(t) else float(t.timestamp()))
        for p, t in zip(frame["pseudonym"], onset, strict=True)
    }


@shadow_app.command("report")
def shadow_report_command(
    model: ModelName, since_hours: SinceOption = None, outcomes: OutcomesOption = None
) -> None:
    """Band agreement, score distributions, alert-rate difference and override rates by reason of
    each shadow version against the answers given on the same cards (JSON)."""
    from .lifecycle_report import shadow_report

    settings = _settings()

    async def run() -> dict[str, object]:
        async with _store(settings) as store:
            return await shadow_report(
                store, model.value, since=_since(since_hours), outcomes=_read_outcomes(outcomes)
            )

    typer.echo(json.dumps(asyncio.run(run()), indent=2))


@canary_app.command("report")
def canary_report_command(
    model: ModelName, since_hours: SinceOption = None, outcomes: OutcomesOption = None
) -> None:
    """Champion and canary side by side: alert rates, score distributions, override rates by reason,
    and the shared counters the guardrails judge (errors, hook p99) (JSON)."""
    from .lifecycle import open_counters
    from .lifecycle_report import canary_report

    settings = _settings()

    async def run() -> dict[str, object]:
        counters = open_counters(
            settings.redis_url, prefix=settings.redis_prefix, timeout_s=settings.redis_timeout_s
        )
        try:
            async with _store(settings) as store:
                return await canary_report(
                    store,
                    model.value,
                    counters=counters if settings.redis_url else None,
                    since=_since(since_hours),
                    outcomes=_read_outcomes(outcomes),
                )
        finally:
            await counters.close()

    typer.echo(json.dumps(asyncio.run(run()), indent=2))


@audit_app.command("verify")
def audit_verify(
    anchors: Annotated[
        Path | None,
        typer.Option(help="anchor file (default: CDS_AUDIT_ANCHOR_FILE or <var>/audit-anchors.jsonl)"),
    ] = None,
) -> None:
    """Recompute the audit hash chain and check it against the anchors; print the first broken,
    edited, deleted, reordered or truncated entry (exit status 1), or the head (exit status 0)."""
    from .audit import verify_chain
    from .stores import read_anchors

    settings = _settings()

    async def run() -> dict[str, object]:
        async with _store(settings) as store:
            entries = [e async for e in store.iter_audit()]
        return verify_chain(entries, read_anchors(anchors or settings.anchor_path)).as_dict()

    report = asyncio.run(run())
    typer.echo(json.dumps(report))
    if not report["ok"]:
        raise typer.Exit(1)


@audit_app.command("export")
def audit_export(
    out: Annotated[Path, typer.Option("--out", help="NDJSON file of FHIR R4 AuditEvent resources")] = Path(
        "export/AuditEvent.ndjson"
    ),
) -> None:
    """Write every audit entry as a FHIR R4 AuditEvent (NDJSON) for the hospital's SIEM; each carries
    its chain hashes, so the export can be verified on its own."""
    from .audit import audit_event_resource

    settings = _settings()

    async def run() -> int:
        n = 0
        async with _store(settings) as store:
            out.parent.mkdir(parents=True, exist_ok=True)
            with open(out, "w", encoding="utf-8") as f:
                async for entry in store.iter_audit():
                    f.write(json.dumps(audit_event_resource(entry), separators=(",", ":")) + "\n")
                    n += 1
        return n

    typer.echo(json.dumps({"out": str(out), "AuditEvent": asyncio.run(run())}))


@app.command()
def forget(
    patient: Annotated[
        str,
        typer.Option(
            "--patient",
            help="the patient's id in the EHR (pseudonymised here with CDS_PSEUDONYM_KEY; never stored)",
        ),
    ],
    fhir_server: Annotated[
        list[str] | None,
        typer.Option(
            "--fhir-server",
            help="FHIR base the EHR names (default: every base in CDS_AUTH_ISSUERS, and none)",
        ),
    ] = None,
) -> None:
    """Remove a patient's cards and feedback from the record store (everything retraining and
    monitoring read), leaving a `patient-forgotten` tombstone (counts only) in the audit chain."""
    import uuid

    from fhir_mappings import Pseudonymizer

    from .errors import StoreError
    from .keys import pseudonym_key
    from .privacy import patient_pseudonyms

    settings = _settings()
    sources = fhir_server if fhir_server else [u for i in settings.auth_issuers for u in i.fhir_servers]
    pseudonyms = patient_pseudonyms(Pseudonymizer(pseudonym_key(settings)), patient, sources)
    request_id = str(uuid.uuid4())

    async def run() -> dict[str, object]:
        async with _store(settings) as store:
            erased = await store.forget(pseudonyms, {"request": request_id})
        return {
            "request": request_id,
            "cards": erased.cards,
            "feedback": erased.feedback,
            "audit_seq": erased.seq,
        }

    try:
        typer.echo(json.dumps(asyncio.run(run())))
    except StoreError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None


@app.command()
def purge(
    older_than_days: Annotated[float | None, typer.Option(help="default: CDS_RETENTION_DAYS")] = None,
) -> None:
    """Remove cards (and their feedback) recorded more than the retention period ago, leaving a
    `records-purged` tombstone in the audit chain. The audit trail itself is kept."""
    import time

    settings = _settings()
    days = older_than_days if older_than_days is not None else settings.retention_days
    if days is None or days <= 0:
        typer.echo("error: no retention period: set CDS_RETENTION_DAYS or pass --older-than-days", err=True)
        raise typer.Exit(2)
    before = time.time() - days * 86400

    async def run() -> dict[str, object]:
        async with _store(settings) as store:
            erased = await store.purge(before, {"retention_days": days})
        return {"before": before, "cards": erased.cards, "feedback": erased.feedback, "audit_seq": erased.seq}

    typer.echo(json.dumps(asyncio.run(run())))


@app.command("map")
def map_bundle_command(
    bundle: Annotated[Path, typer.Option("--bundle", help="a FHIR R4 Bundle (JSON) of one patient")],
    profile: Annotated[
        str | None,
        typer.Option(help="vendor profile: generic, epic, oracle-health, meditech (default: from settings)"),
    ] = None,
    encounter: Annotated[
        str | None, typer.Option(help="Encounter id of the stay (default: the latest inpatient one)")
    ] = None,
    validate: Annotated[bool, typer.Option(help="validate every resource with fhir.resources first")] = True,
    max_icu_hours: Annotated[
        int | None,
        typer.Option(
            help="longest ICU clock to build a table for (default: the sepsis model's longest training stay)"
        ),
    ] = None,
) -> None:
    """Print the canonical table of a bundle's stay and the codes left unmapped, with counts and reasons.

    Never a traceback: input that is not a readable one-patient Bundle is one line on stderr
    (exit 2); a stay without a usable ICU clock is said after the full report (exit 0)."""
    from fhir_mappings import PROFILES, CDSError, Pseudonymizer, map_bundle
    from models import TRAINED_MAX_ICU_HOURS

    from .keys import pseudonym_key

    settings = _settings()
    if profile is not None and profile not in PROFILES:
        typer.echo(f"error: unknown profile {profile!r} (known: {', '.join(sorted(PROFILES))})", err=True)
        raise typer.Exit(2)
    chosen = PROFILES[profile] if profile else settings.vendor_profile(None)
    try:
        text = bundle.read_text(encoding="utf-8")
        data = json.loads(text)
    except (OSError, UnicodeDecodeError) as exc:
        typer.echo(f"error: cannot read {bundle}: {type(exc).__name__}", err=True)
        raise typer.Exit(2) from None
    except json.JSONDecodeError as exc:
        typer.echo(f"error: {bundle} is not JSON (line {exc.lineno}, column {exc.colno})", err=True)
        raise typer.Exit(2) from None
    try:
        mapped = map_bundle(
            data,
            pseudonymizer=Pseudonymizer(pseudonym_key(settings)),
            profile=chosen,
            encounter_id=encounter,
            validate=validate,
            max_icu_hours=max_icu_hours or TRAINED_MAX_ICU_HOURS,
        )
    except CDSError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    except Exception as exc:  # a bug of ours: one line, no traceback (it could quote the input)
        typer.echo(
            f"error: the bundle could not be mapped ({type(exc).__name__}); please report it", err=True
        )
        raise typer.Exit(3) from None
    _print_bundle_mapping(mapped, chosen.name)


def _print_bundle_mapping(mapped: BundleMapping, profile: str) -> None:
    import pandas as pd

    report = mapped.report
    typer.echo(
        f"profile: {profile}; resources: {json.dumps(mapped.resources, sort_keys=True)}; OperationOutcome "
        f"entries skipped: {mapped.outcomes}"
    )
    typer.echo(f"patient id from: {mapped.patient_from}")
    typer.echo(f"validation issues: {len(mapped.validation)}")
    for issue in mapped.validation[:20]:
        typer.echo(f"  {issue}")
    typer.echo(
        f"Observations: {report.observations}; measurements: {report.measurements}; per variable: "
        f"{json.dumps(dict(sorted(report.mapped.items())))}"
    )
    typer.echo(
        f"skipped: {json.dumps(dict(sorted(report.skipped.items())))}; unit errors: "
        f"{json.dumps(dict(sorted(report.unit_errors.items())))}"
    )
    if report.implausible:
        typer.echo(f"implausible values: {json.dumps(dict(sorted(report.implausible.items())))}")
    if report.code_conflicts:
        typer.echo("local codes overruled by the standard code beside them (fix the local row):")
        for conflict, n in sorted(report.code_conflicts.items(), key=lambda kv: (-kv[1], kv[0])):
            typer.echo(f"  {n:6d}  {conflict}")
    typer.echo("unmapped codes:")
    for item in mapped.unmapped():
        typer.echo(f"  {item.count:6d}  {item.code}  ({item.reason})")
    if mapped.stay is None:
        typer.echo(f"no canonical table: {mapped.stay_problem} [{mapped.stay_reason}]")
        return
    stay = mapped.stay
    typer.echo(
        f"in the stay: {stay.report.measurements} measurements placed in {stay.current_hour} ICU hours; "
        f"outside it or not usable: {json.dumps(dict(sorted(stay.report.skipped.items())))}"
    )
    frame = stay.table.to_frame().dropna(axis=1, how="all")
    who = f"pseudonym {stay.pseudonym}" if stay.pseudonym else "no patient id in the bundle: no pseudonym"
    typer.echo(f"canonical table: {len(frame)} ICU hours, {who}")
    with pd.option_context("display.max_rows", 200, "display.max_columns", 50, "display.width", 250):
        typer.echo(frame.to_string(index=False))


@drift_app.command("reference")
def drift_reference(model: ModelName, data: DataOption = None, version: VersionOption = None) -> None:
    """(Re)compute VERSION's drift reference from its training file and write it into its manifest
    (the model file is only read): the held-out test patients' features and scores."""
    from models import backfill_reference

    path = _data_path(model, data)
    reference = backfill_reference(_settings().model_dir, model.value, version, path)
    typer.echo(
        json.dumps({"model": model.value, "rows": reference.rows, "features": len(reference.features)})
    )


@drift_app.command("report")
def drift_report(
    since: Annotated[
        str, typer.Option(help="start of the window: ISO time, or a duration like 24h, 7d, 90m")
    ] = "24h",
    out: Annotated[Path, typer.Option("--out", help="the HTML file to write")] = Path("drift-report.html"),
    json_out: Annotated[
        Path | None, typer.Option("--json", help="also write the report's data as JSON")
    ] = None,
) -> None:
    """Write an HTML drift report (inline SVG plots) of live traffic since SINCE."""
    from .drift import parse_since
    from .drift_report import build_report, render_html

    settings = _settings()
    report = asyncio.run(build_report(settings, since=parse_since(since)))
    out.write_text(render_html(report), encoding="utf-8")
    if json_out is not None:
        json_out.write_text(json.dumps(report, indent=2), encoding="utf-8")
    typer.echo(json.dumps({"out": str(out), "warnings": len(report["warnings"])}))


ExportOption = Annotated[
    Path, typer.Option("--export", help="FHIR Bulk Data export directory (NDJSON or .ndjson.gz per type)")
]
ProfileOption = Annotated[
    str | None,
    typer.Option(help="vendor profile: generic, epic, oracle-health, meditech (default: from settings)"),
]
SiteMapOption = Annotated[
    Path | None, typer.Option("--site-map", help="site code map CSV: system,code,variable,unit")
]
SourceOption = Annotated[
    str, typer.Option(help="the site's FHIR base URL, so pseudonyms match those its hook calls made")
]


def _export_reader(export: Path, profile: str | None, site_map: Path | None, source: str) -> Any:
    """The reader for `cds site ...`, or one line on stderr and exit 2."""
    from fhir_mappings import PROFILES, Pseudonymizer, iter_export
    from models import TRAINED_MAX_ICU_HOURS

    from .keys import pseudonym_key

    settings = _settings()
    if profile is not None and profile not in PROFILES:
        typer.echo(f"error: unknown profile {profile!r} (known: {', '.join(sorted(PROFILES))})", err=True)
        raise typer.Exit(2)
    try:
        return iter_export(
            export,
            pseudonymizer=Pseudonymizer(pseudonym_key(settings)),
            profile=PROFILES[profile] if profile else settings.vendor_profile(None),
            site_map=site_map,
            source=source,
            max_icu_hours=TRAINED_MAX_ICU_HOURS,
        )
    except (OSError, ValueError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None


SiteDataOption = Annotated[
    Path,
    typer.Option(
        "--data",
        help="the site's labelled data: sepsis, its hourly table in PhysioNet 2019 layout (.psv directory "
        "or parquet, e.g. from `cds site import`) or its FHIR Bulk export directory itself; readmission, "
        "its discharges in the Diabetes 130-US layout (csv, csv.gz or parquet) or its FHIR Bulk export "
        "directory (outcomes from its own later inpatient Encounters)",
    ),
]
SiteOutOption = Annotated[Path, typer.Option("--out", help="directory for the report files")]
SiteSeedOption = Annotated[
    int, typer.Option("--seed", help="the site's split seed (fit / held-out patients; kept in the lineage)")
]
TargetAlertsOption = Annotated[
    float | None,
    typer.Option(
        "--target-alerts",
        help="sepsis: threshold for at most this many alerts per 100 patient-days (default: "
        "utility-maximising); readmission: flag this many of every 100 discharges "
        "(default: the model's own share)",
    ),
]
ReplicatesOption = Annotated[int, typer.Option(help="bootstrap replicates (by patient)")]


def _site_task(model: ModelName) -> SiteTask:
    """The model's go-live value, or one line on stderr and exit 2."""
    from models import ModelError
    from models.site_tasks import site_task

    try:
        return site_task(model.value)
    except ModelError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None


def _site_model(model: ModelName, version: str | None) -> tuple[RiskModel, SiteTask]:
    task = _site_task(model)
    return _load_model(model, version), task


def _site_data(model: RiskModel, task: SiteTask, data: Path) -> SiteData:
    from models import DatasetError

    try:
        return task.load(data, model.spec, "")
    except DatasetError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None


@contextlib.contextmanager
def _steps(desc: str, names: list[str]) -> Any:
    """A progress bar over a command's stages on stderr: `step(name)` when each begins."""
    from tqdm.auto import tqdm

    bar = tqdm(total=len(names), desc=desc, unit=" steps", file=sys.stderr)
    started = [False]

    def step(name: str) -> None:
        if started[0]:
            bar.update(1)
        started[0] = True
        bar.set_postfix_str(name)

    try:
        yield step
        bar.update(bar.total - bar.n)
    finally:
        bar.close()


def _with_progress(reader: Any) -> Any:
    """Progress bars on stderr: bytes read, then stays built."""
    from tqdm.auto import tqdm

    bar = tqdm(total=0, unit="B", unit_scale=True, desc="reading export", file=sys.stderr)

    def progress(done: int, total: int) -> None:
        bar.total = total
        bar.n = done
        bar.refresh()

    reader.progress = progress

    def stays() -> Any:
        built = None
        try:
            for stay in reader.stays():
                if built is None:
                    bar.close()
                    built = tqdm(unit=" stays", desc="building tables", file=sys.stderr)
                built.update(1)
                yield stay
        finally:
            bar.close()
            if built is not None:
                built.close()

    return stays()


def _print_export_report(report: Any) -> None:
    from fhir_mappings import unmapped_reason

    obs = report.observations
    typer.echo(
        f"files: {', '.join(report.files)}"
        + (f"; ignored: {', '.join(report.files_ignored)}" if report.files_ignored else "")
    )
    typer.echo(
        f"resources: {json.dumps(dict(sorted(report.resources.items())))}; lines not read: "
        f"{json.dumps(dict(report.bad_lines))}"
    )
    typer.echo(f"ICU stays: {report.stays} ({report.hours} hours, {report.septic_stays} with sepsis)")
    typer.echo("stays without a table, by reason:")
    for reason, n in sorted(report.stays_skipped.items(), key=lambda kv: (-kv[1], kv[0])):
        typer.echo(f"  {n:8d}  {reason}")
    typer.echo(f"patients without an ICU stay: {report.patients_without_stay}")
    typer.echo(f"encounters not read as stays: {json.dumps(dict(sorted(report.encounters_ignored.items())))}")
    typer.echo(f"sepsis Conditions: {json.dumps(dict(sorted(report.conditions.items())))}")
    typer.echo(
        f"Observations: {obs.observations}; measurements: {obs.measurements}; placed in ICU hours: "
        f"{report.placed}"
    )
    typer.echo(f"skipped Observations, by reason: {json.dumps(dict(sorted(obs.skipped.items())))}")
    typer.echo(f"Observations without a patient: {json.dumps(dict(report.observations_unassigned))}")
    typer.echo("unit errors (variable|unit):")
    for key, n in sorted(obs.unit_errors.items(), key=lambda kv: (-kv[1], kv[0])):
        typer.echo(f"  {n:8d}  {key}")
    if obs.implausible:
        typer.echo(f"implausible values: {json.dumps(dict(sorted(obs.implausible.items())))}")
    if obs.code_conflicts:
        typer.echo("local codes overruled by the standard code beside them:")
        for key, n in sorted(obs.code_conflicts.items(), key=lambda kv: (-kv[1], kv[0])):
            typer.echo(f"  {n:8d}  {key}")
    typer.echo("unmapped codes (system|code), add them to the site code map:")
    for key, n in sorted(obs.unmapped_codes.items(), key=lambda kv: (-kv[1], kv[0])):
        typer.echo(f"  {n:8d}  {key}  ({unmapped_reason(key)})")


@site_app.command("map-report")
def site_map_report(
    export: ExportOption,
    profile: ProfileOption = None,
    site_map: SiteMapOption = None,
    source: SourceOption = "",
    json_out: Annotated[Path, typer.Option("--json", help="where to write the report as JSON")] = Path(
        "map-report.json"
    ),
) -> None:
    """Before training: what the export gives and what could not be mapped (codes, units, stays
    without an ICU clock), with counts, as a table and as JSON."""
    reader = _export_reader(export, profile, site_map, source)
    for _ in _with_progress(reader):
        pass
    _print_export_report(reader.report)
    json_out.write_text(json.dumps({"profile": reader.profile.name, **reader.report.as_dict()}, indent=1))
    typer.echo(f"report written to {json_out}")


@site_app.command("import")
def site_import(
    export: ExportOption,
    out: Annotated[
        Path, typer.Option("--out", help="table.parquet, or a directory for PhysioNet .psv files")
    ],
    profile: ProfileOption = None,
    site_map: SiteMapOption = None,
    source: SourceOption = "",
) -> None:
    """Write the export's canonical hourly table (PhysioNet columns + SepsisLabel, one stay per
    `patient`, `person` the patient pseudonym) for training, and its report beside it."""
    from fhir_mappings import write_stays

    reader = _export_reader(export, profile, site_map, source)
    written = write_stays(_with_progress(reader), out)
    _print_export_report(reader.report)
    report_path = out.with_name(out.name + ".report.json") if out.suffix else out / "map-report.json"
    report_path.write_text(json.dumps({"profile": reader.profile.name, **reader.report.as_dict()}, indent=1))
    typer.echo(f"{written} stays written to {out}; report in {report_path}")


@site_app.command("validate")
def site_validate(
    model: ModelName,
    data: SiteDataOption,
    out: SiteOutOption = Path("golive"),
    version: ModelVersionOption = None,
    replicates: ReplicatesOption = 200,
) -> None:
    """Local validation: the full clinical evaluation of the model on the site's data, with the go-live
    checks, as golive.md/golive.html, model_card.md, metrics.json and plots in --out."""
    risk_model, task = _site_model(model, version)
    stages = ["reading the site's data", f"evaluating ({replicates} bootstraps)"]
    with _steps(f"site validate {model.value}", stages) as step:
        step(stages[0])
        site = _site_data(risk_model, task, data)
        step(stages[1])
        metrics = task.validate(risk_model, site, out, replicates)
    typer.echo(json.dumps({"out": str(out), **metrics["golive"]}))


@site_app.command("recalibrate")
def site_recalibrate(
    model: ModelName,
    data: SiteDataOption,
    out: SiteOutOption = Path("recalibration"),
    version: ModelVersionOption = None,
    seed: SiteSeedOption = 2019,
    target_alerts: TargetAlertsOption = None,
    replicates: ReplicatesOption = 200,
) -> None:
    """Local recalibration: calibration map and alert threshold refitted on half of the site's patients,
    compared with the base on the other half; registered as a candidate version."""
    from models import ModelRegistry
    from models.site import recalibrate_site, register_site_version, write_site_report

    risk_model, task = _site_model(model, version)
    stages = ["reading the site's data", f"fitting and comparing ({replicates} bootstraps)", "registering"]
    with _steps(f"site recalibrate {model.value}", stages) as step:
        step(stages[0])
        site = _site_data(risk_model, task, data)
        step(stages[1])
        result = _site_step(
            lambda: recalibrate_site(
                risk_model,
                site,
                seed=seed,
                target_alerts_per_100_days=target_alerts,
                replicates=replicates,
                task=task,
            )
        )
        step(stages[2])
        manifest = register_site_version(
            ModelRegistry(_settings().model_dir), risk_model, site, result, command="cds site recalibrate"
        )
        write_site_report(
            out, f"Site recalibration of {model.value} v{risk_model.version} -> v{manifest.version}", result
        )
    _track(model.value, manifest.version, result.comparison, {"command": "recalibrate", "seed": seed}, out)
    typer.echo(_site_summary(manifest.version, risk_model.version, result.comparison, out))


def _site_step(step: Callable[[], _T]) -> _T:
    """A go-live step, with a data problem (too few patients, no outcomes) as one line and exit 2."""
    from models import DatasetError

    try:
        return step()
    except DatasetError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None


def _track(
    model_name: str,
    manifest_version: str,
    comparison: dict[str, object],
    params: dict[str, object],
    out: Path,
) -> None:
    """Log the run to MLflow and mirror the candidate version there, when CDS_MLFLOW_TRACKING_URI is set."""
    settings = _settings()
    if not settings.mlflow_tracking_uri:
        return
    from models import ModelRegistry
    from models.tracking import log_site_run

    registry = ModelRegistry(settings.model_dir)
    manifest = registry.manifest(model_name, manifest_version)
    log_site_run(
        settings.mlflow_tracking_uri,
        manifest,
        registry.root / manifest.name / manifest.version,
        comparison=comparison,
        params=params,
        report_dir=out,
    )


def _site_summary(version: str, parent: str, comparison: dict[str, object], out: Path) -> str:
    models = comparison["models"]
    assert isinstance(models, dict)
    return json.dumps(
        {
            "version": version,
            "parent_version": parent,
            "status": "candidate",
            "out": str(out),
            "held_out_patients": comparison["patients"],
            # each version's bootstrapped metrics (sepsis: auroc, utility; readmission: auroc, auprc)
            **{
                k: {m: x for m, x in v.items() if isinstance(x, dict) and "estimate" in x}
                for k, v in models.items()
            },
        }
    )


@site_app.command("adapt")
def site_adapt(
    model: ModelName,
    data: SiteDataOption,
    out: SiteOutOption = Path("adaptation"),
    version: ModelVersionOption = None,
    seed: SiteSeedOption = 2019,
    base_data: Annotated[
        Path | None,
        typer.Option(
            help="the base model's training data for `pooled` (sepsis only; default: its recorded path, "
            "if present)"
        ),
    ] = None,
    base_patients: Annotated[
        int | None, typer.Option(help="use this many of the base's development patients in `pooled`")
    ] = 4000,
    rounds: Annotated[
        str | None,
        typer.Option(
            help="extra boosting rounds tried by `continue` (default: sepsis 25,50,100,150; "
            "readmission 50,100,200,400)"
        ),
    ] = None,
    site_weight: Annotated[float, typer.Option(help="weight of site rows in `pooled`")] = 3.0,
    folds: Annotated[int, typer.Option(help="patient-grouped folds inside the site's fit patients")] = 3,
    target_alerts: TargetAlertsOption = None,
    replicates: ReplicatesOption = 200,
    scheduler: Annotated[
        str | None, typer.Option(help="Dask scheduler address: train there (needs cds-ml[dask])")
    ] = None,
) -> None:
    """Adaptation: a site candidate (continued boosting from the base, or base + site data with a site
    weight; chosen by patient-grouped CV on the site's fit patients), compared with the base and the
    recalibrated base on the held-out site patients; registered as a candidate version."""
    from models import ModelRegistry, choose_device
    from models.site import adapt_site, register_site_version, write_site_report

    risk_model, task = _site_model(model, version)
    site = _site_data(risk_model, task, data)
    base = None
    if task.development_data is None:
        if base_data is not None:
            typer.echo(
                f"error: --base-data (the `pooled` strategy) is not implemented for {model.value}", err=True
            )
            raise typer.Exit(2)
    else:
        base_path = base_data or Path(str(risk_model.manifest.training_data.get("path", "")))
        if base_path.exists() and base_path != Path(""):
            base = task.development_data(risk_model, base_path, risk_model.spec, base_patients, seed)
        elif base_data is not None:
            typer.echo(f"error: dataset not found: {base_data}", err=True)
            raise typer.Exit(2)
    result = _site_step(
        lambda: (
            adapt_site(
                risk_model,
                site,
                seed=seed,
                base_data=base,
                continue_rounds=tuple(int(r) for r in rounds.split(",")) if rounds else None,
                site_weight=site_weight,
                folds=folds,
                target_alerts_per_100_days=target_alerts,
                replicates=replicates,
                device=choose_device(_settings().device),
                progress=True,
                scheduler=scheduler,
                task=task,
            ).site
        )
    )
    manifest = register_site_version(
        ModelRegistry(_settings().model_dir), risk_model, site, result, command="cds site adapt"
    )
    write_site_report(
        out, f"Site adaptation of {model.value} v{risk_model.version} -> v{manifest.version}", result
    )
    _track(
        model.value,
        manifest.version,
        result.comparison,
        {
            "command": "adapt",
            "seed": seed,
            "chosen": result.selection.get("chosen"),
            "site_weight": site_weight,
        },
        out,
    )
    typer.echo(_site_summary(manifest.version, risk_model.version, result.comparison, out))


@site_app.command("retrain")
def site_retrain(
    model: ModelName,
    export: Annotated[
        Path,
        typer.Option(help="a `cds feedback export` directory (RiskAssessment.ndjson, Provenance.ndjson)"),
    ],
    outcomes: Annotated[
        Path,
        typer.Option(
            help="CSV of outcomes: columns pseudonym, onset (ISO time of Sepsis-3 onset; empty: none)"
        ),
    ],
    out: SiteOutOption = Path("retraining"),
    version: ModelVersionOption = None,
    seed: SiteSeedOption = 2019,
    rounds: Annotated[str, typer.Option(help="extra boosting rounds tried")] = "25,50,100",
    replicates: ReplicatesOption = 200,
) -> None:
    """Retraining of a live site from its served records: RiskAssessments (their recorded feature values),
    feedback Provenances as columns (overridden, reason) and outcomes joined by pseudonym; overrides
    reported by reason, unit and model version; registered as a candidate version."""
    import pandas as pd

    from models import ModelRegistry, choose_device
    from models.retrain import register_retrained, retrain_from_served, served_table

    if not _site_task(model).retrains_from_served:
        typer.echo(
            f"error: cds site retrain (served records) is implemented for the sepsis model only, not "
            f"{model.value}; a site with labelled discharges runs cds site adapt {model.value} --data ...",
            err=True,
        )
        raise typer.Exit(2)
    risk_model = _load_model(model, version)

    def read(name: str) -> list[dict[str, object]]:
        path = export / name
        if not path.is_file():
            typer.echo(f"error: {path} not found (run `cds feedback export --out {export}`)", err=True)
            raise typer.Exit(2)
        with open(path, encoding="utf-8") as f:
            return [json.loads(line) for line in f if line.strip()]

    stages = ["joining records, feedback and outcomes", "retraining (grouped CV)", "registering"]
    with _steps("site retrain", stages) as step:
        step(stages[0])
        frame = pd.read_csv(outcomes, dtype={"pseudonym": str})
        frame["onset"] = pd.to_datetime(frame["onset"], utc=True, errors="coerce")
        table = served_table(
            read("RiskAssessment.ndjson"),
            read("Provenance.ndjson"),
            frame,
            risk_model.spec.names,
            model_name="sepsis",
            feature_spec_hash=risk_model.spec.spec_hash,
        )
        step(stages[1])
        result = retrain_from_served(
            risk_model,
            table,
            seed=seed,
            rounds=tuple(int(r) for r in rounds.split(",")),
            replicates=replicates,
            device=choose_device(_settings().device),
        )
        step(stages[2])
        manifest = register_retrained(
            ModelRegistry(_settings().model_dir), risk_model, result, data_label=f"served records in {export}"
        )
    out.mkdir(parents=True, exist_ok=True)
    report = {
        "version": manifest.version,
        "parent_version": risk_model.version,
        "status": "candidate",
        "selection": result.selection,
        "held_out": result.comparison,
        "overrides": result.overrides,
    }
    (out / "retraining.json").write_text(json.dumps(report, indent=2) + "\n")
    _track(
        model.value,
        manifest.version,
        result.comparison,
        {"command": "retrain", "seed": seed, **result.selection["chosen"]},
        out,
    )
    typer.echo(json.dumps(report))


def main() -> None:
    app()


if __name__ == "__main__":
    main()

"""Configuration: `CDS_*` environment variables (or a `.env` file), read once.

Embedded default: with nothing set the server runs on one machine with no external service
(SQLite file store, in-process caches, the committed model). `CDS_DATABASE_URL` moves the record
store (cards, feedback, audit events, served model versions) to PostgreSQL; `CDS_REDIS_URL` shares
only what may be lost (the replay window, the JWKS cache, drift tallies) between workers.
"""

from __future__ import annotations

import functools
import importlib.util
import logging
import re
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from .transport import is_loopback_url

if TYPE_CHECKING:
    from fhir_mappings import VendorProfile

    from .drift import DriftThresholds

# The same defaults as models.DEFAULT_DATA_DIR / DEFAULT_REGISTRY, found without importing the
# model code (xgboost): reading settings, and `cds --help`, stay fast.
DEFAULT_DATA_DIR = Path("../shared/data")
_MODELS_SPEC = importlib.util.find_spec("models")
DEFAULT_REGISTRY = (
    Path(_MODELS_SPEC.origin).resolve().parent / "artifacts"
    if _MODELS_SPEC and _MODELS_SPEC.origin
    else Path("models/artifacts")
)


def _profile_names() -> frozenset[str]:
    from fhir_mappings import PROFILES

    return frozenset(PROFILES)


__all__ = [
    "ALLOWED_JWT_ALGORITHMS",
    "Settings",
    "SiteBand",
    "SiteBands",
    "SmartEhr",
    "SweepEhr",
    "TrustedIssuer",
    "get_settings",
]

log = logging.getLogger("cds.settings")


# Asymmetric signatures only: `none` and HMAC (HS*) can never be configured.
ALLOWED_JWT_ALGORITHMS = frozenset(
    {"ES256", "ES384", "ES512", "RS256", "RS384", "RS512", "PS256", "PS384", "PS512"}
)


class TrustedIssuer(BaseModel):
    """One EHR allowed to call us. Keys come from `jwks_url` (pinned), or from a token's `jku`
    header when that URL is listed in `jku`; nothing else is ever fetched. `fhir_servers`: the
    FHIR base URLs this EHR may name as `fhirServer`; we connect to no other (none listed: the
    EHR must prefetch everything)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    iss: str = Field(min_length=1)
    jwks_url: str | None = None
    jku: tuple[str, ...] = ()
    tenants: tuple[str, ...] = ()  # when set, the token's `tenant` must be one of these
    fhir_servers: tuple[str, ...] = ()

    @field_validator("fhir_servers")
    @classmethod
    def _bases(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for url in value:
            if not url.startswith(("https://", "http://")):
                raise ValueError("fhir_servers must be absolute URLs")
        return tuple(url.rstrip("/") for url in value)

    @model_validator(mode="after")
    def _has_keys(self) -> TrustedIssuer:
        if not self.jwks_url and not self.jku:
            raise ValueError(f"issuer {self.iss!r} needs jwks_url or an allow-listed jku")
        for url in (self.jwks_url, *self.jku):
            if url is not None and not url.startswith(("https://", "http://")):
                raise ValueError(f"issuer {self.iss!r}: JWKS URL must be absolute")
        return self

    def key_urls(self) -> tuple[str, ...]:
        return tuple(u for u in (self.jwks_url, *self.jku) if u)

    def may_name(self, fhir_server: str) -> bool:
        return fhir_server.rstrip("/") in self.fhir_servers


class SmartEhr(BaseModel):
    """One EHR allowed to launch the explanation app (SMART App Launch 2.x, cds/smart/). `iss` is its
    FHIR base exactly as it sends it; a launch naming any other `iss` is refused before anything
    is fetched. `client_auth`: `none` (public client), `client_secret_basic`, or `private_key_jwt`
    (`private_key_file`: a PEM RSA or EC key; `key_id`: its `kid` in the JWKS registered with the
    EHR). `jwks_url`: the keys that sign its id_tokens (default: `jwks_uri` from its
    smart-configuration). `frame_origins`: its web origins allowed to frame the app. `online_access`:
    ask for a refresh token too (used when the access token expires). `card_sources`:
    the `fhirServer` its CDS Hooks calls name when it differs from `iss` (cards are bound to the
    launch's patient through their pseudonym, which is scoped by that base)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    iss: str = Field(min_length=1)
    client_id: str = Field(min_length=1)
    client_auth: Literal["none", "client_secret_basic", "private_key_jwt"] = "none"
    client_secret: SecretStr | None = None
    private_key_file: Path | None = None
    key_id: str | None = None
    signing_alg: str = "RS384"
    jwks_url: str | None = None
    frame_origins: tuple[str, ...] = ()
    card_sources: tuple[str, ...] = ()
    online_access: bool = False  # also ask for `online_access`, so the EHR may offer a refresh token

    @field_validator("iss", "jwks_url")
    @classmethod
    def _absolute(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("https://", "http://")):
            raise ValueError("SMART EHR URLs must be absolute")
        return value.rstrip("/") if value else value

    @field_validator("frame_origins")
    @classmethod
    def _origins(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for origin in value:
            if not re.fullmatch(r"https?://[A-Za-z0-9.\-\[\]:]+", origin):
                raise ValueError(f"frame_origins must be origins (scheme://host[:port]), not {origin!r}")
        return value

    @model_validator(mode="after")
    def _credentials(self) -> SmartEhr:
        if self.client_auth == "client_secret_basic" and self.client_secret is None:
            raise ValueError(f"SMART EHR {self.iss!r}: client_secret_basic needs client_secret")
        if self.client_auth == "private_key_jwt" and (self.private_key_file is None or not self.key_id):
            raise ValueError(f"SMART EHR {self.iss!r}: private_key_jwt needs private_key_file and key_id")
        if self.signing_alg not in ALLOWED_JWT_ALGORITHMS:
            raise ValueError(f"SMART EHR {self.iss!r}: signing_alg must be an asymmetric JWS algorithm")
        return self


class SweepEhr(BaseModel):
    """The EHR the census sweep (`cds sweep`) reads, as a SMART Backend Services client:
    `client_credentials` with a `private_key_jwt` assertion signed by `private_key_file` (a PEM
    key, or a JWK / JWKS in JSON holding the private key; `key_id`: its `kid` in the JWKS the EHR
    registered). `group_id`: the Group of current inpatients for `Group/<id>/$export` (none: a
    system-level `$export`); `bulk`: `auto` tries Bulk Data and falls back to paged searches when
    the EHR does not offer it, `never` always searches. `lookback_hours`: the Observations read
    per patient. `pseudonym_source`: the FHIR base the hook calls name as `fhirServer` when it
    differs from `fhir_base` (pseudonyms are scoped by it, so sweep and cards agree)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    fhir_base: str = Field(min_length=1)
    client_id: str = Field(min_length=1)
    private_key_file: Path
    key_id: str = Field(min_length=1)
    signing_alg: str = "RS384"
    token_endpoint: str | None = None  # default: from {fhir_base}/.well-known/smart-configuration
    scope: str = (
        "system/Patient.rs system/Encounter.rs system/Observation.rs system/Consent.rs system/Location.rs"
    )
    group_id: str | None = None
    bulk: Literal["auto", "never"] = "auto"
    lookback_hours: int = Field(default=72, ge=1, le=24 * 366)
    concurrency: int = Field(default=4, ge=1, le=64)  # requests in flight to the EHR
    max_retries: int = Field(default=5, ge=0, le=20)  # per request, on 429/503 and transport failures
    max_retry_after_s: float = 60.0  # a longer Retry-After is capped to this
    export_timeout_s: float = 900.0  # kick-off to manifest, at most
    timeout_s: float = 30.0  # per request
    page_size: int = Field(default=500, ge=1)
    pseudonym_source: str | None = None

    @field_validator("fhir_base", "token_endpoint", "pseudonym_source")
    @classmethod
    def _absolute(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("https://", "http://")):
            raise ValueError("sweep EHR URLs must be absolute")
        return value.rstrip("/") if value else value

    @field_validator("signing_alg")
    @classmethod
    def _asymmetric(cls, value: str) -> str:
        if value not in ALLOWED_JWT_ALGORITHMS:
            raise ValueError("signing_alg must be an asymmetric JWS algorithm")
        return value


class SiteBand(BaseModel):
    """One risk band a site sets from its go-live report, with the PPV and sensitivity it measured."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: Literal["low", "moderate", "high", "very-high"]
    lower: float = Field(ge=0.0, lt=1.0)
    ppv: float | None = Field(default=None, ge=0.0, le=1.0)
    sensitivity: float | None = Field(default=None, ge=0.0, le=1.0)


class SiteBands(BaseModel):
    """A model's bands at this site (CDS_RISK_BANDS), replacing its manifest's."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    measured_on: str = Field(min_length=1, max_length=300)  # e.g. "go-live 2026-10: 1,204 ICU stays"
    bands: tuple[SiteBand, ...] = Field(min_length=1)

    @model_validator(mode="after")
    def _ordered(self) -> SiteBands:
        lowers = [b.lower for b in self.bands]
        if lowers != sorted(lowers) or len(set(lowers)) != len(lowers):
            raise ValueError("risk bands must be listed by strictly increasing lower bound")
        if self.bands[0].name != "low" or lowers[0] != 0.0:
            raise ValueError("the first risk band must be 'low', from 0")
        if len({b.name for b in self.bands}) != len(self.bands):
            raise ValueError("risk band names must be unique")
        sens = [b.sensitivity for b in self.bands if b.sensitivity is not None]
        if sens != sorted(sens, reverse=True):
            raise ValueError("a band's sensitivity (positives in it or above) cannot exceed a lower band's")
        return self


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="CDS_", env_file=".env", extra="ignore")

    host: str = "127.0.0.1"
    port: int = 8000
    public_url: str | None = Field(default=None, description="Base URL the EHR uses to reach us")
    data_dir: Path = DEFAULT_DATA_DIR
    model_dir: Path = DEFAULT_REGISTRY
    var_dir: Path = Path("var")
    store_path: Path | None = None  # default: <var_dir>/cds.sqlite3
    database_url: SecretStr | None = None  # PostgreSQL record store, e.g. postgresql://cds@db:5432/cds
    database_timeout_s: float = 1.0  # bound on each PostgreSQL operation: a hook never waits longer
    spool_file: Path | None = (
        None  # PostgreSQL mode, cards answered during an outage: <var_dir>/spool.sqlite3
    )
    redis_url: str | None = None
    redis_prefix: str = "cds:"
    pseudonym_key: SecretStr | None = None  # default: a random key kept in <var_dir>/pseudonym.key
    redis_timeout_s: float = 0.25  # a frozen Redis must not hold a hook: beyond this, degrade
    degraded_retry_s: float = 2.0  # how often a degraded dependency is tried again
    hook_timeout_s: float = 2.0
    fhir_timeout_s: float = 1.5
    fhir_max_pages: int = 20

    # --- limits (each answered with a clear 4xx; docs/hardening.md) --------------------------
    max_hook_bytes: int = 10 * 2**20  # request body of a hook call (a 72 h ICU prefetch is ~0.6 MB)
    max_feedback_bytes: int = 256 * 2**10
    max_json_depth: int = 64  # a FHIR prefetch nests ~12 deep
    max_resources: int = 20_000  # FHIR resources per hook call, prefetched and fetched together
    fhir_max_response_bytes: int = 16 * 2**20  # one EHR response, after decompression
    feedback_comment_max_chars: int = 2_000
    feedback_max_future_s: float = 300.0  # clock skew allowed on outcomeTimestamp

    # --- privacy (docs/privacy.md) ----------------------------------------------------------
    # overrideReason.userComment: "omit" keeps only its presence and length; "scrubbed" keeps the
    # text with the call's identities and identifier-shaped strings removed (a site's opt-in).
    feedback_comments: Literal["omit", "scrubbed"] = "omit"
    consent_refused_card: bool = False  # decision support refused: an info card (no score) instead of none
    retention_days: float | None = None  # `cds purge` removes cards (and their feedback) older than this
    audit_anchor_file: Path | None = None  # default: <var_dir>/audit-anchors.jsonl (better: other storage)
    audit_anchor_every: int = 100  # entries between anchors (and one when the store closes)

    # --- model lifecycle (cds/lifecycle.py, docs/lifecycle.md) ------------------------------
    model_poll_s: float = Field(default=2.0, gt=0)  # how often a server reads the versions' statuses
    canary_min_calls: int = 30  # calls a canary answers before its guardrails are judged
    canary_max_error_rate: float = 0.05  # share of the canary's calls that failed (champion answered)
    canary_max_latency_ratio: float = 2.0  # canary hook latency p99 / the champion's
    canary_max_alert_ratio: float = 1.5  # canary alerts per 100 patient-days / the champion's
    canary_min_feedback: int = 20  # feedback on canary cards before the override guardrail is judged
    canary_max_override_ratio: float = 1.5  # canary override rate / the champion's
    shadow_queue: int = 8  # shadow scorings waiting; beyond, a call's shadow score is skipped (counted)

    # --- admission control (cds/admission.py) -------------------------------------------
    hook_workers: int = 2  # threads for the CPU-heavy steps of a hook call
    hook_queue: int = 24  # calls waiting for one of those threads
    hook_queue_wait_s: float = 0.5  # the longest a call waits before it is answered `{"cards": []}`
    max_in_flight_hooks: int = 128
    max_in_flight_bytes: int = 256 * 2**20  # bodies of the hook calls in flight, together
    max_in_flight_feedback: int = 32
    retry_after_s: int = 2  # on 503 answers

    # --- connections (cds/server.py) ------------------------------------------------------
    max_connections: int = 1_000
    header_timeout_s: float = 10.0  # a connection must send its request headers within this
    keep_alive_s: int = 5
    api_docs: bool = False  # serve /openapi.json (no HTML, no CDN script); off in production
    # The EHR's fhirServer must be https (http is accepted on loopback only). True only for a
    # closed test network: the access token and PHI would then cross the network in clear.
    allow_http_fhir_server: bool = False
    log_level: str = "INFO"
    # EHR vendor profiles (fhir_mappings.profiles): FHIR base URL or JWT issuer prefix -> profile name,
    # e.g. CDS_EHR_PROFILES='{"https://fhir.example-epic.org/api/FHIR/R4": "epic"}'.
    ehr_profiles: dict[str, str] = Field(default_factory=dict)
    ehr_profile_default: str = "generic"
    # Where training and batch scoring run: auto (a GPU when present) | cpu | cuda.
    device: Literal["auto", "cpu", "cuda"] = "auto"
    # MLflow tracking server for site runs (`cds site recalibrate|adapt|retrain`; models/tracking.py).
    mlflow_tracking_uri: str | None = None

    # --- drift and data quality (cds/drift.py, docs/operations.md) ------------------------
    drift_enabled: bool = True
    drift_bucket_s: float = 300.0  # tallies are stored per time bucket of this length
    drift_flush_s: float = 5.0  # how often a worker moves its in-process tallies to the shared store
    drift_evaluate_s: float = (
        300.0  # how often the drift gauges and warning state are recomputed (one worker)
    )
    drift_window_s: float = 86400.0  # the sliding window the gauges and warning state judge
    drift_psi_warn: float = 0.2
    drift_missing_warn: float = 0.2  # absolute change of a feature's missing share
    drift_unmapped_warn: float = 0.05  # share of Observations with an unmapped code or unit
    drift_min_calls: int = 30  # fewer scored calls in the window: no judgement
    drift_file: Path | None = None  # without Redis: <var_dir>/drift.sqlite3

    @field_validator("ehr_profiles")
    @classmethod
    def _known_profiles(cls, value: dict[str, str]) -> dict[str, str]:
        """A profile name that does not exist stops the server at start, not each request."""
        known = _profile_names()
        unknown = sorted({name for name in value.values() if name not in known})
        if unknown:
            raise ValueError(f"unknown EHR profile(s) {unknown} (known: {', '.join(sorted(known))})")
        return value

    @field_validator("ehr_profile_default")
    @classmethod
    def _known_default(cls, value: str) -> str:
        known = _profile_names()
        if value not in known:
            raise ValueError(f"unknown EHR profile {value!r} (known: {', '.join(sorted(known))})")
        return value

    accept_preliminary: bool = False  # count `preliminary` Observations (a site's explicit choice)

    def vendor_profile(self, fhir_server: str | None, issuer: str | None = None) -> VendorProfile:
        """The mapping profile for the EHR behind a request (pure look-up in the settings above)."""
        from fhir_mappings import select_profile

        return select_profile(
            fhir_server,
            issuer,
            self.ehr_profiles,
            default=self.ehr_profile_default,
            accept_preliminary=self.accept_preliminary,
        )

    # --- caller authentication (CDS Hooks 2.0 "Trusting CDS Clients") ---------------------
    # JSON list, e.g. [{"iss": "https://ehr.example.org", "jwks_url": "https://ehr.example.org/jwks.json"}]
    auth_issuers: tuple[TrustedIssuer, ...] = ()
    auth_algorithms: tuple[str, ...] = ("ES384", "RS384")
    auth_leeway_s: float = 30.0  # clock skew allowed on exp, iat, nbf
    auth_max_token_lifetime_s: float = 3600.0  # exp - iat; also bounds the replay store
    # Local demos only: every caller is trusted. Refused unless the server listens on loopback.
    auth_disabled_for_local_demo: bool = False
    jwks_cache_s: float = 300.0
    jwks_min_refresh_s: float = 30.0  # at most one refetch per JWKS URL this often (unknown kid)
    jwks_timeout_s: float = 1.0

    # --- browser-based EHR clients ------------------------------------------------------
    cors_origins: tuple[str, ...] = ()
    cors_allow_credentials: bool = False

    # SMART launch URL of the explanation app in card links (default: <public_url>/smart/launch)
    smart_launch_url: str | None = None
    # --- the SMART explanation app (cds/smart/): EHRs that may launch it, JSON list of SmartEhr --
    smart_ehrs: tuple[SmartEhr, ...] = ()
    smart_flow_ttl_s: float = 600.0  # from launch to the EHR's redirect back
    smart_session_ttl_s: float = 3600.0  # an app session (its handle), refreshed tokens included
    smart_timeout_s: float = 5.0  # per request to the EHR's authorization and FHIR servers
    # --- the census sweep (`cds sweep`, cds/sweep.py): JSON SweepEhr ---------------------------
    sweep_ehr: SweepEhr | None = None

    # --- risk bands (models/bands.py): a card is `critical` only for a band whose PPV reaches this -
    critical_ppv: float = Field(default=0.3, gt=0.0, le=1.0)
    # model name -> the site's bands from its go-live report (JSON), replacing the manifest's
    risk_bands: dict[str, SiteBands] = Field(default_factory=dict)

    def smart_ehr(self, iss: str) -> SmartEhr | None:
        return next((e for e in self.smart_ehrs if e.iss == iss.rstrip("/")), None)

    @field_validator("auth_algorithms")
    @classmethod
    def _asymmetric_only(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        bad = [a for a in value if a not in ALLOWED_JWT_ALGORITHMS]
        if bad or not value:
            raise ValueError(f"auth_algorithms must be asymmetric JWS algorithms, not {bad or 'empty'}")
        return value

    @model_validator(mode="after")
    def _safe_combinations(self) -> Settings:
        if "*" in self.cors_origins and self.cors_allow_credentials:
            raise ValueError("CORS: '*' cannot be combined with credentials; list the EHR origins")
        if self.auth_disabled_for_local_demo and self.host not in _LOOPBACK:
            raise ValueError(
                "auth_disabled_for_local_demo is for local demos: the host must be a loopback address"
            )
        if (
            min(
                self.max_hook_bytes,
                self.max_feedback_bytes,
                self.max_json_depth,
                self.max_resources,
                self.hook_workers,
            )
            < 1
        ):
            raise ValueError("limits must be positive")
        if self.audit_anchor_every < 1 or (self.retention_days is not None and self.retention_days <= 0):
            raise ValueError("audit_anchor_every and retention_days must be positive")
        return self

    def fhir_server_allowed(self, fhir_server: str, issuer: str | None) -> bool:
        """Whether we may connect to `fhir_server` for a call from `issuer` (verified JWT iss).
        Local demo without authentication: loopback FHIR servers only."""
        if issuer is None:
            return self.auth_disabled_for_local_demo and is_loopback_url(fhir_server)
        trusted = next((i for i in self.auth_issuers if i.iss == issuer), None)
        return trusted is not None and trusted.may_name(fhir_server)

    def jwks_allowlist(self) -> frozenset[str]:
        return frozenset(u for issuer in self.auth_issuers for u in issuer.key_urls())

    @property
    def sqlite_path(self) -> Path:
        return self.store_path or self.var_dir / "cds.sqlite3"

    @property
    def drift_path(self) -> Path:
        return self.drift_file or self.var_dir / "drift.sqlite3"

    def drift_thresholds(self) -> DriftThresholds:
        from .drift import DriftThresholds

        return DriftThresholds(
            psi=self.drift_psi_warn,
            missing=self.drift_missing_warn,
            unmapped=self.drift_unmapped_warn,
            min_calls=self.drift_min_calls,
        )

    @property
    def spool_path(self) -> Path:
        return self.spool_file or self.var_dir / "spool.sqlite3"

    @property
    def anchor_path(self) -> Path:
        return self.audit_anchor_file or self.var_dir / "audit-anchors.jsonl"


_LOOPBACK = ("127.0.0.1", "localhost", "::1")


@functools.lru_cache
def get_settings() -> Settings:
    return Settings()

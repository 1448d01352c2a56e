"""Configuration: `CDS_*` environment variables (or a `.env` file), read once.

Embedded default: with nothing set the server runs on one machine with no external service
(SQLite file store, in-process caches, the committed model). `CDS_REDIS_URL` moves what several
workers must share (the card and feedback store) to Redis.
"""

from __future__ import annotations

import functools
import logging
import os
import secrets
from pathlib import Path

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from fhir_mappings import VendorProfile, select_profile
from models import DEFAULT_DATA_DIR, DEFAULT_REGISTRY

__all__ = ["Settings", "get_settings"]

log = logging.getLogger("cds.settings")


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="CDS_", env_file=".env", extra="ignore")

    host: str = "127.0.0.1"
    port: int = 8000
    public_url: str | None = Field(default=None, description="Base URL the EHR uses to reach us")
    data_dir: Path = DEFAULT_DATA_DIR
    model_dir: Path = DEFAULT_REGISTRY
    var_dir: Path = Path("var")
    store_path: Path | None = None  # default: <var_dir>/cds.sqlite3
    redis_url: str | None = None
    redis_prefix: str = "cds:"
    pseudonym_key: SecretStr | None = None  # default: a random key kept in <var_dir>/pseudonym.key
    hook_timeout_s: float = 2.0
    fhir_timeout_s: float = 1.5
    fhir_max_pages: int = 20
    log_level: str = "INFO"
    # EHR vendor profiles (fhir_mappings.profiles): FHIR base URL or JWT issuer prefix -> profile name,
    # e.g. CDS_EHR_PROFILES='{"https://fhir.example-epic.org/api/FHIR/R4": "epic"}'.
    ehr_profiles: dict[str, str] = Field(default_factory=dict)
    ehr_profile_default: str = "generic"
    accept_preliminary: bool = False  # count `preliminary` Observations (a site's explicit choice)

    def vendor_profile(self, fhir_server: str | None, issuer: str | None = None) -> VendorProfile:
        """The mapping profile for the EHR behind a request (pure look-up in the settings above)."""
        return select_profile(
            fhir_server, issuer, self.ehr_profiles, default=self.ehr_profile_default, accept_preliminary=self.accept_preliminary
        )

    @property
    def sqlite_path(self) -> Path:
        return self.store_path or self.var_dir / "cds.sqlite3"

    def pseudonym_key_bytes(self) -> bytes:
        """The HMAC key for pseudonyms. Set CDS_PSEUDONYM_KEY in production (shared by every worker)."""
        if self.pseudonym_key is not None:
            return self.pseudonym_key.get_secret_value().encode()
        path = self.var_dir / "pseudonym.key"
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            except FileExistsError:  # another worker made it first
                pass
            else:
                with os.fdopen(fd, "w") as f:
                    f.write(secrets.token_hex(32))
                log.warning("no CDS_PSEUDONYM_KEY set: created a random key in %s", path)
        return path.read_text().strip().encode()


@functools.lru_cache
def get_settings() -> Settings:
    return Settings()

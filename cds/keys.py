"""The pseudonym key, read (or, on the embedded default, created once) at the edge: settings only
describe where it is, and reading them does no I/O."""

from __future__ import annotations

import logging
import os
import secrets

from .settings import Settings

__all__ = ["pseudonym_key"]

log = logging.getLogger("cds.keys")


def pseudonym_key(settings: Settings) -> bytes:
    """The HMAC key for pseudonyms: `CDS_PSEUDONYM_KEY` (production: the same for every worker and
    machine), else `<var_dir>/pseudonym.key`, created with a random key the first time."""
    if settings.pseudonym_key is not None:
        return settings.pseudonym_key.get_secret_value().encode()
    path = settings.var_dir / "pseudonym.key"
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
